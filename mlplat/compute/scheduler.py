"""Weighted fair order among priority classes (stride scheduling).

Each class carries a 'pass'; the waiting class with the smallest pass goes next and its pass grows by
1/weight. Ingest (weight 8) is therefore picked eight times as often as train (weight 1) under
contention, yet train is never starved. A class that was idle rejoins at the current minimum pass, so
idleness is not banked as credit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlplat.compute.job_types import Lane, Priority


@dataclass(eq=False)
class Job:
    id: int
    priority: Priority
    lane: Lane
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Any  # asyncio.Future of the caller
    deadline: float | None = None  # time.monotonic() by which it must finish
    preemptible: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    attempts: int = 0
    preempted: bool = False
    timed_out: bool = False

    @property
    def name(self) -> str:
        return str(getattr(self.fn, "__name__", type(self.fn).__name__))


class WeightedQueue:
    def __init__(self, weights: dict[Priority, float]) -> None:
        self._weights = weights
        self._queues: dict[Priority, deque[Job]] = {p: deque() for p in Priority}
        self._passes: dict[Priority, float] = dict.fromkeys(Priority, 0.0)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __iter__(self) -> Iterator[Job]:
        for q in self._queues.values():
            yield from q

    def count(self, priority: Priority) -> int:
        return len(self._queues[priority])

    def _floor(self) -> float:
        waiting = [self._passes[p] for p, q in self._queues.items() if q]
        return min(waiting) if waiting else max(self._passes.values())

    def push(self, job: Job, *, front: bool = False) -> None:
        queue = self._queues[job.priority]
        if not queue:
            self._passes[job.priority] = max(self._passes[job.priority], self._floor())
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)

    def remove(self, job: Job) -> None:
        self._queues[job.priority].remove(job)

    def pick(self, allowed: Callable[[Priority], bool] = lambda _: True) -> Job | None:
        candidates = [p for p, q in self._queues.items() if q and allowed(p)]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda p: (self._passes[p], p))
        self._passes[chosen] += 1.0 / self._weights[chosen]
        return self._queues[chosen].popleft()

    def oldest(self, priorities: tuple[Priority, ...]) -> Job | None:
        heads = [self._queues[p][0] for p in priorities if self._queues[p]]
        return min(heads, key=lambda j: j.enqueued) if heads else None
