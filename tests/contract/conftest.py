"""Backend fixtures parametrized over the embedded and the real implementation (feast's universal suite)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mlplat.backends.hotstore import HotStore, open_hot_store


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def hot_store(request: pytest.FixtureRequest) -> AsyncIterator[HotStore]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    store = open_hot_store(url)
    await store.connect()
    yield store
    await store.aclose()
