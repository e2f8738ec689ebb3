"""Delayed labels in a whole daemon on a real broker and Redis: each label is judged against the prediction it
is for (named by event id or request id, else the entity's first prediction at or after the label's time),
never against another prediction of the same entity, and predictions newer than `label_delay_s` wait."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlplat.daemon import Daemon
from mlplat.features.definitions import FeatureSet
from mlplat.ingest.generator import GeneratorSpec, generate_labelled, generate_records
from mlplat.monitoring.drift import PERFORMANCE, ModelDrift
from mlplat.serving.flavours import load_model
from tests.daemons import daemon_settings
from tests.models import FEATURES, logistic_bytes
from tests.waiting import until

pytestmark = pytest.mark.integration

DELAY_S = 1.0  # monitoring.label_delay_s
TOLERANCE_S = 5.0  # monitoring.label_match_tolerance_s
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAMES = [f.name for f in FEATURES]


def features_toml(name: str) -> str:
    numeric = "".join(f'\n[[feature_sets.act_{name}.features]]\nname = "{f.name}"\ntype = "{f.type}"\nmin = 0\n'
                      for f in FEATURES if f.type != "bool")
    return f"""
[entities.user]
key = "user_id"

[feature_sets.act_{name}]
entity = "user"
{numeric}
[[feature_sets.act_{name}.features]]
name = "is_premium"
type = "bool"

[feature_sets.lab_{name}]
entity = "user"

[[feature_sets.lab_{name}.features]]
name = "label"
type = "int"
allowed = [0, 1]

[[feature_sets.lab_{name}.features]]
name = "for_id"
type = "string"
"""


Start = Callable[[], Awaitable[Daemon]]


@pytest.fixture
async def start(tmp_path: Path, kafka_url: str, redis_url: str, unique_name: str) -> AsyncIterator[Start]:
    """A daemon judging performance on the labels of lab_<name>, with the model `churn` on act_<name> served
    (and predicting every event of it) and a training window to compare with."""
    name = unique_name
    (tmp_path / "features.toml").write_text(features_toml(name))
    (tmp_path / "models.toml").write_text(f'[streams.churn]\nfeature_set = "act_{name}"\n')
    settings = daemon_settings(
        tmp_path, bus={"url": kafka_url}, hot_store={"url": redis_url},
        ingest={"features_file": str(tmp_path / "features.toml"), "consumer_group": f"i-{name}",
                "dead_letter_topic": f"dl-{name}", "partitions": 1, "batch_wait_ms": 50},
        streaming={"models_file": str(tmp_path / "models.toml"), "consumer_group": f"s-{name}",
                   "predictions_topic": f"pred-{name}", "partitions": 1, "batch_wait_ms": 20},
        actions={"consumer_group": f"a-{name}", "dead_letter_topic": f"adl-{name}"},
        # one bucket holds the whole test, whatever the hour
        monitoring={"labels_feature_set": f"lab_{name}", "label_delay_s": DELAY_S,
                    "label_match_tolerance_s": TOLERANCE_S, "min_rows": 20, "bucket_s": 1e9},
    )
    daemons: list[Daemon] = []

    async def make() -> Daemon:
        daemon = Daemon(settings)
        await daemon.start()
        daemons.append(daemon)
        activity = daemon.features.get(f"act_{name}")
        reference = tmp_path / "reference.ndjson"
        reference.write_text("\n".join(json.dumps(r) for r in generate_records(
            GeneratorSpec(activity, "user_id", seed=1, start=T0, step_ms=1000), 500)))
        await daemon.batch.ingest_file(reference, activity.name, upload_id="reference")
        window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(seconds=500)).isoformat()}
        mv = await daemon.registry.register("churn", logistic_bytes(), "sklearn", FEATURES,
                                            feature_set=activity.name, training_window=window)
        await daemon.registry.promote("churn", mv.version)
        await daemon.serving.swap_to(mv)
        return daemon

    yield make
    for daemon in daemons:
        await daemon.stop()


async def count(daemon: Daemon, sql: str) -> int:
    return int((await daemon.warehouse.read(sql)).column(0)[0].as_py())


def judged(drift: ModelDrift) -> dict[str, tuple[float, int]]:
    """Each performance metric of the run, with the number of predictions it judged."""
    return {v.statistic: (v.value, v.current_n) for v in drift.values if v.feature == PERFORMANCE}


def expected(scores: list[float], labels: list[int]) -> dict[str, tuple[float, int]]:
    from sklearn import metrics

    cut = np.array(scores) >= 0.5
    return {"auc": (metrics.roc_auc_score(labels, scores), len(labels)),
            "accuracy": (metrics.accuracy_score(labels, cut), len(labels)),
            "f1": (metrics.f1_score(labels, cut), len(labels))}


async def publish(daemon: Daemon, fs: FeatureSet, messages: list[tuple[bytes, bytes]]) -> None:
    await daemon.bus.publish_many(fs.topic, messages)


async def test_streamed_labels_arriving_late_are_judged_against_the_event_they_name(start: Start) -> None:
    """`generate_labelled` labels name their event: entities with several predictions each (their events and
    labels all older than the predictions, which share a few batches' predicted_at) are judged event by event,
    not each against the entity's newest label."""
    daemon = await start()
    activity = next(fs for fs in daemon.features.feature_sets.values() if fs.name.startswith("act_"))
    labels_fs = next(fs for fs in daemon.features.feature_sets.values() if fs.name.startswith("lab_"))
    # 20 entities, 3 to 13 events each, all in the recent past
    spec = GeneratorSpec(activity, "user_id", entities=20, seed=5, step_ms=100, id_prefix=f"{activity.name}-",
                         start=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120))
    first, second = generate_labelled(spec, 150, 0), generate_labelled(spec, 60, 150)
    assert min(Counter(key for key, _, _ in first).values()) >= 2
    predicted = "SELECT count(*) FROM predictions WHERE model = 'churn'"
    labelled = f"SELECT count(*) FROM {labels_fs.table}"

    async def logged(sql: str, n: int) -> bool:
        await daemon.prediction_log.flush()
        return await count(daemon, sql) == n

    await publish(daemon, activity, [(key, event) for key, event, _ in first])
    await until(lambda: logged(predicted, 150), "the first events predicted and logged")
    judged_until = dt.datetime.now(dt.UTC)
    await asyncio.sleep(DELAY_S)  # the labels arrive label_delay_s after the predictions
    await publish(daemon, labels_fs, [(key, label) for key, _, label in first if label is not None])
    await until(lambda: logged(labelled, 150), "the first labels ingested")
    # more predictions, whose labels came early: a run within label_delay_s of them does not judge them yet
    await publish(daemon, activity, [(key, event) for key, event, _ in second])
    await until(lambda: logged(predicted, 210), "the second events predicted and logged")
    await publish(daemon, labels_fs, [(key, label) for key, _, label in second if label is not None])
    await until(lambda: logged(labelled, 210), "the second labels ingested")

    [drift] = await daemon.monitoring.run_drift(["churn"], at=judged_until + dt.timedelta(seconds=DELAY_S))

    events = [json.loads(event) for _, event, _ in first]
    scores = load_model("sklearn", logistic_bytes()).predict(np.array([[float(e[n]) for n in NAMES] for e in events]))
    truth = [json.loads(label)["label"] for _, _, label in first if label is not None]
    got, want = judged(drift), expected(scores.tolist(), truth)
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in want.items()}
    assert {k: v[0] for k, v in got.items()} == pytest.approx({k: v[0] for k, v in want.items()})


