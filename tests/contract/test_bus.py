"""One contract for every event bus: memory:// and a real Kafka-protocol broker (Tansu) behave the same.

Kafka group joins take seconds, so every wait here polls until a condition holds or a generous deadline
passes; nothing relies on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner

from mlplat.backends.bus import BusConsumer, EventBus, Message, TopicPartition, open_bus
from mlplat.backends.bus.kafka import KafkaBus
from mlplat.backends.bus.memory import MemoryBus
from mlplat.errors import BackendError, BackendUnavailable, ConfigError, NotFound
from tests.waiting import until as wait_until

LIMIT_S = 30.0
"""How long a helper waits for Kafka to deliver or rebalance before the test fails."""

Join = Callable[[str, str], Awaitable[BusConsumer]]


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    if request.param == "memory":
        b = open_bus("memory://")
    else:
        # Tansu holds every group join for half the session timeout; 3 s keeps the suite quick (Kafka itself
        # would refuse a session timeout under 6 s)
        b = KafkaBus(request.getfixturevalue("kafka_url"), session_timeout_ms=3_000)
    await b.connect()
    yield b
    await b.aclose()


@pytest.fixture
async def join(bus: EventBus) -> AsyncIterator[Join]:
    """Start group members on the bus; the ones still running are stopped before the bus closes."""
    started: list[BusConsumer] = []

    async def start(topic: str, group: str) -> BusConsumer:
        consumer = bus.consumer([topic], group=group)
        await consumer.start()
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        await consumer.stop()


async def drain(consumer: BusConsumer, want: int, limit_s: float = LIMIT_S) -> list[Message]:
    """Poll until `want` messages arrived; fail after limit_s."""
    got: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while len(got) < want:
        if loop.time() > deadline:
            raise AssertionError(f"got {len(got)} of {want} messages in {limit_s:g}s: {values(got)}")
        for msgs in (await consumer.poll(max_records=500, timeout_s=0.5)).values():
            got.extend(msgs)
    return got


async def until(check: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> None:
    await wait_until(check, what, limit_s, every_s=0.05)


def values(msgs: list[Message]) -> list[int]:
    return [int(m.value) for m in msgs]


def numbered(n: int, key: Callable[[int], bytes | None] = lambda i: None) -> list[tuple[bytes | None, bytes]]:
    return [(key(i), str(i).encode()) for i in range(n)]


async def test_open_bus_picks_the_implementation_by_scheme() -> None:
    """memory:// and kafka:// (several brokers allowed) build the matching bus; credentials are refused."""
    assert isinstance(open_bus("memory://"), MemoryBus)
    kafka = open_bus("kafka://b1:9092,b2")
    assert isinstance(kafka, KafkaBus) and isinstance(kafka, EventBus)
    assert kafka.url == "kafka://b1:9092,b2"
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_bus("kafak://b1:9092")
    with pytest.raises(ConfigError) as err:
        open_bus("kafka://user:s3cret@b1:9092")
    assert "s3cret" not in str(err.value)


