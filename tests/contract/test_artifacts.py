"""One contract for every artifact store: file:// and a real Azure Blob endpoint (Azurite) behave the same."""

from __future__ import annotations

import hashlib
import os
import re

import pytest

from mlplat.backends.artifacts import ArtifactInfo, ArtifactStore, InvalidArtifactKey, InvalidArtifactMetadata
from mlplat.errors import NotFound


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_store_satisfies_the_protocol_and_answers_ping(artifact_store: ArtifactStore) -> None:
    """A connected store is an ArtifactStore and its ping succeeds."""
    assert isinstance(artifact_store, ArtifactStore)
    await artifact_store.ping()


@pytest.mark.parametrize(
    "data",
    [b"", bytes(range(256)), os.urandom(5 * 1024 * 1024 + 7)],
    ids=["empty", "every-byte-value", "5MB"],
)
async def test_put_then_get_returns_the_same_bytes(artifact_store: ArtifactStore, data: bytes) -> None:
    """Arbitrary bytes, from empty to several megabytes, come back unchanged."""
    await artifact_store.put("models/m/blob.bin", data)
    assert await artifact_store.get("models/m/blob.bin") == data


@pytest.mark.parametrize(
    "data", [b"", b"weights", os.urandom(5 * 1024 * 1024 + 7)], ids=["empty", "small", "5MB"]
)
async def test_recorded_sha256_and_size_equal_hashlib(artifact_store: ArtifactStore, data: bytes) -> None:
    """put returns, and head reads back, the size and hashlib's sha256 of the stored bytes."""
    info = await artifact_store.put("models/m/blob.bin", data)
    assert info == ArtifactInfo("models/m/blob.bin", len(data), sha256(data), {})
    assert await artifact_store.head("models/m/blob.bin") == info


async def test_keys_with_spaces_and_non_ascii_round_trip(artifact_store: ArtifactStore) -> None:
    """Any valid key, including spaces and non-ASCII characters, addresses its artifact on every backend."""
    key = "models/modèle v1/weights (final).bin"
    await artifact_store.put(key, b"w")
    assert await artifact_store.get(key) == b"w"
    assert [i.key for i in await artifact_store.list("models/")] == [key]


async def test_metadata_round_trips_through_put_head_and_list(artifact_store: ArtifactStore) -> None:
    """User metadata, including values an HTTP header cannot carry verbatim, comes back exactly."""
    metadata = {
        "flavour": "skops", "created_by": "Zoë", "Notes": "  padded\tand 100% \n multi-line  ", "empty": "",
    }
    info = await artifact_store.put("a/x", b"1", metadata=metadata)
    assert info.metadata == metadata
    assert (await artifact_store.head("a/x")).metadata == metadata
    (listed,) = await artifact_store.list("a/")
    assert listed.metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"model-name": "x"}, "identifiers"),
        ({"1st": "x"}, "identifiers"),
        ({"flavour": "a", "Flavour": "b"}, "differ only in case"),
        ({"mlplat_sha256": "0" * 64}, "reserved"),
        ({"big": "x" * 9000}, "at most"),
    ],
    ids=["dash", "leading-digit", "case-duplicate", "reserved", "too-large"],
)
async def test_metadata_azure_cannot_store_is_refused_everywhere(
    artifact_store: ArtifactStore, metadata: dict[str, str], message: str
) -> None:
    """Metadata breaking Azure's rules is refused by every backend with the package's one check (same type, same
    reason), and nothing is written."""
    with pytest.raises(InvalidArtifactMetadata, match=message):
        await artifact_store.put("m/x", b"v", metadata=metadata)
    with pytest.raises(NotFound):
        await artifact_store.head("m/x")


async def test_overwrite_replaces_content_hash_and_metadata(artifact_store: ArtifactStore) -> None:
    """Putting the same key again replaces the bytes, the recorded hash and the metadata."""
    await artifact_store.put("k", b"old", metadata={"v": "1"})
    info = await artifact_store.put("k", b"newer", metadata={"w": "2"})
    assert await artifact_store.get("k") == b"newer"
    assert await artifact_store.head("k") == info == ArtifactInfo("k", 5, sha256(b"newer"), {"w": "2"})


