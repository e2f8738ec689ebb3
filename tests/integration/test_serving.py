"""Service B through gRPC on an in-process daemon: register, promote, predict every way, swap under load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from google.protobuf import struct_pb2

from mlplat.api.v1 import models_pb2, models_pb2_grpc
from mlplat.daemon import Daemon
from mlplat.features.online import write_latest
from mlplat.serving.flavours import load_model, sha256_of
from mlplat.serving.registry import PRODUCTION_KEY
from tests.daemons import daemon_settings
from tests.models import FEATURES, logistic_bytes, tree_bytes
from tests.waiting import until

ROW = {"clicks_1h": 40, "spend_1h": 75.5, "session_minutes": 12.0, "is_premium": True}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(daemon_settings(tmp_path))
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def channel(daemon: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as ch:
        yield ch


def register_messages(name: str, data: bytes, flavour: str = "sklearn", feature_set: str = "user_activity",
                      chunk: int = 4096) -> Iterator[models_pb2.RegisterModelRequest]:
    features = [models_pb2.InputFeature(name=f.name, type=f.type) for f in FEATURES]
    for i, start in enumerate(range(0, len(data), chunk)):
        if i == 0:
            yield models_pb2.RegisterModelRequest(name=name, flavour=flavour, features=features,
                                                  feature_set=feature_set, chunk=data[start:start + chunk])
        else:
            yield models_pb2.RegisterModelRequest(chunk=data[start:start + chunk])


async def register_and_promote(channel: grpc.aio.Channel, name: str, data: bytes) -> models_pb2.ModelVersionInfo:
    models = models_pb2_grpc.ModelServiceStub(channel)
    info = await models.RegisterModel(register_messages(name, data))
    promoted: models_pb2.ModelVersionInfo = await models.Promote(models_pb2.StageRequest(model=name,
                                                                                          version=info.version))
    return promoted


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def expected(data: bytes, rows: list[dict[str, Any]]) -> np.ndarray:
    matrix = np.array([[float(r[f.name]) for f in FEATURES] for r in rows])
    return load_model("sklearn", data).predict(matrix)


async def test_register_promote_and_predict_every_way(daemon: Daemon, channel: grpc.aio.Channel) -> None:
    """Predict, PredictBatch and PredictStream give the model's own scores; every prediction is logged."""
    await register_and_promote(channel, "churn", logistic_bytes())
    predict = models_pb2_grpc.PredictionServiceStub(channel)
    listed = await predict.ListModels(models_pb2.ListModelsRequest())
    assert [(v.model, v.version, v.stage) for v in listed.versions] == [("churn", 1, "production")]
    info = await predict.GetModel(models_pb2.GetModelRequest(model="churn"))
    assert [(f.name, f.type) for f in info.features] == [(f.name, f.type) for f in FEATURES]

    one = await predict.Predict(models_pb2.PredictRequest(model="churn", features=struct(ROW), request_id="r1"))
    assert (one.version, one.request_id) == (1, "r1")
    assert one.score == pytest.approx(expected(logistic_bytes(), [ROW])[0])

    rng = np.random.default_rng(3)
    matrix = rng.random((500, 4)) * 50
    names = [f.name for f in FEATURES][::-1]  # columns in any order
    batch = await predict.PredictBatch(models_pb2.PredictBatchRequest(
        model="churn", feature_names=names, rows=500, float64_rows=matrix.astype("<f8").tobytes()))
    rows = [dict(zip(names, r, strict=True)) for r in matrix.tolist()]
    assert np.allclose(batch.scores, expected(logistic_bytes(), rows))

    requests = [models_pb2.PredictRequest(model="churn", features=struct({**ROW, "clicks_1h": i}), request_id=f"s{i}")
                for i in range(20)]
    requests.insert(5, models_pb2.PredictRequest(model="churn", features=struct({"clicks_1h": 1}), request_id="bad"))
    answers = [a async for a in predict.PredictStream(iter(requests))]
    assert [a.request_id for a in answers] == [r.request_id for r in requests]  # in order, none lost
    assert answers[5].error_code == "INVALID_ARGUMENT" and "spend_1h" in answers[5].error
    assert all(not a.error for i, a in enumerate(answers) if i != 5)

    async def logged() -> list[dict[str, Any]]:
        table = await daemon.warehouse.read("SELECT count(*) AS n, count(DISTINCT version) AS v FROM predictions")
        return list(table.to_pylist())

    async def all_logged() -> bool:  # the log flushes every 50 ms here
        return int((await logged())[0]["n"]) >= 1 + 500 + 20

    await until(all_logged, "every prediction in the log")
    assert await logged() == [{"n": 1 + 500 + 20, "v": 1}]
    single = await daemon.warehouse.read("SELECT features, score FROM predictions WHERE request_id = 'r1'")
    assert single.to_pylist() == [{"features": [float(ROW[f.name]) for f in FEATURES], "score": one.score}]
    in_batch = await daemon.warehouse.read("SELECT request_id, features FROM predictions WHERE request_id LIKE '%:7'")
    assert np.allclose(in_batch.to_pylist()[0]["features"], [matrix[7][names.index(f.name)] for f in FEATURES])
    metrics = daemon.metrics.render().decode()
    assert 'mlplat_predictions_total{model="churn",outcome="ok",version="1"} 521.0' in metrics
    assert 'mlplat_model_version_info{model="churn",stage="production",version="1"} 1.0' in metrics


