"""File artifact store crash safety: leftovers of an interrupted write are never seen as artifacts."""

from __future__ import annotations

from pathlib import Path

from mlplat.backends.artifacts.file import FileArtifactStore


async def test_leftover_temp_files_are_invisible(tmp_path: Path) -> None:
    """A temp file from a crashed write is neither listed nor readable as an artifact."""
    store = FileArtifactStore(f"file://{tmp_path}")
    await store.connect()
    await store.put("m/real", b"ok")
    (tmp_path / "m" / ".tmp-abc.part").write_bytes(b"half")
    assert [i.key for i in await store.list()] == ["m/real"]


async def test_a_blob_without_sidecar_is_described_from_its_bytes(tmp_path: Path) -> None:
    """A crash between blob and sidecar leaves a readable artifact whose hash is computed from its bytes."""
    store = FileArtifactStore(f"file://{tmp_path}")
    await store.connect()
    info = await store.put("m/x", b"data")
    (tmp_path / ".meta" / "m" / "x.json").unlink()
    assert (await store.head("m/x")).sha256 == info.sha256
