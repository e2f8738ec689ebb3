"""One contract for every hot store: memory:// and a real redis-server behave the same.

The `hot_store` fixture (tests/contract/conftest.py) runs each test on both; the redis half is marked
integration. Anything memory:// does that Redis would not is a bug in memory://.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import orjson
import pyarrow as pa
import pytest

from mlplat.backends.hotstore import HotPipeline, HotStore
from mlplat.backends.hotstore.memory import VERSION_LIMIT
from mlplat.errors import BackendUnavailable, NotFound
from mlplat.features.definitions import FeatureSet, catalog_from_dict
from mlplat.features.online import online_key, write_latest
from mlplat.ingest.validation import schema_for

SHORT_TTL_S = 0.2
PAST_SHORT_TTL_S = 0.35
ALL_BYTES = bytes(range(256)) * 4


async def next_message(messages: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(anext(messages), 5)


async def test_store_implements_the_protocol_and_answers(hot_store: HotStore) -> None:
    """Both backends satisfy HotStore, answer connect/ping, and show a URL of their scheme."""
    assert isinstance(hot_store, HotStore)
    assert isinstance(hot_store.pipeline(), HotPipeline)
    await hot_store.connect()
    await hot_store.ping()
    assert hot_store.url.split("://")[0] in ("memory", "redis")


async def test_set_then_get_returns_the_same_arbitrary_bytes(hot_store: HotStore) -> None:
    """Values are opaque bytes: NUL, non-UTF-8 and the empty value come back unchanged."""
    await hot_store.set("blob", ALL_BYTES)
    await hot_store.set("empty", b"")
    assert await hot_store.get("blob") == ALL_BYTES
    assert await hot_store.get("empty") == b""
    assert await hot_store.exists("empty")


async def test_missing_keys_read_as_none_and_mget_keeps_order(hot_store: HotStore) -> None:
    """get gives None for a missing key and mget answers position by position."""
    await hot_store.set("a", b"1")
    await hot_store.set("c", b"3")
    assert await hot_store.get("b") is None
    assert await hot_store.mget(["c", "b", "a"]) == [b"3", None, b"1"]
    assert await hot_store.mget([]) == []


async def test_a_key_disappears_once_its_ttl_passes(hot_store: HotStore) -> None:
    """After its TTL a key is gone from get, mget, exists, ttl and scan_keys alike."""
    await hot_store.set("short:1", b"v", ttl_s=SHORT_TTL_S)
    await hot_store.set("long:1", b"v", ttl_s=60)
    assert await hot_store.exists("short:1")
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.get("short:1") is None
    assert await hot_store.mget(["short:1", "long:1"]) == [None, b"v"]
    assert not await hot_store.exists("short:1")
    assert await hot_store.scan_keys("short:") == []
    with pytest.raises(NotFound):
        await hot_store.ttl("short:1")
    assert await hot_store.scan_keys("long:") == ["long:1"]


async def test_ttl_reports_float_seconds_left_or_none_without_a_ttl(hot_store: HotStore) -> None:
    """ttl() gives the remaining seconds (sub-second precision) and None for a permanent key."""
    await hot_store.set("timed", b"v", ttl_s=1.5)
    await hot_store.set("forever", b"v")
    remaining = await hot_store.ttl("timed")
    assert isinstance(remaining, float) and 1.0 < remaining <= 1.5
    assert await hot_store.ttl("forever") is None


async def test_ttl_of_a_missing_key_raises_not_found(hot_store: HotStore) -> None:
    """Asking the TTL of a key that does not exist raises NotFound rather than returning None."""
    with pytest.raises(NotFound):
        await hot_store.ttl("nope")


async def test_set_without_ttl_clears_an_old_ttl(hot_store: HotStore) -> None:
    """Overwriting a key without a TTL makes it permanent, as Redis SET does."""
    await hot_store.set("k", b"1", ttl_s=SHORT_TTL_S)
    await hot_store.set("k", b"2")
    assert await hot_store.ttl("k") is None
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.get("k") == b"2"


async def test_set_refuses_a_ttl_that_is_not_positive(hot_store: HotStore) -> None:
    """A zero or negative TTL is a caller bug (Redis rejects it) and writes nothing."""
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="ttl_s"):
            await hot_store.set("k", b"v", ttl_s=bad)
    assert not await hot_store.exists("k")


async def test_expire_returns_whether_the_key_existed_and_it_then_expires(hot_store: HotStore) -> None:
    """expire() on a missing key is False; on an existing one it is True and the key later vanishes."""
    assert not await hot_store.expire("nope", 1)
    await hot_store.set("k", b"v")
    assert await hot_store.expire("k", SHORT_TTL_S)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.get("k") is None


async def test_expire_with_zero_or_less_deletes_the_key_at_once(hot_store: HotStore) -> None:
    """A non-positive expiry removes the key immediately, as PEXPIRE does."""
    await hot_store.set("k", b"v")
    assert await hot_store.expire("k", 0)
    assert not await hot_store.exists("k")


async def test_incr_starts_a_missing_key_at_zero_and_adds_the_amount(hot_store: HotStore) -> None:
    """Counters start at 0, add positive or negative amounts, and are stored as decimal bytes."""
    assert await hot_store.incr("c") == 1
    assert await hot_store.incr("c", 5) == 6
    assert await hot_store.incr("c", -10) == -4
    assert await hot_store.get("c") == b"-4"
    await hot_store.set("from-bytes", b"41")
    assert await hot_store.incr("from-bytes") == 42


async def test_incr_keeps_the_ttl_of_the_counter(hot_store: HotStore) -> None:
    """Incrementing does not make an expiring counter permanent."""
    await hot_store.set("c", b"1", ttl_s=SHORT_TTL_S)
    assert await hot_store.incr("c") == 2
    assert await hot_store.ttl("c") is not None
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.get("c") is None


async def test_incr_refuses_values_redis_does_not_read_as_integers(hot_store: HotStore) -> None:
    """Text, decimals, signs, padding, empty and out-of-range values raise ValueError and stay unchanged."""
    for bad in (b"abc", b"1.5", b" 7", b"+7", b"07", b"", b"9223372036854775808"):
        await hot_store.set("v", bad)
        with pytest.raises(ValueError, match="not an integer"):
            await hot_store.incr("v")
        assert await hot_store.get("v") == bad


async def test_incr_past_the_64_bit_range_is_refused(hot_store: HotStore) -> None:
    """Counters are signed 64-bit, as in Redis: overflowing raises ValueError and keeps the value."""
    await hot_store.set("c", b"9223372036854775807")
    with pytest.raises(ValueError, match="overflow"):
        await hot_store.incr("c")
    assert await hot_store.get("c") == b"9223372036854775807"


async def test_delete_counts_only_keys_that_existed(hot_store: HotStore) -> None:
    """delete() removes the keys and returns how many of them existed, expired ones excluded."""
    await hot_store.set("a", b"1")
    await hot_store.hset("h", {"f": b"1"})
    await hot_store.set("gone", b"1", ttl_s=SHORT_TTL_S)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.delete("a", "h", "gone", "never") == 2
    assert await hot_store.delete() == 0
    assert await hot_store.mget(["a", "h"]) == [None, None]


async def test_hashes_merge_fields_and_read_them_back(hot_store: HotStore) -> None:
    """hset merges into existing fields; hget and hgetall return the stored bytes."""
    await hot_store.hset("h", {"a": b"1", "b": b"2"})
    await hot_store.hset("h", {"b": b"3", "bin": ALL_BYTES})
    assert await hot_store.hget("h", "b") == b"3"
    assert await hot_store.hget("h", "missing") is None
    assert await hot_store.hget("no-hash", "a") is None
    assert await hot_store.hgetall("h") == {"a": b"1", "b": b"3", "bin": ALL_BYTES}
    assert await hot_store.hgetall("no-hash") == {}


async def test_deleting_the_last_hash_field_removes_the_key(hot_store: HotStore) -> None:
    """hdel counts the fields it removed, and a hash without fields no longer exists."""
    await hot_store.hset("h", {"a": b"1", "b": b"2"})
    assert await hot_store.hdel("h", "a", "zz") == 1
    assert await hot_store.exists("h")
    assert await hot_store.hdel("h", "b") == 1
    assert not await hot_store.exists("h")
    assert await hot_store.hdel("h", "b") == 0
    assert await hot_store.hdel("h") == 0


async def test_hset_keeps_the_ttl_of_an_existing_hash(hot_store: HotStore) -> None:
    """Adding fields to an expiring hash keeps its expiry as it was (latest-feature rows rely on it)."""
    await hot_store.hset("h", {"a": b"1"})
    assert await hot_store.expire("h", SHORT_TTL_S)
    await hot_store.hset("h", {"b": b"2"})
    remaining = await hot_store.ttl("h")
    assert remaining is not None and remaining <= SHORT_TTL_S
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.hgetall("h") == {}


async def test_hset_with_no_fields_creates_nothing(hot_store: HotStore) -> None:
    """An empty mapping is a no-op: Redis has no empty hashes."""
    await hot_store.hset("h", {})
    assert not await hot_store.exists("h")


async def test_commands_for_the_wrong_value_type_raise_type_error(hot_store: HotStore) -> None:
    """String commands on a hash and hash commands on a string raise TypeError; SET replaces either."""
    await hot_store.hset("h", {"f": b"1"})
    await hot_store.set("s", b"1")
    with pytest.raises(TypeError, match="WRONGTYPE"):
        await hot_store.get("h")
    with pytest.raises(TypeError, match="WRONGTYPE"):
        await hot_store.incr("h")
    with pytest.raises(TypeError, match="WRONGTYPE"):
        await hot_store.hget("s", "f")
    with pytest.raises(TypeError, match="WRONGTYPE"):
        await hot_store.hset("s", {"f": b"2"})
    assert await hot_store.mget(["h", "s"]) == [None, b"1"]  # MGET reads non-strings as missing
    await hot_store.set("h", b"now a string")
    assert await hot_store.get("h") == b"now a string"


async def test_scan_keys_returns_every_key_with_the_prefix(hot_store: HotStore) -> None:
    """scan_keys finds all matching keys across many SCAN batches, each once, and nothing else."""
    pipe = hot_store.pipeline()
    for i in range(2500):
        pipe.set(f"feat:{i:05d}", b"v")
    pipe.set("feature-other", b"v").set("ключ:😀", b"v").hset("feat:hash", {"f": b"v"})
    await pipe.execute()
    found = await hot_store.scan_keys("feat:")
    assert found == sorted([f"feat:{i:05d}" for i in range(2500)] + ["feat:hash"])
    assert await hot_store.scan_keys("ключ:") == ["ключ:😀"]
    assert await hot_store.scan_keys("nothing") == []


async def test_scan_keys_treats_glob_characters_in_the_prefix_literally(hot_store: HotStore) -> None:
    """Prefixes containing *, ?, [, ] or a backslash match only themselves, never as patterns."""
    keys = ["x*[1]:a", "x*[1]:b", "xa[1]:c", "x*1:d", "q?:e", "qq:f", "b\\s:g", "bs:h", "b\\\\s:i"]
    for key in keys:
        await hot_store.set(key, b"v")
    assert await hot_store.scan_keys("x*[1]:") == ["x*[1]:a", "x*[1]:b"]
    assert await hot_store.scan_keys("x*") == ["x*1:d", "x*[1]:a", "x*[1]:b"]
    assert await hot_store.scan_keys("q?") == ["q?:e"]
    assert await hot_store.scan_keys("b\\s") == ["b\\s:g"]
    assert await hot_store.scan_keys("") == sorted(keys)


async def test_a_pipeline_that_is_never_executed_changes_nothing(hot_store: HotStore) -> None:
    """Buffered commands have no effect until execute(), and none if it is never called."""
    await hot_store.set("old", b"x")
    pipe = hot_store.pipeline()
    pipe.set("a", b"1").hset("h", {"f": b"v"}).incr("n").delete("old").expire("old", 0)
    assert await hot_store.mget(["a", "n", "old"]) == [None, None, b"x"]
    assert not await hot_store.exists("h")


async def test_a_pipeline_applies_every_command_on_execute(hot_store: HotStore) -> None:
    """execute() applies all buffered commands, in order, including TTLs."""
    await hot_store.set("old", b"x")
    pipe = hot_store.pipeline()
    result = pipe.set("a", b"1", ttl_s=10).hset("h", {"f": ALL_BYTES}).expire("h", 10).incr("n").incr("n")
    assert result is pipe
    pipe.delete("old").set("p", b"1", ttl_s=10).set("p", b"2")
    await pipe.execute()
    assert await hot_store.get("a") == b"1"
    assert await hot_store.hget("h", "f") == ALL_BYTES
    assert await hot_store.get("n") == b"2"
    assert await hot_store.get("old") is None
    assert await hot_store.get("p") == b"2" and await hot_store.ttl("p") is None
    ttl = await hot_store.ttl("h")
    assert ttl is not None and 5 < ttl <= 10


async def test_execute_empties_the_pipeline(hot_store: HotStore) -> None:
    """A second execute() does not replay the commands already sent."""
    pipe = hot_store.pipeline().incr("n")
    await pipe.execute()
    await pipe.execute()
    assert await hot_store.get("n") == b"1"
    await hot_store.pipeline().execute()  # an empty pipeline is fine too


async def test_a_failing_pipeline_command_does_not_undo_the_others(hot_store: HotStore) -> None:
    """As with MULTI/EXEC, a command failing at run time raises from execute() after the rest were applied."""
    await hot_store.set("text", b"abc")
    pipe = hot_store.pipeline().set("before", b"1").incr("text").set("after", b"2")
    with pytest.raises(ValueError, match="not an integer"):
        await pipe.execute()
    assert await hot_store.mget(["before", "text", "after"]) == [b"1", b"abc", b"2"]


async def test_a_pipeline_refuses_a_bad_ttl_before_anything_is_sent(hot_store: HotStore) -> None:
    """An invalid TTL fails when buffered, so the pipeline never half-applies because of it."""
    pipe = hot_store.pipeline().set("a", b"1")
    with pytest.raises(ValueError, match="ttl_s"):
        pipe.set("b", b"2", ttl_s=0)
    await pipe.execute()
    assert await hot_store.mget(["a", "b"]) == [b"1", None]


async def test_publish_reaches_every_subscriber_and_counts_them(hot_store: HotStore) -> None:
    """Each active subscriber of a channel gets each message; publish returns how many were reached."""
    async with hot_store.subscribe("ch") as first, hot_store.subscribe("ch") as second:
        assert await hot_store.publish("ch", b"hello") == 2
        assert await hot_store.publish("other", b"nobody") == 0
        assert await next_message(first) == b"hello"
        assert await next_message(second) == b"hello"
    assert await hot_store.publish("ch", b"gone") == 0


async def test_subscribers_receive_messages_in_order_with_bytes_intact(hot_store: HotStore) -> None:
    """Messages arrive in publish order and carry arbitrary bytes unchanged."""
    payloads = [b"", ALL_BYTES, b"\x00\r\n", b"last"]
    async with hot_store.subscribe("bin") as messages:
        for payload in payloads:
            assert await hot_store.publish("bin", payload) == 1
        assert [await next_message(messages) for _ in payloads] == payloads


async def test_a_subscriber_only_sees_its_own_channel(hot_store: HotStore) -> None:
    """Messages on other channels, even ones sharing a prefix, are not delivered."""
    async with hot_store.subscribe("news") as messages:
        assert await hot_store.publish("news:extra", b"no") == 0
        assert await hot_store.publish("new", b"no") == 0
        assert await hot_store.publish("news", b"yes") == 1
        assert await next_message(messages) == b"yes"


async def test_leaving_a_subscription_ends_its_messages(hot_store: HotStore) -> None:
    """After the context exits the subscriber is no longer counted and its iterator stops."""
    async with hot_store.subscribe("ch") as messages:
        pass
    assert await hot_store.publish("ch", b"late") == 0
    with pytest.raises(StopAsyncIteration):
        await next_message(messages)


async def test_a_closed_store_raises_backend_unavailable(hot_store: HotStore) -> None:
    """After aclose() every operation fails with BackendUnavailable, and aclose() may be repeated."""
    pipe = hot_store.pipeline().set("a", b"1")
    await hot_store.aclose()
    operations: list[Callable[[], Awaitable[object]]] = [
        hot_store.ping, lambda: hot_store.get("a"), lambda: hot_store.set("a", b"1"), pipe.execute,
        lambda: hot_store.publish("ch", b"m"), lambda: hot_store.scan_keys(""),
    ]
    for operation in operations:
        with pytest.raises(BackendUnavailable):
            await operation()
    with pytest.raises(BackendUnavailable):
        async with hot_store.subscribe("ch"):
            pass
    await hot_store.aclose()


def doc(t: int, value: str = "") -> bytes:
    """A versioned value as online features store it."""
    return orjson.dumps({"t": t, "f": {"v": value}})


async def test_set_unless_older_keeps_the_higher_version(hot_store: HotStore) -> None:
    """A newer or equal version replaces the stored one, an older one is dropped; the count says how many."""
    assert await hot_store.set_unless_older([("a", 10, doc(10)), ("b", 10, doc(10)), ("c", 10, doc(10))]) == 3
    assert await hot_store.set_unless_older([("a", 11, doc(11)), ("b", 9, doc(9)), ("c", 10, doc(10, "x"))]) == 2
    assert await hot_store.mget(["a", "b", "c"]) == [doc(11), doc(10), doc(10, "x")]
    assert await hot_store.set_unless_older([]) == 0


async def test_set_unless_older_reads_negative_and_large_versions(hot_store: HotStore) -> None:
    """Versions before 1970 and up to the limit compare exactly (Redis's Lua numbers are doubles)."""
    await hot_store.set_unless_older([("neg", -5, doc(-5)), ("big", VERSION_LIMIT - 1, doc(VERSION_LIMIT - 1))])
    assert await hot_store.set_unless_older([("neg", -6, doc(-6)), ("big", VERSION_LIMIT - 2, b"no")]) == 0
    assert await hot_store.set_unless_older([("neg", -4, doc(-4)), ("big", VERSION_LIMIT, doc(VERSION_LIMIT))]) == 2
    assert await hot_store.mget(["neg", "big"]) == [doc(-4), doc(VERSION_LIMIT)]


async def test_set_unless_older_replaces_a_value_without_a_version(hot_store: HotStore) -> None:
    """A value that does not open with {"t":<integer> counts as older than any version."""
    odd = [b"plain", b'{"f":{},"t":99}', b'{"t":"99"}', b'{"t":99.5}', b" {\"t\":99}", b""]
    for i, value in enumerate(odd):
        await hot_store.set(f"k{i}", value)
    assert await hot_store.set_unless_older([(f"k{i}", 1, doc(1)) for i in range(len(odd))]) == len(odd)
    assert await hot_store.mget([f"k{i}" for i in range(len(odd))]) == [doc(1)] * len(odd)


async def test_set_unless_older_takes_the_highest_of_repeated_keys(hot_store: HotStore) -> None:
    """The same key twice in one call ends with the higher version, whichever came first."""
    await hot_store.set_unless_older([("k", 7, doc(7)), ("k", 3, doc(3)), ("j", 3, doc(3)), ("j", 7, doc(7))])
    assert await hot_store.mget(["k", "j"]) == [doc(7), doc(7)]


async def test_set_unless_older_sets_the_ttl_or_clears_it(hot_store: HotStore) -> None:
    """With ttl_s each written key gets it; without, a written key loses an old TTL, as SET does."""
    await hot_store.set("kept", doc(1), ttl_s=60)
    await hot_store.set_unless_older([("timed", 1, doc(1)), ("kept", 2, doc(2))], ttl_s=30)
    for key in ("timed", "kept"):
        ttl = await hot_store.ttl(key)
        assert ttl is not None and 25 < ttl <= 30
    await hot_store.set_unless_older([("kept", 3, doc(3))])
    assert await hot_store.ttl("kept") is None
    await hot_store.set_unless_older([("short", 1, doc(1))], ttl_s=SHORT_TTL_S)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await hot_store.set_unless_older([("short", 0, doc(0))]) == 1  # expired: nothing to be older than


@pytest.mark.parametrize("version", [True, 1.0, "1", VERSION_LIMIT + 1, -VERSION_LIMIT - 1])
async def test_set_unless_older_refuses_a_bad_version_before_writing(hot_store: HotStore, version: Any) -> None:
    """A version that is not an integer both backends compare exactly is a ValueError naming the key."""
    with pytest.raises(ValueError, match=r"'bad'.*version"):
        await hot_store.set_unless_older([("good", 1, doc(1)), ("bad", version, doc(1))])
    with pytest.raises(ValueError, match="ttl_s"):
        await hot_store.set_unless_older([("good", 1, doc(1))], ttl_s=0)
    assert not await hot_store.exists("good")


async def test_set_unless_older_on_a_hash_raises_type_error(hot_store: HotStore) -> None:
    """A key holding a hash is WRONGTYPE, as GET would be, and the hash is left alone."""
    await hot_store.hset("h", {"f": b"1"})
    with pytest.raises(TypeError, match="WRONGTYPE"):
        await hot_store.set_unless_older([("h", 1, doc(1))])
    assert await hot_store.hgetall("h") == {"f": b"1"}


async def test_set_unless_older_handles_batches_of_many_keys(hot_store: HotStore) -> None:
    """Thousands of keys in one call (Redis splits them into several script calls) each compare on their own."""
    await hot_store.set_unless_older([(f"e{i}", 100, doc(100)) for i in range(0, 2500, 2)])
    versions = [50 + i % 100 for i in range(2500)]
    written = await hot_store.set_unless_older([(f"e{i}", v, doc(v)) for i, v in enumerate(versions)])
    stored = await hot_store.mget([f"e{i}" for i in range(2500)])
    assert stored == [doc(max(v, 100)) if i % 2 == 0 else doc(v) for i, v in enumerate(versions)]
    assert written == sum(1 for i, v in enumerate(versions) if i % 2 == 1 or v >= 100)


# --- two writers of the latest features racing on the same entities (issue 17, item 4) ----------------------

RACE = catalog_from_dict({
    "entities": {"user": {"key": "user_id"}},
    "feature_sets": {"race": {"entity": "user", "online_ttl_s": 600, "features": [{"name": "n", "type": "int"}]}},
}).feature_sets["race"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def events(fs: FeatureSet, entity_times: list[tuple[str, int]]) -> pa.Table:
    """Rows of the race feature set: n is the event's second, so the stored value shows which event won."""
    return pa.table({
        "event_id": [f"{e}-{t}" for e, t in entity_times], "entity_id": [e for e, _ in entity_times],
        "event_time": [T0 + dt.timedelta(seconds=t) for _, t in entity_times],
        "ingest_time": [T0] * len(entity_times), "n": [t for _, t in entity_times],
    }, schema=schema_for(fs))


async def stored_seconds(store: HotStore, entities: list[str]) -> dict[str, int]:
    docs = await store.mget([online_key(RACE, e) for e in entities])
    return {e: orjson.loads(d)["f"]["n"] for e, d in zip(entities, docs, strict=True) if d is not None}


class WriterCutIn:
    """The real store, except that once the writer using it has made its first call, another writer runs to
    completion before that call returns: the moment a read-then-write would be overtaken."""

    def __init__(self, store: HotStore, cut_in: Callable[[], Awaitable[object]]) -> None:
        self._store = store
        self._cut_in: Callable[[], Awaitable[object]] | None = cut_in

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await attribute(*args, **kwargs)
            cut_in, self._cut_in = self._cut_in, None
            if cut_in is not None:
                await cut_in()
            return result

        return call


@pytest.mark.parametrize(("first", "cutting_in"), [(10, 20), (20, 10)])
async def test_a_writer_cutting_in_never_leaves_the_older_event(
    hot_store: HotStore, first: int, cutting_in: int
) -> None:
    """A whole write landing between another writer's first store call and its return (where the old
    read-then-write read the stored times and then set) still leaves each entity's newest event."""
    entities = ["u1", "u2", "u3"]

    async def other_writer() -> None:
        await write_latest(hot_store, RACE, events(RACE, [(e, cutting_in) for e in entities]))

    racing = cast(HotStore, WriterCutIn(hot_store, other_writer))
    await write_latest(racing, RACE, events(RACE, [(e, first) for e in entities]))
    assert await stored_seconds(hot_store, entities) == dict.fromkeys(entities, max(first, cutting_in))


async def test_concurrent_writers_leave_each_entity_its_newest_event(hot_store: HotStore) -> None:
    """Writers in parallel (an upload and the stream) sending interleaved event times for the same entities
    in shuffled batches: every entity ends with the newest event any of them sent."""
    entities = [f"u{i}" for i in range(40)]
    writers, rounds = 6, 25
    rng = random.Random(17)
    # per entity, the times 0..n-1 dealt out at random: which writer sends the newest, and when, varies
    dealt = {e: rng.sample(range(writers * rounds), writers * rounds) for e in entities}
    times = {w: {e: dealt[e][w * rounds:(w + 1) * rounds] for e in entities} for w in range(writers)}

    in_step = asyncio.Barrier(writers)  # each round starts together: the most overlap between writers

    async def writer(w: int) -> None:
        for r in range(rounds):
            await in_step.wait()
            await write_latest(hot_store, RACE, events(RACE, [(e, times[w][e][r]) for e in entities]))

    await asyncio.gather(*(writer(w) for w in range(writers)))
    expected = {e: max(max(times[w][e]) for w in range(writers)) for e in entities}
    assert await stored_seconds(hot_store, entities) == expected
