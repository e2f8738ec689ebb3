"""`mlplat run --demo --fast`: the whole automation loop on a bare machine, in order, as a user sees it
(audit table, /metrics, log lines, `mlplat models list|show|train`)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.daemons import RunningDaemon, start_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.serial]  # alone: other tests' load would eat into these limits
# The README promises the loop (bootstrap -> drift -> retrain -> promote) within these times, counted from
# `mlplat run`; about 25 s (--fast) and 95 s here.
FAST_LIMIT_S = 60
PLAIN_LIMIT_S = 120


def audit(daemon: RunningDaemon) -> list[tuple[str, str, str]]:
    result = daemon.cli("query", "SELECT action, subject, reason FROM audit_log WHERE subject LIKE 'churn%' "
                                 "ORDER BY recorded_at", "--json", "--no-cache")
    assert result.returncode == 0, result.stderr
    return [tuple(row) for row in json.loads(result.stdout)["rows"]]


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def run_loop(daemon: RunningDaemon, started: float, limit_s: float) -> float:
    """Wait for the loop's second promotion; check its steps in order; return its time since `mlplat run`."""
    while time.monotonic() - started < limit_s:
        if [a for a, _, _ in audit(daemon)].count("promote") >= 2:
            break
        assert daemon.proc.poll() is None, daemon.logs()
        time.sleep(1)
    loop_s = time.monotonic() - started
    steps = audit(daemon)
    assert [(a, s) for a, s, _ in steps[:6]] == [
        ("bootstrap", "churn"), ("register", "churn:1"), ("promote", "churn:1"),
        ("retrain", "churn"), ("register", "churn:2"), ("promote", "churn:2")], (loop_s, steps)
    assert steps[3][2].startswith("drift: ks of session_minutes")  # the shifted feature
    assert "beats production" in steps[5][2]
    assert loop_s <= limit_s, f"the loop took {loop_s:.1f} s, more than the {limit_s} s promised"
    print(f"demo loop completed in {loop_s:.1f} s")
    return loop_s


@pytest.mark.timeout(PLAIN_LIMIT_S + 60)
def test_the_plain_demo_completes_its_loop_within_two_minutes(tmp_path: Path) -> None:
    started = time.monotonic()
    daemon = start_daemon(tmp_path, None, "--demo")
    try:
        run_loop(daemon, started, PLAIN_LIMIT_S)
    finally:
        daemon.proc.kill()
        daemon.proc.wait()


def test_the_fast_demo_trains_serves_detects_drift_retrains_and_promotes_in_order(tmp_path: Path) -> None:
    started = time.monotonic()
    daemon = start_daemon(tmp_path, None, "--demo", "--fast")
    try:
        run_loop(daemon, started, FAST_LIMIT_S)

        text = daemon.http("/metrics")[1]
        assert metric(text, "mlplat_training_jobs_total", model="churn", trigger="bootstrap", outcome="promoted") == 1
        assert metric(text, "mlplat_training_jobs_total", model="churn", trigger="drift", outcome="promoted") == 1
        assert metric(text, "mlplat_automation_decisions_total", model="churn", decision="retrain") == 1
        assert metric(text, "mlplat_model_version_info", model="churn", version="2", stage="production") == 1
        assert metric(text, "mlplat_model_swaps_total", model="churn") == 2
        assert metric(text, "mlplat_demo_shift_active") == 1
        assert (metric(text, "mlplat_stream_predictions_total", model="churn") or 0) > 0

        # one readable line per step, in order
        events = [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]
        names = [e["event"] for e in events]
        order = [names.index("automation_decision"), names.index("model_promoted"), names.index("demo_shift"),
                 names.index("drift_detected")]
        assert order == sorted(order), names
        swaps = [e["version"] for e in events if e["event"] == "model_swapped"]
        assert swaps[:2] == [1, 2]

        listed = json.loads(daemon.cli("models", "list", "--json").stdout)
        [churn] = listed
        assert churn["model"] == "churn" and churn["production"] == 2
        assert [(v["version"], v["stage"], v["created_by"]) for v in churn["versions"][-2:]] == [
            (2, "production", "automation"), (1, "archived", "automation")]
        assert churn["versions"][-1]["reason"].startswith("bootstrap: no version yet")
        assert churn["versions"][-2]["reason"].startswith("drift: ks of session_minutes")
        assert "onnx" in churn["versions"][-1]["exports"]

        shown = daemon.cli("models", "show", "churn")
        assert shown.returncode == 0 and "history" in shown.stdout and "retrain" in shown.stdout

        trained = daemon.cli("models", "train", "churn", "--json")
        assert trained.returncode == 0, trained.stderr
        stages = [json.loads(line)["stage"] for line in trained.stdout.splitlines()]
        assert stages[0] == "queued" and stages[-1] in ("promoted", "staging") and "fitting" in stages
        plain = daemon.cli("models", "train", "churn", "--reason", "a look")  # not a terminal: the lines alone
        assert plain.returncode == 0, plain.stderr
        lines = plain.stdout.splitlines()
        assert "queued" in lines[0] and "a look" in lines[0] and "[job " in lines[0]
        assert re.match(r"churn version \d+ is in (production|staging): ", lines[-1]), lines
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
