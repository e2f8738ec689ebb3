"""Streaming inference and actions in a whole daemon, on the embedded backends and on a real broker and Redis:
one prediction per event, window aggregates, a promotion mid-stream, webhook retries with idempotency keys,
dead letters, and inference that does not wait for actions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pytest
from aiohttp import web

from mlplat.backends.bus import EventBus
from mlplat.daemon import Daemon
from mlplat.ingest import validation
from mlplat.serving.flavours import load_model
from mlplat.serving.registry import InputFeature
from mlplat.streaming.records import PredictionRecord
from tests.daemons import daemon_settings
from tests.models import FEATURES, logistic_bytes, tree_bytes
from tests.waiting import until

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def features_toml(name: str) -> str:
    return f"""
[entities.user]
key = "user_id"

[feature_sets.{name}]
entity = "user"

[[feature_sets.{name}.features]]
name = "clicks_1h"
type = "int"
min = 0

[[feature_sets.{name}.features]]
name = "spend_1h"
type = "float"
nullable = false

[[feature_sets.{name}.features]]
name = "session_minutes"
type = "float"

[[feature_sets.{name}.features]]
name = "is_premium"
type = "bool"
"""


@dataclass
class Stack:
    daemon: Daemon
    name: str  # the feature set, unique per test: topics on the shared broker do not mix
    predictions: list[PredictionRecord] = field(default_factory=list)

    @property
    def bus(self) -> EventBus:
        return self.daemon.bus

    async def publish(self, events: list[dict[str, Any]]) -> None:
        await self.bus.publish_many(f"mlplat.events.{self.name}",
                                    [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events])

    async def register(self, model: str, data: bytes, features: tuple[InputFeature, ...] = FEATURES,
                       promote: bool = True) -> int:
        mv = await self.daemon.registry.register(model, data, "sklearn", features, feature_set=self.name)
        if promote:
            await self.promote(model, mv.version)
        return mv.version

    async def promote(self, model: str, version: int) -> None:
        await self.daemon.registry.promote(model, version)
        served = self.daemon.serving._served
        await until(lambda: model in served and served[model].mv.version == version, f"{model} v{version} served")

    async def collect(self, until: Callable[[list[PredictionRecord]], bool], timeout_s: float = 60) -> None:
        """Read the predictions topic (in a group of the test's own) until `until` holds, then a little more
        so that an extra record would be seen too."""
        consumer = self.bus.consumer([f"pred-{self.name}"], group=f"test-{self.name}")
        await consumer.start()
        try:
            async with asyncio.timeout(timeout_s):
                while not until(self.predictions):
                    await self._poll(consumer, 0.5)
            for _ in range(3):
                await self._poll(consumer, 0.3)
        finally:
            await consumer.stop()

    async def _poll(self, consumer: Any, timeout_s: float) -> None:
        polled = await consumer.poll(max_records=5000, timeout_s=timeout_s)
        for messages in polled.values():
            self.predictions.extend(PredictionRecord.from_json(m.value) for m in messages)
            await consumer.commit({messages[-1].tp: messages[-1].offset + 1})


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.integration)])
def backend_urls(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "memory":
        return "memory://", "memory://"
    return request.getfixturevalue("kafka_url"), request.getfixturevalue("redis_url")


@pytest.fixture
def start_stack(tmp_path: Path, backend_urls: tuple[str, str], unique_name: str
                ) -> Callable[..., Any]:
    stacks: list[Daemon] = []

    async def start(models_toml: str, **actions: Any) -> Stack:
        name = f"act_{unique_name}"
        (tmp_path / "features.toml").write_text(features_toml(name))
        (tmp_path / "models.toml").write_text(models_toml.replace("FS", name))
        bus_url, hot_url = backend_urls
        settings = daemon_settings(
            tmp_path, bus={"url": bus_url}, hot_store={"url": hot_url},
            ingest={"features_file": str(tmp_path / "features.toml"), "consumer_group": f"i-{name}",
                    "dead_letter_topic": f"dl-{name}", "partitions": 3, "batch_wait_ms": 50},
            streaming={"models_file": str(tmp_path / "models.toml"), "consumer_group": f"s-{name}",
                       "predictions_topic": f"pred-{name}", "partitions": 3, "batch_wait_ms": 20},
            actions={"consumer_group": f"a-{name}", "dead_letter_topic": f"adl-{name}", "backoff_s": 0.01,
                     "backoff_max_s": 0.05, "max_attempts": 4, **actions},
        )
        daemon = Daemon(settings)
        await daemon.start()
        stacks.append(daemon)
        return Stack(daemon, name)

    return start


@pytest.fixture
async def stack_factory(start_stack: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Stack] = []

    async def make(models_toml: str, **actions: Any) -> Stack:
        stack: Stack = await start_stack(models_toml, **actions)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        await stack.daemon.stop()


def event(i: int, entity: int, at: dt.datetime | None = None, **overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {"event_id": f"ev{i}", "user_id": f"u{entity}", "event_time": (at or dt.datetime.now(dt.UTC)).isoformat(),
            "clicks_1h": int(rng.integers(0, 100)), "spend_1h": round(float(rng.uniform(0, 100)), 2),
            "session_minutes": round(float(rng.uniform(0, 60)), 1), "is_premium": bool(rng.integers(0, 2)),
            **overrides}


def scores_of(data: bytes, events: list[dict[str, Any]]) -> np.ndarray:
    return load_model("sklearn", data).predict(np.array([[float(e[f.name]) for f in FEATURES] for e in events]))


PER_EVENT = '[streams.churn]\nfeature_set = "FS"\n'


async def test_every_event_gets_one_prediction_and_a_promotion_mid_stream_skips_none(
    stack_factory: Callable[..., Any]
) -> None:
    stack: Stack = await stack_factory(PER_EVENT)
    await stack.register("churn", tree_bytes())
    v2 = await stack.register("churn", logistic_bytes(), promote=False)
    events = [event(i, i % 17) for i in range(600)]
    bad = [{"event_id": "bad1", "user_id": "u1"}, event(10_000, 3, spend_1h="lots")]  # ingest's dead letters
    # valid events the model cannot take: no session_minutes, and entities never seen (nothing online either)
    incomplete = [event(20_000 + i, 900 + i, session_minutes=None) for i in range(3)]

    copies = events[100:104]  # a producer's retries: the same bytes again, in the same batch as the originals

    async def publish_steadily() -> None:
        for start in range(0, len(events), 50):
            await stack.publish(events[start:start + 50] + (bad + incomplete + copies if start == 100 else []))
            await asyncio.sleep(0.05)

    publishing = asyncio.create_task(publish_steadily())
    await until(lambda: stack.daemon.metrics.stream_predictions.labels("churn")._value.get() >= 150,
                "150 predictions")
    await stack.promote("churn", v2)  # while events are still arriving
    await publishing
    await stack.collect(lambda got: len(got) >= len(events))

    ids = Counter(p.id for p in stack.predictions)
    assert set(ids) == {f"churn:{e['event_id']}" for e in events} and max(ids.values()) == 1
    by_id = {p.id: p for p in stack.predictions}
    versions = Counter(p.version for p in stack.predictions)
    assert set(versions) == {1, v2}, versions
    for version, data in ((1, tree_bytes()), (v2, logistic_bytes())):
        mine = [e for e in events if by_id[f"churn:{e['event_id']}"].version == version]
        assert np.allclose([by_id[f"churn:{e['event_id']}"].score for e in mine], scores_of(data, mine))
    # one entity's predictions arrive in the order of its events, and never go back to the old version
    versions_seen: dict[str, list[int]] = defaultdict(list)
    events_seen: dict[str, list[int]] = defaultdict(list)
    for p in stack.predictions:
        versions_seen[p.entity_id].append(p.version)
        events_seen[p.entity_id].append(int(p.id.removeprefix("churn:ev")))
    assert all(v == sorted(v) for v in versions_seen.values())
    assert all(e == sorted(e) for e in events_seen.values())
    await asyncio.sleep(0.2)
    logged = await stack.daemon.warehouse.read(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS ids FROM predictions WHERE model = 'churn'")
    assert logged.to_pylist() == [{"n": len(events), "ids": len(events)}]
    metrics = stack.daemon.metrics.render().decode()
    assert f'mlplat_stream_predictions_total{{model="churn"}} {float(len(events))}' in metrics
    assert 'mlplat_stream_skipped_total{model="churn",reason="invalid_event"} 2.0' in metrics
    assert 'mlplat_stream_skipped_total{model="churn",reason="missing_feature"} 3.0' in metrics
    assert 'mlplat_stream_skipped_total{model="churn",reason="redelivered"} 4.0' in metrics
    letters = (await stack.daemon.warehouse.read(
        "SELECT reason_code, reason FROM dead_letters WHERE source = 'stream:churn'")).to_pylist()
    assert len(letters) == 3 and all(d["reason_code"] == "missing_feature" and "'session_minutes'" in d["reason"]
                                     for d in letters)
    assert 'mlplat_stream_lag_seconds_count{model="churn"} 600.0' in metrics


WINDOWED = """
[streams.windows]
feature_set = "FS"
window_s = 60
lateness_s = 3600
aggregates = [
  { name = "events", fn = "count" },
  { name = "clicks_mean", feature = "clicks_1h", fn = "mean" },
  { name = "spend_max", feature = "spend_1h", fn = "max" },
  { name = "session_last", feature = "session_minutes", fn = "last" },
]
"""
WINDOW_INPUTS = (InputFeature("events"), InputFeature("clicks_mean"), InputFeature("spend_max"),
                 InputFeature("session_last"))


async def test_window_aggregates_equal_a_reference_computation(stack_factory: Callable[..., Any]) -> None:
    stack: Stack = await stack_factory(WINDOWED)
    await stack.register("windows", logistic_bytes(), WINDOW_INPUTS)
    rng = np.random.default_rng(5)
    offsets = np.sort(rng.uniform(0, 300, 800))  # five minutes of events: five windows per entity
    events = [event(i, int(rng.integers(0, 12)), BASE + dt.timedelta(seconds=float(s)))
              for i, s in enumerate(offsets)]
    for start in range(0, len(events), 100):
        await stack.publish(events[start:start + 100])

    reference = duckdb.execute("""
        SELECT user_id, epoch_us(time_bucket(INTERVAL 60 SECOND, event_time::TIMESTAMPTZ)) AS start_us,
               count(*)::DOUBLE AS events, avg(clicks_1h) AS clicks_mean, max(spend_1h) AS spend_max,
               arg_max(session_minutes, event_time::TIMESTAMPTZ) AS session_last
        FROM read_json(?) GROUP BY ALL ORDER BY ALL""", [_as_ndjson(stack, events)]).fetchall()
    # the windows close when the stream goes quiet (their events are far older than lateness_s)
    await stack.collect(lambda got: len(got) >= len(reference))
    assert len(stack.predictions) == len(reference)
    assert all(p.window_start_us is not None for p in stack.predictions)
    await asyncio.sleep(0.2)
    logged = {r["request_id"]: r["features"] for r in (await stack.daemon.warehouse.read(
        "SELECT request_id, features FROM predictions WHERE model = 'windows'")).to_pylist()}
    for user, start_us, *values in reference:
        record_id = f"windows:{user}:{start_us}"
        assert logged[record_id] == pytest.approx(values), record_id
    counts = {p.id: p.events for p in stack.predictions}
    assert sum(counts.values()) == len(events)


async def test_a_pause_shorter_than_quiet_between_bursts_closes_no_window_early(
        stack_factory: Callable[..., Any]) -> None:
    """Windows far in the past close by the wall clock only once the stream is quiet (IDLE_CLOSE_S): a pause of
    a few ingest batches between two bursts of the same windows leaves every event counted, none late."""
    stack: Stack = await stack_factory(WINDOWED)
    await stack.register("windows", logistic_bytes(), WINDOW_INPUTS)
    first = [event(i, i % 3, BASE + dt.timedelta(seconds=i)) for i in range(30)]
    second = [event(100 + i, i % 3, BASE + dt.timedelta(seconds=30 + i)) for i in range(20)]
    await stack.publish(first)
    await asyncio.sleep(0.5)  # ten of ingest's 50 ms batch waits: polls come back empty meanwhile
    await stack.publish(second)
    await stack.collect(lambda got: sum(p.events for p in got) >= len(first) + len(second), timeout_s=30)
    assert sorted(p.events for p in stack.predictions) == [16, 17, 17]  # one window per entity, all 50 events
    metrics = stack.daemon.metrics.stream_skipped.labels("windows", "late_event")._value.get()
    assert metrics == 0


def _as_ndjson(stack: Stack, events: list[dict[str, Any]]) -> str:
    path = Path(stack.daemon.settings.ingest.spool_dir).parent / f"reference-{stack.name}.ndjson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    return str(path)


class Target:
    """A webhook target: /flaky fails the first two calls of each idempotency key with 503, /broken answers
    500 every time, but only once `release` is set (until then it hangs); applied counts successes per key."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.applied: Counter[str] = Counter()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def flaky(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        self.calls[key] += 1
        if self.calls[key] <= 2:
            return web.Response(status=503, text="try later")
        body = await request.json()
        assert body["idempotency_key"] == key and body["prediction"]["model"] == "churn"
        self.applied[key] += 1
        return web.Response(status=200)

    async def broken(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(status=500, text="database on fire")

    async def __aenter__(self) -> Target:
        app = web.Application()
        app.router.add_post("/flaky", self.flaky)
        app.router.add_post("/broken", self.broken)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_webhooks_are_retried_until_they_succeed_once_and_failures_end_as_dead_letters(
    stack_factory: Callable[..., Any]
) -> None:
    async with Target() as target:
        stack: Stack = await stack_factory(PER_EVENT + f"""
[[actions]]
name = "notify"
model = "churn"
kind = "webhook"
target = "http://127.0.0.1:{target.port}/flaky"

[[actions]]
name = "escalate"
model = "churn"
when = "score >= 0"
kind = "webhook"
target = "http://127.0.0.1:{target.port}/broken"
""", timeout_s=120)
        await stack.register("churn", tree_bytes())
        first = [event(i, i % 5) for i in range(30)]
        await stack.publish(first)
        await stack.collect(lambda got: len(got) >= len(first))
        # the broken target hangs and holds the actions back, while inference answers a second wave at once
        second = [event(i, i % 5) for i in range(30, 60)]
        await stack.publish(second)
        await stack.collect(lambda got: len(got) >= len(first) + len(second))
        assert stack.daemon.metrics.actions_pending._value.get() > 0
        assert stack.daemon.metrics.actions.labels("escalate", "dead_letter")._value.get() == 0
        target.release.set()

        dead_letters = stack.daemon.metrics.actions.labels("escalate", "dead_letter")
        await until(lambda: len(target.applied) == 60 and dead_letters._value.get() == 60, "every action done", 60)
        keys = {f"notify:churn:ev{i}" for i in range(60)}
        assert set(target.applied) == keys and set(target.applied.values()) == {1}
        assert all(target.calls[k] == 3 for k in keys)
        await asyncio.sleep(0.3)
        dead = (await stack.daemon.warehouse.read(
            "SELECT action, error, attempts FROM action_dead_letters ORDER BY idempotency_key")).to_pylist()
        assert len(dead) == 60
        assert all(d["action"] == "escalate" and d["attempts"] == 4 and "HTTP 500" in d["error"]
                   and "database on fire" in d["error"] for d in dead)
        metrics = stack.daemon.metrics.render().decode()
        assert 'mlplat_actions_total{action="notify",outcome="ok"} 60.0' in metrics
        assert 'mlplat_action_retries_total{action="notify"} 120.0' in metrics
        assert 'mlplat_action_retries_total{action="escalate"} 180.0' in metrics

        # the same predictions delivered again (a replay): nothing is applied twice
        await stack.bus.publish_many(f"pred-{stack.name}",
                                     [(p.entity_id.encode(), p.to_json()) for p in stack.predictions[:10]])
        duplicates = stack.daemon.metrics.actions.labels("notify", "duplicate")
        await until(lambda: duplicates._value.get() == 10, "10 duplicates recognised")
        assert set(target.applied.values()) == {1} and len(target.applied) == 60


async def test_publish_and_table_actions_apply_their_rule(stack_factory: Callable[..., Any]) -> None:
    stack: Stack = await stack_factory(PER_EVENT + """
[[actions]]
name = "alert"
model = "churn"
when = "score > 0.5"
kind = "publish"
target = "alerts-FS"

[[actions]]
name = "low"
model = "churn"
when = "score <= 0.5"
kind = "table"
target = "low_scores"
""")
    await stack.register("churn", logistic_bytes())
    events = [event(i, i % 7) for i in range(80)]
    expected = dict(zip((e["event_id"] for e in events), scores_of(logistic_bytes(), events).tolist(), strict=True))
    high = {f"alert:churn:{k}" for k, s in expected.items() if s > 0.5}
    low = {f"low:churn:{k}" for k, s in expected.items() if s <= 0.5}
    assert high and low
    await stack.publish(events)
    consumer = stack.bus.consumer([f"alerts-{stack.name}"], group=f"alerts-{stack.name}")
    await consumer.start()
    alerts: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while len(alerts) < len(high):
                for messages in (await consumer.poll(max_records=500, timeout_s=0.5)).values():
                    alerts += [orjson.loads(m.value) | {"header": dict(m.headers)} for m in messages]
    finally:
        await consumer.stop()
    assert {a["idempotency_key"] for a in alerts} == high
    assert all(a["header"]["idempotency-key"].decode() == a["idempotency_key"] for a in alerts)
    applied = stack.daemon.metrics.actions.labels("low", "ok")
    await until(lambda: applied._value.get() == len(low), "every low score written")
    rows = (await stack.daemon.warehouse.read("SELECT idempotency_key, score FROM low_scores")).to_pylist()
    assert {r["idempotency_key"] for r in rows} == low and all(r["score"] <= 0.5 for r in rows)


TWO_MODELS = '[streams.churn]\nfeature_set = "FS"\n\n[streams.churn_b]\nfeature_set = "FS"\n'


async def test_streaming_models_parse_no_event_again_and_serving_counts_and_logs_their_predictions(
    stack_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models on one feature set: every event is parsed once, by ingest (no more often than ingest counts
    events, whatever it replays), and each model's predictions go through serving's one entry."""
    parsed: list[int] = []
    parse = validation._parse

    def counting(payloads: Any) -> Any:
        parsed.append(len(payloads))
        return parse(payloads)

    monkeypatch.setattr(validation, "_parse", counting)
    stack: Stack = await stack_factory(TWO_MODELS)
    for model in ("churn", "churn_b"):
        await stack.register(model, tree_bytes())
    events = [event(i, i % 11) for i in range(300)]
    await stack.publish([*events, {"event_id": "bad1", "user_id": "u1"}])
    await stack.collect(lambda got: len(got) >= 2 * len(events))
    assert Counter(p.model for p in stack.predictions) == {"churn": len(events), "churn_b": len(events)}

    ingested = sum(stack.daemon.metrics.ingest_events.labels(stack.name, outcome)._value.get()
                   for outcome in ("accepted", "dead_letter", "redelivered"))
    assert ingested >= len(events) + 1 and sum(parsed) == ingested

    async def logged() -> bool:
        table = await stack.daemon.warehouse.read(
            "SELECT model, count(DISTINCT event_id) AS events FROM predictions GROUP BY model ORDER BY model")
        return bool(table.to_pylist() == [{"model": "churn", "events": len(events)},
                                          {"model": "churn_b", "events": len(events)}])

    await until(logged, "every event's prediction logged for each model")
    for model in ("churn", "churn_b"):
        assert stack.daemon.metrics.predictions.labels(model, "1", "ok")._value.get() >= len(events)
        assert stack.daemon.metrics.stream_skipped.labels(model, "invalid_event")._value.get() >= 1
