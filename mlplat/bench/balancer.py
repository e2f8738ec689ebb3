"""`mlplat bench balancer`: per-lane overhead and throughput for no-op jobs, and how long ingest waits
for a worker when idle versus when CPU-heavy training fills every worker process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import numpy as np

from mlplat.bench import BenchResult
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Lane, Priority
from mlplat.compute.tasks import burn_cpu, noop, started_at
from mlplat.config import BalancerSettings
from mlplat.observability.metrics import Metrics


async def _overhead_us(balancer: Balancer, lane: Lane, jobs: int) -> float:
    """Mean time per no-op job run one after another, minus a direct call: what the lane adds."""
    direct = time.perf_counter()
    for _ in range(jobs):
        noop()
    direct_s = time.perf_counter() - direct
    started = time.perf_counter()
    for _ in range(jobs):
        await balancer.run(noop, priority=Priority.SERVE, lane=lane)
    return (time.perf_counter() - started - direct_s) / jobs * 1e6


async def _jobs_per_s(balancer: Balancer, lane: Lane, jobs: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(balancer.run(noop, priority=Priority.SERVE, lane=lane) for _ in range(jobs)))
    return jobs / (time.perf_counter() - started)


async def _ingest_waits_ms(balancer: Balancer, samples: int, spacing_s: float) -> list[float]:
    waits = []
    for _ in range(samples):
        submitted = time.time()
        began = await balancer.run(started_at, priority=Priority.INGEST, lane=Lane.PROCESS)
        waits.append((began - submitted) * 1000)
        await asyncio.sleep(spacing_s)
    return waits


async def _measure(workers: int, jobs: int, samples: int, progress: Callable[[str], None]) -> dict[str, float]:
    settings = BalancerSettings(max_python_workers=workers, thread_workers=max(4, workers * 2))
    balancer = Balancer(settings, Metrics())
    await balancer.start()
    metrics: dict[str, float] = {}
    training: list[asyncio.Future[int]] = []
    try:
        for lane in Lane:
            progress(f"{lane.value} lane: overhead and throughput")
            n = jobs if lane is not Lane.PROCESS else max(jobs // 10, 100)
            metrics[f"{lane.value}_overhead_us"] = round(await _overhead_us(balancer, lane, n), 2)
            metrics[f"{lane.value}_jobs_per_s"] = round(await _jobs_per_s(balancer, lane, n), 1)
        progress("ingest wait, idle")
        idle = await _ingest_waits_ms(balancer, samples, 0.01)
        progress(f"ingest wait while {workers} training jobs fill every worker")
        training += [
            asyncio.ensure_future(balancer.run(burn_cpu, 3600, i, priority=Priority.TRAIN, lane=Lane.PROCESS))
            for i in range(workers)
        ]
        await asyncio.sleep(0.5)
        loaded = await _ingest_waits_ms(balancer, samples, 0.01)
        preempted = balancer._metrics.jobs_preempted._value.get()
    finally:
        await balancer.stop(drain_s=0.5)  # the endless training jobs end as BalancerStopped
        await asyncio.gather(*training, return_exceptions=True)
    p99_idle = float(np.percentile(idle, 99))
    p99_loaded = float(np.percentile(loaded, 99))
    metrics.update({
        "ingest_wait_p50_ms_idle": round(float(np.percentile(idle, 50)), 3),
        "ingest_wait_p99_ms_idle": round(p99_idle, 3),
        "ingest_wait_p50_ms_under_training": round(float(np.percentile(loaded, 50)), 3),
        "ingest_wait_p99_ms_under_training": round(p99_loaded, 3),
        "loaded_to_idle_p99_ratio": round(p99_loaded / max(p99_idle, 1e-6), 2),
        "preemptions": float(preempted),
    })
    return metrics


def run(jobs: int, samples: int, workers: int | None, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    count = workers or os.cpu_count() or 2
    metrics = asyncio.run(_measure(count, jobs, samples, progress))
    return BenchResult("balancer", {"jobs": jobs, "samples": samples, "workers": count}, metrics)
