"""The CLI contract: --help everywhere, JSON shapes, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.daemons import MLPLAT, run


@pytest.mark.parametrize("command", [[], ["run"], ["query"], ["status"], ["bench"], ["bench", "warehouse"],
                                     ["bench", "balancer"], ["bench", "serve"], ["bench", "stream"], ["bench", "drift"],
                                     ["bench", "swap"], ["bench", "ingest"],
                                     ["config", "show"]])
def test_every_command_has_help(command: list[str]) -> None:
    """`--help` explains each command and exits 0."""
    result = run(*command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_bench_warehouse_prints_one_json_object() -> None:
    """`mlplat bench warehouse --json` prints {"name", "params", "metrics"} with the documented numbers."""
    result = run("bench", "warehouse", "--rows", "2000", "--batch-rows", "100", "--repeat", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "warehouse"
    assert report["params"] == {"rows": 2000, "batch_rows": 100, "repeat": 1}
    assert set(report["metrics"]) == {"rows_per_s", "floor_rows_per_s", "ratio"}
    assert all(isinstance(v, float) and v > 0 for v in report["metrics"].values())


def test_bench_balancer_prints_one_json_object() -> None:
    """`mlplat bench balancer --json` reports every lane and the idle vs under-training ingest waits."""
    result = run("bench", "balancer", "--jobs", "100", "--samples", "10", "--workers", "1", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    for lane in ("inline", "thread", "process"):
        assert metrics[f"{lane}_jobs_per_s"] > 0 and f"{lane}_overhead_us" in metrics
    assert metrics["ingest_wait_p99_ms_idle"] > 0 and metrics["ingest_wait_p99_ms_under_training"] > 0
    assert metrics["preemptions"] >= 1  # the training job really was in the way


def test_usage_errors_exit_2() -> None:
    """A missing argument is a usage error: exit 2 with the usage line."""
    result = run("query")
    assert result.returncode == 2 and "Missing argument" in result.stderr


def test_unreachable_daemon_is_one_clear_line() -> None:
    """A client command with no daemon behind the target fails with one actionable line."""
    from tests.servers import free_port

    result = run("query", "SELECT 1", "--target", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "is `mlplat run` running?" in result.stderr


def test_config_show_masks_secrets(tmp_path) -> None:
    """`config show --json` prints the effective settings with passwords and URL credentials masked."""
    env_run = subprocess.run(
        [*MLPLAT, "config", "show", "--json"], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "MLPLAT_HOT_STORE__URL": "redis://:hunter22@h:6379/0",
             "MLPLAT_HOT_STORE__PASSWORD": "hunter33"},
    )
    assert env_run.returncode == 0, env_run.stderr
    shown = json.loads(env_run.stdout)
    assert shown["hot_store"]["url"] == "redis://:***@h:6379/0" and shown["hot_store"]["password"] == "***"
    assert "hunter" not in env_run.stdout
