"""Logs: JSON lines with service and event names; secrets never appear, whatever the path."""

from __future__ import annotations

import io
import json
import logging

import pytest

from mlplat.observability.logging import configure_logging, get_logger, register_secret


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    return out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_every_line_is_json_with_service_and_event(stream: io.StringIO) -> None:
    """Machine-readable logs carry the service and the event name on every line, ours or a library's."""
    get_logger("ingest").info("batch_committed", rows=10)
    logging.getLogger("aiokafka.consumer").warning("rebalancing")
    first, second = lines(stream)
    assert first["service"] == "ingest" and first["event"] == "batch_committed" and first["rows"] == 10
    assert second["service"] == "aiokafka" and second["event"] == "rebalancing"


def test_registered_secrets_are_masked_everywhere(stream: io.StringIO) -> None:
    """A registered secret is masked in values, nested structures, exceptions and third-party lines."""
    register_secret("s3cr3t-pa55")
    register_secret("DefaultEndpointsProtocol=http;AccountName=a;AccountKey=KEYKEYKEY==;")
    log = get_logger("test")
    log.info("connecting", url="redis://:s3cr3t-pa55@host/0", extra={"nested": ["s3cr3t-pa55"]})
    log.info("azure", detail="key KEYKEYKEY== leaked?")
    try:
        raise RuntimeError("auth failed with s3cr3t-pa55")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("redis").error("AUTH s3cr3t-pa55 rejected")
    text = stream.getvalue()
    assert "s3cr3t-pa55" not in text and "KEYKEYKEY" not in text
    assert text.count("***") >= 5


def test_secret_looking_keys_are_masked(stream: io.StringIO) -> None:
    """Values under keys like password or token are masked even if never registered."""
    get_logger("test").info("login", password="hunter2", token="abc", user="ann")
    (line,) = lines(stream)
    assert line["password"] == "***" and line["token"] == "***" and line["user"] == "ann"
