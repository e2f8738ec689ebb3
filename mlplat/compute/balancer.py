"""The balancer: one place that decides where work runs and in what order.

    await balancer.run(parse_file, path, priority=Priority.INGEST, cost=Cost(expected_ms=300))

Three lanes (inline on the loop, a thread pool, a pool of worker processes) and four priority classes
with weights. The caller states the class and, where it knows, a cost hint; the balancer picks the lane.
It samples CPU with psutil and holds back low-priority process work while the machine is saturated,
and pauses training when ingest or serve work waits (seed 000: "Service A should be able to stop some
Service D workers").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

from mlplat.compute.job_types import Cost, Lane, Priority
from mlplat.compute.lanes import ProcessLane, ThreadLane, current_job
from mlplat.compute.scheduler import Job, WeightedQueue
from mlplat.config import BalancerSettings
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("balancer")
T = TypeVar("T")


class Balancer:
    """A supervised service. run() samples CPU; start() warms the worker processes."""

    name = "balancer"

    def __init__(self, settings: BalancerSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        weights = {p: settings.weights[p.label] for p in Priority}
        self._ids = itertools.count(1)
        self.cpu_percent = 0.0
        self.threads = ThreadLane(WeightedQueue(weights), metrics, settings.thread_workers)
        spares = settings.max_python_workers if settings.spare_workers is None else settings.spare_workers
        self.processes = ProcessLane(
            WeightedQueue(weights), metrics, capacity=settings.max_python_workers, spares=spares,
            preempt_after_s=settings.preempt_after_ms / 1000, low_priority_allowed=self._low_priority_allowed,
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    def _low_priority_allowed(self, low_priority_running: int) -> bool:
        """While the CPU is saturated, start no more monitor/train process work (but always allow one)."""
        return self.cpu_percent < self._settings.cpu_saturated_percent or low_priority_running == 0

    def choose_lane(self, cost: Cost | None) -> Lane:
        if cost is None or cost.expected_ms is None:
            return Lane.THREAD if cost is None or cost.releases_gil else Lane.PROCESS
        if cost.expected_ms <= self._settings.inline_max_ms:
            return Lane.INLINE
        return Lane.THREAD if cost.releases_gil else Lane.PROCESS

    async def run(
        self, fn: Callable[..., T], *args: Any, priority: Priority, cost: Cost | None = None,
        lane: Lane | None = None, deadline_s: float | None = None, preemptible: bool | None = None,
        **kwargs: Any,
    ) -> T:
        """Run fn(*args, **kwargs) where and when the balancer decides; raises what fn raises, or JobFailed.

        Process-lane functions must be top-level and picklable (see compute/tasks.py), with picklable
        arguments. Training jobs are preemptible by default: they may be paused, or cancelled and rerun.
        """
        chosen = lane or self.choose_lane(cost)
        if chosen is Lane.INLINE:
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self._metrics.job_run_seconds.labels(priority.label, "inline").observe(time.monotonic() - started)
        loop = asyncio.get_running_loop()
        job = Job(
            next(self._ids), priority, chosen, fn, args, kwargs, loop.create_future(),
            deadline=None if deadline_s is None else time.monotonic() + deadline_s,
            preemptible=priority is Priority.TRAIN if preemptible is None else preemptible,
        )
        target = self.threads if chosen is Lane.THREAD else self.processes
        target.submit(job)
        result: T = await job.future
        return result

    def run_from_thread(self, fn: Callable[..., T], *args: Any, priority: Priority, lane: Lane | None = None,
                        **kwargs: Any) -> T:
        """Submit from a thread-lane job. Thread work runs right here, in the caller's own slot: the parent
        is blocked waiting for it anyway, and taking a second slot could deadlock a full pool."""
        if lane is not Lane.PROCESS and current_job.get() is not None:
            return fn(*args, **kwargs)
        if self._loop is None:
            raise RuntimeError("balancer is not started")
        coro = self.run(fn, *args, priority=priority, lane=lane or Lane.PROCESS, **kwargs)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.threads.accepting = self.processes.accepting = True
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        await self.processes.start()
        log.info("balancer_started", process_workers=self._settings.max_python_workers,
                 spare_workers=len(self.processes.slots) - self._settings.max_python_workers,
                 thread_workers=self._settings.thread_workers)

    async def run_forever(self) -> None:
        await self.run_sampler()

    async def run_sampler(self) -> None:
        workers: dict[int, psutil.Process] = {}
        while True:
            await asyncio.sleep(self._settings.cpu_sample_s)
            self.cpu_percent = psutil.cpu_percent(interval=None)
            self._metrics.cpu_percent.set(self.cpu_percent)
            for index, pid in self.processes.worker_pids().items():
                proc = workers.get(index)
                if proc is None or proc.pid != pid:
                    proc = workers[index] = psutil.Process(pid)
                with contextlib.suppress(psutil.Error):
                    self._metrics.worker_cpu_percent.labels(str(index)).set(proc.cpu_percent(interval=None))
            self.processes.dispatch()  # saturation may have ended: start what was held back

    async def stop(self, drain_s: float = 10.0) -> None:
        """Cancel queued jobs, give running ones until the drain deadline, then stop the workers."""
        deadline = time.monotonic() + drain_s
        for slot in list(self.processes.paused):
            slot.resume()
        self.processes.paused.clear()
        await asyncio.gather(self.threads.drain(deadline), self.processes.drain(deadline))
        await self.processes.close()
        await self.processes.drain(time.monotonic() + 5)  # jobs of killed workers settle as BalancerStopped
        await self.threads.close()


class BalancerService:
    """Adapter giving the supervisor its start/run/stop over one Balancer."""

    name = "balancer"

    def __init__(self, balancer: Balancer, drain_s: float) -> None:
        self.balancer = balancer
        self._drain_s = drain_s

    async def start(self) -> None:
        await self.balancer.start()

    async def run(self) -> None:
        await self.balancer.run_forever()

    async def stop(self) -> None:
        await self.balancer.stop(self._drain_s)
