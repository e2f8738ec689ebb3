"""Waiting in tests for something that has no event to await (a metric, a rebalance, a process exit), with a
deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable

import psutil


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, limit_s: float = 30.0,
                every_s: float = 0.02) -> None:
    """Wait until check() holds (a coroutine function is awaited); fail naming `what` after limit_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached in {limit_s:g}s")
        await asyncio.sleep(every_s)


def processes_gone(processes: list[psutil.Process], what: str, limit_s: float = 15.0) -> None:
    """Wait until none of these processes runs any more (a zombie counts as gone); kill the rest and fail
    naming `what` after limit_s, so a failing test leaves nothing behind."""

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + limit_s
    while alive := [p for p in processes if running(p)]:
        if time.monotonic() > deadline:
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            raise AssertionError(f"{what}: still running after {limit_s:g} s: {[p.pid for p in alive]}")
        time.sleep(0.1)
