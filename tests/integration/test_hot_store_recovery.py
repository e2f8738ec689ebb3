"""A real Redis that goes away and comes back: clear errors without secrets, then recovery by itself."""

from __future__ import annotations

import time

import pytest

from mlplat.backends.hotstore import open_hot_store
from mlplat.errors import BackendUnavailable
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.integration


async def test_unreachable_redis_names_the_url_without_the_password() -> None:
    """Connecting to a closed port fails fast with the URL, password masked."""
    port = free_port()
    store = open_hot_store(f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        await store.connect()
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port}" in str(err.value) and "s3cret-pw" not in str(err.value)
    await store.aclose()


async def test_the_same_store_recovers_when_redis_returns(redis_server: ServerProcess, redis_url: str) -> None:
    """While Redis is down calls raise BackendUnavailable; after it restarts the same object works again."""
    store = open_hot_store(redis_url)
    await store.connect()
    await store.set("k", b"v")
    redis_server.stop()
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await store.get("k")
    finally:
        redis_server.start()
    await store.set("k", b"after")
    assert await store.get("k") == b"after"
    await store.aclose()
