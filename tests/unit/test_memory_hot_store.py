"""What only the embedded hot store must get right: bounded subscriber queues, reclaiming expired keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mlplat.backends.hotstore import open_hot_store
from mlplat.backends.hotstore.memory import MemoryHotStore
from mlplat.errors import BackendUnavailable


async def first(messages: AsyncIterator[bytes]) -> bytes:
    return await anext(messages)


async def test_memory_url_opens_the_memory_store() -> None:
    """open_hot_store("memory://") builds a MemoryHotStore."""
    store = open_hot_store("memory://")
    assert isinstance(store, MemoryHotStore) and store.url == "memory://"
    await store.aclose()


async def test_a_slow_subscriber_never_blocks_publish_and_loses_its_oldest_messages() -> None:
    """Publishing to a full subscriber returns at once, drops its oldest messages and counts them."""
    store = MemoryHotStore(subscriber_queue=3)
    async with store.subscribe("ch") as slow, store.subscribe("ch") as fast:
        for i in range(10):
            assert await asyncio.wait_for(store.publish("ch", b"%d" % i), 1) == 2
            if i < 3:
                assert await anext(fast) == b"%d" % i
        assert store.dropped_messages == 7 + 4  # slow lost 0-6; fast, which stopped reading at 3, lost 3-6
        assert [await anext(slow) for _ in range(3)] == [b"7", b"8", b"9"]
    await store.aclose()


async def test_a_waiting_subscriber_wakes_when_a_message_is_published() -> None:
    """A reader blocked on an empty subscription receives the next publish without polling."""
    store = MemoryHotStore()
    async with store.subscribe("ch") as messages:
        reader = asyncio.create_task(first(messages))
        await asyncio.sleep(0)
        assert not reader.done()
        await store.publish("ch", b"m")
        assert await asyncio.wait_for(reader, 1) == b"m"
    await store.aclose()


async def test_closing_the_store_wakes_a_waiting_subscriber_with_backend_unavailable() -> None:
    """aclose() does not leave readers hanging: a blocked subscriber gets BackendUnavailable."""
    store = MemoryHotStore()
    async with store.subscribe("ch") as messages:
        reader = asyncio.create_task(first(messages))
        await asyncio.sleep(0)
        await store.aclose()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(reader, 1)


async def test_expired_keys_nobody_reads_are_reclaimed() -> None:
    """Keys past their TTL are freed by the next call of any kind, not kept until someone reads them."""
    store = MemoryHotStore()
    for i in range(100):
        await store.set(f"short:{i}", b"x" * 100, ttl_s=0.05)
    await store.hset("h", {"f": b"v"})
    await store.expire("h", 0.05)
    await store.set("kept", b"v")
    await asyncio.sleep(0.1)
    await store.ping()
    assert list(store._data) == ["kept"] and not store._expires and not store._deadlines
    await store.aclose()


async def test_renewing_ttls_does_not_grow_the_expiry_index_without_bound() -> None:
    """A key whose TTL is renewed on every write leaves no pile of stale deadlines behind."""
    store = MemoryHotStore()
    for i in range(10_000):
        await store.set("hot", b"%d" % i, ttl_s=3600)
    assert len(store._deadlines) <= 2 * len(store._expires) + 65
    assert await store.get("hot") == b"9999"
    await store.aclose()


def test_a_subscriber_queue_must_hold_at_least_one_message() -> None:
    """A zero-length queue would drop every message, so it is refused up front."""
    with pytest.raises(ValueError, match="subscriber_queue"):
        MemoryHotStore(subscriber_queue=0)
