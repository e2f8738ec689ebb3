"""`mlplat run` as deployed: an API other machines can reach needs an admin token, plaintext is warned about
unless allowed, and a signal while start-up waits for a backend stops it at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import MLPLAT, start_daemon
from tests.secrets import ADMIN_TOKEN
from tests.servers import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def events(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_the_production_config_without_an_admin_token_stops_start_up_with_exit_2(tmp_path: Path) -> None:
    """config/production.toml binds gRPC and HTTP to 0.0.0.0: without a token nothing starts (no backend is
    contacted, no port bound) and one config line says why, as for any invalid setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_")}
    result = subprocess.run([*MLPLAT, "run", "--config", str(REPO / "config" / "production.toml")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "mlplat: config: api.host = '0.0.0.0', api.http_host = '0.0.0.0': not loopback, and no admin token is "
        "set: an API other machines can reach needs one (set api.admin_token_file or MLPLAT_API__ADMIN_TOKEN, "
        "or bind 127.0.0.1)"
    )


@pytest.mark.parametrize("allow_plaintext", [False, True], ids=["warned", "allowed"])
def test_with_an_admin_token_an_exposed_api_starts_guarded_and_plaintext_is_warned_about_unless_allowed(
        tmp_path: Path, allow_plaintext: bool) -> None:
    """With the token in a file (as the compose secret passes it) a daemon on 0.0.0.0 starts, and its API
    takes no call without the token; without TLS it warns once per listener, unless api.allow_plaintext."""
    token = tmp_path / "mlplat_admin_token"
    token.write_text(ADMIN_TOKEN + "\n")
    env = {"MLPLAT_API__HOST": "0.0.0.0", "MLPLAT_API__HTTP_HOST": "0.0.0.0",
           "MLPLAT_API__ADMIN_TOKEN_FILE": str(token), "MLPLAT_API__ALLOW_PLAINTEXT": str(allow_plaintext).lower()}
    daemon = start_daemon(tmp_path, env)
    try:
        refused = daemon.cli("query", "SELECT 42 AS answer")
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        allowed = daemon.cli("--token-file", str(token), "query", "SELECT 42 AS answer", "--json")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["rows"] == [[42]]
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=15) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    warnings = [e["reason"] for e in events(daemon.logs()) if e["event"] == "api_plaintext"]
    if allow_plaintext:
        assert warnings == []
    else:
        assert [w.split(" = ")[0] for w in warnings] == ["api.host", "api.http_host"]
    assert ADMIN_TOKEN not in daemon.logs()


def test_a_signal_while_start_up_waits_for_a_backend_stops_the_daemon_at_once(tmp_path: Path) -> None:
    """SIGTERM (docker stop, Ctrl-C) while start-up waits for a Redis that is not there ends the wait and
    exits 0, rather than waiting out startup_wait_s (here 120 s) first."""
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*MLPLAT, "run", "--grpc-port", "0", "--http-port", "0"], cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "MLPLAT_LOGGING__FORMAT": "json", "MLPLAT_HOT_STORE__URL": f"redis://127.0.0.1:{port}/0",
                 "MLPLAT_SUPERVISOR__STARTUP_WAIT_S": "120"},
        )
    try:
        deadline = time.monotonic() + 60
        while "backend_waiting" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logged = log_path.read_text()
    assert "Traceback" not in logged
    last = events(logged)[-1]
    assert (last["event"], last.get("during")) == ("daemon_stopped", "start-up")
