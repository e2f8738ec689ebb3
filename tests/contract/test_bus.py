"""One contract for every event bus: memory:// and a real Kafka-protocol broker (Tansu) behave the same."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mlplat.backends.bus import BusConsumer, EventBus, Message, TopicPartition, open_bus


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("kafka_url")
    b = open_bus(url)
    await b.connect()
    yield b
    await b.aclose()


@pytest.fixture
def name() -> Callable[[str], str]:
    suffix = uuid.uuid4().hex[:10]
    return lambda base: f"{base}-{suffix}"


@pytest.fixture
async def consumers() -> AsyncIterator[list[BusConsumer]]:
    started: list[BusConsumer] = []
    yield started
    for c in started:
        await c.stop()


async def start(bus: EventBus, consumers: list[BusConsumer], topic: str, group: str) -> BusConsumer:
    c = bus.consumer([topic], group=group)
    await c.start()
    consumers.append(c)
    return c


async def drain(consumer: BusConsumer, want: int, limit_s: float = 30) -> list[Message]:
    """Poll until `want` messages arrived (or fail after limit_s)."""
    got: list[Message] = []
    deadline = asyncio.get_running_loop().time() + limit_s
    while len(got) < want:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"got {len(got)} of {want} messages in {limit_s}s")
        for msgs in (await consumer.poll(max_records=500, timeout_s=0.5)).values():
            got.extend(msgs)
    return got


async def until(check: Callable[[], Awaitable[bool]], limit_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.1)


async def test_round_trip_keeps_key_value_headers_and_time(bus: EventBus, name, consumers) -> None:
    """What is published is what is consumed: key, arbitrary bytes, headers, a timestamp and its offset."""
    topic = name("rt")
    await bus.create_topic(topic, partitions=1)
    value = bytes(range(256))
    partition, offset = await bus.publish(topic, value, key=b"k1", headers=[("h", b"\x00x")])
    assert (partition, offset) == (0, 0)
    consumer = await start(bus, consumers, topic, name("g"))
    (msg,) = await drain(consumer, 1)
    assert (msg.key, msg.value, msg.headers, msg.offset) == (b"k1", value, (("h", b"\x00x"),), 0)
    assert msg.timestamp_ms > 1_600_000_000_000


async def test_a_key_always_lands_on_the_same_partition_in_order(bus: EventBus, name, consumers) -> None:
    """Per-key order: every message of a key is on one partition, in publish order."""
    topic = name("keys")
    await bus.create_topic(topic, partitions=4)
    assert await bus.partitions_for(topic) == 4
    await bus.publish_many(topic, [(f"user{i % 5}".encode(), str(i).encode()) for i in range(100)])
    consumer = await start(bus, consumers, topic, name("g"))
    msgs = await drain(consumer, 100)
    by_key: dict[bytes, set[int]] = {}
    for m in msgs:
        by_key.setdefault(m.key or b"", set()).add(m.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    for key in by_key:
        values = [int(m.value) for m in msgs if m.key == key]
        assert values == sorted(values)


async def test_the_key_to_partition_mapping_matches_kafka(bus: EventBus, name) -> None:
    """Both backends use the Kafka client's murmur2 partitioner, so a key's partition number is portable."""
    topic = name("murmur")
    await bus.create_topic(topic, partitions=6)
    from aiokafka.partitioner import murmur2

    for key in [b"a", b"user-42", b"\xff\x00"]:
        partition, _ = await bus.publish(topic, b"v", key=key)
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 6


async def test_two_groups_each_see_every_message(bus: EventBus, name, consumers) -> None:
    """Consumer groups are independent readers of the same log."""
    topic = name("groups")
    await bus.create_topic(topic, partitions=2)
    await bus.publish_many(topic, [(str(i).encode(), b"x") for i in range(20)])
    a = await start(bus, consumers, topic, name("ga"))
    b = await start(bus, consumers, topic, name("gb"))
    assert len(await drain(a, 20)) == 20
    assert len(await drain(b, 20)) == 20


async def test_members_of_one_group_split_the_partitions(bus: EventBus, name, consumers) -> None:
    """Two members of a group get disjoint partitions and together see each message exactly once."""
    topic = name("split")
    group = name("g")
    await bus.create_topic(topic, partitions=4)
    first = await start(bus, consumers, topic, group)
    second = await start(bus, consumers, topic, group)

    async def balanced() -> bool:
        await first.poll(max_records=1, timeout_s=0.2)
        await second.poll(max_records=1, timeout_s=0.2)
        return len(first.assignment()) == 2 and len(second.assignment()) == 2

    await until(balanced)
    assert not first.assignment() & second.assignment()
    await bus.publish_many(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(200)])
    seen: list[Message] = []
    deadline = asyncio.get_running_loop().time() + 30
    while len(seen) < 200 and asyncio.get_running_loop().time() < deadline:
        for c in (first, second):
            for msgs in (await c.poll(max_records=100, timeout_s=0.2)).values():
                seen.extend(msgs)
    assert sorted(int(m.value) for m in seen) == list(range(200))


async def test_a_new_member_resumes_after_the_committed_offset(bus: EventBus, name, consumers) -> None:
    """Committed progress survives the consumer: the next member of the group starts after it."""
    topic, group = name("commit"), name("g")
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, [(None, str(i).encode()) for i in range(10)])
    first = await start(bus, consumers, topic, group)
    msgs = await drain(first, 10)
    tp = TopicPartition(topic, 0)
    await first.commit({tp: msgs[5].offset + 1})
    assert await first.committed(tp) == 6
    await first.stop()
    consumers.remove(first)
    second = await start(bus, consumers, topic, group)
    rest = await drain(second, 4)
    assert [int(m.value) for m in rest] == [6, 7, 8, 9]


async def test_uncommitted_messages_are_redelivered(bus: EventBus, name, consumers) -> None:
    """At-least-once: what was read but not committed comes again to the next member."""
    topic, group = name("redeliver"), name("g")
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, [(None, str(i).encode()) for i in range(3)])
    first = await start(bus, consumers, topic, group)
    assert len(await drain(first, 3)) == 3
    await first.stop()
    consumers.remove(first)
    second = await start(bus, consumers, topic, group)
    assert [int(m.value) for m in await drain(second, 3)] == [0, 1, 2]


async def test_seek_to_committed_rewinds_a_failed_batch(bus: EventBus, name, consumers) -> None:
    """After a failed batch the member rewinds to its last commit and reads the batch again."""
    topic = name("seek")
    await bus.create_topic(topic, partitions=1)
    await bus.publish_many(topic, [(None, str(i).encode()) for i in range(5)])
    consumer = await start(bus, consumers, topic, name("g"))
    msgs = await drain(consumer, 5)
    await consumer.commit({TopicPartition(topic, 0): msgs[1].offset + 1})
    await consumer.seek_to_committed()
    assert [int(m.value) for m in await drain(consumer, 3)] == [2, 3, 4]


async def test_end_offsets_is_the_next_offset_to_write(bus: EventBus, name) -> None:
    """end_offsets reports how far each partition's log goes."""
    topic = name("ends")
    await bus.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)
    assert await bus.end_offsets([tp]) == {tp: 0}
    # one message per publish: Tansu reports a multi-record batch's high watermark as its base offset + 1
    await bus.publish(topic, b"a")
    await bus.publish(topic, b"b")
    assert await bus.end_offsets([tp]) == {tp: 2}


async def test_poll_times_out_empty(bus: EventBus, name, consumers) -> None:
    """With nothing to read, poll returns {} after its timeout."""
    topic = name("empty")
    await bus.create_topic(topic, partitions=1)
    consumer = await start(bus, consumers, topic, name("g"))
    assert await consumer.poll(max_records=10, timeout_s=0.3) == {}


async def test_pause_stops_delivery_and_resume_restarts_it(bus: EventBus, name, consumers) -> None:
    """A paused member receives nothing (back-pressure) yet stays in its group; resume delivers the rest."""
    topic = name("pause")
    await bus.create_topic(topic, partitions=1)
    consumer = await start(bus, consumers, topic, name("g"))
    await bus.publish(topic, b"first")
    await drain(consumer, 1)
    consumer.pause()
    await bus.publish(topic, b"second")
    for _ in range(3):
        assert await consumer.poll(max_records=10, timeout_s=0.3) == {}
    consumer.resume()
    (msg,) = await drain(consumer, 1)
    assert msg.value == b"second"
