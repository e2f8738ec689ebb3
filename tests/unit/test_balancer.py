"""The balancer: lane choice, weighted order, preemption and requeue, worker faults, deadlines, shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator

import psutil
import pytest

from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import BalancerStopped, Cost, DeadlineExceeded, Lane, Priority, WorkerDied
from mlplat.compute.tasks import deterministic_work, die, noop, sleep_then
from mlplat.config import BalancerSettings
from mlplat.observability.metrics import Metrics
from tests.waiting import processes_gone

LONG_WORK = 25_000_000  # ~2-4 s of pure Python on one core


def settings(**overrides: object) -> BalancerSettings:
    base: dict[str, object] = {"max_python_workers": 1, "spare_workers": 1, "thread_workers": 2,
                               "preempt_after_ms": 2.0, "cpu_saturated_percent": 100.0}
    return BalancerSettings(**{**base, **overrides})


@pytest.fixture
async def balancer(request: pytest.FixtureRequest) -> AsyncIterator[Balancer]:
    overrides = getattr(request, "param", {})
    b = Balancer(settings(**overrides), Metrics())
    await b.start()
    yield b
    await b.stop(drain_s=2)


def test_lane_follows_the_cost_hint() -> None:
    """Cheap work runs inline, GIL-releasing work on threads, heavy pure Python in processes."""
    b = Balancer(settings(), Metrics())
    assert b.choose_lane(Cost(expected_ms=0.1)) is Lane.INLINE
    assert b.choose_lane(Cost(expected_ms=50, releases_gil=True)) is Lane.THREAD
    assert b.choose_lane(Cost(expected_ms=500)) is Lane.PROCESS
    assert b.choose_lane(None) is Lane.THREAD


async def test_jobs_run_in_every_lane(balancer: Balancer) -> None:
    """Results and exceptions come back from inline, thread and process lanes alike."""
    assert await balancer.run(sum, [1, 2], priority=Priority.SERVE, lane=Lane.INLINE) == 3
    assert await balancer.run(sum, [1, 2], priority=Priority.SERVE, lane=Lane.THREAD) == 3
    assert await balancer.run(deterministic_work, 10, 1, priority=Priority.SERVE, lane=Lane.PROCESS) == \
        deterministic_work(10, 1)
    with pytest.raises(ZeroDivisionError):
        await balancer.run(divmod, 1, 0, priority=Priority.SERVE, lane=Lane.PROCESS)


@pytest.mark.parametrize("balancer", [{"thread_workers": 1, "weights": {"ingest": 4, "serve": 2, "monitor": 2,
                                                                         "train": 1}}], indirect=True)
async def test_contention_is_weighted_not_strict(balancer: Balancer) -> None:
    """Under contention ingest goes first most of the time, yet training is not starved until ingest is done."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(balancer.run(gate.wait, 10, priority=Priority.SERVE, lane=Lane.THREAD))
    await asyncio.sleep(0.05)
    order: list[str] = []

    def record(tag: str) -> None:
        order.append(tag)

    jobs = [balancer.run(record, f"train{i}", priority=Priority.TRAIN, lane=Lane.THREAD) for i in range(10)]
    jobs += [balancer.run(record, f"ingest{i}", priority=Priority.INGEST, lane=Lane.THREAD) for i in range(10)]
    waiting = [asyncio.ensure_future(j) for j in jobs]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, *waiting)
    first_half = order[:10]
    assert sum(tag.startswith("ingest") for tag in first_half) >= 7
    assert any(tag.startswith("train") for tag in first_half)  # weighted, so train gets a turn early
    assert [t for t in order if t.startswith("ingest")] == [f"ingest{i}" for i in range(10)]


async def test_training_is_paused_for_ingest_and_finishes_with_the_same_result(balancer: Balancer) -> None:
    """With every worker training, an ingest job preempts it (pause) and the training result is unchanged."""
    train = asyncio.ensure_future(
        balancer.run(deterministic_work, LONG_WORK, 7, priority=Priority.TRAIN, lane=Lane.PROCESS)
    )
    await asyncio.sleep(0.3)
    assert await balancer.run(deterministic_work, 1000, 3, priority=Priority.INGEST, lane=Lane.PROCESS) == \
        deterministic_work(1000, 3)
    assert not train.done()
    assert balancer._metrics.jobs_preempted._value.get() == 1
    assert await asyncio.wait_for(train, 60) == deterministic_work(LONG_WORK, 7)


