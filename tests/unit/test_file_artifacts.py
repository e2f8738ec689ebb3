"""File artifact store: crash safety, the directory it uses, and what only a file system can get wrong."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from mlplat.backends.artifacts import ArtifactInfo, InvalidArtifactKey
from mlplat.backends.artifacts.file import FileArtifactStore
from mlplat.errors import BackendError, BackendUnavailable, ConfigError


async def connected(root: Path) -> FileArtifactStore:
    store = FileArtifactStore(f"file://{root}")
    await store.connect()
    return store


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_leftover_temp_files_are_invisible(tmp_path: Path) -> None:
    """A temp file from a crashed write is neither listed nor addressable as an artifact."""
    store = await connected(tmp_path)
    await store.put("m/real", b"ok")
    (tmp_path / "m" / ".tmp-abc.part").write_bytes(b"half")
    (tmp_path / ".tmp-root.part").write_bytes(b"half")
    assert [i.key for i in await store.list()] == ["m/real"]
    with pytest.raises(InvalidArtifactKey):
        await store.get("m/.tmp-abc.part")


async def test_a_failed_write_keeps_the_old_artifact_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename into place fails, the previous bytes and record stay and the temp file is removed."""
    store = await connected(tmp_path)
    old = await store.put("m/x", b"old", metadata={"v": "1"})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BackendError, match="cannot write 'm/x': No space left on device"):
        await store.put("m/x", b"new", metadata={"v": "2"})
    monkeypatch.undo()
    assert await store.get("m/x") == b"old"
    assert (await store.head("m/x")).sha256 == old.sha256
    assert not [f for f in files_under(tmp_path) if ".tmp-" in f]


async def test_a_blob_without_its_record_is_described_from_its_bytes(tmp_path: Path) -> None:
    """A crash between blob and record leaves a readable artifact whose hash is computed from its bytes."""
    store = await connected(tmp_path)
    info = await store.put("m/x", b"data", metadata={"v": "1"})
    (tmp_path / ".meta" / "m" / "x.json").unlink()
    assert await store.head("m/x") == ArtifactInfo("m/x", 4, info.sha256, {})
    assert await store.list() == [ArtifactInfo("m/x", 4, info.sha256, {})]


async def test_a_record_that_does_not_match_the_blob_is_not_trusted(tmp_path: Path) -> None:
    """A record describing other bytes (the blob replaced behind the store's back) is not reported."""
    store = await connected(tmp_path)
    await store.put("m/x", b"data")
    (tmp_path / "m" / "x").write_bytes(b"different bytes")
    assert (await store.head("m/x")).sha256 == hashlib.sha256(b"different bytes").hexdigest()


async def test_records_live_outside_the_key_namespace(tmp_path: Path) -> None:
    """The blob is a plain file at its key, its record is under .meta, and nothing else is left behind."""
    store = await connected(tmp_path)
    await store.put("a/b.bin", b"w", metadata={"k": "v"})
    assert files_under(tmp_path) == [".meta/a/b.bin.json", "a/b.bin"]
    record = json.loads((tmp_path / ".meta" / "a" / "b.bin.json").read_text())
    assert record == {"size": 1, "sha256": hashlib.sha256(b"w").hexdigest(), "metadata": {"k": "v"}}


async def test_delete_prunes_directories_it_emptied(tmp_path: Path) -> None:
    """Deleting the last artifact under a path removes its emptied directories in both trees, not the root."""
    store = await connected(tmp_path)
    await store.put("a/b/c/x", b"1")
    await store.put("a/y", b"2")
    await store.delete("a/b/c/x")
    assert not (tmp_path / "a" / "b").exists() and not (tmp_path / ".meta" / "a" / "b").exists()
    await store.delete("a/y")
    assert entries(tmp_path) == [".meta"]


async def test_concurrent_puts_of_one_key_leave_a_record_matching_the_bytes(tmp_path: Path) -> None:
    """Many puts racing on one key end with the recorded sha256 and metadata of the bytes that won."""
    store = await connected(tmp_path)
    payloads = [bytes([i]) * (1000 + i % 3) for i in range(30)]
    await asyncio.gather(*(store.put("k", data, metadata={"i": str(i)}) for i, data in enumerate(payloads)))
    data = await store.get("k")
    info = await store.head("k")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert payloads[int(info.metadata["i"])] == data


async def test_deletes_pruning_directories_do_not_break_concurrent_puts_beside_them(tmp_path: Path) -> None:
    """A delete emptying a directory while another key is written into it never fails that put."""
    store = await connected(tmp_path)
    for round_ in range(20):
        await store.put(f"d/{round_}/old", b"x")
        await asyncio.gather(store.delete(f"d/{round_}/old"), store.put(f"d/{round_}/new", b"y"))
        assert await store.get(f"d/{round_}/new") == b"y"


@pytest.mark.parametrize(("first", "second"), [("a", "a/b"), ("a/b", "a")])
async def test_a_key_that_is_also_a_directory_of_keys_is_refused_clearly(
    tmp_path: Path, first: str, second: str
) -> None:
    """A file system cannot hold both a and a/b: the second put names the conflict and changes nothing."""
    store = await connected(tmp_path)
    await store.put(first, b"1")
    with pytest.raises(InvalidArtifactKey, match="conflicts with"):
        await store.put(second, b"2")
    assert [i.key for i in await store.list()] == [first]


async def test_relative_urls_resolve_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """file://./dir is the directory dir under the current working directory."""
    monkeypatch.chdir(tmp_path)
    store = await connected(Path("./.mlplat/artifacts"))
    await store.put("k", b"v")
    assert (tmp_path / ".mlplat" / "artifacts" / "k").read_bytes() == b"v"


async def test_connect_fails_naming_the_path_when_a_file_is_in_the_way(tmp_path: Path) -> None:
    """A file where the directory should be makes connect raise BackendUnavailable with the path."""
    (tmp_path / "taken").write_text("not a directory")
    store = FileArtifactStore(f"file://{tmp_path / 'taken' / 'artifacts'}")
    with pytest.raises(BackendUnavailable, match=str(tmp_path / "taken")):
        await store.connect()


def test_a_url_without_a_directory_is_a_config_error() -> None:
    """file:// alone is refused at construction rather than silently using the current directory."""
    with pytest.raises(ConfigError, match="needs a directory"):
        FileArtifactStore("file://")
