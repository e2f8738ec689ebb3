"""The embedded event bus: Kafka's semantics, as the Protocol exposes them, inside one process.

Partitions are append-only logs with offsets from 0; a key picks its partition with the same murmur2
hash the Kafka client uses, so a key lands on the same partition number on both backends. Consumer
groups split partitions between live members; on every membership change each member restarts from
the group's committed offsets (Kafka's eager rebalance), which is what makes delivery at-least-once.
Each partition keeps at most `retention` messages; a consumer behind that jumps to the oldest kept.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

from mlplat.backends.bus import Message, TopicPartition
from mlplat.errors import BackendUnavailable

DEFAULT_RETENTION = 1_000_000


@dataclass
class _Partition:
    log: deque[Message] = field(default_factory=deque)
    base: int = 0  # offset of log[0]

    @property
    def end(self) -> int:
        return self.base + len(self.log)


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBus:
    def __init__(self, *, retention: int = DEFAULT_RETENTION) -> None:
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._retention = retention
        self._round_robin = itertools.count()
        self._closed = False

    @property
    def url(self) -> str:
        return "memory://"

    def _check(self) -> None:
        if self._closed:
            raise BackendUnavailable("bus memory:// is closed")

    async def connect(self) -> None:
        self._check()

    async def ping(self) -> None:
        self._check()

    async def create_topic(self, topic: str, *, partitions: int) -> None:
        self._check()
        if partitions < 1:
            raise ValueError(f"topic {topic!r} needs at least one partition, not {partitions}")
        if topic not in self._topics:
            self._topics[topic] = [_Partition() for _ in range(partitions)]
            self._rebalance_all()

    async def partitions_for(self, topic: str) -> int:
        self._check()
        return len(self._topics.get(topic, ()))

    def _partitions(self, topic: str) -> list[_Partition]:
        if topic not in self._topics:  # auto-create, as a default broker does
            self._topics[topic] = [_Partition()]
            self._rebalance_all()
        return self._topics[topic]

    def _append(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> tuple[int, int]:
        partitions = self._partitions(topic)
        if key is None:
            index = next(self._round_robin) % len(partitions)
        else:
            index = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
        part = partitions[index]
        offset = part.end
        part.log.append(Message(topic, index, offset, key, bytes(value), int(time.time() * 1000), tuple(headers)))
        while len(part.log) > self._retention:
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
        return MemoryConsumer(self, list(topics), group)

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        return {tp: self._topics[tp.topic][tp.partition].end if tp.topic in self._topics else 0 for tp in tps}

    async def aclose(self) -> None:
        self._closed = True
        for group in self._groups.values():
            for member in group.members:
                member.wakeup.set()

    # --- group coordination --------------------------------------------------------------------------
    def _join(self, member: MemoryConsumer) -> None:
        self._groups.setdefault(member.group, _Group()).members.append(member)
        self._rebalance(member.group)

    def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups.get(member.group)
        if group is not None and member in group.members:
            group.members.remove(member)
            self._rebalance(member.group)

    def _rebalance_all(self) -> None:
        for name in self._groups:
            self._rebalance(name)

    def _rebalance(self, name: str) -> None:
        """Round-robin every subscribed partition over the live members; everyone resumes from commits."""
        group = self._groups[name]
        for member in group.members:
            member.assigned = {}
        topics = sorted({t for m in group.members for t in m.topics})
        for topic in topics:
            subscribers = [m for m in group.members if topic in m.topics]
            for index in range(len(self._topics.get(topic, ()))):
                tp = TopicPartition(topic, index)
                owner = subscribers[index % len(subscribers)]
                owner.assigned[tp] = self._start_offset(group, tp)
        for member in group.members:
            member.wakeup.set()

    def _start_offset(self, group: _Group, tp: TopicPartition) -> int:
        part = self._topics[tp.topic][tp.partition]
        committed = group.committed.get(tp)
        return part.base if committed is None else max(committed, part.base)

    def _commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._groups.setdefault(group, _Group()).committed.update(offsets)

    def _committed(self, group: str, tp: TopicPartition) -> int | None:
        g = self._groups.get(group)
        return None if g is None else g.committed.get(tp)

    def _fetch(self, member: MemoryConsumer, max_records: int) -> dict[TopicPartition, list[Message]]:
        out: dict[TopicPartition, list[Message]] = {}
        budget = max_records
        for tp in sorted(member.assigned):
            if budget <= 0:
                break
            part = self._topics[tp.topic][tp.partition]
            position = max(member.assigned[tp], part.base)
            if position >= part.end:
                continue
            start = position - part.base
            batch = [part.log[i] for i in range(start, min(start + budget, len(part.log)))]
            out[tp] = batch
            member.assigned[tp] = batch[-1].offset + 1
            budget -= len(batch)
        return out


class MemoryConsumer:
    def __init__(self, bus: MemoryBus, topics: list[str], group: str) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self.assigned: dict[TopicPartition, int] = {}  # partition -> next offset to fetch
        self.wakeup = asyncio.Event()
        self._started = False
        self._paused = False

    async def start(self) -> None:
        self._bus._check()
        if not self._started:
            self._started = True
            self._bus._join(self)

    async def poll(self, *, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Message]]:
        if not self._started:
            raise RuntimeError("consumer not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._bus._check()
            self.wakeup.clear()
            if not self._paused:
                found = self._bus._fetch(self, max_records)
                if found:
                    return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                await asyncio.wait_for(self.wakeup.wait(), remaining)
            except TimeoutError:
                return {}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._bus._check()
        self._bus._commit(self.group, offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._bus._committed(self.group, tp)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def seek_to_committed(self) -> None:
        group = self._bus._groups[self.group]
        for tp in self.assigned:
            self.assigned[tp] = self._bus._start_offset(group, tp)

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
