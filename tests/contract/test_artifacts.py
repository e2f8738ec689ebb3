"""One contract for every artifact store: file:// and a real Azure Blob endpoint (Azurite) behave the same."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlplat.backends.artifacts import ArtifactStore, open_artifact_store
from mlplat.errors import NotFound


@pytest.fixture(params=["file", pytest.param("azure", marks=pytest.mark.integration)])
async def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    if request.param == "file":
        store = open_artifact_store(f"file://{tmp_path / 'artifacts'}")
    else:
        conn = request.getfixturevalue("azure_connection_string")
        store = open_artifact_store(f"azure://t{request.getfixturevalue('unique_name')}", connection_string=conn)
    await store.connect()
    yield store
    await store.aclose()


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 7])
async def test_put_get_round_trips_bytes_and_records_sha256(artifact_store: ArtifactStore, size: int) -> None:
    """Arbitrary bytes come back unchanged, with hashlib's sha256 recorded."""
    data = os.urandom(size)
    info = await artifact_store.put("models/m/blob.bin", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == size
    assert await artifact_store.get("models/m/blob.bin") == data
    head = await artifact_store.head("models/m/blob.bin")
    assert (head.size, head.sha256) == (size, info.sha256)


async def test_metadata_round_trips(artifact_store: ArtifactStore) -> None:
    """User metadata is stored beside the blob and read back by head and list."""
    await artifact_store.put("a/x", b"1", metadata={"flavour": "skops", "created_by": "trainer"})
    assert (await artifact_store.head("a/x")).metadata == {"flavour": "skops", "created_by": "trainer"}
    (listed,) = await artifact_store.list("a/")
    assert listed.metadata == {"flavour": "skops", "created_by": "trainer"}


async def test_overwrite_replaces_content_and_hash(artifact_store: ArtifactStore) -> None:
    """Putting the same key again replaces both the bytes and the recorded hash."""
    await artifact_store.put("k", b"old")
    info = await artifact_store.put("k", b"new")
    assert await artifact_store.get("k") == b"new"
    assert (await artifact_store.head("k")).sha256 == info.sha256 == hashlib.sha256(b"new").hexdigest()


async def test_list_by_prefix_is_sorted_and_nested(artifact_store: ArtifactStore) -> None:
    """list() returns every artifact under a prefix, sorted by key; an empty prefix lists all."""
    for key in ["m/2/b", "m/1/a", "m/10/c", "other/z"]:
        await artifact_store.put(key, key.encode())
    assert [i.key for i in await artifact_store.list("m/")] == ["m/1/a", "m/10/c", "m/2/b"]
    assert [i.key for i in await artifact_store.list("m/1")] == ["m/1/a", "m/10/c"]
    assert [i.key for i in await artifact_store.list()] == ["m/1/a", "m/10/c", "m/2/b", "other/z"]
    assert await artifact_store.list("nothing/") == []


async def test_deleted_and_missing_keys_are_not_found(artifact_store: ArtifactStore) -> None:
    """After delete, get/head/delete raise NotFound, as they do for a key never written."""
    await artifact_store.put("gone/x", b"v")
    await artifact_store.delete("gone/x")
    for op in (artifact_store.get, artifact_store.head, artifact_store.delete):
        with pytest.raises(NotFound, match="gone/x"):
            await op("gone/x")
    assert await artifact_store.list("gone/") == []


@pytest.mark.parametrize("key", ["", "../x", "/abs", "a//b", "a/../b", "a\\b", ".meta/x"])
async def test_invalid_keys_are_refused(artifact_store: ArtifactStore, key: str) -> None:
    """Keys that could escape the store or collide with its bookkeeping are refused, naming the key."""
    with pytest.raises(ValueError, match="invalid artifact key"):
        await artifact_store.put(key, b"v")
