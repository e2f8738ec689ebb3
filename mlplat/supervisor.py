"""Service lifecycle: start in order, supervise run(), restart crashes with backoff, stop in reverse.

A service is anything with a name and start/run/stop coroutines. start() must leave the service ready
to run (bound ports, open connections); run() is the long-running loop; stop() drains and releases.
A crashed run() is restarted after an exponentially growing delay; a service that crashes more than
`crash_loop_restarts` times within `crash_loop_window_s` is given up on and reported through readiness
and metrics instead of being restarted forever (one-for-one supervision with a rate limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mlplat.config import SupervisorSettings
from mlplat.observability.health import Readiness
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("supervisor")


@runtime_checkable
class Service(Protocol):
    name: str

    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


class Supervisor:
    def __init__(
        self, services: Sequence[Service], settings: SupervisorSettings, metrics: Metrics, readiness: Readiness
    ) -> None:
        self._services = list(services)
        self._settings = settings
        self._metrics = metrics
        self._readiness = readiness
        self._started: list[Service] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.gave_up: set[str] = set()

    async def start(self) -> None:
        """Start every service in order; if one fails, stop those already started and re-raise."""
        for service in self._services:
            self._readiness.set(f"service:{service.name}", False, "starting")
            try:
                await service.start()
            except BaseException:
                await self._stop_started(deadline=time.monotonic() + self._settings.shutdown_deadline_s)
                raise
            self._started.append(service)
            self._mark_up(service)
            self._tasks[service.name] = asyncio.create_task(self._supervise(service), name=f"run:{service.name}")
            log.info("service_started", target=service.name)

    def _mark_up(self, service: Service) -> None:
        self._metrics.service_up.labels(service.name).set(1)
        self._readiness.set(f"service:{service.name}", True)

    def _mark_down(self, service: Service, reason: str) -> None:
        self._metrics.service_up.labels(service.name).set(0)
        self._readiness.set(f"service:{service.name}", False, reason)

    async def _supervise(self, service: Service) -> None:
        restarts: deque[float] = deque()
        delay = self._settings.restart_initial_s
        while True:
            try:
                await service.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                crashed = e
            else:
                log.info("service_finished", target=service.name)
                return
            now = time.monotonic()
            while restarts and now - restarts[0] > self._settings.crash_loop_window_s:
                restarts.popleft()
            if not restarts:
                delay = self._settings.restart_initial_s  # it ran long enough: start the backoff afresh
            self._mark_down(service, f"crashed: {crashed}")
            log.error("service_crashed", target=service.name, error=str(crashed), exc_info=crashed)
            if len(restarts) >= self._settings.crash_loop_restarts:
                self.gave_up.add(service.name)
                self._mark_down(
                    service,
                    f"crash loop: {len(restarts) + 1} crashes within {self._settings.crash_loop_window_s:g}s; "
                    f"not restarted (last error: {crashed})",
                )
                log.error("service_crash_loop", target=service.name, crashes=len(restarts) + 1)
                with contextlib.suppress(Exception):
                    await service.stop()
                return
            restarts.append(now)
            delay = await self._restart(service, delay)
            self._metrics.service_restarts.labels(service.name).inc()
            self._mark_up(service)
            log.info("service_restarted", target=service.name, restarts_in_window=len(restarts))

    async def _restart(self, service: Service, delay: float) -> float:
        """Stop and start the service again, waiting `delay` first and twice as long after each failed start
        (a dependency it needs is down: run() must not be called before start() succeeded). Returns the
        next delay."""
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.restart_max_s)
            try:
                await service.stop()
            except Exception as e:
                log.warning("service_stop_failed", target=service.name, error=str(e))
            try:
                await service.start()
            except Exception as e:
                self._mark_down(service, f"restarting: {e}")
                log.error("service_start_failed", target=service.name, error=str(e), retry_in_s=delay)
                continue
            return delay

    async def stop(self) -> bool:
        """Stop supervising and stop every service in reverse order. False if the deadline was missed."""
        deadline = time.monotonic() + self._settings.shutdown_deadline_s
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        return await self._stop_started(deadline)

    async def _stop_started(self, deadline: float) -> bool:
        clean = True
        for service in reversed(self._started):
            self._readiness.set(f"service:{service.name}", False, "stopping")
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                async with asyncio.timeout(remaining):
                    await service.stop()
            except TimeoutError:
                clean = False
                log.error("service_stop_timeout", target=service.name, waited_s=round(remaining, 2))
            except Exception as e:
                clean = False
                log.error("service_stop_failed", target=service.name, error=str(e))
            else:
                log.info("service_stopped", target=service.name)
            self._metrics.service_up.labels(service.name).set(0)
        self._started.clear()
        return clean
