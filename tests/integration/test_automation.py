"""Service D in a whole daemon: training jobs from declared specs (stages, determinism, failures,
preemption), the scheduler (bootstrap, cron schedule, drift policy with cool-down), lifecycle rules, and
the Train stream over gRPC with re-attach."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mlplat.api.v1 import models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from mlplat.automation.jobs import JobEvent, TrainingJob
from mlplat.automation.lifecycle import clean_up
from mlplat.automation.service import BOOTSTRAP_POLL_S
from mlplat.automation.specs import ModelSpec
from mlplat.daemon import Daemon
from mlplat.errors import BackendUnavailable, NotFound
from mlplat.features.definitions import load_catalog
from mlplat.ingest.generator import GeneratorSpec, generate_labelled
from mlplat.monitoring.drift import DRIFT_KEY, DriftValue, ModelDrift
from mlplat.serving.flavours import load_model
from mlplat.serving.registry import RegistryError
from tests.daemons import daemon_settings
from tests.models import FEATURES, NAMES, logistic_bytes, matrix, rows, tree_bytes
from tests.waiting import until

START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
MODELS = """
[models.churn]
feature_set = "user_activity"
features = ["clicks_1h", "spend_1h", "session_minutes", "is_premium"]
label = "user_labels.label"
estimator = "decision_tree"
params = { max_depth = 4 }
min_rows = 200
seed = 3
bootstrap = {bootstrap}
drift_check_s = 0
"""


def automation_settings(tmp_path: Path, bootstrap: bool = False, **sections: Any) -> Any:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.replace("{bootstrap}", str(bootstrap).lower()))
    return daemon_settings(tmp_path, streaming={"models_file": str(models)},
                           automation={"enabled": False, **sections.pop("automation", {})}, **sections)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(automation_settings(tmp_path))
    await d.start()
    yield d
    await d.stop()


async def ingest_labelled(daemon: Daemon, tmp_path: Path, n: int, *, seed: int = 0, tag: str = "a",
                          start: dt.datetime = START) -> None:
    """n user_activity events and their labels, through batch ingest."""
    fs = load_catalog(Path("config/features.toml")).feature_sets["user_activity"]
    spec = GeneratorSpec(fs, "user_id", entities=200, seed=seed, start=start, step_ms=100, id_prefix=tag)
    rows = generate_labelled(spec, n)
    (tmp_path / f"events-{tag}.ndjson").write_bytes(b"\n".join(payload for _, payload, _ in rows))
    (tmp_path / f"labels-{tag}.ndjson").write_bytes(b"\n".join(label for _, _, label in rows if label))
    await daemon.batch.ingest_file(tmp_path / f"events-{tag}.ndjson", "user_activity", upload_id=f"events-{tag}")
    await daemon.batch.ingest_file(tmp_path / f"labels-{tag}.ndjson", "user_labels", upload_id=f"labels-{tag}")


class Clock:
    """The scheduler's monotonic time, moved by the test instead of waited out."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def finished(job: TrainingJob, limit_s: float = 120) -> list[JobEvent]:
    async with asyncio.timeout(limit_s):
        return [event async for event in job.follow()]


async def history(daemon: Daemon, model: str = "churn") -> list[tuple[str, str]]:
    """(action, subject) oldest first."""
    return [(e.action, e.subject) for e in reversed(await daemon.registry.history(model))]


async def test_a_job_streams_its_stages_registers_promotes_and_is_deterministic(daemon: Daemon,
                                                                                tmp_path: Path) -> None:
    await ingest_labelled(daemon, tmp_path, 1500)
    events = await finished(await daemon.automation.train("churn", reason="first"))
    assert [e.stage for e in events] == ["queued", "loading_data", "fitting", "evaluating", "uploading",
                                         "registered", "promoted"]
    assert all(a.progress <= b.progress for a, b in itertools.pairwise(events))
    assert events[-1].version == 1 and "no production version" in events[-1].message
    v1 = await daemon.registry.get("churn")
    assert (v1.version, v1.created_by, v1.reason) == (1, "user", "request: first")
    assert set(v1.metrics) == {"accuracy", "f1", "auc"} and v1.metrics["accuracy"] > 0.6
    assert v1.training_window["start"].startswith("2026-06-01") and "onnx" in v1.exports
    assert daemon.serving.served_models()["churn"].version == 1

    # the same data, spec and seed: the same model (compared on the same holdout, it ties and wins at margin 0)
    events = await finished(await daemon.automation.train("churn"))
    v2 = await daemon.registry.get("churn", 2)
    assert events[-1].stage == "promoted" and v2.metrics == v1.metrics
    assert v2.training_window == v1.training_window
    probe = np.random.default_rng(1).random((50, 4)) * 100
    first = load_model("sklearn", await daemon.artifacts.get(v1.artifact_key))
    second = load_model("sklearn", await daemon.artifacts.get(v2.artifact_key))
    assert np.array_equal(first.predict(probe), second.predict(probe))
    onnx = load_model("onnx", await daemon.artifacts.get(v2.exports["onnx"]["key"]))
    assert np.allclose(onnx.predict(probe), second.predict(probe), atol=1e-5)
    assert await history(daemon) == [("register", "churn:1"), ("promote", "churn:1"), ("register", "churn:2"),
                                     ("promote", "churn:2")]


