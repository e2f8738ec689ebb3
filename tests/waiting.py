"""Waiting in tests for something that has no event to await (a metric, a rebalance), with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(check: Callable[[], bool], what: str, limit_s: float = 30.0, every_s: float = 0.02) -> None:
    """Wait until check() holds; fail naming `what` after limit_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        if check():
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached in {limit_s:g}s")
        await asyncio.sleep(every_s)
