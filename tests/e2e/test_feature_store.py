"""The feature store as a user drives it: generate, ingest a file, stream events, query what landed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import RunningDaemon, start_daemon

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FEATURES = str(REPO / "config" / "features.toml")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = start_daemon(tmp_path, {"MLPLAT_INGEST__FEATURES_FILE": FEATURES, "MLPLAT_INGEST__BATCH_WAIT_MS": "50"})
    yield d
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=15) == 0


def mlplat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlplat", *args], capture_output=True, text=True, timeout=120)


def scalar(d: RunningDaemon, sql: str) -> int:
    result = d.cli("query", sql, "--json", "--no-cache")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["rows"][0][0])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "json"])
def test_generate_a_file_and_ingest_it(daemon: RunningDaemon, tmp_path: Path, fmt: str) -> None:
    """`generate file` then `ingest FILE --json`: the summary and the warehouse agree; a retry adds nothing."""
    path = tmp_path / f"events.{fmt}"
    made = mlplat("generate", "file", str(path), "--format", fmt, "--rows", "5000", "--features", FEATURES,
                  "--bad-fraction", "0.02", "--json")
    assert made.returncode == 0, made.stderr
    first = daemon.cli("ingest", str(path), "--feature-set", "user_activity", "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["rows_accepted"] + summary["rows_rejected"] == 5000 and summary["rows_rejected"] > 0
    assert scalar(daemon, "SELECT count(*) FROM fs_user_activity") == summary["rows_accepted"]
    again = daemon.cli("ingest", str(path), "--feature-set", "user_activity", "--json")
    assert json.loads(again.stdout)["upload_id"] == summary["upload_id"]
    assert scalar(daemon, "SELECT count(*) FROM fs_user_activity") == summary["rows_accepted"]
    assert scalar(daemon, "SELECT count(*) FROM dead_letters") == summary["rows_rejected"]


def test_streamed_events_are_ingested_and_bad_ones_dead_lettered(daemon: RunningDaemon) -> None:
    """`generate events` publishes through the daemon; ingest takes every event: rows plus dead letters."""
    sent = daemon.cli("generate", "events", "--count", "2000", "--rate", "4000", "--bad-fraction", "0.05",
                      "--labels", "user_labels", "--label-delay-s", "0.5", "--features", FEATURES, "--json")
    assert sent.returncode == 0, sent.stderr
    published = json.loads(sent.stdout)["published"]
    deadline = time.monotonic() + 60
    while True:
        total = scalar(daemon, "SELECT (SELECT count(*) FROM fs_user_activity) + (SELECT count(*) FROM dead_letters)"
                               " + (SELECT count(*) FROM fs_user_labels)")
        if total == published or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total == published
    dead = scalar(daemon, "SELECT count(*) FROM dead_letters")
    assert 0 < dead < 300
    # every valid event has its label, which arrived later; rejected events have none
    assert published == 2000 + (2000 - dead)
    assert scalar(daemon, "SELECT count(*) FROM fs_user_labels") == 2000 - dead
    assert scalar(daemon, "SELECT count(*) FROM fs_user_labels l JOIN fs_user_activity a "
                          "ON l.event_id = 'label-' || a.event_id AND l.ingest_time > a.ingest_time") > 0
    _, metrics = daemon.http("/metrics")
    assert 'mlplat_ingest_events_total{feature_set="user_activity",outcome="accepted"}' in metrics
    assert "mlplat_dead_letters_total" in metrics


def test_unknown_feature_set_in_generate_names_the_known_ones(tmp_path: Path) -> None:
    """A typo in --feature-set fails with exit 2 and the names that exist."""
    result = mlplat("generate", "file", str(tmp_path / "x.csv"), "--feature-set", "nope", "--features", FEATURES)
    assert result.returncode == 2 and "user_activity" in result.stderr