async def test_one_model_never_trains_twice_at_once(daemon: Daemon, tmp_path: Path) -> None:
    await ingest_labelled(daemon, tmp_path, 600)
    first = await daemon.automation.train("churn")
    second = await daemon.automation.train("churn")
    assert second is first
    await finished(first)
    third = await daemon.automation.train("churn")
    assert third is not first
    await finished(third)
    with pytest.raises(NotFound, match="not declared"):
        await daemon.automation.train("nope")


async def test_failed_training_leaves_production_untouched_and_records_why(daemon: Daemon, tmp_path: Path) -> None:
    await ingest_labelled(daemon, tmp_path, 600)
    assert (await finished(await daemon.automation.train("churn")))[-1].stage == "promoted"
    spec = daemon.automation.specs()["churn"]

    await daemon.automation.declare(spec.model_copy(update={"params": {"max_depth": -1}}))
    events = await finished(await daemon.automation.train("churn"))
    assert events[-1].stage == "failed" and "max_depth" in events[-1].message

    await daemon.automation.declare(spec.model_copy(update={"lookback_s": 60.0}))  # the data is months old
    events = await finished(await daemon.automation.train("churn"))
    assert events[-1].stage == "failed" and "not enough data: 0 clean rows" in events[-1].message

    assert [mv.version for mv in await daemon.registry.versions("churn")] == [1]
    assert (await daemon.registry.get("churn")).version == 1 and daemon.serving.served_models()["churn"].version == 1
    failures = [e for e in await daemon.registry.history("churn") if e.action == "train_failed"]
    assert len(failures) == 2 and "not enough data" in failures[0].reason and "max_depth" in failures[1].reason
    text = daemon.metrics.render().decode()
    assert 'mlplat_training_jobs_total{model="churn",outcome="failed",trigger="request"} 2.0' in text


async def test_a_training_job_preempted_by_ingest_load_still_completes(tmp_path: Path) -> None:
    """One worker: an upload's parsing (ingest class) pauses the fitting; both finish, the model is registered."""
    settings = automation_settings(tmp_path, balancer={"max_python_workers": 1, "spare_workers": 1,
                                                       "preempt_after_ms": 1.0, "cpu_saturated_percent": 100.0})
    daemon = Daemon(settings)
    await daemon.start()
    try:
        await ingest_labelled(daemon, tmp_path, 3000)
        spec = daemon.automation.specs()["churn"]
        await daemon.automation.declare(spec.model_copy(update={"estimator": "random_forest",
                                                                "params": {"n_estimators": 1500}}))
        job = await daemon.automation.train("churn")
        busy = daemon.metrics.workers_busy.labels("process")
        await until(lambda: job.last is not None and job.last.stage == "fitting" and busy._value.get() >= 1,
                    "fitting running on the worker")
        await ingest_labelled(daemon, tmp_path, 20_000, seed=5, tag="load", start=START + dt.timedelta(days=1))
        assert daemon.metrics.jobs_preempted._value.get() >= 1
        events = await finished(job, limit_s=300)
        assert events[-1].stage == "promoted", events[-1].message
        assert (await daemon.registry.get("churn")).version == 1
    finally:
        await daemon.stop()


