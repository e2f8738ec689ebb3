"""The test-server helpers keep the promise of tests/servers.py's docstring."""

from __future__ import annotations

import pytest

from tests.servers import missing


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
