"""Start-up waits for backends still starting (compose and Kubernetes start them beside mlplat), naming each
one it waits for without its credentials, and gives up after supervisor.startup_wait_s naming the URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlplat.daemon import Daemon
from mlplat.errors import BackendError, BackendUnavailable
from tests.daemons import daemon_settings
from tests.secrets import REDIS_PASSWORD
from tests.servers import ServerProcess, free_port, start_redis, start_tansu
from tests.waiting import until

pytestmark = pytest.mark.integration

LATE_S = 3.0  # how long after the daemon the server starts


def late_redis(workdir: Path) -> tuple[ServerProcess, dict[str, dict[str, str]]]:
    server = start_redis(workdir, password=REDIS_PASSWORD)
    return server, {"hot_store": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"}}


def late_broker(workdir: Path) -> tuple[ServerProcess, dict[str, dict[str, str]]]:
    server = start_tansu(workdir)
    return server, {"bus": {"url": f"kafka://127.0.0.1:{server.port}"}}


@pytest.mark.parametrize(("backend", "late", "shown"), [
    ("hot_store", late_redis, "redis://:***@127.0.0.1:{port}/0"),
    ("bus", late_broker, "kafka://127.0.0.1:{port}"),
], ids=["redis", "broker"])
async def test_a_daemon_started_before_its_server_waits_and_starts_when_it_appears(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str, kafka_url: str, backend: str,
        late: Callable[[Path], tuple[ServerProcess, dict[str, dict[str, str]]]], shown: str) -> None:
    """The server is down when the daemon starts and comes up LATE_S later: start-up waits (logging each wait
    with the backend and its URL, password masked), then finishes and the daemon is ready. Before, it
    exited at the first refused connection."""
    server, sections = late(tmp_path)
    server.stop()  # its port is known: the daemon is pointed at a server that is not there yet
    settings = daemon_settings(tmp_path, **{"hot_store": {"url": redis_url}, "bus": {"url": kafka_url}, **sections},
                               supervisor={"startup_wait_s": 60.0, "health_interval_s": 0.2})
    daemon = Daemon(settings)
    starting = asyncio.create_task(daemon.start())
    try:
        await asyncio.sleep(LATE_S)
        assert not starting.done(), "start-up did not wait for the missing server"
        await asyncio.to_thread(server.start)
        async with asyncio.timeout(60):
            await starting
        await until(lambda: daemon.readiness.ready, "the daemon ready once the server is up")
    finally:
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await daemon.stop()
        server.stop()
    logged = capsys.readouterr().out
    waits = [line for line in logged.splitlines() if "backend_waiting" in line]
    assert len(waits) >= 2, logged  # pauses of 0.5, 1, 2 s within LATE_S
    url = shown.format(port=server.port)
    assert all(f"backend={backend}" in line and url in line for line in waits), waits
    assert REDIS_PASSWORD not in logged


async def test_start_up_gives_up_after_startup_wait_s_naming_the_url(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    """A broker that never answers: start-up retries until supervisor.startup_wait_s, then fails with one
    error naming the URL and the setting, and leaves no backend connection open."""
    url = f"kafka://127.0.0.1:{free_port()}"
    settings = daemon_settings(tmp_path, hot_store={"url": redis_url}, bus={"url": url},
                               supervisor={"startup_wait_s": 2.0})
    daemon = Daemon(settings)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        await daemon.start()
    waited = time.monotonic() - started
    message = str(err.value)
    assert message.startswith(f"bus {url} unreachable: ") and "\n" not in message
    assert message.endswith("(gave up after supervisor.startup_wait_s = 2 s)")
    assert waited >= 2.0  # it waited the whole time rather than failing at the first refusal
    waits = [line for line in capsys.readouterr().out.splitlines() if "backend_waiting" in line]
    assert len(waits) >= 2 and all("backend=bus" in line and url in line for line in waits), waits
    with pytest.raises(BackendUnavailable, match="closed"):
        await daemon.hot_store.ping()  # connect_backends closed what it had opened


async def test_a_redis_refusing_the_password_stops_start_up_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong password is a setting to fix, not a server still starting: no waiting out startup_wait_s."""
    server = await asyncio.to_thread(start_redis, tmp_path, REDIS_PASSWORD)
    try:
        settings = daemon_settings(tmp_path, hot_store={"url": f"redis://:wrong-pw@127.0.0.1:{server.port}/0"},
                                   supervisor={"startup_wait_s": 60.0})
        daemon = Daemon(settings)
        with pytest.raises(BackendError) as err:
            async with asyncio.timeout(20):  # far less than startup_wait_s
                await daemon.start()
    finally:
        await asyncio.to_thread(server.stop)
    assert type(err.value) is BackendError
    message = str(err.value)
    assert message.startswith(f"hot store redis://:***@127.0.0.1:{server.port}/0: authentication failed"), message
    assert "wrong-pw" not in message and "backend_waiting" not in capsys.readouterr().out
