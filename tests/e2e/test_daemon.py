"""The whole daemon as a user runs it: `mlplat run` in a subprocess, driven through its CLI and HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplat.warehouse.schema import MIGRATIONS
from tests.daemons import MLPLAT, RunningDaemon, start_daemon
from tests.servers import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = start_daemon(tmp_path)
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_run_query_and_graceful_sigterm(daemon: RunningDaemon) -> None:
    """The README flow: readiness, a query through the CLI, health endpoints, then SIGTERM exits 0 quickly."""
    result = daemon.cli("query", "SELECT 42 AS answer", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == [[42]] and '"rows": [[42]]' in result.stdout  # 42, not 42.0

    status, body = daemon.http("/healthz")
    assert status == 200
    status, body = daemon.http("/metrics")
    assert status == 200 and "mlplat_service_up" in body
    assert 'mlplat_grpc_requests_total{code="OK",method="Query"}' in body

    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    events = [json.loads(line)["event"] for line in daemon.logs().splitlines() if line.startswith("{")]
    assert "daemon_ready" in events and events[-1] == "daemon_stopped"


def test_forbidden_query_exits_non_zero_with_one_line(daemon: RunningDaemon) -> None:
    """A query that reads a server file is refused with PERMISSION_DENIED, one line on stderr."""
    result = daemon.cli("query", "SELECT * FROM read_csv('/etc/passwd')")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "PERMISSION_DENIED" in result.stderr and "read_csv" in result.stderr


def test_query_prints_every_type_faithfully(daemon: RunningDaemon) -> None:
    """`mlplat query` keeps SQL types in --json and the table: integers without a fraction, a double with one,
    a decimal's exact digits, a time zone's offset, a list and a struct with their inner types, null, "NaN"."""
    sql = ("SELECT 42::INT AS i, (2**60)::BIGINT AS big, 1.50::DECIMAL(10,2) AS d, 42::DOUBLE AS f, "
           "TIMESTAMPTZ '2026-01-02 03:04:05+02' AS ts, DATE '2026-01-02' AS day, [1, 2]::INT[] AS l, "
           "{'a': 1, 'b': 'x'} AS s, NULL AS n, 'nan'::DOUBLE AS nan")
    result = daemon.cli("query", sql, "--json")
    assert result.returncode == 0, result.stderr
    assert ('"rows": [[42, 1152921504606846976, "1.50", 42.0, "2026-01-02T01:04:05+00:00", "2026-01-02", [1, 2], '
            '{"a": 1, "b": "x"}, null, "NaN"]]') in result.stdout
    table = daemon.cli("query", "SELECT 42 AS answer, 42::DOUBLE AS d, NULL AS n, 'nan'::DOUBLE AS nan")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("│"))
    assert [cell.strip() for cell in row.strip("│").split("│")] == ["42", "42.0", "NULL", "NaN"]


def test_status_lists_backends_and_checks(daemon: RunningDaemon) -> None:
    """`mlplat status --json` reports readiness, every check and the backend URLs."""
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["ready"] is True
    assert set(status["backends"]) == {"hot_store", "bus", "artifacts", "warehouse"}
    assert {c["name"] for c in status["checks"]} >= {"service:api", "service:warehouse", "backend:hot_store"}


def test_warehouse_survives_a_restart(tmp_path: Path) -> None:
    """The DuckDB file written by one run is read by the next; Ctrl-C (SIGINT) drains like SIGTERM."""
    first = start_daemon(tmp_path)
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(timeout=15) == 0
    second = start_daemon(tmp_path)
    try:
        result = second.cli("query", "SELECT max(version) AS v FROM schema_migrations", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["rows"] == [[MIGRATIONS[-1].version]]
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=15) == 0


def test_invalid_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """A bad URL in the environment stops start-up with exit 2 and a line naming key and value."""
    result = subprocess.run([*MLPLAT, "run"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "MLPLAT_BUS__URL": "kafak://broker:9092"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mlplat: config: bus.url = 'kafak://broker:9092': unknown scheme 'kafak' (expected memory, kafka)"
    )


def test_unreachable_backend_at_start_up_names_the_url(tmp_path: Path) -> None:
    """A Redis that is not there fails start-up with exit 1 once supervisor.startup_wait_s has passed, in one
    line naming the URL (without its password) and the setting; each wait before is logged."""
    port = free_port()
    result = subprocess.run(
        [*MLPLAT, "run", "--grpc-port", "0", "--http-port", "0"], capture_output=True, text=True, timeout=90,
        cwd=tmp_path, env={**os.environ, "MLPLAT_HOT_STORE__URL": f"redis://127.0.0.1:{port}/0",
                           "MLPLAT_HOT_STORE__PASSWORD": "very-secret-pw", "MLPLAT_SUPERVISOR__STARTUP_WAIT_S": "2",
                           "MLPLAT_LOGGING__FORMAT": "json"},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlplat: hot store redis://127.0.0.1:{port}/0 unreachable: ")
    assert last.endswith("(gave up after supervisor.startup_wait_s = 2 s)")
    waits = [json.loads(line) for line in result.stdout.splitlines() + result.stderr.splitlines()
             if '"backend_waiting"' in line]
    assert len(waits) >= 2 and {w["url"] for w in waits} == {f"redis://127.0.0.1:{port}/0"}
    assert "very-secret-pw" not in result.stderr + result.stdout


def test_demo_traffic_fills_the_feature_store_and_one_ctrl_c_stops_it_cleanly(tmp_path: Path) -> None:
    """`mlplat run --demo`: generated events, their later labels and some dead letters reach the warehouse
    through the bus; Ctrl-C (SIGINT to the whole process group, twice at once as `timeout` sends it) drains
    and exits 0 without a traceback from any worker process."""
    import psutil

    daemon = start_daemon(tmp_path, {"MLPLAT_DEMO__RATE": "200", "MLPLAT_DEMO__LABEL_DELAY_S": "1",
                                     "MLPLAT_DEMO__BAD_FRACTION": "0.05"}, "--demo")
    try:
        sql = ("SELECT (SELECT count(*) FROM fs_user_activity) AS events, (SELECT count(*) FROM fs_user_labels) "
               "AS labels, (SELECT count(*) FROM dead_letters WHERE feature_set = 'user_activity') AS dead")
        deadline, counts = time.monotonic() + 30, [0, 0, 0]
        while time.monotonic() < deadline and not all(counts):
            result = daemon.cli("query", sql, "--json")
            assert result.returncode == 0, result.stderr
            counts = json.loads(result.stdout)["rows"][0]
            time.sleep(0.5)
        assert all(counts), f"events, labels, dead letters = {counts}"
        group = [daemon.proc.pid, *(c.pid for c in psutil.Process(daemon.proc.pid).children(recursive=True))]
        for _ in range(2):
            for pid in group:
                os.kill(pid, signal.SIGINT)
        assert daemon.proc.wait(timeout=15) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    assert "Traceback" not in daemon.logs()
    events = [json.loads(line)["event"] for line in daemon.logs().splitlines() if line.startswith("{")]
    assert "demo_traffic_starting" in events and events[-1] == "daemon_stopped"
    assert "forced_exit" not in events
