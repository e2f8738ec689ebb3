"""The Kafka bus when the broker is absent, goes away or loses its state: bounded errors naming the URL, then
recovery by itself (the consumer's watchdog rebuilds a member stuck without an error)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import structlog
from aiokafka.admin import AIOKafkaAdminClient

from mlplat.backends.bus import BusConsumer, Message, open_bus
from mlplat.backends.bus.kafka import KafkaBus, KafkaConsumer
from mlplat.errors import BackendUnavailable
from mlplat.observability.metrics import Metrics
from tests.servers import ServerProcess, free_port
from tests.waiting import eventually, receive

pytestmark = pytest.mark.integration

STALL_S = 5.0
"""The watchdog's threshold here: above what a healthy rejoin takes on Tansu with a 3 s session."""


def kafka_bus(url: str, metrics: Metrics | None = None) -> KafkaBus:
    # a short session: Tansu holds a join for half of it
    return KafkaBus(url, session_timeout_ms=3_000, consumer_stall_s=STALL_S, metrics=metrics)


def kafka_consumer(bus: KafkaBus, topic: str, group: str) -> KafkaConsumer:
    consumer = bus.consumer([topic], group=group)
    assert isinstance(consumer, KafkaConsumer)
    return consumer


def rebuilds(metrics: Metrics, group: str, reason: str) -> float:
    value = metrics.registry.get_sample_value("mlplat_bus_consumer_rebuilds_total", {"group": group, "reason": reason})
    return value or 0.0


async def receive_all(consumer: BusConsumer, values: set[bytes], limit_s: float) -> None:
    missing = set(values)
    deadline = time.monotonic() + limit_s
    while missing and time.monotonic() < deadline:
        for msgs in (await eventually(lambda: consumer.poll(max_records=100, timeout_s=0.5))).values():
            missing -= {m.value for m in msgs}
    assert not missing, f"{len(missing)} of {len(values)} records not received in {limit_s:g}s"


async def keep_polling(consumer: BusConsumer, seconds: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for msgs in (await consumer.poll(max_records=100, timeout_s=0.2)).values():
            got.extend(msgs)
    return got


async def test_connect_to_a_closed_port_fails_fast_naming_the_url() -> None:
    """Nothing listening: connect raises BackendUnavailable naming the URL, within about ten seconds."""
    url = f"kafka://127.0.0.1:{free_port()}"
    bus = open_bus(url)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=re.escape(f"bus {url} unreachable")):
        await bus.connect()
    assert time.monotonic() - started < 12
    await bus.aclose()


@pytest.mark.timeout(240)
async def test_the_same_bus_publishes_and_consumes_again_after_the_broker_restarts(
    tansu_server: ServerProcess, kafka_url: str, unique_name: str
) -> None:
    """Broker down: calls fail within their deadline; broker back with nothing (Tansu keeps topics, records and
    offsets in memory here): the same bus and consumer work again with no help. The consumer's rejoin leaves it
    stuck in about one run in four (Tansu hands back a stale assignment, see
    test_a_member_left_short_of_its_partitions_is_rebuilt, which makes that certain); the watchdog then
    rebuilds it."""
    bus = kafka_bus(kafka_url)
    await bus.connect()
    topic = f"restart-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish(topic, b"before")
    consumer = kafka_consumer(bus, topic, f"g-{unique_name}")
    await consumer.start()
    try:
        assert (await receive(consumer, b"before")).offset == 0
        tansu_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=re.escape(kafka_url)):
                await bus.ping()
            with pytest.raises(BackendUnavailable, match=re.escape(kafka_url)):
                await bus.publish(topic, b"lost")
            assert time.monotonic() - started < 25
        finally:
            tansu_server.start()
        await eventually(lambda: bus.create_topic(topic, partitions=1))
        # twice: the restarted broker numbers from 0 again, and a consumer still at position 1 that fetches only
        # after the first copy landed finds its position valid and waits at offset 1 (it resets to the start only
        # when it fetched the empty topic); the second copy reaches it either way
        await eventually(lambda: bus.publish(topic, b"after"))
        await eventually(lambda: bus.publish(topic, b"after"))
        assert (await receive(consumer, b"after", limit_s=60)).value == b"after"
        late = bus.consumer([topic], group=f"late-{unique_name}")
        await eventually(late.start)
        try:
            assert (await receive(late, b"after")).value == b"after"
        finally:
            await late.stop()
    finally:
        await consumer.stop()
        await bus.aclose()
    assert tansu_server.proc is not None  # left running for the tests after this one


@pytest.mark.timeout(120)
async def test_a_broker_outage_is_not_taken_for_a_stall(
    tansu_server: ServerProcess, kafka_url: str, unique_name: str
) -> None:
    """While the broker is down the consumer is out of its group, but the broker does not answer either: that
    is an outage, which aiokafka rides out by itself, so the watchdog leaves the client alone."""
    bus = kafka_bus(kafka_url)
    await bus.connect()
    topic = f"outage-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = kafka_consumer(bus, topic, f"g-{unique_name}")
    await consumer.start()
    client = consumer.client
    try:
        tansu_server.stop()
        try:
            with structlog.testing.capture_logs() as logs:
                assert await keep_polling(consumer, STALL_S * 2 + 3) == []
        finally:
            tansu_server.start()
        assert consumer.client is client and consumer.rebuilds == 0
        assert [e for e in logs if e["event"].startswith("bus_consumer_")] == []
    finally:
        await consumer.stop()
        await bus.aclose()


