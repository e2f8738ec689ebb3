"""`mlplat bench stream`: streaming inference in a whole daemon (ingest consuming the same events beside it).

- `events_per_s`: a backlog of events is waiting when the model is promoted; the time until every one has
  its prediction published (with `--models N`, N models on the one feature set: until each has predicted
  every event). Next to it, in the same run, `floor_events_per_s`: the same events validated
  and scored by the same model in batches in-process (no bus, no publishing, no ingest beside it), and
  `raw_consume_events_per_s`: the events read from the bus and nothing else.
- `lag_p50_ms`, `lag_p99_ms`: events published at a steady `rate` (event time = publish time) for a few
  seconds; per prediction, from the event's time to the prediction's publication.
The model is a decision tree of four features; the bus is memory:// unless --bus names a Kafka broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlplat.bench import BenchResult, run_async
from mlplat.bench.ingest import raw_consume_rate
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from mlplat.ingest.validation import validate_events
from mlplat.serving.flavours import load_model, save_sklearn
from mlplat.serving.registry import InputFeature
from mlplat.streaming.records import PredictionRecord

FEATURES = ("clicks", "spend", "minutes", "premium")
ENTITIES = 10_000


def _features_toml(name: str) -> str:
    return (f'[entities.user]\nkey = "user_id"\n\n[feature_sets.{name}]\nentity = "user"\n'
            + "".join(f'\n[[feature_sets.{name}.features]]\nname = "{n}"\ntype = "{t}"\n'
                      for n, t in (("clicks", "int"), ("spend", "float"), ("minutes", "float"), ("premium", "bool"))))


def _tree() -> bytes:
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.random((5000, 4)) * [100, 100, 60, 1]
    y = (x[:, 0] + x[:, 1] > 100).astype(int)
    return save_sklearn(DecisionTreeClassifier(max_depth=8, random_state=0).fit(x, y))


def _events(n: int, offset: int, at_ms: int | None = None) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(offset)
    users = rng.integers(0, ENTITIES, n).tolist()
    clicks = rng.integers(0, 100, n).tolist()
    spend = np.round(rng.uniform(0, 100, n), 2).tolist()
    minutes = np.round(rng.uniform(0, 60, n), 1).tolist()
    premium = (rng.random(n) < 0.3).tolist()
    now_ms = at_ms or int(time.time() * 1000)
    return [(f"u{u}".encode(), orjson.dumps({
        "event_id": f"e{offset + i}", "user_id": f"u{u}", "event_time": now_ms, "clicks": c, "spend": s,
        "minutes": m, "premium": p})) for i, (u, c, s, m, p) in enumerate(zip(users, clicks, spend, minutes, premium,
                                                                                  strict=True))]


def _in_process_rate(daemon: Daemon, feature_set: str, events: int) -> float:
    """The work itself without the platform: the same events validated and scored in batches, in-process."""
    fs = daemon.features.get(feature_set)
    key = daemon.features.key_of(fs)
    model = load_model("sklearn", _tree())
    payloads = [p for start in range(0, events, 20_000) for _, p in _events(min(20_000, events - start), start)]
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for start in range(0, events, 2000):
        rows = validate_events(fs, key, payloads[start:start + 2000], now).rows
        model.predict(np.column_stack([rows[f].to_numpy(zero_copy_only=False).astype(np.float64)
                                       for f in FEATURES]))
    return events / (time.perf_counter() - started)


async def _wait_for(count: Callable[[], float], target: float, timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while count() < target:  # noqa: ASYNC110 - a metric counter has no event to wait on
            await asyncio.sleep(0.005)
    if count() < target:  # pragma: no cover - the timeout raises first
        raise RuntimeError(what)


async def _run(events: int, rate: float, seconds: float, bus_url: str, workdir: Path,
               progress: Callable[[str], None], n_models: int = 1) -> dict[str, float]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    models = ["tree", *(f"tree{i}" for i in range(2, n_models + 1))]
    (workdir / "features.toml").write_text(_features_toml(name))
    (workdir / "models.toml").write_text("".join(f'[streams.{m}]\nfeature_set = "{name}"\n\n' for m in models))
    settings = load_settings(
        warehouse={"url": f"duckdb://{workdir / 'w.duckdb'}"}, artifacts={"url": f"file://{workdir / 'a'}"},
        bus={"url": bus_url}, api={"grpc_port": 0, "http_port": 0},
        ingest={"features_file": str(workdir / "features.toml"), "spool_dir": str(workdir / "spool"),
                "consumer_group": f"ingest-{name}", "dead_letter_topic": f"dlq-{name}"},
        streaming={"models_file": str(workdir / "models.toml"), "consumer_group": f"stream-{name}",
                   "predictions_topic": f"predictions-{name}"},
        logging={"level": "warning"},
    )
    daemon = Daemon(settings)
    await daemon.start()
    try:
        topic = f"mlplat.events.{name}"
        progress(f"publishing a backlog of {events:,} events to {daemon.bus.url}")
        for start in range(0, events, 20_000):
            await daemon.bus.publish_many(topic, _events(min(20_000, events - start), start))
        progress("floors: a raw consume of the same events; their validation and the model call in-process")
        raw = await raw_consume_rate(daemon.bus, topic, events)
        floor = await asyncio.to_thread(_in_process_rate, daemon, name, events)
        counters = [daemon.metrics.stream_predictions.labels(m) for m in models]

        def published() -> float:
            return float(min(c._value.get() for c in counters))  # every model has predicted this many

        progress(f"ours: promote {len(models)} decision tree(s); every event predicted and published by each")
        versions = [await daemon.registry.register(m, _tree(), "sklearn", [InputFeature(f) for f in FEATURES],
                                                   feature_set=name) for m in models]
        started = time.perf_counter()
        for m, mv in zip(models, versions, strict=True):
            await daemon.registry.promote(m, mv.version)
        await _wait_for(published, events, 600, "the stream did not predict every event")
        ours = events / (time.perf_counter() - started)

        progress("waiting for ingest to finish the backlog too (it shares the machine)")
        ingested = daemon.metrics.ingest_events.labels(name, "accepted")
        await _wait_for(ingested._value.get, events, 600, "ingest did not take the backlog")
        progress("lag: a reader of the predictions topic catches up with the backlog's predictions first")
        measured_from = events + int(rate)  # the first second's events settle the pipeline
        consumer = daemon.bus.consumer([settings.streaming.predictions_topic], group=f"lag-{name}")
        await consumer.start()
        lags: list[float] = []
        read_count = 0

        async def read() -> None:
            nonlocal read_count
            while True:
                for messages in (await consumer.poll(max_records=10_000, timeout_s=0.2)).values():
                    read_count += len(messages)
                    for m in messages:
                        r = PredictionRecord.from_json(m.value)
                        if int(r.id.rsplit(":e", 1)[1]) >= measured_from:
                            lags.append((r.published_at_us - r.event_time_us) / 1000)

        reader = asyncio.create_task(read())
        await _wait_for(lambda: read_count, events * len(models), 300, "the lag reader did not catch up")
        progress(f"lag: {rate:,.0f} events/s for {seconds:g} s after one unmeasured second")
        sent, tick, offset = 0, 0.01, events
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds + 1:
            due = int((time.perf_counter() - begin) * rate) - sent
            if due > 0:
                await daemon.bus.publish_many(topic, _events(due, offset, int(time.time() * 1000)))
                sent, offset = sent + due, offset + due
            await asyncio.sleep(tick)
        await _wait_for(published, events + sent, 60, "lag phase: predictions missing")
        await asyncio.sleep(0.5)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await consumer.stop()
        if len(lags) < (sent - int(rate)) * len(models):
            raise RuntimeError(f"lag phase: read {len(lags)} predictions of {(sent - int(rate)) * len(models)}")
        return {"models": float(len(models)), "events_per_s": round(ours, 1), "floor_events_per_s": round(floor, 1),
                "ratio": round(ours / floor, 4), "raw_consume_events_per_s": round(raw, 1),
                "lag_p50_ms": round(float(np.percentile(lags, 50)), 1),
                "lag_p99_ms": round(float(np.percentile(lags, 99)), 1), "lag_events": float(len(lags))}
    finally:
        await daemon.stop()


def run(events: int, rate: float, seconds: float, bus_url: str,
        progress: Callable[[str], None] = lambda _: None, *, models: int = 1) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-stream-") as tmp:
        metrics: dict[str, Any] = run_async(_run(events, rate, seconds, bus_url, Path(tmp), progress, models))
    return BenchResult("stream", {"events": events, "rate": rate, "seconds": seconds, "bus": bus_url,
                                  "model": "decision tree, 4 features",
                                  "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, metrics)
