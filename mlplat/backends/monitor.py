"""Pings every backend on an interval: readiness and mlplat_backend_up follow what it sees.

Backends reconnect by themselves (each client retries with backoff); this service only observes, so a
lost Redis turns /readyz false and a returned one turns it true again without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from mlplat.errors import MlplatError
from mlplat.observability.health import Readiness
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("backends")

Ping = Callable[[], Awaitable[None]]


class BackendMonitor:
    name = "backends"

    def __init__(
        self, pings: Mapping[str, Ping], readiness: Readiness, metrics: Metrics, *, interval_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self._pings = dict(pings)
        self._readiness = readiness
        self._metrics = metrics
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._up: dict[str, bool] = {}

    async def check_all(self) -> None:
        results = await asyncio.gather(*(self._check(n, p) for n, p in self._pings.items()))
        del results

    async def _check(self, name: str, ping: Ping) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await ping()
        except (MlplatError, OSError, TimeoutError) as e:
            reason = str(e) or type(e).__name__
            ok = False
        else:
            reason, ok = "", True
        if self._up.get(name) != ok:
            if ok:
                log.info("backend_up", backend=name)
            else:
                log.warning("backend_down", backend=name, error=reason)
        self._up[name] = ok
        self._metrics.backend_up.labels(name).set(1 if ok else 0)
        self._readiness.set(f"backend:{name}", ok, reason)

    async def start(self) -> None:
        await self.check_all()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_all()

    async def stop(self) -> None:
        return None
