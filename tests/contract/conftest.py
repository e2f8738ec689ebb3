"""Backend fixtures parametrized over the embedded and the real implementation (feast's universal suite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlplat.backends.artifacts import ArtifactStore, open_artifact_store
from mlplat.backends.hotstore import HotStore, open_hot_store


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def hot_store(request: pytest.FixtureRequest) -> AsyncIterator[HotStore]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    store = open_hot_store(url)
    await store.connect()
    yield store
    await store.aclose()


@pytest.fixture(params=["file", pytest.param("azure", marks=pytest.mark.integration)])
async def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    if request.param == "file":
        store = open_artifact_store(f"file://{tmp_path / 'artifacts'}")
    else:
        conn: str = request.getfixturevalue("azure_connection_string")
        container = f"t{request.getfixturevalue('unique_name')}"
        store = open_artifact_store(f"azure://{container}", connection_string=conn)
    await store.connect()
    yield store
    await store.aclose()
