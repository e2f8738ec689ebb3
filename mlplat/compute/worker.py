"""One worker process that the balancer can pause, resume, kill and replace.

Each slot is a single-worker ProcessPoolExecutor (stdlib) started with the forkserver method, which is
safe in a process that has threads and a uvloop loop. One job at a time per slot means that when a
process dies only the job it ran fails: the slot gets a fresh process and every other job goes on,
so a BrokenProcessPool can never take the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import psutil

from mlplat.compute.job_types import WorkerDied

# Imported once by the fork server, so every worker starts with them loaded and the first real job
# (a file partition, a statistic) does not pay seconds of numpy/pyarrow import. Missing ones are ignored.
PRELOAD = ("numpy", "pyarrow", "pyarrow.parquet", "pyarrow.csv", "mlplat.ingest.files")


ORPHAN_CHECK_S = 1.0


def _start_worker(daemon_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the daemon decides how its workers stop, not the terminal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(daemon_pid,), name="orphan-watch", daemon=True).start()


def _exit_when_orphaned(daemon_pid: int) -> None:
    """A daemon killed outright (kill -9, the OOM killer) cannot shut its workers down, and a worker would
    wait on its job queue forever, keeping the fork server alive too: it exits once the daemon is gone.
    is_running() also compares the start time, so another process reusing the pid does not count."""
    try:
        daemon = psutil.Process(daemon_pid)
        while daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE:
            time.sleep(ORPHAN_CHECK_S)
    except psutil.NoSuchProcess:
        pass
    os._exit(1)


def _ready() -> int:
    return os.getpid()


class WorkerSlot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.paused = False
        self._executor: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Spawn the process and wait until it answers, so the first real job pays no start-up cost."""
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        self._executor = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_start_worker,
                                             initargs=(os.getpid(),))
        loop = asyncio.get_running_loop()
        try:
            self.pid = await loop.run_in_executor(self._executor, _ready)
        except BrokenProcessPool:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise WorkerDied(f"worker process {self.index} could not start (see its traceback above)") from None
        self.paused = False

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._executor is None:
            raise WorkerDied(f"worker {self.index} is not running")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except BrokenProcessPool:
            raise WorkerDied(
                f"worker process {self.pid} died while running {getattr(fn, '__name__', fn)!s} "
                "(killed, crashed or out of memory)"
            ) from None

    def pause(self) -> None:
        if self.pid is not None and not self.paused:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.pid is not None and self.paused:
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
                if self.paused:
                    os.kill(self.pid, signal.SIGCONT)  # a stopped process dies only once continued

    async def replace(self) -> None:
        """Throw the process away (killing it if needed) and start a fresh one."""
        await self.close()
        await self.start()

    async def close(self) -> None:
        self.kill()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self.pid = None
        self.paused = False
