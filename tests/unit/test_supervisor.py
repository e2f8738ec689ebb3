"""Supervision: ordered start, restart with backoff, crash-loop give-up, reverse-order stop."""

from __future__ import annotations

import asyncio

import pytest

from mlplat.config import SupervisorSettings
from mlplat.observability.health import Readiness
from mlplat.observability.metrics import Metrics
from mlplat.supervisor import Supervisor

FAST = SupervisorSettings(restart_initial_s=0.01, restart_max_s=0.05, crash_loop_restarts=3,
                          crash_loop_window_s=30, shutdown_deadline_s=2)


class Recorder:
    """A service that records its lifecycle and crashes its first `crashes` runs."""

    def __init__(self, name: str, log: list[str], crashes: int = 0, stop_delay: float = 0.0) -> None:
        self.name = name
        self.log = log
        self.crashes = crashes
        self.stop_delay = stop_delay
        self.runs = 0

    async def start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        await asyncio.Event().wait()

    async def stop(self) -> None:
        await asyncio.sleep(self.stop_delay)
        self.log.append(f"stop:{self.name}")


async def wait_for(predicate, limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_services_start_in_order_and_stop_in_reverse() -> None:
    """The writer-last rule: what starts first stops last."""
    log: list[str] = []
    readiness = Readiness()
    sup = Supervisor([Recorder("a", log), Recorder("b", log)], FAST, Metrics(), readiness)
    await sup.start()
    assert readiness.ready
    assert await sup.stop()
    assert log == ["start:a", "start:b", "stop:b", "stop:a"]


async def test_a_crashed_service_is_restarted_and_counted() -> None:
    """A run() that raises is restarted after a backoff, and the restart is counted in the metric."""
    log: list[str] = []
    metrics = Metrics()
    readiness = Readiness()
    flaky = Recorder("flaky", log, crashes=2)
    sup = Supervisor([flaky], FAST, metrics, readiness)
    await sup.start()
    await wait_for(lambda: flaky.runs == 3)
    await wait_for(lambda: readiness.ready)
    assert metrics.service_restarts.labels("flaky")._value.get() == 2
    assert log.count("stop:flaky") == 2 and log.count("start:flaky") == 3
    await sup.stop()


async def test_a_crash_loop_is_given_up_and_makes_readiness_fail() -> None:
    """A service that keeps crashing is not restarted forever; readiness says why."""
    metrics = Metrics()
    readiness = Readiness()
    doomed = Recorder("doomed", [], crashes=1000)
    sup = Supervisor([doomed, Recorder("fine", [])], FAST, metrics, readiness)
    await sup.start()
    await wait_for(lambda: "doomed" in sup.gave_up)
    await asyncio.sleep(0.1)
    assert doomed.runs == FAST.crash_loop_restarts + 1
    assert not readiness.ready
    assert "crash loop" in str(readiness.report()["service:doomed"]["reason"])
    assert metrics.service_up.labels("doomed")._value.get() == 0
    assert metrics.service_up.labels("fine")._value.get() == 1
    await sup.stop()


async def test_a_failed_start_stops_what_already_started() -> None:
    """If a later service cannot start, earlier ones are stopped before the error propagates."""
    log: list[str] = []

    class Broken(Recorder):
        async def start(self) -> None:
            raise OSError("port in use")

    sup = Supervisor([Recorder("a", log), Broken("b", log)], FAST, Metrics(), Readiness())
    with pytest.raises(OSError, match="port in use"):
        await sup.start()
    assert log == ["start:a", "stop:a"]


async def test_stop_respects_the_deadline() -> None:
    """A service that does not stop in time is abandoned and reported, so shutdown is bounded."""
    settings = FAST.model_copy(update={"shutdown_deadline_s": 0.2})
    log: list[str] = []
    sup = Supervisor([Recorder("a", log), Recorder("slow", log, stop_delay=5)], settings, Metrics(), Readiness())
    await sup.start()
    started = asyncio.get_running_loop().time()
    assert not await sup.stop()
    assert asyncio.get_running_loop().time() - started < 2
    assert "stop:a" in log


async def test_a_crash_loop_fails_readyz_over_http() -> None:
    """What an orchestrator sees: /readyz answers 503 naming the crash-looping service, /healthz stays 200."""
    import aiohttp

    from mlplat.observability.http import HttpServer

    metrics, readiness = Metrics(), Readiness()
    http = HttpServer("127.0.0.1", 0, metrics, readiness)
    doomed = Recorder("doomed", [], crashes=1000)
    sup = Supervisor([http, doomed], FAST, metrics, readiness)
    await sup.start()
    try:
        await wait_for(lambda: "doomed" in sup.gave_up)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{http.port}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503
            async with session.get(f"http://127.0.0.1:{http.port}/healthz") as resp:
                assert resp.status == 200
            async with session.get(f"http://127.0.0.1:{http.port}/metrics") as resp:
                text = await resp.text()
        assert "crash loop" in body["checks"]["service:doomed"]["reason"]
        assert 'mlplat_service_restarts_total{service="doomed"} 3.0' in text
    finally:
        await sup.stop()


async def test_a_restart_whose_start_fails_is_retried_before_run_is_called_again() -> None:
    """A crashed service whose start() then fails (the broker it needs is down) is started again with backoff;
    run() never runs on a service that did not start, and readiness says it is restarting."""
    log: list[str] = []
    readiness = Readiness()

    class NeedsBroker(Recorder):
        failing_starts = 0

        async def start(self) -> None:
            if self.runs and self.failing_starts < 3:
                self.failing_starts += 1
                raise ConnectionError("bus kafka://b:9092 unreachable")
            await super().start()

        async def run(self) -> None:
            assert log[-1] == f"start:{self.name}", log  # started, and nothing since
            await super().run()

    service = NeedsBroker("ingest", log, crashes=1)
    metrics = Metrics()
    sup = Supervisor([service], FAST, metrics, readiness)
    await sup.start()
    await wait_for(lambda: service.runs == 2)
    assert service.failing_starts == 3 and "ingest" not in sup.gave_up
    assert readiness.ready and metrics.service_restarts.labels("ingest")._value.get() == 1
    await sup.stop()


async def test_readiness_says_a_service_is_restarting_while_its_start_fails() -> None:
    readiness = Readiness()

    class Down(Recorder):
        async def start(self) -> None:
            if self.runs:
                raise ConnectionError("redis://h:6379 unreachable")
            await super().start()

    sup = Supervisor([Down("lookup", [], crashes=1)], FAST, Metrics(), readiness)
    await sup.start()
    await wait_for(lambda: "restarting" in str(readiness.report()["service:lookup"]["reason"]))
    assert "redis://h:6379 unreachable" in str(readiness.report()["service:lookup"]["reason"])
    assert not readiness.ready
    await sup.stop()
