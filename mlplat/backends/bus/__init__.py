"""Event bus: streaming ingest, predictions, dead letters.

`memory://` (embedded) and `kafka://host:port[,host:port]` (aiokafka) keep the same semantics: topics with
partitions, key-hashed partitioning, consumer groups that split partitions between members, and manual
commits (the committed offset is the offset of the *next* message to read).
tests/contract/test_bus.py runs one suite against both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mlplat.backends.security import SaslLogin, TlsFiles
from mlplat.backends.urls import redact_url, scheme_of
from mlplat.errors import ConfigError, MlplatError
from mlplat.observability.logging import get_logger

if TYPE_CHECKING:
    from mlplat.observability.metrics import Metrics

log = get_logger("bus")

SCHEMES = ("memory", "kafka")


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@runtime_checkable
class BusConsumer(Protocol):
    """One member of a consumer group. Offsets are committed only by `commit`, never automatically.

    A new group starts at the earliest offset (nothing published before the group existed is skipped).
    """

    async def start(self) -> None: ...
    async def poll(self, *, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Message]]:
        """Wait up to timeout_s for messages on the assigned partitions; {} on timeout."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record, for each partition, the offset of the next message to read.

        Only partitions assigned to this member can be committed; for any other (the group rebalanced) the
        commit raises BackendError and the new owner reads those messages again from the last commit.
        """
        ...

    async def committed(self, tp: TopicPartition) -> int | None: ...
    def assignment(self) -> set[TopicPartition]: ...
    async def seek_to_committed(self) -> None:
        """Rewind every assigned partition to its committed offset (after a failed batch)."""
        ...

    def pause(self) -> None:
        """Stop fetching (back-pressure) without leaving the group."""
        ...

    def resume(self) -> None: ...
    async def stop(self) -> None:
        """Leave the group; uncommitted messages will be delivered again to whoever gets the partition."""
        ...


@runtime_checkable
class EventBus(Protocol):
    @property
    def url(self) -> str: ...

    async def connect(self) -> None:
        """Check the broker answers; raises BackendUnavailable naming the URL."""
        ...

    async def ping(self) -> None: ...
    async def create_topic(self, topic: str, *, partitions: int) -> None:
        """Create the topic if it does not exist (no error if it does; it keeps its partition count)."""
        ...

    async def partitions_for(self, topic: str) -> int:
        """The topic's partition count; NotFound if the topic does not exist."""
        ...

    async def publish(
        self, topic: str, value: bytes, *, key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> tuple[int, int]:
        """Publish one message, waiting for the broker's ack. Returns (partition, offset).

        BackendUnavailable after a bounded wait if the broker cannot be reached; a publish that failed that
        way may still have been written (delivery is at-least-once).
        """
        ...

    async def publish_many(self, topic: str, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Publish (key, value) pairs and wait until all are acknowledged."""
        ...

    def consumer(self, topics: Sequence[str], *, group: str) -> BusConsumer: ...
    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next message will get, per partition; NotFound for a missing topic or partition."""
        ...

    async def aclose(self) -> None: ...


async def poll_batch(consumer: BusConsumer, *, max_records: int, wait_s: float
                     ) -> dict[TopicPartition, list[Message]]:
    """Accumulate until max_records messages or wait_s passed, whichever comes first ({} if none came)."""
    batch: dict[TopicPartition, list[Message]] = {}
    count = 0
    deadline = time.monotonic() + wait_s
    while count < max_records:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        polled = await consumer.poll(max_records=max_records - count, timeout_s=remaining)
        for tp, messages in polled.items():
            batch.setdefault(tp, []).extend(messages)
            count += len(messages)
        if not polled and count:
            break
    return batch


REWIND_MAX_DELAY_S = 5.0


async def rewind(consumer: BusConsumer, owner: str) -> None:
    """Back to the last commit after a failed batch. The seek asks the broker for the committed offsets, so
    during a broker outage it waits (logging each try) instead of failing the loop that owns the consumer."""
    delay = 0.2
    while True:
        try:
            await consumer.seek_to_committed()
            return
        except MlplatError as e:
            log.warning("bus_rewind_waiting", consumer=owner, error=str(e), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REWIND_MAX_DELAY_S)


def open_bus(url: str, *, tls: TlsFiles | None = None, sasl: SaslLogin | None = None,
             consumer_stall_s: float | None = None, session_timeout_ms: int | None = None,
             metrics: Metrics | None = None) -> EventBus:
    """Build (not connect) the bus for a URL; the scheme picks the implementation. tls and sasl: Kafka's
    connection security (see BusSettings.security); consumer_stall_s and metrics: Kafka's consumer watchdog;
    session_timeout_ms: how long a silent Kafka consumer keeps its group membership."""
    scheme = scheme_of(url)
    if scheme == "memory":
        from mlplat.backends.bus.memory import MemoryBus

        return MemoryBus()
    if scheme == "kafka":
        from mlplat.backends.bus.kafka import DEFAULT_CONSUMER_STALL_S, DEFAULT_SESSION_TIMEOUT_MS, KafkaBus

        return KafkaBus(url, tls=tls, sasl=sasl, consumer_stall_s=consumer_stall_s or DEFAULT_CONSUMER_STALL_S,
                        session_timeout_ms=session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS, metrics=metrics)
    raise ConfigError(f"bus.url = {redact_url(url)!r}: unknown scheme {scheme!r} (expected {', '.join(SCHEMES)})")
