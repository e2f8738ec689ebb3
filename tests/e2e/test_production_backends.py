"""`mlplat run` on real Redis (with a password), Kafka and Azure: it works, and no secret reaches the logs."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import start_daemon
from tests.servers import ServerProcess, start_redis

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
PASSWORD = "redis-pw-8f3a9c1d"


@pytest.fixture
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    yield server
    server.stop()


def test_production_backends_and_no_secret_in_any_log_line(
    tmp_path: Path, redis_with_password: ServerProcess, kafka_url: str, azure_connection_string: str,
    unique_name: str,
) -> None:
    """Real servers, secrets from env and a secret file; debug logs, queries, a refused query: no secret leaks."""
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(PASSWORD + "\n")
    env = {
        "MLPLAT_HOT_STORE__URL": f"redis://127.0.0.1:{redis_with_password.port}/0",
        "MLPLAT_HOT_STORE__PASSWORD_FILE": str(secret_file),
        "MLPLAT_BUS__URL": kafka_url,
        "MLPLAT_ARTIFACTS__URL": f"azure://p{unique_name}",
        "AZURE_STORAGE_CONNECTION_STRING": azure_connection_string,
        "MLPLAT_LOGGING__LEVEL": "debug",
    }
    daemon = start_daemon(tmp_path, env)
    try:
        status = json.loads(daemon.cli("status", "--json").stdout)
        assert status["ready"] is True
        assert status["backends"]["hot_store"].startswith("redis://")
        assert status["backends"]["bus"] == kafka_url
        for _ in range(2):  # the second answer comes from the Redis query cache
            result = daemon.cli("query", "SELECT count(*) AS n FROM audit_log", "--json")
            assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["cached"] is True
        refused = daemon.cli("query", "SELECT getenv('AZURE_STORAGE_CONNECTION_STRING')")
        assert refused.returncode == 1
        outputs = [result.stdout, result.stderr, refused.stdout, refused.stderr, daemon.http("/metrics")[1]]
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=15) == 0
    account_key = azure_connection_string.split("AccountKey=")[1].split(";")[0]
    everything = daemon.logs() + "".join(outputs)
    assert "daemon_ready" in everything
    for secret in (PASSWORD, account_key, azure_connection_string):
        assert secret not in everything
