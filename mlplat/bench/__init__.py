"""Benchmarks: each compares mlplat against a floor measured in the same run on the same machine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchResult:
    """What `mlplat bench NAME --json` prints: {"name", "params", "metrics"} with numeric metrics."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "metrics": self.metrics}


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a benchmark's coroutine on uvloop when it is installed, as the daemon does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)
