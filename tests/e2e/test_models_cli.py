"""The registry and serving as a user drives them: `mlplat models …` and `mlplat predict`, one-shot and
interactive (through a pseudo-terminal, as a person at a keyboard)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import MLPLAT, RunningDaemon, start_daemon
from tests.models import tree_bytes

pytestmark = pytest.mark.e2e
INPUTS = "clicks_1h:int,spend_1h,session_minutes,is_premium:bool"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RunningDaemon]:
    """A daemon with the demo feature sets and model `churn` v1 in production."""
    daemon = start_daemon(tmp_path, {"MLPLAT_INGEST__FEATURES_FILE": str(Path("config/features.toml").resolve())})
    try:
        (tmp_path / "churn.skops").write_bytes(tree_bytes())
        result = daemon.cli("models", "register", "churn.skops", "--name", "churn", "--inputs", INPUTS,
                            "-f", "user_activity", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["stage"] == "staging"
        result = daemon.cli("models", "promote", "churn", "1")
        assert result.returncode == 0 and "in production" in result.stdout, result.stderr
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def test_models_list_and_one_shot_predict(served: RunningDaemon) -> None:
    [listed] = json.loads(served.cli("models", "list", "--json").stdout)
    assert (listed["model"], listed["production"]) == ("churn", 1)
    assert [(v["version"], v["stage"], v["created_by"], v["reason"]) for v in listed["versions"]] == [
        (1, "production", "user", "registered")]
    features = json.dumps({"clicks_1h": 70, "spend_1h": 60.0, "session_minutes": 3.0, "is_premium": False})
    result = served.cli("predict", "--model", "churn", "--features", features, "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"] == "churn" and answer["version"] == 1 and 0 <= answer["score"] <= 1
    bad = served.cli("predict", "--model", "churn", "--features", '{"clicks_1h": "x"}')
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "clicks_1h" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = served.cli("models", "promote", "churn", "7")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "no version 7" in missing.stderr


class Terminal:
    """A command on a pseudo-terminal: type lines, wait for text."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True,
                                     env={**os.environ, "HOME": str(cwd), "TERM": "dumb"})
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 20, since: int = 0) -> int:
        """Wait until text shows up after position `since` of the screen; returns where it ends."""
        deadline = time.monotonic() + timeout
        while text not in self.seen[since:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"never saw {text!r}; screen so far:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the program ended
                    raise AssertionError(f"program ended before {text!r}:\n{self.seen}") from None
        return self.seen.index(text, since) + len(text)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_the_interactive_repl_prompts_checks_and_exits_cleanly(served: RunningDaemon) -> None:
    """Seed 000 Service B: choose a model, get asked for each feature with its type, see the answer;
    a value of the wrong type is caught before sending; Ctrl-D leaves with exit code 0."""
    term = Terminal([*MLPLAT, "predict", "--target", served.target], served.workdir)
    try:
        term.expect("model> ")
        assert "1. churn (v1, 4 features)" in term.seen
        term.type("1\n")
        term.expect("entity id in user_activity")
        term.type("\n")
        term.expect("clicks_1h (int)> ")
        term.type("lots\n")
        term.expect("clicks_1h: expected an integer")
        term.type("70\n")
        term.expect("spend_1h (float)> ")
        term.type("60\n")
        term.expect("session_minutes (float)> ")
        term.type("3\n")
        term.expect("is_premium (bool)> ")
        term.type("no\n")
        answered = term.expect(" ms\r\n")
        assert "score " in term.seen and "churn v1   " in term.seen
        term.expect("entity id in user_activity", since=answered)  # asked again, for the next prediction
        term.type("\x04")  # Ctrl-D
        assert term.proc.wait(timeout=15) == 0
        assert "Traceback" not in term.seen
    finally:
        term.close()
    assert (served.workdir / ".mlplat_history").exists()


def test_the_repl_completes_names_fills_features_from_the_store_and_keeps_history(served: RunningDaemon) -> None:
    """Tab completes a partial model name on screen; an entity id shows its values in the online store and
    Enter takes them (the score is the one for exactly those values); a second run recalls the first run's
    entries with the Up arrow."""
    stored = {"clicks_1h": 70, "spend_1h": 60.5, "session_minutes": 3.0, "is_premium": False}
    event = {"event_id": "e1", "user_id": "user_7", "event_time": dt.datetime.now(dt.UTC).isoformat(),
             "country": "de", **stored}
    (served.workdir / "events.ndjson").write_text(json.dumps(event) + "\n")
    result = served.cli("ingest", "events.ndjson", "-f", "user_activity")
    assert result.returncode == 0, result.stderr
    one_shot = served.cli("predict", "-m", "churn", "--features", json.dumps(stored), "--json")
    assert one_shot.returncode == 0, one_shot.stderr
    expected_score = f"score {json.loads(one_shot.stdout)['score']:.6g}   churn v1"

    term = Terminal([*MLPLAT, "predict", "--target", served.target], served.workdir)
    try:
        prompt = term.expect("model> ")
        term.type("chu\t")
        term.expect("churn", since=prompt)  # completed by Tab, before Enter
        term.type("\n")
        term.expect("churn v1 takes:")
        term.expect("entity id in user_activity")
        term.type("user_7\n")
        term.expect("user_7 in the online store: clicks_1h=70, spend_1h=60.5, session_minutes=3, is_premium=false")
        for shown in ("clicks_1h (int) [Enter: 70 from the store]> ", "spend_1h (float) [Enter: 60.5 from the store]> ",
                      "session_minutes (float) [Enter: 3 from the store]> ",
                      "is_premium (bool) [Enter: false from the store]> "):
            term.expect(shown)
            term.type("\n")
        answered = term.expect(" ms\r\n")
        assert expected_score in term.seen[:answered]
        term.expect("entity id in user_activity", since=answered)
        term.type("\x04")
        assert term.proc.wait(timeout=15) == 0
    finally:
        term.close()

    again = Terminal([*MLPLAT, "predict", "--target", served.target], served.workdir)
    try:
        prompt = again.expect("model> ")
        again.type("\x1b[A")  # Up: the first run's last entry
        recalled = again.expect("user_7", since=prompt)
        again.type("\x1b[A")  # and the one before it
        again.expect("churn", since=recalled)
        again.type("\n")
        again.expect("churn v1 takes:", since=recalled)
        again.expect("entity id in user_activity", since=recalled)
        again.type("\x04")
        assert again.proc.wait(timeout=15) == 0
        assert "Traceback" not in again.seen
    finally:
        again.close()