async def test_features_come_from_the_online_store_for_an_entity(daemon: Daemon, channel: grpc.aio.Channel) -> None:
    """Features missing from the request are filled from the entity's latest values; request values win."""
    await register_and_promote(channel, "churn", tree_bytes())
    fs = daemon.features.get("user_activity")
    stored = {"clicks_1h": 90, "spend_1h": 80.0, "session_minutes": 5.0, "country": "de", "is_premium": False}
    rows = pa.table({"entity_id": ["user_7"], "event_time": pa.array([time.time() * 1e6], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")), **{k: [v] for k, v in stored.items()}})
    await write_latest(daemon.hot_store, fs, rows)
    predict = models_pb2_grpc.PredictionServiceStub(channel)
    filled = await predict.Predict(models_pb2.PredictRequest(model="churn", entity_id="user_7"))
    assert filled.score == pytest.approx(expected(tree_bytes(), [stored])[0])
    override = await predict.Predict(models_pb2.PredictRequest(
        model="churn", entity_id="user_7", features=struct({"clicks_1h": 0, "spend_1h": 0.0})))
    assert override.score == pytest.approx(expected(tree_bytes(), [{**stored, "clicks_1h": 0, "spend_1h": 0.0}])[0])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await predict.Predict(models_pb2.PredictRequest(model="churn", entity_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not in the request nor the online store" in (missing.value.details() or "")


@pytest.mark.parametrize(("request_fields", "code", "named"), [
    ({"model": "nope", "features": ROW}, grpc.StatusCode.NOT_FOUND, "not served"),
    ({"model": "churn", "features": {**ROW, "spend_1h": "lots"}}, grpc.StatusCode.INVALID_ARGUMENT, "spend_1h"),
    ({"model": "churn", "features": {**ROW, "clicks_1h": 1.5}}, grpc.StatusCode.INVALID_ARGUMENT, "integer"),
    ({"model": "churn", "features": {**ROW, "is_premium": 1}}, grpc.StatusCode.INVALID_ARGUMENT, "is_premium"),
    ({"model": "churn", "features": {**ROW, "typo": 1}}, grpc.StatusCode.INVALID_ARGUMENT, "no feature 'typo'"),
    ({"model": "churn", "features": ROW, "version": 9}, grpc.StatusCode.NOT_FOUND, "no version 9"),
])
async def test_bad_requests_get_a_status_that_names_the_problem(
    channel: grpc.aio.Channel, request_fields: dict[str, Any], code: grpc.StatusCode, named: str
) -> None:
    await register_and_promote(channel, "churn", tree_bytes())
    predict = models_pb2_grpc.PredictionServiceStub(channel)
    fields = dict(request_fields)
    fields["features"] = struct(fields["features"])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await predict.Predict(models_pb2.PredictRequest(**fields))
    assert failure.value.code() == code and named in (failure.value.details() or "")


async def test_concurrent_callers_each_get_their_own_row(
    daemon: Daemon, channel: grpc.aio.Channel
) -> None:
    await register_and_promote(channel, "churn", logistic_bytes())
    predict = models_pb2_grpc.PredictionServiceStub(channel)
    rows = [{**ROW, "clicks_1h": i, "spend_1h": float(i * 3 % 100)} for i in range(64)]
    answers = await asyncio.gather(*(predict.Predict(models_pb2.PredictRequest(model="churn", features=struct(r)))
                                     for r in rows))
    assert np.allclose([a.score for a in answers], expected(logistic_bytes(), rows))
    # every row scored exactly once, whether it shared a batch or not (whether requests pile up depends on
    # timing here; tests/unit/test_batching.py shows the sharing deterministically)
    assert daemon.metrics.batch_size.labels("churn")._sum.get() == 64


async def test_a_swap_under_load_fails_no_request_and_a_tampered_version_is_never_served(
    daemon: Daemon, channel: grpc.aio.Channel
) -> None:
    """Clients keep predicting while v2 is promoted: every request succeeds, answers move from v1 to v2.
    Then v3's artifact is damaged in the store: promoting it leaves v2 serving."""
    await register_and_promote(channel, "churn", tree_bytes(depth=2))
    models = models_pb2_grpc.ModelServiceStub(channel)
    predict = models_pb2_grpc.PredictionServiceStub(channel)
    v2 = await models.RegisterModel(register_messages("churn", logistic_bytes()))
    stop, versions, failures = asyncio.Event(), [], []

    async def client() -> None:
        while not stop.is_set():
            try:
                answer = await predict.Predict(models_pb2.PredictRequest(model="churn", features=struct(ROW)))
                versions.append(answer.version)
            except grpc.aio.AioRpcError as e:
                failures.append(e)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await until(lambda: len(versions) >= 50, "answers from v1 under load")
    await models.Promote(models_pb2.StageRequest(model="churn", version=v2.version))  # returns once served here
    await until(lambda: versions.count(2) >= 50, "answers from v2 under load")
    stop.set()
    await asyncio.gather(*clients)
    assert failures == [] and 1 in versions and versions[-1] == 2
    assert sorted(set(versions)) == [1, 2] and versions.index(2) > 0

    v3 = await models.RegisterModel(register_messages("churn", tree_bytes(depth=4)))
    mv3 = await daemon.registry.get("churn", v3.version)
    await daemon.artifacts.put(mv3.artifact_key, b"tampered" + tree_bytes(depth=4)[8:])
    load_failures = daemon.metrics.model_load_failures.labels("churn")._value.get
    await models.Promote(models_pb2.StageRequest(model="churn", version=v3.version))
    tried = load_failures()
    await until(lambda: load_failures() >= tried + 2, "v3 tried again by the notice and a reconciliation")
    answer = await predict.Predict(models_pb2.PredictRequest(model="churn", features=struct(ROW)))
    assert answer.version == 2
    assert daemon.metrics.model_load_failures.labels("churn")._value.get() >= 1

    # a changed hash record: the hot store's pointer rewritten to name other (self-consistent) bytes
    failures_before = daemon.metrics.model_load_failures.labels("churn")._value.get()
    forged_bytes = tree_bytes(depth=1)
    forged_key = f"models/sha256/{sha256_of(forged_bytes)}.skops"
    await daemon.artifacts.put(forged_key, forged_bytes)
    v4 = await daemon.registry.register("churn", tree_bytes(depth=5), "sklearn", mv3.features)
    forged = dataclasses.replace(v4, stage="production", sha256=sha256_of(forged_bytes), artifact_key=forged_key)
    await daemon.hot_store.hset(PRODUCTION_KEY, {"churn": forged.to_json()})
    await daemon.serving.reconcile()
    answer = await predict.Predict(models_pb2.PredictRequest(model="churn", features=struct(ROW)))
    assert answer.version == 2
    # refused, and counted (the periodic reconciliation may have tried the forged pointer too)
    assert daemon.metrics.model_load_failures.labels("churn")._value.get() >= failures_before + 1


async def test_registering_over_grpc_refuses_what_cannot_be_served(channel: grpc.aio.Channel) -> None:
    models = models_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await models.RegisterModel(register_messages("churn", b"not a model at all"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "skops" in (failure.value.details() or "")
    await register_and_promote(channel, "churn", tree_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as production:
        await models.Archive(models_pb2.StageRequest(model="churn", version=1))
    assert production.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "promote another version first" in (production.value.details() or "")
    listed = await models.ListVersions(models_pb2.ListVersionsRequest(model="churn"))
    assert [v.stage for v in listed.versions] == ["production"]


async def version_served(stub: models_pb2_grpc.PredictionServiceStub, want: int, wait_s: float = 20) -> int:
    """Predict until the answer comes from version `want` (or wait_s passes); returns the last version seen."""
    version, deadline = 0, time.monotonic() + wait_s
    while version != want and time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND until the first version arrives
            version = (await stub.Predict(models_pb2.PredictRequest(model="churn", features=struct(ROW)))).version
        await asyncio.sleep(0.01)
    return version


@pytest.mark.integration
async def test_two_daemons_sharing_redis_both_swap_on_one_promotion(tmp_path: Path, redis_url: str) -> None:
    """Daemon B never sees the registry's warehouse: one promotion on A reaches B through Redis."""
    artifacts = {"url": f"file://{tmp_path / 'shared-artifacts'}"}
    a = Daemon(daemon_settings(tmp_path / "a", hot_store={"url": redis_url}, artifacts=artifacts))
    b = Daemon(daemon_settings(tmp_path / "b", hot_store={"url": redis_url}, artifacts=artifacts,
                               serving={"reconcile_s": 60.0}))  # the notice, not the fallback, must do it
    for d, sub in ((a, "a"), (b, "b")):
        (tmp_path / sub).mkdir(exist_ok=True)
        await d.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.api.port}") as ch_a, \
                grpc.aio.insecure_channel(f"127.0.0.1:{b.api.port}") as ch_b:
            await register_and_promote(ch_a, "churn", tree_bytes())
            predict_b = models_pb2_grpc.PredictionServiceStub(ch_b)
            assert await version_served(predict_b, 1) == 1
            models_a = models_pb2_grpc.ModelServiceStub(ch_a)
            v2 = await models_a.RegisterModel(register_messages("churn", logistic_bytes()))
            await models_a.Promote(models_pb2.StageRequest(model="churn", version=v2.version))
            # B's fallback re-read is a minute away: switching within the wait proves the notice did it
            assert await version_served(predict_b, v2.version) == v2.version
    finally:
        await b.stop()
        await a.stop()


async def test_a_restarted_daemon_serves_its_production_versions_before_it_is_ready(tmp_path: Path) -> None:
    """Start-up (seed 000): production versions are read, loaded and checked before readiness, even when
    the hot store (memory here) starts empty: the warehouse is the source of truth."""
    first = Daemon(daemon_settings(tmp_path))
    await first.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.api.port}") as ch:
            await register_and_promote(ch, "churn", tree_bytes())
    finally:
        await first.stop()
    second = Daemon(daemon_settings(tmp_path))
    await second.start()
    try:
        assert second.readiness.ready
        assert [(mv.model, mv.version) for mv in second.serving.served()] == [("churn", 1)]
    finally:
        await second.stop()