async def test_called_predictions_are_judged_by_request_id_else_by_time_within_the_tolerance(
    start: Start, tmp_path: Path
) -> None:
    """Predict calls: a label naming its request id is judged against that call (the newest such label, a
    retried call once); one without is judged against its entity's first call at or after its time, at most
    label_match_tolerance_s later, and each call against one label only."""
    daemon = await start()
    labels_fs = next(fs for fs in daemon.features.feature_sets.values() if fs.name.startswith("lab_"))
    rng = np.random.default_rng(3)
    named = [f"n{i}" for i in range(20)]  # their labels name the request, and all carry the same time
    timed = [f"t{i}" for i in range(20)]  # theirs name nothing; the middle call's label never comes
    late = [f"l{i}" for i in range(10)]  # theirs are older than the call by more than the tolerance
    orphans = [f"o{i}" for i in range(10)]  # theirs: one for the call, and an older one of no call
    corrected: list[dict[str, Any]] = []  # labels arriving first, then corrected by a later one
    labels: list[dict[str, Any]] = []
    pairs: list[tuple[float, int]] = []

    def label(user: str, at: dt.datetime, value: int, for_id: str | None = None,
              into: list[dict[str, Any]] = labels) -> None:
        into.append({"event_id": f"label{len(corrected) + len(labels)}", "user_id": user,
                     "event_time": at.isoformat(), "label": value, **({"for_id": for_id} if for_id else {})})

    first_call = dt.datetime.now(dt.UTC)
    for k in range(3):
        for user in named + timed + (late + orphans if k == 0 else []):
            at = dt.datetime.now(dt.UTC)
            features = {"clicks_1h": int(rng.integers(0, 100)), "spend_1h": float(rng.random() * 100),
                        "session_minutes": float(rng.random() * 100), "is_premium": bool(rng.integers(0, 2))}
            result = await daemon.serving.predict("churn", features, entity_id=user, request_id=f"{user}-{k}")
            value = int(rng.integers(0, 2))
            if user in named:
                label(user, first_call - dt.timedelta(seconds=1), value, result.request_id)
                if k == 0:  # the client retried the call: still one prediction; its first label was wrong
                    await daemon.serving.predict("churn", features, entity_id=user, request_id=result.request_id)
                    label(user, first_call - dt.timedelta(seconds=1), 1 - value, result.request_id, corrected)
                if k == 2:  # and one naming nothing, just before a named call: not that call's
                    label(user, at, 1 - value)
            elif user in timed and k != 1:
                label(user, at, value)
            elif user in late:
                label(user, at - dt.timedelta(seconds=2 * TOLERANCE_S), value)
            elif user in orphans:
                label(user, at - dt.timedelta(seconds=1), 1 - value)
                label(user, at, value)
            else:
                continue
            if user not in late:
                pairs.append((result.score, value))
    await daemon.prediction_log.flush()
    await asyncio.sleep(DELAY_S)  # the labels arrive label_delay_s after the predictions
    for upload, rows in (("first", corrected), ("labels", labels)):
        path = tmp_path / f"{upload}.ndjson"
        path.write_text("\n".join(json.dumps(row) for row in rows))
        summary = await daemon.batch.ingest_file(path, labels_fs.name, upload_id=upload)
        assert summary.rows_accepted == len(rows)

    [drift] = await daemon.monitoring.run_drift(["churn"])

    assert len(pairs) == 20 * 3 + 20 * 2 + 10
    got, want = judged(drift), expected([s for s, _ in pairs], [v for _, v in pairs])
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in want.items()}
    assert {k: v[0] for k, v in got.items()} == pytest.approx({k: v[0] for k, v in want.items()})