async def test_lifecycle_never_deletes_production_or_the_rollback_target(daemon: Daemon) -> None:
    registry = daemon.registry
    files = [tree_bytes(depth=d) for d in (1, 2, 3, 4)] + [logistic_bytes(seed=0), logistic_bytes(seed=0)]
    versions = [await registry.register("m", data, "sklearn", FEATURES) for data in files]  # v5, v6 share bytes
    await registry.promote("m", 2)
    await registry.promote("m", 6)  # production v6, rollback target v2
    cleaned = await clean_up(registry, daemon.artifacts, "m", keep=2)
    assert [c.version for c in cleaned] == [4, 3, 1]
    assert cleaned[-1].keys == (versions[0].artifact_key,)
    assert cleaned[0].keys == (versions[3].artifact_key,)
    by_version = {mv.version: mv for mv in await registry.versions("m")}
    assert [v for v, mv in sorted(by_version.items()) if mv.artifacts_deleted_at] == [1, 3, 4]
    for v in (2, 5, 6):  # production, rollback, newest two (v5 and v6 share one file): all still loadable
        await daemon.artifacts.get(by_version[v].artifact_key)
    for v in (1, 3, 4):
        with pytest.raises(NotFound):
            await daemon.artifacts.get(by_version[v].artifact_key)
    with pytest.raises(RegistryError, match="lifecycle rules deleted its artifact"):
        await registry.promote("m", 3)
    assert await registry.rollback_target("m") == 2
    assert await clean_up(registry, daemon.artifacts, "m", keep=2) == []  # nothing more to do
    deletions = [e for e in await registry.history("m") if e.action == "delete_artifacts"]
    assert len(deletions) == 3 and all("rollback target (v2)" in e.reason for e in deletions)


def drifted(model: str, version: int, ks: float) -> ModelDrift:
    return ModelDrift(model, version, "b0", "b1", "now", detected=ks >= 0.1, values=[
        DriftValue("session_minutes", "ks", ks, 0.1, ks >= 0.1, 500, 500),
        DriftValue("spend_1h", "ks", 0.02, 0.1, False, 500, 500),
        DriftValue("spend_1h", "ks", 0.9, 0.1, True, 500, 500, source="ingest"),  # the policy reads served inputs
    ])