@pytest.mark.timeout(120)
async def test_a_member_left_short_of_its_partitions_is_rebuilt(kafka_url: str, unique_name: str) -> None:
    """The stall the restart above runs into, made certain: the topic of a group's only member is recreated with
    more partitions; the member rejoins, but Tansu keeps the group at generation 0 and hands back its previous
    assignment, so the member reads partition 0 alone, with no error. The watchdog sees the broker's answer
    differ from what the member assigned itself, rebuilds it once, and the records of every partition arrive."""
    metrics = Metrics()
    bus = kafka_bus(kafka_url, metrics)
    await bus.connect()
    topic, group = f"regrown-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = kafka_consumer(bus, topic, group)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await admin.start()
    try:
        await consumer.start()
        assert {tp.partition for tp in consumer.assignment()} == {0}
        await admin.delete_topics([topic])
        await keep_polling(consumer, 1)
        await bus.create_topic(topic, partitions=4)
        values = {f"v{i}".encode() for i in range(40)}
        landed = {(await bus.publish(topic, v, key=v))[0] for v in values}
        assert landed - {0}, "every record went to partition 0: the test proves nothing"
        with structlog.testing.capture_logs() as logs:
            await receive_all(consumer, values, limit_s=60)
        assert consumer.rebuilds == 1
        assert rebuilds(metrics, group, "stale_assignment") == 1
        [rebuilt] = [e for e in logs if e["event"] == "bus_consumer_rebuilt"]
        assert rebuilt["reason"] == "stale_assignment" and rebuilt["group"] == group
        assert {tp.partition for tp in consumer.assignment()} == {0, 1, 2, 3}
    finally:
        await consumer.stop()
        await admin.close()
        await bus.aclose()


@pytest.mark.timeout(120)
async def test_a_consumer_whose_coordinator_stays_unknown_is_rebuilt(
    kafka_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group coordinator is lost and the client's lookup never finds it again, with no error, while the
    broker answers: the watchdog rebuilds the consumer, which goes on from the committed offset."""
    metrics = Metrics()
    bus = kafka_bus(kafka_url, metrics)
    await bus.connect()
    topic, group = f"lost-coordinator-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    consumer = kafka_consumer(bus, topic, group)
    try:
        await consumer.start()
        await bus.publish(topic, b"first")
        first = await receive(consumer, b"first")
        await consumer.commit({first.tp: first.offset + 1})
        assert consumer.client is not None
        coordinator = consumer.client._coordinator

        async def never_found() -> None:  # the lookup retries until the client closes
            await coordinator._closing

        monkeypatch.setattr(coordinator, "ensure_coordinator_known", never_found)
        coordinator.coordinator_dead()
        await bus.publish(topic, b"second")
        await receive(consumer, b"second")  # fetching goes on without a coordinator
        during = await keep_polling(consumer, STALL_S * 3)
        assert consumer.rebuilds == 1 and rebuilds(metrics, group, "coordinator_unknown") == 1
        assert consumer.client is not None and consumer.client._coordinator is not coordinator
        await bus.publish(topic, b"third")
        after = await keep_polling(consumer, 3)
        # the new member resumed at the committed offset: "second" again (never committed), not "first"
        assert [m.value for m in during + after] == [b"second", b"third"]
    finally:
        await consumer.stop()
        await bus.aclose()


@pytest.mark.timeout(120)
async def test_an_idle_member_and_one_without_partitions_are_not_rebuilt(kafka_url: str, unique_name: str) -> None:
    """No false alarm: two members share a one-partition topic, so one of them has nothing assigned, and nothing
    is published for three times the threshold. Neither is rebuilt; then a record reaches the owner."""
    metrics = Metrics()
    bus = kafka_bus(kafka_url, metrics)
    await bus.connect()
    topic, group = f"idle-{unique_name}", f"g-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    first, second = kafka_consumer(bus, topic, group), kafka_consumer(bus, topic, group)
    try:
        await first.start()
        polling = asyncio.create_task(keep_polling(first, 10))  # polled while the second joins, as in a daemon
        await second.start()
        await polling
        got = await asyncio.gather(keep_polling(first, STALL_S * 3), keep_polling(second, STALL_S * 3))
        assert [m.value for messages in got for m in messages] == []
        assert (first.rebuilds, second.rebuilds) == (0, 0)
        assert metrics.registry.get_sample_value("mlplat_bus_consumer_rebuilds_total") is None
        owners = [c for c in (first, second) if c.assignment()]
        assert len(owners) == 1 and not (first.assignment() & second.assignment())
        await bus.publish(topic, b"hello")
        assert (await receive(owners[0], b"hello")).value == b"hello"
    finally:
        await second.stop()
        await first.stop()
        await bus.aclose()
