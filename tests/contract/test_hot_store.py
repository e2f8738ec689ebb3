"""One contract for every hot store: memory:// and a real redis-server behave the same."""

from __future__ import annotations

import asyncio

import pytest

from mlplat.backends.hotstore import HotStore
from mlplat.errors import NotFound


async def test_set_get_round_trips_arbitrary_bytes(hot_store: HotStore) -> None:
    """Values are bytes in, the same bytes out, including NUL and non-UTF-8."""
    blob = bytes(range(256)) * 4
    await hot_store.set("k", blob)
    assert await hot_store.get("k") == blob
    assert await hot_store.get("missing") is None
    assert await hot_store.mget(["k", "missing"]) == [blob, None]


async def test_keys_expire_after_their_ttl(hot_store: HotStore) -> None:
    """A key with a TTL disappears from get, exists and scans once it expires."""
    await hot_store.set("short", b"v", ttl_s=0.2)
    remaining = await hot_store.ttl("short")
    assert remaining is not None and 0 < remaining <= 0.2
    await asyncio.sleep(0.35)
    assert await hot_store.get("short") is None
    assert not await hot_store.exists("short")
    assert await hot_store.scan_keys("sh") == []


async def test_set_without_ttl_clears_an_old_ttl(hot_store: HotStore) -> None:
    """Overwriting a key without a TTL makes it permanent, as Redis SET does."""
    await hot_store.set("k", b"1", ttl_s=0.2)
    await hot_store.set("k", b"2")
    assert await hot_store.ttl("k") is None
    await asyncio.sleep(0.3)
    assert await hot_store.get("k") == b"2"


async def test_ttl_of_a_missing_key_is_not_found(hot_store: HotStore) -> None:
    """Asking the TTL of a key that does not exist raises NotFound."""
    with pytest.raises(NotFound):
        await hot_store.ttl("nope")


async def test_expire_sets_a_ttl_on_existing_keys_only(hot_store: HotStore) -> None:
    """expire() returns whether the key existed, and the key then expires."""
    assert not await hot_store.expire("nope", 1)
    await hot_store.set("k", b"v")
    assert await hot_store.expire("k", 0.2)
    await asyncio.sleep(0.35)
    assert await hot_store.get("k") is None


async def test_incr_counts_from_zero_and_refuses_non_integers(hot_store: HotStore) -> None:
    """Counters start at 0, add the amount, and refuse a value that is not an integer."""
    assert await hot_store.incr("c") == 1
    assert await hot_store.incr("c", 5) == 6
    assert await hot_store.get("c") == b"6"
    await hot_store.set("text", b"abc")
    with pytest.raises(ValueError, match="not an integer"):
        await hot_store.incr("text")


async def test_delete_counts_only_existing_keys(hot_store: HotStore) -> None:
    """delete() returns how many of the given keys existed."""
    await hot_store.set("a", b"1")
    await hot_store.set("b", b"2")
    assert await hot_store.delete("a", "b", "c") == 2
    assert await hot_store.delete() == 0
    assert await hot_store.get("a") is None


async def test_hashes_store_fields_independently(hot_store: HotStore) -> None:
    """hset merges fields, hget/hgetall read them, hdel removes them and the last removal drops the key."""
    await hot_store.hset("h", {"a": b"1", "b": b"2"})
    await hot_store.hset("h", {"b": b"3", "c": b"\x00\xff"})
    assert await hot_store.hget("h", "b") == b"3"
    assert await hot_store.hget("h", "zz") is None
    assert await hot_store.hgetall("h") == {"a": b"1", "b": b"3", "c": b"\x00\xff"}
    assert await hot_store.hdel("h", "a", "zz") == 1
    assert await hot_store.hdel("h", "b", "c") == 2
    assert not await hot_store.exists("h")
    assert await hot_store.hgetall("h") == {}


async def test_hset_keeps_the_ttl_of_the_hash(hot_store: HotStore) -> None:
    """Adding fields to a hash does not reset its expiry (latest-feature rows rely on it)."""
    await hot_store.hset("h", {"a": b"1"})
    await hot_store.expire("h", 0.3)
    await hot_store.hset("h", {"b": b"2"})
    remaining = await hot_store.ttl("h")
    assert remaining is not None and remaining <= 0.3


async def test_scan_keys_matches_a_literal_prefix(hot_store: HotStore) -> None:
    """Prefixes are literal even when they contain glob characters like * and [."""
    for key in ["f:1", "f:2", "g:1", "x*[1]:a", "x*[1]:b", "xa[1]:c"]:
        await hot_store.set(key, b"v")
    assert await hot_store.scan_keys("f:") == ["f:1", "f:2"]
    assert await hot_store.scan_keys("x*[1]:") == ["x*[1]:a", "x*[1]:b"]
    assert await hot_store.scan_keys("nothing") == []


async def test_a_pipeline_applies_all_commands_on_execute(hot_store: HotStore) -> None:
    """Nothing is applied until execute(); then every buffered command is."""
    await hot_store.set("old", b"x")
    pipe = hot_store.pipeline()
    pipe.set("a", b"1", ttl_s=10).hset("h", {"f": b"v"}).expire("h", 10).incr("n").delete("old")
    assert await hot_store.get("a") is None
    await pipe.execute()
    assert await hot_store.get("a") == b"1"
    assert await hot_store.hget("h", "f") == b"v"
    assert await hot_store.get("n") == b"1"
    assert await hot_store.get("old") is None
    ttl = await hot_store.ttl("h")
    assert ttl is not None and ttl > 5


async def test_publish_reaches_every_subscriber(hot_store: HotStore) -> None:
    """Each active subscriber of a channel receives each message; publish counts them."""
    async with hot_store.subscribe("ch") as first, hot_store.subscribe("ch") as second:
        assert await hot_store.publish("ch", b"hello") == 2
        assert await hot_store.publish("other", b"nobody") == 0
        assert await asyncio.wait_for(anext(first), 5) == b"hello"
        assert await asyncio.wait_for(anext(second), 5) == b"hello"
    assert await hot_store.publish("ch", b"gone") == 0