async def test_round_trip_keeps_key_value_headers_and_timestamp(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """What is published is what is consumed: key, arbitrary bytes, headers, a current timestamp, offsets."""
    topic = f"rt-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    value = bytes(range(256))
    headers = [("trace", b"\x00\xff"), ("trace", b"again"), ("empty", b"")]
    before = int(time.time() * 1000)
    assert await bus.publish(topic, value, key=b"\x00k", headers=headers) == (0, 0)
    assert await bus.publish(topic, b"") == (0, 1)
    after = int(time.time() * 1000)
    consumer = await join(topic, f"g-{unique_name}")
    assert isinstance(consumer, BusConsumer)
    first, second = await drain(consumer, 2)
    assert (first.topic, first.partition, first.offset) == (topic, 0, 0)
    assert (first.key, first.value) == (b"\x00k", value)
    assert first.headers == tuple(headers) and first.tp == TopicPartition(topic, 0)
    assert before - 1000 <= first.timestamp_ms <= after + 1000
    assert (second.offset, second.key, second.value, second.headers) == (1, None, b"", ())


async def test_a_key_always_lands_on_one_partition_in_publish_order(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """Every message of a key is on one partition, and each partition delivers in publish order."""
    topic = f"keys-{unique_name}"
    await bus.create_topic(topic, partitions=4)
    await bus.publish_many(topic, numbered(200, lambda i: f"user{i % 7}".encode()))
    msgs = await drain(await join(topic, f"g-{unique_name}"), 200)
    partitions_of: dict[bytes | None, set[int]] = {}
    for m in msgs:
        partitions_of.setdefault(m.key, set()).add(m.partition)
    assert len(partitions_of) == 7 and all(len(p) == 1 for p in partitions_of.values())
    for p in range(4):
        mine = [m for m in msgs if m.partition == p]
        assert [m.offset for m in mine] == list(range(len(mine)))
        assert values(mine) == sorted(values(mine))


async def test_the_key_to_partition_mapping_is_the_kafka_clients(bus: EventBus, unique_name: str) -> None:
    """Both backends put a key where aiokafka's default partitioner does: partition numbers are portable."""
    topic = f"murmur-{unique_name}"
    await bus.create_topic(topic, partitions=6)
    partitioner = DefaultPartitioner()
    for key in [b"a", b"user-42", b"\xff\x00", b"x" * 300]:
        partition, _ = await bus.publish(topic, b"v", key=key)
        assert partition == partitioner(key, list(range(6)), list(range(6)))


async def test_keyless_messages_spread_over_the_partitions(bus: EventBus, unique_name: str) -> None:
    """Messages without a key are not all piled onto one partition."""
    topic = f"spread-{unique_name}"
    await bus.create_topic(topic, partitions=4)
    used = {(await bus.publish(topic, b"v"))[0] for _ in range(40)}
    assert len(used) >= 2


async def test_create_topic_is_idempotent_and_partitions_for_counts(bus: EventBus, unique_name: str) -> None:
    """Creating an existing topic is a no-op that keeps its partitions; a missing topic is NotFound."""
    topic = f"create-{unique_name}"
    await bus.create_topic(topic, partitions=3)
    await bus.create_topic(topic, partitions=5)
    assert await bus.partitions_for(topic) == 3
    with pytest.raises(NotFound):
        await bus.partitions_for(f"missing-{unique_name}")
    with pytest.raises(ValueError, match="at least one partition"):
        await bus.create_topic(f"bad-{unique_name}", partitions=0)


async def test_two_groups_each_see_every_message(bus: EventBus, unique_name: str, join: Join) -> None:
    """Consumer groups are independent readers of the same log."""
    topic = f"groups-{unique_name}"
    await bus.create_topic(topic, partitions=2)
    await bus.publish_many(topic, numbered(20, lambda i: str(i).encode()))
    a = await join(topic, f"ga-{unique_name}")
    b = await join(topic, f"gb-{unique_name}")
    assert sorted(values(await drain(a, 20))) == list(range(20))
    assert sorted(values(await drain(b, 20))) == list(range(20))


async def test_members_of_one_group_split_the_partitions_and_see_each_message_once(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """Two members of a group own disjoint halves of the partitions and together read every message once."""
    topic, group = f"split-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=4)
    first = await join(topic, group)
    second = await join(topic, group)
    await until(lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2, "2 + 2 partitions")
    assert first.assignment() | second.assignment() == {TopicPartition(topic, p) for p in range(4)}
    await bus.publish_many(topic, numbered(200, lambda i: f"k{i}".encode()))
    seen: dict[BusConsumer, list[Message]] = {first: [], second: []}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT_S
    while sum(map(len, seen.values())) < 200 and loop.time() < deadline:
        for member, got in seen.items():
            for tp, msgs in (await member.poll(max_records=100, timeout_s=0.2)).items():
                assert tp in member.assignment()
                got.extend(msgs)
    assert sorted(values(seen[first] + seen[second])) == list(range(200))
    assert seen[first] and seen[second]


async def test_when_a_member_stops_the_other_takes_over_from_the_commits(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """After a member leaves, the remaining one owns every partition and re-reads what was not committed."""
    topic, group = f"takeover-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=4)
    first = await join(topic, group)
    second = await join(topic, group)
    await until(lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2, "2 + 2 partitions")
    await bus.publish_many(topic, numbered(40, lambda i: f"k{i}".encode()))
    owned = {tp.partition for tp in first.assignment()}
    mine = await drain(first, sum(1 for i in range(40) if _partition_of(f"k{i}".encode(), 4) in owned))
    await first.commit({m.tp: m.offset + 1 for m in mine})  # the last message of each partition wins
    await second.stop()
    await until(lambda: len(first.assignment()) == 4, "all 4 partitions to the remaining member")
    rest = await drain(first, 40 - len(mine))
    assert sorted(values(mine + rest)) == list(range(40))


async def test_a_new_member_resumes_after_the_committed_offset(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """Committed progress outlives the member: the next member of the group starts right after it."""
    topic, group = f"commit-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, numbered(10))
    first = await join(topic, group)
    msgs = await drain(first, 10)
    tp = TopicPartition(topic, 0)
    assert await first.committed(tp) is None
    await first.commit({tp: msgs[5].offset + 1})
    assert await first.committed(tp) == 6
    await first.stop()
    second = await join(topic, group)
    assert values(await drain(second, 4)) == [6, 7, 8, 9]
    assert await second.committed(tp) == 6


async def test_uncommitted_messages_are_redelivered_after_the_member_stops(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """At-least-once: what was read but not committed comes again to the next member of the group."""
    topic, group = f"redeliver-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, numbered(3))
    first = await join(topic, group)
    assert values(await drain(first, 3)) == [0, 1, 2]
    await first.stop()
    second = await join(topic, group)
    assert values(await drain(second, 3)) == [0, 1, 2]


async def test_a_member_cannot_commit_a_partition_it_does_not_own(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """A commit for a partition the member does not own is refused: it cannot undo the owner's progress."""
    topic = f"owner-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = await join(topic, f"g-{unique_name}")
    other = TopicPartition(f"other-{unique_name}", 0)
    with pytest.raises(BackendError) as err:
        await consumer.commit({other: 1})
    assert not isinstance(err.value, BackendUnavailable)
    assert await consumer.committed(other) is None


async def test_seek_to_committed_rewinds_a_failed_batch(bus: EventBus, unique_name: str, join: Join) -> None:
    """After a failed batch a member rewinds to its last commit, or to the beginning when there is none."""
    topic = f"seek-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, numbered(5))
    consumer = await join(topic, f"g-{unique_name}")
    assert values(await drain(consumer, 5)) == [0, 1, 2, 3, 4]
    await consumer.seek_to_committed()
    msgs = await drain(consumer, 5)
    assert values(msgs) == [0, 1, 2, 3, 4]
    await consumer.commit({TopicPartition(topic, 0): msgs[1].offset + 1})
    await consumer.seek_to_committed()
    assert values(await drain(consumer, 3)) == [2, 3, 4]


async def test_end_offsets_is_the_next_offset_to_write(bus: EventBus, unique_name: str) -> None:
    """end_offsets counts every message written, batched or single; unknown partitions are NotFound."""
    topic = f"ends-{unique_name}"
    await bus.create_topic(topic, partitions=2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    assert await bus.end_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    key0 = next(k for k in (f"k{i}".encode() for i in range(100)) if _partition_of(k, 2) == 0)
    await bus.publish_many(topic, [(key0, b"x")] * 10)  # one multi-record batch on Kafka
    assert await bus.end_offsets(tps) == {tps[0]: 10, tps[1]: 0}
    await bus.publish(topic, b"y", key=key0)
    await bus.publish_many(topic, [(key0, b"z")] * 5)
    assert await bus.end_offsets(tps) == {tps[0]: 16, tps[1]: 0}
    with pytest.raises(NotFound):
        await bus.end_offsets([TopicPartition(topic, 2)])
    with pytest.raises(NotFound):
        await bus.end_offsets([TopicPartition(f"missing-{unique_name}", 0)])


def _partition_of(key: bytes, partitions: int) -> int:
    return int(DefaultPartitioner()(key, list(range(partitions)), list(range(partitions))))


async def test_poll_returns_nothing_after_its_timeout(bus: EventBus, unique_name: str, join: Join) -> None:
    """With nothing to read, poll waits about its timeout and returns {}."""
    topic = f"empty-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = await join(topic, f"g-{unique_name}")
    started = time.monotonic()
    assert await consumer.poll(max_records=10, timeout_s=0.5) == {}
    assert 0.4 <= time.monotonic() - started < 5


async def test_poll_wakes_up_when_a_message_arrives(bus: EventBus, unique_name: str, join: Join) -> None:
    """A waiting poll returns as soon as a message is published, well before its timeout."""
    topic = f"wake-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = await join(topic, f"g-{unique_name}")
    waiting = asyncio.create_task(consumer.poll(max_records=10, timeout_s=20))
    await asyncio.sleep(0.2)  # let the poll start waiting
    started = time.monotonic()
    await bus.publish(topic, b"ping")
    batch = await waiting
    assert [m.value for m in batch[TopicPartition(topic, 0)]] == [b"ping"]
    assert time.monotonic() - started < 10


async def test_poll_returns_at_most_max_records(bus: EventBus, unique_name: str, join: Join) -> None:
    """max_records caps every poll; the rest comes with the next polls, in order."""
    topic = f"max-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, numbered(10))
    consumer = await join(topic, f"g-{unique_name}")
    got: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT_S
    while len(got) < 10 and loop.time() < deadline:
        batch = [m for msgs in (await consumer.poll(max_records=3, timeout_s=0.5)).values() for m in msgs]
        assert len(batch) <= 3
        got.extend(batch)
    assert values(got) == list(range(10))


async def test_pause_stops_delivery_and_resume_restarts_it(
    bus: EventBus, unique_name: str, join: Join
) -> None:
    """A paused member receives nothing yet keeps its partitions; resumed, it gets what arrived meanwhile."""
    topic = f"pause-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = await join(topic, f"g-{unique_name}")
    await bus.publish(topic, b"first")
    await drain(consumer, 1)
    consumer.pause()
    await bus.publish(topic, b"second")
    for _ in range(3):
        assert await consumer.poll(max_records=10, timeout_s=0.3) == {}
    assert consumer.assignment() == {TopicPartition(topic, 0)}
    consumer.resume()
    (msg,) = await drain(consumer, 1)
    assert msg.value == b"second"


async def test_memory_retention_drops_the_oldest_and_a_lagging_reader_skips_ahead() -> None:
    """The embedded bus keeps `retention` messages per partition; a lagging reader jumps to the oldest."""
    bus = MemoryBus(retention=3)
    await bus.connect()
    await bus.publish_many("t", numbered(5))
    consumer = bus.consumer(["t"], group="g")
    await consumer.start()
    msgs = await drain(consumer, 3)
    assert [(m.offset, int(m.value)) for m in msgs] == [(2, 2), (3, 3), (4, 4)]
    assert await bus.end_offsets([TopicPartition("t", 0)]) == {TopicPartition("t", 0): 5}
    await consumer.stop()
    await bus.aclose()
