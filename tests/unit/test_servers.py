"""The test helpers keep their promises: a server that cannot start fails (tests/servers.py), a serial test
runs alone under pytest-xdist (tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.servers import missing
from tests.waiting import run_lock


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_server_that_cannot_start_fails_the_test_in_ci_and_outside(ci: str | None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a skip, CI or not: a suite that passes by skipping its real-server tests proves nothing."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException, match="could not be started") as outcome:  # a skip too: it fails here
        missing("redis-server")
    assert outcome.type is pytest.fail.Exception
    assert "redis-server is required" in str(outcome.value)


def test_a_serial_test_waits_for_the_running_tests_and_new_ones_wait_for_it(tmp_path: Path) -> None:
    """tests/conftest.py's lock under pytest-xdist (flock: separate opens conflict, as in separate workers)."""
    entered: list[str] = []
    release = {name: threading.Event() for name in ("running", "serial", "next")}

    def test(name: str, alone: bool) -> None:
        with run_lock(tmp_path, alone=alone):
            entered.append(name)
            release[name].wait(30)

    threads = {}
    for name, alone in (("running", False), ("serial", True), ("next", False)):
        threads[name] = threading.Thread(target=test, args=(name, alone), daemon=True)
        threads[name].start()
        time.sleep(0.3)  # only orders the arrivals
    assert entered == ["running"]  # the serial test waits for it, the next one waits behind the serial test
    release["running"].set()
    threads["running"].join(30)
    time.sleep(0.3)
    assert entered == ["running", "serial"]  # alone
    release["serial"].set()
    threads["serial"].join(30)
    release["next"].set()
    threads["next"].join(30)
    assert entered == ["running", "serial", "next"]
