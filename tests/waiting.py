"""Waiting in tests for something that has no event to await (a metric, a rebalance, a process exit, a message
on the bus), with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

from mlplat.backends.bus import BusConsumer, Message
from mlplat.errors import BackendUnavailable

T = TypeVar("T")


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


async def eventually(call: Callable[[], Awaitable[T]], limit_s: float = 30) -> T:
    """Retry a call that fails with BackendUnavailable while the client reconnects; fail after limit_s."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def receive(consumer: BusConsumer, value: bytes, limit_s: float = 30) -> Message:
    """Poll until the message with this value arrives (others may come first); fail after limit_s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for msgs in (await eventually(lambda: consumer.poll(max_records=100, timeout_s=0.5))).values():
            for m in msgs:
                if m.value == value:
                    return m
    raise AssertionError(f"{value!r} not received in {limit_s:g}s")


@contextlib.contextmanager
def run_lock(shared_dir: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock across the xdist workers (the directory is common to them all): each test holds
    `run` shared, a serial test holds it exclusively. Whoever takes `run` passes through `gate` first, and a
    serial test keeps `gate` until it ends, so that new tests wait behind it instead of starving it."""
    with (shared_dir / "xdist-gate.lock").open("a") as gate, (shared_dir / "xdist-run.lock").open("a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