@pytest.mark.parametrize("balancer", [{"spare_workers": 0}], indirect=True)
async def test_without_a_spare_training_is_cancelled_requeued_and_rerun(balancer: Balancer) -> None:
    """No warm spare: the training job is cancelled for ingest, requeued, and later completes identically."""
    train = asyncio.ensure_future(
        balancer.run(deterministic_work, LONG_WORK // 5, 11, priority=Priority.TRAIN, lane=Lane.PROCESS)
    )
    await asyncio.sleep(0.3)
    await balancer.run(noop, priority=Priority.INGEST, lane=Lane.PROCESS)
    assert await asyncio.wait_for(train, 60) == deterministic_work(LONG_WORK // 5, 11)
    assert balancer._metrics.jobs_preempted._value.get() == 1
    assert balancer._metrics.worker_restarts._value.get() == 1


@pytest.mark.parametrize("balancer", [{"max_python_workers": 2, "spare_workers": 0}], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
async def test_a_dying_worker_fails_only_its_job(balancer: Balancer, sig: int) -> None:
    """A worker killed, segfaulting or aborting mid-job fails that job clearly; other and later jobs succeed."""
    other = asyncio.ensure_future(balancer.run(sleep_then, 0.5, 42, priority=Priority.SERVE, lane=Lane.PROCESS))
    with pytest.raises(WorkerDied, match="died"):
        await balancer.run(die, sig, priority=Priority.SERVE, lane=Lane.PROCESS)
    assert await other == 42
    for _ in range(3):
        assert await balancer.run(sleep_then, 0, 1, priority=Priority.SERVE, lane=Lane.PROCESS) == 1
    assert balancer._metrics.worker_restarts._value.get() == 1


async def test_deadlines_cancel_jobs(balancer: Balancer) -> None:
    """A process job past its deadline is killed; a thread job's caller is released at the deadline."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded):
        await balancer.run(sleep_then, 30, 0, priority=Priority.SERVE, lane=Lane.PROCESS, deadline_s=0.3)
    with pytest.raises(DeadlineExceeded):
        await balancer.run(sleep_then, 1.0, 0, priority=Priority.SERVE, lane=Lane.THREAD, deadline_s=0.2)
    assert loop.time() - started < 20
    assert await balancer.run(sleep_then, 0, 5, priority=Priority.SERVE, lane=Lane.PROCESS) == 5


@pytest.mark.parametrize("balancer", [{"thread_workers": 2}], indirect=True)
async def test_jobs_submitting_sub_jobs_cannot_deadlock(balancer: Balancer) -> None:
    """Thread jobs that wait for sub-jobs of their own finish even when they hold every thread."""

    def parent(n: int) -> int:
        return sum(balancer.run_from_thread(sleep_then, 0.01, i, priority=Priority.MONITOR) for i in range(n))

    results = await asyncio.wait_for(
        asyncio.gather(*(balancer.run(parent, 3, priority=Priority.MONITOR, lane=Lane.THREAD) for _ in range(4))),
        30,
    )
    assert results == [3, 3, 3, 3]


async def test_saturated_cpu_holds_back_low_priority_process_work(balancer: Balancer) -> None:
    """While CPU is saturated a second low-priority job waits; ingest does not; both run once it eases."""
    balancer._settings = balancer._settings.model_copy(update={"cpu_saturated_percent": 50.0})
    balancer.processes.capacity = 2
    balancer.cpu_percent = 99.0
    first = asyncio.ensure_future(balancer.run(sleep_then, 0.5, 1, priority=Priority.TRAIN, lane=Lane.PROCESS))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(balancer.run(sleep_then, 0, 2, priority=Priority.MONITOR, lane=Lane.PROCESS))
    await asyncio.sleep(0.2)
    assert balancer.processes.queue.count(Priority.MONITOR) == 1  # held back, not started
    await balancer.run(noop, priority=Priority.INGEST, lane=Lane.PROCESS)
    balancer.cpu_percent = 10.0
    balancer.processes.dispatch()
    assert list(await asyncio.gather(first, second)) == [1, 2]


async def test_shutdown_cancels_queued_and_waits_for_running() -> None:
    """stop() fails waiting jobs with BalancerStopped and lets the running one finish."""
    b = Balancer(settings(spare_workers=0), Metrics())
    await b.start()
    running = asyncio.ensure_future(b.run(sleep_then, 0.5, 9, priority=Priority.SERVE, lane=Lane.PROCESS))
    await asyncio.sleep(0.1)
    queued = asyncio.ensure_future(b.run(sleep_then, 0, 1, priority=Priority.SERVE, lane=Lane.PROCESS))
    await asyncio.sleep(0.05)
    await b.stop(drain_s=5)
    assert await running == 9
    with pytest.raises(BalancerStopped):
        await queued
    with pytest.raises(BalancerStopped):
        await b.run(noop, priority=Priority.SERVE, lane=Lane.THREAD)


async def test_the_daemon_survives_a_worker_killed_from_outside(tmp_path) -> None:
    """kill -9 of a worker process mid-job: that job fails, the daemon stays ready and keeps serving jobs."""
    import os
    import signal

    from mlplat.config import load_settings
    from mlplat.daemon import Daemon

    daemon = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 2, "spare_workers": 0},
    ))
    await daemon.start()
    try:
        victim = asyncio.ensure_future(
            daemon.balancer.run(sleep_then, 30, 0, priority=Priority.MONITOR, lane=Lane.PROCESS))
        bystander = asyncio.ensure_future(
            daemon.balancer.run(sleep_then, 0.5, 7, priority=Priority.SERVE, lane=Lane.PROCESS))
        await asyncio.sleep(0.3)
        (pid,) = [slot.pid for slot, job in daemon.balancer.processes.running.items() if job.args[0] == 30]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match=str(pid)):
            await victim
        assert await bystander == 7
        assert await daemon.balancer.run(sleep_then, 0, 3, priority=Priority.SERVE, lane=Lane.PROCESS) == 3
        assert daemon.readiness.ready
        text = daemon.metrics.render().decode()
        assert "mlplat_worker_restarts_total 1.0" in text and "mlplat_jobs_queued" in text
    finally:
        await daemon.stop()


def test_workers_of_a_daemon_killed_outright_exit_by_themselves() -> None:
    """kill -9 (or the OOM killer) gives the daemon no chance to stop its worker processes: they and the fork
    server must go on their own, not wait on their job queues forever (found: e2e tests left 4 workers and a
    fork server behind per SIGKILLed daemon)."""
    code = ("import asyncio\nfrom mlplat.compute.worker import WorkerSlot\n"
            "async def main():\n    slots = [WorkerSlot(0), WorkerSlot(1)]\n"
            "    for s in slots:\n        await s.start()\n    print('ready', flush=True)\n"
            "    await asyncio.sleep(3600)\nasyncio.run(main())")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 3  # the fork server and two workers
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    processes_gone(family, "worker processes of a killed daemon")