async def test_list_by_prefix_is_sorted_and_includes_nested_keys(artifact_store: ArtifactStore) -> None:
    """list() returns every artifact whose key starts with the prefix, sorted; an empty prefix lists all."""
    for key in ["m/2/b", "m/1/a", "m/10/c", "m/1/deep/er/d", "other/z", "top"]:
        await artifact_store.put(key, key.encode())
    assert [i.key for i in await artifact_store.list("m/")] == ["m/1/a", "m/1/deep/er/d", "m/10/c", "m/2/b"]
    assert [i.key for i in await artifact_store.list("m/1")] == ["m/1/a", "m/1/deep/er/d", "m/10/c"]
    assert [i.key for i in await artifact_store.list("m/1/")] == ["m/1/a", "m/1/deep/er/d"]
    assert [i.key for i in await artifact_store.list("to")] == ["top"]
    assert [i.key for i in await artifact_store.list()] == [
        "m/1/a", "m/1/deep/er/d", "m/10/c", "m/2/b", "other/z", "top",
    ]
    assert await artifact_store.list("nothing/") == []


async def test_list_reports_size_and_sha256_of_each_artifact(artifact_store: ArtifactStore) -> None:
    """Each listed entry carries the same size and sha256 that head reports."""
    await artifact_store.put("l/a", b"aaa")
    await artifact_store.put("l/b", b"")
    listed = await artifact_store.list("l/")
    assert listed == [await artifact_store.head("l/a"), await artifact_store.head("l/b")]
    assert [(i.size, i.sha256) for i in listed] == [(3, sha256(b"aaa")), (0, sha256(b""))]


async def test_delete_makes_get_head_and_delete_raise_not_found(artifact_store: ArtifactStore) -> None:
    """After delete the key is gone: get, head and a second delete raise NotFound naming it, list omits it."""
    await artifact_store.put("gone/x", b"v")
    await artifact_store.put("gone/y", b"kept")
    await artifact_store.delete("gone/x")
    for op in (artifact_store.get, artifact_store.head, artifact_store.delete):
        with pytest.raises(NotFound, match="gone/x"):
            await op("gone/x")
    assert [i.key for i in await artifact_store.list("gone/")] == ["gone/y"]
    assert await artifact_store.get("gone/y") == b"kept"


async def test_a_deleted_key_can_be_written_again(artifact_store: ArtifactStore) -> None:
    """Deleting the only artifact under a prefix does not stop a later put under the same prefix."""
    await artifact_store.put("again/deep/x", b"1")
    await artifact_store.delete("again/deep/x")
    await artifact_store.put("again/deep/x", b"2")
    assert await artifact_store.get("again/deep/x") == b"2"


@pytest.mark.parametrize("key", ["never/written", "models"])
async def test_missing_key_raises_not_found(artifact_store: ArtifactStore, key: str) -> None:
    """A key never written, or only a prefix of other keys, is NotFound for get, head and delete."""
    await artifact_store.put("models/x", b"v")
    for op in (artifact_store.get, artifact_store.head, artifact_store.delete):
        with pytest.raises(NotFound, match=key):
            await op(key)


@pytest.mark.parametrize(
    "key", ["", "../x", "/abs", "a//b", "a/", "a/../b", "./a", "a\\b", "a\x00b", ".meta/x", "m/.tmp-x.part"]
)
async def test_invalid_keys_are_refused_with_the_key_named(artifact_store: ArtifactStore, key: str) -> None:
    """Keys that could escape the store or reach its bookkeeping are refused by every call, naming the key, by
    the package's one check on every backend (same type, same message)."""
    expected = f"invalid artifact key {key!r}"
    with pytest.raises(InvalidArtifactKey, match="^" + re.escape(expected)):
        await artifact_store.put(key, b"v")
    for op in (artifact_store.get, artifact_store.head, artifact_store.delete):
        with pytest.raises(InvalidArtifactKey, match="^" + re.escape(expected)):
            await op(key)
    assert await artifact_store.list() == []
