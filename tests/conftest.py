"""Session-scoped real servers (started only when a test asks) and per-test clean URLs (the arq fixture chain)."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.secrets import leaked_in
from tests.servers import (
    ServerProcess,
    azurite_connection_string,
    start_azurite,
    start_redis,
    start_tansu,
)
from tests.waiting import run_lock


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> str:
    """A Redis URL whose database starts empty for each test."""
    if redis_server.proc is None:  # a previous test stopped it
        redis_server.start()
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture(scope="session")
def tansu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_tansu(tmp_path_factory.mktemp("tansu"))
    yield server
    server.stop()


@pytest.fixture
def kafka_url(tansu_server: ServerProcess) -> str:
    if tansu_server.proc is None:
        tansu_server.start()
    return f"kafka://127.0.0.1:{tansu_server.port}"


@pytest.fixture
def unique_name() -> str:
    """A fresh topic/container/group suffix so tests sharing a server never see each other's data."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture
def azure_connection_string(azurite_server: ServerProcess) -> str:
    if azurite_server.proc is None:
        azurite_server.start()
    return azurite_connection_string(azurite_server.port)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test whose captured output (stdout, stderr, log of setup, call and teardown) holds a secret used in
    tests errors at teardown, where every section is at hand."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if call.when != "teardown":
        return
    leaked = leaked_in("".join(content for _, content in report.sections))
    if leaked and report.outcome == "passed":
        report.outcome = "failed"
        report.longrepr = f"a secret reached the captured output: {', '.join(leaked)} of tests/secrets.py"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every log file the tests left behind (daemons run as subprocesses log to files) is secret-free.

    Under pytest-xdist the controller checks, once every worker is done: the workers' temporary directories
    are inside its own, and only its exit status counts."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or hasattr(session.config, "workerinput"):
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    found = []
    for path in base.rglob("*.log"):
        with contextlib.suppress(OSError):
            leaked = leaked_in(path.read_text(errors="replace"))
            if leaked:
                found.append(f"{path}: {', '.join(leaked)}")
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nsecrets reached log files:\n  " + "\n  ".join(found), file=sys.stderr)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist a test marked `serial` (it asserts its own timing, or its load would slow the others
    past theirs) runs alone: it waits until the tests running on other workers end, and they wait for it.

    Outermost wrapper, so that waiting here is not counted in the test's own timeout."""
    factory = getattr(item.config, "_tmp_path_factory", None)
    if not hasattr(item.config, "workerinput") or factory is None:
        yield
        return
    with run_lock(factory.getbasetemp().parent, alone=item.get_closest_marker("serial") is not None):
        yield
