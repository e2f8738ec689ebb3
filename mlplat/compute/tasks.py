"""Functions that run in worker processes: top-level, picklable, given data rather than live clients."""

from __future__ import annotations

import os
import signal
import time


def noop() -> None:
    return None


def burn_cpu(seconds: float, seed: int = 0) -> int:
    """Pure-Python CPU work for a fixed time; returns a checksum that depends only on the seed and count."""
    deadline = time.process_time() + seconds
    acc, i = seed, 0
    while time.process_time() < deadline:
        for _ in range(10_000):
            acc = (acc * 1_103_515_245 + 12_345) & 0x7FFFFFFF
        i += 1
    return i


def deterministic_work(n: int, seed: int) -> int:
    """CPU work whose result depends only on its inputs, for preemption tests (a rerun gives the same)."""
    acc = seed
    for _ in range(n):
        acc = (acc * 1_103_515_245 + 12_345) & 0x7FFFFFFF
    return acc


def die(sig: int = signal.SIGKILL) -> None:
    """Kill the worker process running this job (fault tests)."""
    os.kill(os.getpid(), sig)


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def started_at() -> float:
    """Wall-clock time at which the worker began the job (the benchmark's measure of waiting)."""
    return time.time()
