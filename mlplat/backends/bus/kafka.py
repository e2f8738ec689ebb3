"""The production event bus on Kafka (aiokafka): one shared producer, one consumer per group member.

Offsets are never auto-committed: the caller commits after its warehouse commit (DESIGN.md §5).
aiokafka reconnects by itself after a broker outage; every call here is bounded in time so an outage
surfaces as BackendUnavailable instead of a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from mlplat.backends.bus import Message, TopicPartition
from mlplat.backends.urls import redact_url
from mlplat.errors import BackendUnavailable

T = TypeVar("T")
CALL_TIMEOUT_S = 15.0


def bootstrap_servers(url: str) -> str:
    """kafka://h1:9092,h2:9092 -> 'h1:9092,h2:9092' (urlsplit cannot parse several hosts)."""
    rest = url.split("://", 1)[1].split("/", 1)[0]
    hosts = [h.rsplit("@", 1)[-1] for h in rest.split(",") if h]
    if not hosts:
        raise ValueError(f"bus.url = {redact_url(url)!r}: no broker address (expected kafka://host:9092)")
    return ",".join(h if ":" in h else f"{h}:9092" for h in hosts)


class KafkaBus:
    def __init__(self, url: str) -> None:
        self._url = redact_url(url)
        self._servers = bootstrap_servers(url)
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    @property
    def url(self) -> str:
        return self._url

    async def _bounded(self, what: str, awaitable: Awaitable[T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        try:
            return await asyncio.wait_for(awaitable, timeout_s)
        except TimeoutError:
            raise BackendUnavailable(f"bus {self._url} unreachable: {what} timed out after {timeout_s:g}s") from None
        except (KafkaError, OSError) as e:
            raise BackendUnavailable(f"bus {self._url} unreachable: {what} failed: {e}") from None

    async def connect(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers, acks="all", linger_ms=2, request_timeout_ms=10_000,
            max_batch_size=1 << 20,
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, request_timeout_ms=10_000)
        try:
            await self._bounded("connect", producer.start(), 12)
            await self._bounded("admin connect", admin.start(), 12)
        except BackendUnavailable:
            await _quietly(producer.stop())
            await _quietly(admin.close())
            raise
        self._producer, self._admin = producer, admin

    def _require(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        if self._producer is None or self._admin is None:
            raise BackendUnavailable(f"bus {self._url} is not connected")
        return self._producer, self._admin

    async def ping(self) -> None:
        producer, _ = self._require()
        await self._bounded("metadata", producer.client.fetch_all_metadata(), 5)

    async def create_topic(self, topic: str, *, partitions: int) -> None:
        _, admin = self._require()
        try:
            await self._bounded(
                "create topic", admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            )
        except BackendUnavailable as e:
            if "TopicAlreadyExists" not in str(e):
                raise
        except TopicAlreadyExistsError:
            pass

    async def partitions_for(self, topic: str) -> int:
        producer, _ = self._require()
        parts = await self._bounded("partitions", producer.partitions_for(topic))
        return len(parts or ())

    async def publish(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        producer, _ = self._require()
        meta = await self._bounded(
            "publish", producer.send_and_wait(topic, value, key=key, headers=list(headers) or None)
        )
        return int(meta.partition), int(meta.offset)

    async def publish_many(self, topic: str, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        producer, _ = self._require()

        async def send_all() -> None:
            futures = [await producer.send(topic, value, key=key) for key, value in items]
            await asyncio.gather(*futures)

        await self._bounded("publish", send_all(), CALL_TIMEOUT_S + len(items) / 10_000)

    def consumer(self, topics: Sequence[str], *, group: str) -> KafkaConsumer:
        return KafkaConsumer(self, list(topics), group)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._servers, enable_auto_commit=False)
        try:
            await self._bounded("connect", consumer.start())
            ends = await self._bounded(
                "end offsets", consumer.end_offsets([KafkaTP(tp.topic, tp.partition) for tp in tps])
            )
        finally:
            await _quietly(consumer.stop())
        return {TopicPartition(tp.topic, tp.partition): int(off) for tp, off in ends.items()}

    async def aclose(self) -> None:
        if self._producer is not None:
            await _quietly(self._producer.stop())
        if self._admin is not None:
            await _quietly(self._admin.close())
        self._producer = self._admin = None


class KafkaConsumer:
    def __init__(self, bus: KafkaBus, topics: list[str], group: str) -> None:
        self._bus = bus
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bus._servers, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000, metadata_max_age_ms=5_000,
        )

    async def start(self) -> None:
        try:
            await self._bus._bounded("consumer start", self._consumer.start(), 20)
        except BackendUnavailable:
            await _quietly(self._consumer.stop())
            raise

    async def poll(self, *, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Message]]:
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (KafkaError, OSError) as e:
            raise BackendUnavailable(f"bus {self._bus.url} unreachable: poll failed: {e}") from None
        out: dict[TopicPartition, list[Message]] = {}
        for tp, records in batches.items():
            if records:
                out[TopicPartition(tp.topic, tp.partition)] = [_message(r) for r in records]
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._bus._bounded(
            "commit", self._consumer.commit({KafkaTP(tp.topic, tp.partition): off for tp, off in offsets.items()})
        )

    async def committed(self, tp: TopicPartition) -> int | None:
        value = await self._bus._bounded("committed", self._consumer.committed(KafkaTP(tp.topic, tp.partition)))
        return None if value is None else int(value)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def seek_to_committed(self) -> None:
        for tp in self._consumer.assignment():
            committed = await self._bus._bounded("committed", self._consumer.committed(tp))
            if committed is None:
                await self._bus._bounded("seek", self._consumer.seek_to_beginning(tp))
            else:
                self._consumer.seek(tp, committed)

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    async def stop(self) -> None:
        await _quietly(self._consumer.stop())


def _message(record: Any) -> Message:
    headers = tuple((str(k), bytes(v)) for k, v in (record.headers or ()))
    return Message(
        record.topic, record.partition, record.offset, record.key, record.value, int(record.timestamp), headers
    )


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(awaitable, 10)
    except Exception:  # closing after a failure: nothing useful to report beyond the original error
        return