async def test_one_drift_episode_triggers_one_retraining(daemon: Daemon, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    await ingest_labelled(daemon, tmp_path, 600)
    await finished(await daemon.automation.train("churn"))
    spec = daemon.automation.specs()["churn"]
    await daemon.automation.declare(spec.model_copy(update={"drift_check_s": 0.01, "drift_thresholds": {"ks": 0.3},
                                                            "cooldown_s": 3600.0}))
    latest = {"ks": 0.5}

    async def run_drift(models: list[str], at: dt.datetime | None = None) -> list[ModelDrift]:
        return [drifted("churn", 1, latest["ks"])]

    started: list[tuple[str, str]] = []

    async def train(model: str, *, trigger: str = "request", reason: str = "",
                    since: dt.datetime | None = None) -> None:
        started.append((trigger, reason))

    monkeypatch.setattr(daemon.monitoring, "run_drift", run_drift)
    monkeypatch.setattr(daemon.automation, "train", train)
    clock = Clock()
    monkeypatch.setattr(daemon.automation, "clock", clock)
    for ks in (0.5, 0.6, 0.7, 0.2, 0.5, 0.25):  # an episode, its end (0.2 < 0.3), a second episode in cool-down
        latest["ks"] = ks
        clock.now += 0.02  # past drift_check_s
        await daemon.automation.tick()
    assert started == [("drift", "ks of session_minutes 0.500 >= 0.3")]
    decisions = [(e.action, e.reason) for e in reversed(await daemon.registry.history("churn"))
                 if e.action in ("retrain", "drift_ignored")]
    # each episode is recorded once: the first retrains, the second (in the cool-down) is ignored, with why
    assert [a for a, _ in decisions] == ["retrain", "drift_ignored", "drift_ignored"]
    assert "cooling down" in decisions[1][1] and "0.600" in decisions[1][1] and "0.500" in decisions[2][1]


async def test_a_shift_of_the_country_mix_retrains_on_the_runs_result_when_the_hot_store_lost_it(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real drift run: country (a string, no model input) drifts as ingested, nothing else does. The run's
    write to Redis fails and Redis still holds an older run without drift: automation acts on what the run
    returned, with the categorical thresholds, whatever numeric statistics its spec names."""
    daemon = Daemon(automation_settings(tmp_path, hot_store={"url": redis_url}))
    await daemon.start()
    try:
        await _country_mix_retrains(daemon, tmp_path, monkeypatch)
    finally:
        await daemon.stop()


async def _country_mix_retrains(daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "reference.ndjson").write_text("\n".join(json.dumps(r) for r in rows(1, 5000)))
    await daemon.batch.ingest_file(tmp_path / "reference.ndjson", "user_activity", upload_id="reference")
    window = {"start": START.isoformat(), "end": (START + dt.timedelta(seconds=5000)).isoformat()}
    mv = await daemon.registry.register("churn", logistic_bytes(), "sklearn", FEATURES, feature_set="user_activity",
                                        training_window=window)
    await daemon.registry.promote("churn", mv.version)
    await daemon.serving.swap_to(mv)
    await daemon.serving.predict_batch("churn", NAMES, matrix(rows(2, 3000)))
    await daemon.prediction_log.flush()
    logged = await daemon.warehouse.read("SELECT max(predicted_at) AS t FROM predictions")
    at = logged["t"][0].as_py()  # the run's bucket is the one the predictions are in
    bucket = dt.datetime.fromtimestamp(at.timestamp() // 3600 * 3600, dt.UTC)
    current = rows(3, 3000, start=bucket, step_ms=1)  # the numbers as in the reference; 70% from the US
    for i, record in enumerate(current):
        record["country"] = "us" if i % 10 < 7 else record["country"]
    (tmp_path / "current.ndjson").write_text("\n".join(json.dumps(r) for r in current))
    await daemon.batch.ingest_file(tmp_path / "current.ndjson", "user_activity", upload_id="current")

    key = DRIFT_KEY.format(model="churn")
    earlier = ModelDrift("churn", 1, "b0", "b1", "earlier").to_json()  # an earlier run: no drift
    await daemon.hot_store.set(key, earlier)
    write = daemon.hot_store.set

    async def failing(k: str, value: bytes, *, ttl_s: float | None = None) -> None:
        if k == key:
            raise BackendUnavailable("redis: connection refused")
        await write(k, value, ttl_s=ttl_s)

    monkeypatch.setattr(daemon.hot_store, "set", failing)
    started: list[tuple[str, str]] = []

    async def train(model: str, *, trigger: str = "request", reason: str = "",
                    since: dt.datetime | None = None) -> None:
        started.append((trigger, reason))

    monkeypatch.setattr(daemon.automation, "train", train)
    spec = daemon.automation.specs()["churn"]
    await daemon.automation.declare(spec.model_copy(update={"drift_check_s": 60.0, "drift_statistics": ("ks",),
                                                            "drift_thresholds": {"ks": 0.15}}))
    await daemon.automation.tick(now=at)

    assert await daemon.hot_store.get(key) == earlier  # the run's result never reached the store
    [(trigger, reason)] = started
    assert trigger == "drift" and reason.startswith("psi of country ") and reason.endswith(" >= 0.2"), reason
    decisions = [e.reason for e in await daemon.registry.history("churn") if e.action == "retrain"]
    assert decisions == [f"drift: {reason}"]


async def test_a_retraining_schedule_fires_on_its_cron_time(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = daemon.automation.specs()["churn"]
    await daemon.automation.declare(spec.model_copy(update={"retrain_schedule": "*/5 * * * *"}))
    started: list[str] = []

    async def train(model: str, *, trigger: str = "request", reason: str = "", since: Any = None) -> None:
        started.append(trigger)

    monkeypatch.setattr(daemon.automation, "train", train)
    t0 = dt.datetime(2026, 11, 23, 10, 1, tzinfo=dt.UTC)
    for minutes in (0, 2, 4, 4.5, 5, 6, 9.9, 10):
        await daemon.automation.tick(now=t0 + dt.timedelta(minutes=minutes))
    assert started == ["schedule", "schedule"]  # 10:05 and 10:10


async def test_bootstrap_trains_once_when_there_is_enough_data_and_restart_warms_it(tmp_path: Path) -> None:
    settings = automation_settings(tmp_path, bootstrap=True)
    daemon = Daemon(settings)
    await daemon.start()
    clock = daemon.automation.clock = Clock()
    try:
        await daemon.automation.tick()
        assert "churn" not in daemon.serving.served_models()  # no data: nothing to train on
        await ingest_labelled(daemon, tmp_path, 600)
        await daemon.automation.tick()
        assert daemon.automation._jobs.running("churn") is None  # the bootstrap check waits its own interval
        clock.now += BOOTSTRAP_POLL_S
        await daemon.automation.tick()
        job = daemon.automation._jobs.running("churn")
        assert job is not None and job.trigger == "bootstrap"
        assert (await finished(job))[-1].stage == "promoted"
        clock.now += BOOTSTRAP_POLL_S
        await daemon.automation.tick()
        assert daemon.automation._jobs.running("churn") is None
        assert [a for a, _ in await history(daemon)] == ["bootstrap", "register", "promote"]
        declared = daemon.automation.specs()["churn"].model_copy(update={"name": "churn_fast",
                                                                         "estimator": "logistic_regression",
                                                                         "params": {"max_iter": 500}})
        await daemon.automation.declare(declared)
    finally:
        await daemon.stop()

    again = Daemon(settings)
    await again.start()  # production versions are loaded before start() returns (before readiness)
    try:
        assert again.serving.served_models()["churn"].version == 1
        assert again.automation.specs()["churn_fast"].estimator == "logistic_regression"  # kept across restarts
    finally:
        await again.stop()


@pytest.fixture
async def channel(daemon: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as ch:
        yield ch


async def test_train_stream_returns_the_job_at_once_and_re_attaches_after_a_disconnect(
        daemon: Daemon, tmp_path: Path, channel: grpc.aio.Channel) -> None:
    await ingest_labelled(daemon, tmp_path, 600)
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    spec = daemon.automation.specs()["churn"]
    await daemon.automation.declare(spec.model_copy(update={"estimator": "random_forest",
                                                            "params": {"n_estimators": 300}}))
    call = stub.Train(training_pb2.TrainRequest(model="churn", reason="by hand"))
    first = await call.read()
    assert first.stage == "queued" and first.job_id and first.trigger == "request"
    call.cancel()  # the client goes away
    job = daemon.automation.job(first.job_id)
    events = [e async for e in stub.Train(training_pb2.TrainRequest(job_id=first.job_id))]
    assert events[0].stage == "queued" and events[0].job_id == first.job_id
    assert events[-1].stage == "promoted" and events[-1].version == 1 and job.done
    again = [e.stage async for e in stub.Train(training_pb2.TrainRequest(job_id=first.job_id))]
    assert again == [e.stage for e in events]  # a finished job replays
    assert len(await daemon.registry.versions("churn")) == 1  # one job, one version

    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stub.Train(training_pb2.TrainRequest(job_id="nope")):
            pass
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    entries = (await models_pb2_grpc.ModelServiceStub(channel).History(
        models_pb2.HistoryRequest(model="churn"))).entries
    assert [x.action for x in entries] == ["promote", "register"] and "no production" in entries[0].reason


async def test_declare_over_grpc_checks_the_spec_and_lists_it(daemon: Daemon, channel: grpc.aio.Channel) -> None:
    stub = training_pb2_grpc.TrainingServiceStub(channel)
    good = training_pb2.ModelSpec(name="upsell", feature_set="user_activity", label="user_labels.label",
                                  estimator="gradient_boosting", min_rows=300, promote="manual")
    good.params.update({"n_estimators": 20, "learning_rate": 0.2})
    declared = await stub.DeclareModel(good)
    assert declared.name == "upsell" and declared.min_rows == 300
    spec = daemon.automation.specs()["upsell"]
    assert spec.params == {"n_estimators": 20, "learning_rate": 0.2} and spec.promote == "manual"
    assert {s.name for s in (await stub.ListSpecs(training_pb2.ListSpecsRequest())).specs} == {"churn", "upsell"}

    bad = [
        (training_pb2.ModelSpec(name="x", feature_set="user_activity", label="user_labels.label", estimator="svm"),
         "unknown estimator 'svm'"),
        (training_pb2.ModelSpec(name="x", feature_set="nope", label="user_labels.label", estimator="decision_tree"),
         "nope"),
        (training_pb2.ModelSpec(name="x", feature_set="user_activity", features=["country"],
                                label="user_labels.label", estimator="decision_tree"), "'country' is string"),
        (training_pb2.ModelSpec(name="x", feature_set="user_activity", label="label", estimator="decision_tree"),
         "<feature set>.<feature>"),
        (training_pb2.ModelSpec(name="x", feature_set="user_activity", label="user_labels.label",
                                estimator="decision_tree", retrain_schedule="every day"), "retrain_schedule"),
    ]
    for message, expected in bad:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.DeclareModel(message)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in (e.value.details() or "")
    assert set(daemon.automation.specs()) == {"churn", "upsell"}


def test_spec_round_trips_through_its_message() -> None:
    from mlplat.api.specs import spec_from_message, spec_message

    spec = ModelSpec(name="m", feature_set="s", label="l.y", estimator="random_forest",
                     params={"n_estimators": 10, "max_features": "sqrt"}, seed=7, lookback_s=60.0,
                     drift_thresholds={"ks": 0.2}, retrain_schedule="@daily")
    assert spec_from_message(spec_message(spec)) == spec
