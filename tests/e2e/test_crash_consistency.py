"""kill -9 at random moments, on a real broker and Redis: every produced event ends in the warehouse exactly
once, the hot store holds each entity's latest value, and no dead letter is invented or lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from mlplat.backends.bus import open_bus
from mlplat.features.online import PREFIX
from tests.daemons import RunningDaemon, start_daemon
from tests.waiting import processes_gone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
WAVES = 6  # a kill after each: at least 5 kills
PER_WAVE = 1500
ENTITIES = 40
BAD_EVERY = 37  # every 37th event lacks its required spend: a dead letter
START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
SESSION_TIMEOUT_MS = 3000  # as short as Tansu takes (it holds a join for half of it)


def catalog(name: str) -> str:
    return f"""
[entities.user]
key = "user_id"

[feature_sets.{name}]
entity = "user"

[[feature_sets.{name}.features]]
name = "clicks"
type = "int"

[[feature_sets.{name}.features]]
name = "spend"
type = "float"
nullable = false
"""


def event(i: int) -> dict[str, Any]:
    record: dict[str, Any] = {"event_id": f"e{i}", "user_id": f"user_{i % ENTITIES}",
                              "event_time": (START + dt.timedelta(milliseconds=i)).isoformat(), "clicks": i}
    if i % BAD_EVERY:
        record["spend"] = i / 10
    return record


async def publish(bus_url: str, topic: str, events: list[dict[str, Any]]) -> None:
    bus = open_bus(bus_url)
    await bus.connect()
    try:
        for start in range(0, len(events), 250):
            chunk = events[start:start + 250]
            await bus.publish_many(topic, [(e["user_id"].encode(), json.dumps(e).encode()) for e in chunk])
            await asyncio.sleep(0.01)
    finally:
        await bus.aclose()


def kill_hard(daemon: RunningDaemon) -> None:
    """SIGKILL the daemon, as the OOM killer would: nothing gets to clean up. Its worker processes and their
    fork server must then exit by themselves (a job they were running is lost with them, never committed)."""
    try:
        family = psutil.Process(daemon.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    processes_gone(family, "worker processes of a killed daemon")


def wait_until_ingesting(daemon: RunningDaemon, name: str, limit_s: float = 60) -> None:
    """Until this process has accepted events of the set (after a kill the group first waits out the dead
    member's session), so that the kill lands in the middle of real work."""
    pattern = re.compile(rf'^mlplat_ingest_events_total{{feature_set="{name}",outcome="accepted"}} (\S+)$', re.M)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        match = pattern.search(daemon.http("/metrics")[1])
        if match and float(match.group(1)) > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not start ingesting within {limit_s:g} s:\n{daemon.logs()[-3000:]}")


def query(daemon: RunningDaemon, sql: str) -> list[list[Any]]:
    result = daemon.cli("query", sql, "--json", "--no-cache")
    assert result.returncode == 0, result.stderr
    rows: list[list[Any]] = json.loads(result.stdout)["rows"]
    return rows


@pytest.mark.timeout(600)  # six restarts, each waiting out the killed member's group session
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, kafka_url: str, redis_url: str,
                                                               unique_name: str) -> None:
    name = f"crash_{unique_name}"
    (tmp_path / "features.toml").write_text(catalog(name))
    env = {"MLPLAT_BUS__URL": kafka_url, "MLPLAT_HOT_STORE__URL": redis_url,
           "MLPLAT_INGEST__FEATURES_FILE": str(tmp_path / "features.toml"),
           "MLPLAT_INGEST__CONSUMER_GROUP": f"crash-{unique_name}", "MLPLAT_INGEST__BATCH_SIZE": "300",
           "MLPLAT_INGEST__BATCH_WAIT_MS": "50", "MLPLAT_INGEST__DEAD_LETTER_TOPIC": f"dlq-{unique_name}",
           # the next daemon waits out the killed member's session before it gets the partitions
           "MLPLAT_BUS__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)}
    topic = f"mlplat.events.{name}"
    rng = random.Random(20261123)
    events = [event(i) for i in range(WAVES * PER_WAVE)]
    kills = 0
    for wave in range(WAVES):
        daemon = start_daemon(tmp_path, env)
        asyncio.run(publish(kafka_url, topic, events[wave * PER_WAVE:(wave + 1) * PER_WAVE]))
        wait_until_ingesting(daemon, name)  # the group has rebalanced and batches are being written
        time.sleep(rng.uniform(0.0, 0.8))  # mid-batch, mid-commit, between: wherever it falls
        kill_hard(daemon)
        kills += 1
    assert kills >= 5

    daemon = start_daemon(tmp_path, env)
    try:
        valid = [e for e in events if "spend" in e]
        bad = len(events) - len(valid)
        deadline = time.monotonic() + 180
        counts: list[Any] = []
        while time.monotonic() < deadline:
            counts = query(daemon, f"SELECT (SELECT count(*) FROM fs_{name}), "
                                   f"(SELECT count(*) FROM dead_letters WHERE feature_set = '{name}')")[0]
            if counts == [len(valid), bad]:
                break
            time.sleep(1)
        [[rows, distinct]] = query(daemon, f"SELECT count(*), count(DISTINCT event_id) FROM fs_{name}")
        assert (rows, distinct) == (len(valid), len(valid)), "lost or duplicated events"
        assert counts[1] == bad, f"dead letters: {counts[1]}, expected {bad}"
        letters = query(daemon, f"SELECT event_id, reason_code FROM dead_letters WHERE feature_set = '{name}'")
        expected = {e["event_id"] for e in events if "spend" not in e}
        assert {event_id for event_id, _ in letters} == expected  # each bad event once, none invented
        assert {code for _, code in letters} == {"null_not_allowed"}

        latest: dict[str, dict[str, Any]] = {}
        for e in valid:  # event times only grow: the last one per entity is its latest
            latest[e["user_id"]] = e
        hot = redis.Redis.from_url(redis_url)
        try:  # the hot store itself, not the warehouse fallback behind the API
            for user, e in latest.items():
                stored = hot.get(f"{PREFIX}{name}:{user}")
                assert stored is not None, f"{user} is not in the hot store"
                assert json.loads(stored)["f"] == {"clicks": e["clicks"], "spend": e["spend"]}, user
        finally:
            hot.close()
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(timeout=30)
