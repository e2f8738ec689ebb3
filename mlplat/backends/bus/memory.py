"""The embedded event bus: Kafka's semantics, as the Protocol exposes them, inside one process.

Partitions are append-only logs with offsets from 0; a key picks its partition with the same murmur2 hash
the Kafka client's default partitioner uses, so a key lands on the same partition number on both backends.
Keyless messages go round-robin. Publishing to an unknown topic creates it with one partition, as a broker
with default settings does.

Consumer groups split partitions between live members (round-robin over the sorted partitions, like
aiokafka's default assignor). On every membership change of a group, each member restarts its partitions
from the group's committed offsets (Kafka's eager rebalance): that is what makes delivery at-least-once.
Only the member that owns a partition may commit it, so a member that lost it cannot overwrite the new
owner's progress.

Memory is bounded: each partition keeps at most `retention` messages and drops the oldest; a consumer behind
the retained range jumps to the oldest kept one, as Kafka's auto.offset.reset=earliest does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

from mlplat.backends import compact
from mlplat.backends.bus import Message, TopicPartition
from mlplat.errors import BackendError, BackendUnavailable, NotFound

DEFAULT_RETENTION = 1_000_000
"""Messages kept per partition: far more than the embedded daemon's consumers ever lag behind."""


def partition_for_key(key: bytes, partitions: int) -> int:
    """The Kafka client's default partitioner (aiokafka and the Java client agree on it)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class _Partition:
    log: deque[Message] = field(default_factory=deque)
    base: int = 0  # offset of log[0]; grows as retention drops the oldest

    @property
    def end(self) -> int:
        return self.base + len(self.log)


@dataclass
class _Topic:
    partitions: list[_Partition]
    round_robin: Iterator[int]


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBus:
    """An EventBus for one process and one event loop; nothing survives a restart."""

    def __init__(self, *, retention: int = DEFAULT_RETENTION) -> None:
        if retention < 1:
            raise ValueError(f"retention must keep at least one message per partition, not {retention}")
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._retention = retention
        self._closed = False

    @property
    def url(self) -> str:
        return "memory://"

    def _check(self) -> None:
        if self._closed:
            raise BackendUnavailable("bus memory:// is closed")

    async def connect(self) -> None:
        self._closed = False

    async def ping(self) -> None:
        self._check()

    async def create_topic(self, topic: str, *, partitions: int) -> None:
        """Create the topic if it does not exist; an existing topic keeps its partition count, as on Kafka."""
        self._check()
        if partitions < 1:
            raise ValueError(f"topic {topic!r} needs at least one partition, not {partitions}")
        if topic not in self._topics:
            self._add_topic(topic, partitions)

    async def partitions_for(self, topic: str) -> int:
        """The topic's partition count; NotFound if it does not exist."""
        self._check()
        return len(self._topic(topic).partitions)

    def _topic(self, topic: str) -> _Topic:
        found = self._topics.get(topic)
        if found is None:
            raise NotFound(f"bus memory://: topic {topic!r} does not exist")
        return found

    def _add_topic(self, topic: str, partitions: int) -> _Topic:
        created = _Topic([_Partition() for _ in range(partitions)], itertools.cycle(range(partitions)))
        self._topics[topic] = created
        for name, group in self._groups.items():  # Kafka notices new topics through metadata, then rebalances
            if any(topic in member.topics for member in group.members):
                self._rebalance(name)
        return created

    def _append(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        found = self._topics.get(topic) or self._add_topic(topic, 1)  # auto-create, as a default broker does
        index = next(found.round_robin) if key is None else partition_for_key(key, len(found.partitions))
        part = found.partitions[index]
        offset = part.end
        part.log.append(Message(
            topic, index, offset, None if key is None else compact(key), compact(value), int(time.time() * 1000),
            tuple((str(k), compact(v)) for k, v in headers),
        ))
        if len(part.log) > self._retention:
            part.log.popleft()
            part.base += 1
        return index, offset

    def _wake(self, topic: str) -> None:
        for group in self._groups.values():
            for member in group.members:
                if topic in member.topics:
                    member.wakeup.set()

    async def publish(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        self._check()
        result = self._append(topic, key, value, headers)
        self._wake(topic)
        return result

    async def publish_many(self, topic: str, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        self._check()
        for key, value in items:
            self._append(topic, key, value, ())
        self._wake(topic)

    def consumer(self, topics: Sequence[str], *, group: str) -> MemoryConsumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        return MemoryConsumer(self, list(topics), group)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to be written per partition; NotFound for a missing topic or partition."""
        self._check()
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            partitions = self._topic(tp.topic).partitions
            if not 0 <= tp.partition < len(partitions):
                raise NotFound(f"bus memory://: topic {tp.topic!r} has no partition {tp.partition}")
            out[tp] = partitions[tp.partition].end
        return out

    async def aclose(self) -> None:
        """Close the bus; pending polls raise BackendUnavailable. The logs are kept for a later connect()."""
        self._closed = True
        for group in self._groups.values():
            for member in group.members:
                member.wakeup.set()

    # --- group coordination (called by MemoryConsumer) ---------------------------------------------------
    def _join(self, member: MemoryConsumer) -> None:
        self._groups.setdefault(member.group, _Group()).members.append(member)
        self._rebalance(member.group)

    def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups.get(member.group)
        if group is not None and member in group.members:
            group.members.remove(member)
            self._rebalance(member.group)

    def _rebalance(self, name: str) -> None:
        """Deal the subscribed partitions round-robin to the live members; all resume from the commits."""
        group = self._groups[name]
        for member in group.members:
            member.assigned = {}
        if group.members:
            subscribed = sorted(
                TopicPartition(topic, index)
                for topic in {t for m in group.members for t in m.topics} if topic in self._topics
                for index in range(len(self._topics[topic].partitions))
            )
            dealer = itertools.cycle(group.members)
            for tp in subscribed:
                owner = next(dealer)
                while tp.topic not in owner.topics:  # someone subscribes to it, so this ends
                    owner = next(dealer)
                owner.assigned[tp] = self._start_offset(group, tp)
        for member in group.members:
            member.wakeup.set()

    def _start_offset(self, group: _Group, tp: TopicPartition) -> int:
        part = self._topics[tp.topic].partitions[tp.partition]
        committed = group.committed.get(tp)
        return part.base if committed is None else max(committed, part.base)

    def _fetch(self, member: MemoryConsumer, max_records: int) -> dict[TopicPartition, list[Message]]:
        """Up to max_records from the member's positions, starting one partition further on each call."""
        owned = sorted(member.assigned)
        if not owned:
            return {}
        member.fetch_turn = (member.fetch_turn + 1) % len(owned)
        out: dict[TopicPartition, list[Message]] = {}
        budget = max_records
        for tp in owned[member.fetch_turn:] + owned[:member.fetch_turn]:
            part = self._topics[tp.topic].partitions[tp.partition]
            position = max(member.assigned[tp], part.base)  # behind the retained range: jump to the oldest
            if position >= part.end:
                continue
            start = position - part.base
            batch = list(itertools.islice(part.log, start, min(start + budget, len(part.log))))
            out[tp] = batch
            member.assigned[tp] = batch[-1].offset + 1
            budget -= len(batch)
            if budget == 0:
                break
        return out


class MemoryConsumer:
    """One member of a group on a MemoryBus."""

    def __init__(self, bus: MemoryBus, topics: list[str], group: str) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self.assigned: dict[TopicPartition, int] = {}  # owned partition -> next offset to fetch
        self.fetch_turn = 0
        self.wakeup = asyncio.Event()  # set on new messages, rebalance, resume and close
        self._started = False
        self._paused = False

    async def start(self) -> None:
        self._bus._check()
        if not self._started:
            self._started = True
            self._bus._join(self)

    async def poll(self, *, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Message]]:
        if max_records < 1:
            raise ValueError(f"max_records must be positive, not {max_records}")
        if not self._started:
            raise RuntimeError("poll() before start() or after stop()")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            self._bus._check()
            self.wakeup.clear()  # before looking, so a publish in between is not missed
            if not self._paused:
                found = self._bus._fetch(self, max_records)
                if found:
                    return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                async with asyncio.timeout(remaining):
                    await self.wakeup.wait()
            except TimeoutError:
                return {}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._bus._check()
        lost = sorted(tp for tp in offsets if tp not in self.assigned)
        if lost:
            raise BackendError(
                f"bus memory://: commit refused, {lost[0].topic}[{lost[0].partition}] is not assigned to this"
                " member (the group rebalanced); its messages will be delivered again"
            )
        self._bus._groups[self.group].committed.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        group = self._bus._groups.get(self.group)
        return None if group is None else group.committed.get(tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def seek_to_committed(self) -> None:
        group = self._bus._groups.get(self.group)
        if group is None:
            return
        for tp in self.assigned:
            self.assigned[tp] = self._bus._start_offset(group, tp)
        self.wakeup.set()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.wakeup.set()

    async def stop(self) -> None:
        if self._started:
            self._started = False
            self._bus._leave(self)
            self.assigned = {}
