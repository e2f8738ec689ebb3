"""Kafka and Azure endpoints that are absent or go away: bounded, secret-free errors, then recovery."""

from __future__ import annotations

import time
import uuid

import pytest

from mlplat.backends.artifacts import open_artifact_store
from mlplat.backends.bus import TopicPartition, open_bus
from mlplat.errors import BackendUnavailable
from tests.servers import ServerProcess, azurite_connection_string, free_port

pytestmark = pytest.mark.integration


async def test_unreachable_broker_fails_connect_in_bounded_time() -> None:
    """Nothing listening at the URL: connect raises BackendUnavailable naming it, within seconds."""
    port = free_port()
    bus = open_bus(f"kafka://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        await bus.connect()
    assert time.monotonic() - started < 20
    await bus.aclose()


async def test_the_same_bus_works_after_the_broker_restarts(tansu_server: ServerProcess, kafka_url: str) -> None:
    """While the broker is down calls fail clearly; after it returns the same bus publishes and reads again."""
    bus = open_bus(kafka_url)
    await bus.connect()
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    await bus.create_topic(topic, partitions=1)
    await bus.publish(topic, b"before")
    tansu_server.stop()
    try:
        with pytest.raises(BackendUnavailable):
            await bus.ping()
    finally:
        tansu_server.start()
    await bus.create_topic(topic, partitions=1)  # the test broker keeps topics in memory only
    deadline = time.monotonic() + 30
    while True:
        try:
            await bus.publish(topic, b"after")
            break
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
    ends = await bus.end_offsets([TopicPartition(topic, 0)])
    assert ends[TopicPartition(topic, 0)] >= 1
    await bus.aclose()


async def test_unreachable_azure_fails_without_leaking_the_key() -> None:
    """A dead endpoint fails connect within seconds; neither the account key nor the string is in the error."""
    conn = azurite_connection_string(free_port())
    store = open_artifact_store("azure://models", connection_string=conn)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        await store.connect()
    assert time.monotonic() - started < 20
    key = conn.split("AccountKey=")[1].split(";")[0]
    assert key not in str(err.value) and conn not in str(err.value) and key not in repr(store)
    await store.aclose()


async def test_the_same_artifact_store_works_after_azure_restarts(
    azurite_server: ServerProcess, azure_connection_string: str
) -> None:
    """Azure down: BackendUnavailable; back up: the same store object reads and writes again."""
    store = open_artifact_store(f"azure://r{uuid.uuid4().hex[:8]}", connection_string=azure_connection_string)
    await store.connect()
    await store.put("m/1", b"v1")
    azurite_server.stop()
    try:
        with pytest.raises(BackendUnavailable):
            await store.get("m/1")
    finally:
        azurite_server.start()
    assert await store.get("m/1") == b"v1"  # Azurite keeps blobs on disk across restarts
    await store.put("m/2", b"v2")
    await store.aclose()
