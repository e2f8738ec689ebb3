"""The thread and process lanes: bounded workers, weighted order, deadlines, faults and preemption."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlplat.compute.job_types import BalancerStopped, DeadlineExceeded, Lane, Priority, WorkerDied
from mlplat.compute.scheduler import Job, WeightedQueue
from mlplat.compute.worker import WorkerSlot
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("balancer")

# set while a thread-lane job runs, so work it submits runs in its own thread instead of waiting for a slot
current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar("current_job", default=None)

URGENT = (Priority.INGEST, Priority.SERVE)


def _settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


class _Lane:
    lane: Lane

    def __init__(self, queue: WeightedQueue, metrics: Metrics) -> None:
        self.queue = queue
        self.metrics = metrics
        self.busy = 0
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        # label lookups cost microseconds each; the lane updates these on every dispatch
        self._queued_gauges = {p: metrics.jobs_queued.labels(p.label, self.lane.value) for p in Priority}
        self._busy_gauge = metrics.workers_busy.labels(self.lane.value)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def submit(self, job: Job) -> None:
        if not self.accepting:
            _settle(job, error=BalancerStopped("balancer is shutting down; job refused"))
            return
        self.queue.push(job)
        self._gauge()
        self.dispatch()

    def dispatch(self) -> None:
        raise NotImplementedError

    def _gauge(self) -> None:
        for p, gauge in self._queued_gauges.items():
            gauge.set(self.queue.count(p))
        self._busy_gauge.set(self.busy)

    def _expired(self, job: Job) -> bool:
        if job.deadline is not None and time.monotonic() >= job.deadline:
            _settle(job, error=DeadlineExceeded(f"job {job.name} waited past its deadline"))
            return True
        return False

    def _started(self, job: Job) -> float:
        now = time.monotonic()
        self.metrics.job_wait_seconds.labels(job.priority.label).observe(now - job.enqueued)
        return now

    def _finished(self, job: Job, started: float) -> None:
        self.metrics.job_run_seconds.labels(job.priority.label, self.lane.value).observe(time.monotonic() - started)

    async def drain(self, deadline: float) -> None:
        """Refuse new work, fail what waits, and give running jobs until the deadline."""
        self.accepting = False
        while (job := self.queue.pick()) is not None:
            _settle(job, error=BalancerStopped("balancer stopped before the job ran"))
        self._gauge()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(deadline - time.monotonic(), 0))


class ThreadLane(_Lane):
    lane = Lane.THREAD

    def __init__(self, queue: WeightedQueue, metrics: Metrics, workers: int) -> None:
        super().__init__(queue, metrics)
        self.capacity = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="balancer")

    def dispatch(self) -> None:
        while self.busy < self.capacity and (job := self.queue.pick()) is not None:
            if self._expired(job):
                continue
            self.busy += 1
            self._spawn(self._execute(job))
        self._gauge()

    async def _execute(self, job: Job) -> None:
        started = self._started(job)
        ctx = contextvars.copy_context()
        ctx.run(current_job.set, job)
        call = functools.partial(ctx.run, job.fn, *job.args, **job.kwargs)
        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        try:
            try:
                if job.deadline is None:
                    result = await future
                else:
                    async with asyncio.timeout(max(job.deadline - time.monotonic(), 0)):
                        result = await asyncio.shield(future)
            except TimeoutError:
                # a thread cannot be killed: the caller is told now, the slot stays taken until it returns
                _settle(job, error=DeadlineExceeded(f"job {job.name} exceeded its deadline"))
                with contextlib.suppress(Exception):
                    await future
            except Exception as e:
                _settle(job, error=e)
            else:
                _settle(job, result)
        finally:
            self._finished(job, started)
            self.busy -= 1
            self.dispatch()

    async def close(self) -> None:
        await asyncio.to_thread(self.executor.shutdown, wait=False, cancel_futures=True)


class ProcessLane(_Lane):
    """`capacity` jobs run at once; spare warm processes take over while paused training jobs wait."""

    lane = Lane.PROCESS

    def __init__(
        self, queue: WeightedQueue, metrics: Metrics, *, capacity: int, spares: int, preempt_after_s: float,
        low_priority_allowed: Callable[[int], bool],
    ) -> None:
        super().__init__(queue, metrics)
        self.capacity = capacity
        self.slots = [WorkerSlot(i) for i in range(capacity + spares)]
        self.idle: list[WorkerSlot] = []
        self.running: dict[WorkerSlot, Job] = {}
        self.paused: list[WorkerSlot] = []
        self._preempt_after_s = preempt_after_s
        self._low_priority_allowed = low_priority_allowed
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await asyncio.gather(*(slot.start() for slot in self.slots))
        self.idle = list(self.slots)

    @property
    def active(self) -> int:
        return len(self.running) - len(self.paused)

    def _low_running(self) -> int:
        return sum(
            1 for slot, job in self.running.items() if job.priority >= Priority.MONITOR and slot not in self.paused
        )

    def _allowed(self, priority: Priority) -> bool:
        return priority < Priority.MONITOR or self._low_priority_allowed(self._low_running())

    def dispatch(self) -> None:
        while self.active < self.capacity:
            urgent = self.queue.oldest(URGENT)
            if self.paused and urgent is None:
                slot = self.paused.pop()
                slot.resume()
                log.debug("job_resumed", job=self.running[slot].name)
                continue
            if not self.idle:
                break
            overdue = urgent is not None and time.monotonic() - urgent.enqueued >= self._preempt_after_s
            # work we preempted training for must get the freed worker, not the training job again
            job = self.queue.pick(lambda p: p in URGENT) if overdue else self.queue.pick(self._allowed)
            if job is None:
                break
            if self._expired(job):
                continue
            slot = self.idle.pop()
            self.running[slot] = job
            self._spawn(self._execute(job, slot))
        self.busy = self.active
        self._gauge()
        self._arm_preemption()

    def _arm_preemption(self) -> None:
        urgent = self.queue.oldest(URGENT)
        if urgent is None or self.active < self.capacity or self._timer is not None:
            return
        delay = max(urgent.enqueued + self._preempt_after_s - time.monotonic(), 0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._preempt)

    def _preempt(self) -> None:
        """Free a worker for waiting ingest/serve work by pausing (or, without a spare, cancelling) training."""
        self._timer = None
        if self.queue.oldest(URGENT) is None or self.active < self.capacity:
            self.dispatch()
            return
        victims = [
            (slot, job) for slot, job in self.running.items()
            if job.priority == Priority.TRAIN and job.preemptible and not job.preempted and slot not in self.paused
        ]
        if not victims:
            return
        slot, job = max(victims, key=lambda sj: sj[1].enqueued)  # the newest loses the least work
        self.metrics.jobs_preempted.inc()
        if self.idle:
            slot.pause()
            self.paused.append(slot)
            log.debug("job_paused", job=job.name, reason="ingest/serve backlog")
        else:
            job.preempted = True
            slot.kill()
            log.info("job_cancelled_for_requeue", job=job.name, reason="ingest/serve backlog")
        self.dispatch()

    async def _execute(self, job: Job, slot: WorkerSlot) -> None:
        started = self._started(job)
        run = asyncio.ensure_future(slot.run(job.fn, job.args, job.kwargs))
        replace = False
        try:
            timeout = None if job.deadline is None else max(job.deadline - time.monotonic(), 0)
            try:
                async with asyncio.timeout(timeout):
                    result = await asyncio.shield(run)
            except TimeoutError:
                job.timed_out = True
                slot.kill()
                with contextlib.suppress(Exception):
                    await run
                raise WorkerDied("deadline") from None
        except WorkerDied as e:
            replace = True
            if job.preempted and self.accepting:
                job.preempted = False
                job.attempts += 1
                self.queue.push(job, front=True)  # reruns from scratch: same inputs, same result
            elif job.timed_out:
                _settle(job, error=DeadlineExceeded(f"job {job.name} exceeded its deadline and was cancelled"))
            elif not self.accepting:
                _settle(job, error=BalancerStopped(f"balancer stopped while {job.name} ran (drain deadline passed)"))
            else:
                log.error("worker_died", job=job.name, error=str(e))
                _settle(job, error=e)
        except Exception as e:
            _settle(job, error=e)
        else:
            _settle(job, result)
        finally:
            self._finished(job, started)
            del self.running[slot]
            if slot in self.paused:
                self.paused.remove(slot)
            if replace and self.accepting:
                self.metrics.worker_restarts.inc()
                self._spawn(self._replace(slot))
            else:
                self.idle.append(slot)
            self.dispatch()

    async def _replace(self, slot: WorkerSlot) -> None:
        try:
            await slot.replace()
        except Exception as e:  # no process could be started: keep the lane going with one slot fewer
            log.error("worker_restart_failed", worker=slot.index, error=str(e))
            return
        if self.accepting:
            self.idle.append(slot)
            self.dispatch()

    def worker_pids(self) -> dict[int, int]:
        return {slot.index: slot.pid for slot in self.slots if slot.pid is not None}

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for slot in self.paused:
            slot.resume()
        await asyncio.gather(*(slot.close() for slot in self.slots), return_exceptions=True)
