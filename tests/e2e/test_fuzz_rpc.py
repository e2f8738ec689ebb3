"""Generated gRPC requests (hypothesis) against a running daemon: wrong types, out-of-range numbers, huge
strings, NaN/Inf, SQL in names, missing fields, and unknown extra fields on the wire. Every call ends in
OK or a clear client error (INVALID_ARGUMENT, NOT_FOUND, ...): never INTERNAL or UNKNOWN, never a hang,
and the daemon is still ready afterwards with no internal error in its log."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplat.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tests.daemons import RunningDaemon, start_daemon
from tests.fuzz_cases import RPC_CASES
from tests.models import tree_bytes

pytestmark = pytest.mark.e2e
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
CASES = RPC_CASES
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
INPUTS = "clicks_1h:int,spend_1h,session_minutes,is_premium:bool"
EXTRA_FIELD = b"\xb8\x3e\x07"  # field 999, varint 7: unknown to every message, must be ignored

names = st.one_of(st.sampled_from(["churn", "user_activity", "user_labels", "", "CHURN", "churn; DROP TABLE x",
                                   "../../etc/passwd", "churn\x00", "ü"]), st.text(max_size=80),
                  # no lone surrogates: protobuf cannot encode them, so no client can send one
                  st.tuples(st.integers(2000, 100_000), st.characters(exclude_categories=["Cs"])).map(
                      lambda t: t[1] * t[0]))
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
uint32 = st.integers(min_value=0, max_value=2**32 - 1)
json_value = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
feature_values = st.dictionaries(
    st.sampled_from(["clicks_1h", "spend_1h", "session_minutes", "is_premium", "country", "x"]) | st.text(max_size=8),
    json_value, max_size=6)


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    for key, value in values.items():
        try:
            message.update({key: value})
        except (ValueError, TypeError):  # what a Struct cannot hold (big ints) cannot be sent either
            message.update({key: str(value)})
    return message


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    workdir = tmp_path_factory.mktemp("fuzz")
    running = start_daemon(workdir, {"MLPLAT_INGEST__FEATURES_FILE": str(Path("config/features.toml").resolve())})
    try:
        (workdir / "churn.skops").write_bytes(tree_bytes())
        assert running.cli("models", "register", "churn.skops", "--name", "churn", "--inputs", INPUTS,
                           "-f", "user_activity").returncode == 0
        assert running.cli("models", "promote", "churn", "1").returncode == 0
        yield running
    finally:
        running.proc.terminate()
        running.proc.wait(timeout=30)
    logs = running.logs()
    assert "rpc_failed" not in logs and "Traceback" not in logs, "an RPC failed inside the daemon"


@pytest.fixture(scope="module")
def channel(daemon: RunningDaemon) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 128 << 20)]
    with grpc.insecure_channel(daemon.target, options=options) as ch:
        yield ch


def raw(channel: grpc.Channel, method: str, response: type[Message]) -> Any:
    """A unary call that sends bytes as they are: a message with an unknown field appended."""
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=response.FromString)


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    error: grpc.RpcError | None = None
    try:
        call()
    except grpc.RpcError as e:
        error = e
    if error is None:
        return grpc.StatusCode.OK
    code: grpc.StatusCode = error.code()
    assert code in CLIENT_ERRORS, f"{code.name}: {error.details()}"
    assert error.details(), "an error without a message"
    return code


@settings(FUZZ, max_examples=CASES["predict"])
@given(model=names, version=int32, features=feature_values, entity=st.text(max_size=40), extra=st.booleans())
def test_predict(channel: grpc.Channel, model: str, version: int, features: dict[str, Any], entity: str,
                 extra: bool) -> None:
    request = models_pb2.PredictRequest(model=model, version=version, features=struct(features), entity_id=entity)
    if extra:
        call = raw(channel, "/mlplat.v1.PredictionService/Predict", models_pb2.PredictResponse)
        outcome(lambda: call(request.SerializeToString() + EXTRA_FIELD, timeout=10))
    else:
        outcome(lambda: models_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10))


@settings(FUZZ, max_examples=CASES["predict_batch"])
@given(model=st.sampled_from(["churn", "nope"]) | names, names_=st.lists(st.text(max_size=20), max_size=6),
       rows=uint32, data=st.binary(max_size=2000), version=int32,
       numbers=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=64))
def test_predict_batch(channel: grpc.Channel, model: str, names_: list[str], rows: int, data: bytes,
                       version: int, numbers: list[float]) -> None:
    import struct as packing

    if numbers and len(names_) and len(numbers) % len(names_) == 0:  # well-sized matrices too, NaN and Inf in
        rows, data = len(numbers) // len(names_), packing.pack(f"<{len(numbers)}d", *numbers)
    request = models_pb2.PredictBatchRequest(model=model, version=version, feature_names=names_, rows=rows,
                                             float64_rows=data)
    code = outcome(lambda: models_pb2_grpc.PredictionServiceStub(channel).PredictBatch(request, timeout=10))
    if any(not math.isfinite(n) for n in numbers) and model == "churn" and \
            sorted(names_) == sorted(["clicks_1h", "spend_1h", "session_minutes", "is_premium"]):
        assert code != grpc.StatusCode.OK  # a NaN is refused, never scored


@settings(FUZZ, max_examples=CASES["predict_stream"])
@given(requests=st.lists(st.builds(models_pb2.PredictRequest, model=st.sampled_from(["churn", "nope", ""]),
                                   version=int32, entity_id=st.text(max_size=10),
                                   features=feature_values.map(struct)), min_size=1, max_size=5))
def test_predict_stream_answers_every_request(channel: grpc.Channel, requests: list[models_pb2.PredictRequest]
                                              ) -> None:
    answers = list(models_pb2_grpc.PredictionServiceStub(channel).PredictStream(iter(requests), timeout=10))
    assert len(answers) == len(requests)
    for answer in answers:
        assert not answer.error_code or (answer.error and answer.error_code in {c.name for c in CLIENT_ERRORS})


@settings(FUZZ, max_examples=CASES["query"])
@given(sql=st.one_of(st.text(max_size=120), names.map(lambda n: f'SELECT * FROM "{n}"'),
                     st.sampled_from(["DROP TABLE audit_log", "SELECT * FROM read_csv('/etc/passwd')",
                                      "COPY audit_log TO '/tmp/x'", "ATTACH '/tmp/x.db'", "SELECT 1/0",
                                      "SELECT repeat('x', 100000000)", "PRAGMA version"])),
       max_rows=uint32, no_cache=st.booleans(), typed=st.booleans())
def test_query(channel: grpc.Channel, sql: str, max_rows: int, no_cache: bool, typed: bool) -> None:
    request = admin_pb2.QueryRequest(sql=sql, max_rows=max_rows, no_cache=no_cache, typed=typed)
    outcome(lambda: list(admin_pb2_grpc.AdminServiceStub(channel).Query(request, timeout=20)))


@settings(FUZZ, max_examples=CASES["declare"])
@given(name=names, feature_set=names, label=names, estimator=st.sampled_from(["decision_tree", "svm", ""]) | names,
       params=st.dictionaries(st.text(max_size=10), json_value, max_size=3), holdout=st.floats(allow_nan=True),
       min_rows=st.integers(-(2**63), 2**63 - 1), schedule=st.text(max_size=20),
       statistics=st.lists(st.sampled_from(["ks", "psi", "zz", ""]), max_size=3))
def test_declare_model(channel: grpc.Channel, name: str, feature_set: str, label: str, estimator: str,
                       params: dict[str, Any], holdout: float, min_rows: int, schedule: str,
                       statistics: list[str]) -> None:
    spec = training_pb2.ModelSpec(name=name, feature_set=feature_set, label=label, estimator=estimator,
                                  params=struct(params), holdout=holdout, min_rows=min_rows,
                                  retrain_schedule=schedule, drift_statistics=statistics)
    code = outcome(lambda: training_pb2_grpc.TrainingServiceStub(channel).DeclareModel(spec, timeout=10))
    if code == grpc.StatusCode.OK:  # accepted: a training of it ends in a stage, never an internal error
        events = list(training_pb2_grpc.TrainingServiceStub(channel).Train(
            training_pb2.TrainRequest(model=name), timeout=60))
        assert events[-1].stage in ("promoted", "staging", "failed")


@settings(FUZZ, max_examples=CASES["registry"])
@given(op=st.sampled_from(["promote", "archive", "list", "history", "get"]), model=names, version=int32,
       limit=int32, reason=st.text(max_size=50))
def test_registry_operations(channel: grpc.Channel, op: str, model: str, version: int, limit: int,
                             reason: str) -> None:
    registry = models_pb2_grpc.ModelServiceStub(channel)
    stage = models_pb2.StageRequest(model=model, version=version, reason=reason)
    calls: dict[str, Callable[[], Any]] = {
        "promote": lambda: registry.Promote(stage, timeout=10),
        "archive": lambda: registry.Archive(stage, timeout=10),
        "list": lambda: registry.ListVersions(models_pb2.ListVersionsRequest(model=model), timeout=10),
        "history": lambda: registry.History(models_pb2.HistoryRequest(model=model, limit=limit), timeout=10),
        "get": lambda: models_pb2_grpc.PredictionServiceStub(channel).GetModel(
            models_pb2.GetModelRequest(model=model, version=version), timeout=10),
    }
    outcome(calls[op])
    if op in ("promote", "archive") and model == "churn":  # put churn v1 back in production for the others
        registry.Promote(models_pb2.StageRequest(model="churn", version=1), timeout=10)


@settings(FUZZ, max_examples=CASES["features"])
@given(op=st.sampled_from(["online", "historical", "register"]), feature_set=names,
       entities=st.lists(st.text(max_size=30), max_size=5), features=st.lists(names, max_size=3),
       timestamps=st.lists(st.text(max_size=30), max_size=3), body=json_value)
def test_feature_service(channel: grpc.Channel, op: str, feature_set: str, entities: list[str], features: list[str],
                         timestamps: list[str], body: Any) -> None:
    stub = features_pb2_grpc.FeatureServiceStub(channel)
    if op == "online":
        outcome(lambda: stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(
            feature_set=feature_set, entity_ids=entities), timeout=10))
    elif op == "historical":
        spine = [features_pb2.SpineRow(entity_id=e, timestamp=t) for e, t in zip(entities, timestamps, strict=False)]
        outcome(lambda: list(stub.GetHistoricalFeatures(features_pb2.GetHistoricalFeaturesRequest(
            features=features, spine=spine), timeout=10)))
    else:
        outcome(lambda: stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
            feature_set_json=json.dumps(body, default=str)), timeout=10))


@settings(FUZZ, max_examples=CASES["register_model"])
@given(name=names, flavour=st.sampled_from(["sklearn", "onnx", "pickle", ""]), chunk=st.binary(max_size=4000),
       inputs=st.lists(st.tuples(st.text(max_size=10), st.sampled_from(["float", "int", "bool", "str", ""])),
                       max_size=4))
def test_register_model(channel: grpc.Channel, name: str, flavour: str, chunk: bytes,
                        inputs: list[tuple[str, str]]) -> None:
    header = models_pb2.RegisterModelRequest(name=name, flavour=flavour, chunk=chunk, features=[
        models_pb2.InputFeature(name=n, type=t) for n, t in inputs])
    outcome(lambda: models_pb2_grpc.ModelServiceStub(channel).RegisterModel(iter([header]), timeout=20))


@settings(FUZZ, max_examples=CASES["upload"])
@given(feature_set=st.sampled_from(["user_activity", "nope"]) | names,
       fmt=st.sampled_from(["", "ndjson", "json", "csv", "parquet", "xml"]), body=st.binary(max_size=3000),
       lines=st.lists(json_value, max_size=5), size=st.integers(0, 2**64 - 1))
def test_upload(channel: grpc.Channel, feature_set: str, fmt: str, body: bytes, lines: list[Any], size: int) -> None:
    data = body if body else "\n".join(json.dumps(v, default=str) for v in lines).encode()
    header = ingest_pb2.UploadHeader(feature_set=feature_set, format=fmt, filename="f", size=size)
    requests = [ingest_pb2.UploadRequest(header=header), ingest_pb2.UploadRequest(chunk=data)]
    outcome(lambda: ingest_pb2_grpc.IngestServiceStub(channel).Upload(iter(requests), timeout=30))


@settings(FUZZ, max_examples=CASES["monitoring"])
@given(models=st.lists(names, max_size=3), run=st.booleans())
def test_monitoring(channel: grpc.Channel, models: list[str], run: bool) -> None:
    stub = monitoring_pb2_grpc.MonitoringServiceStub(channel)
    request = monitoring_pb2.DriftRequest(models=models)
    outcome(lambda: (stub.RunDrift if run else stub.GetDrift)(request, timeout=20))


def test_the_daemon_is_still_ready(daemon: RunningDaemon, channel: grpc.Channel) -> None:
    """Runs last in this module: after every case above, the daemon answers as before."""
    assert daemon.http("/readyz")[0] == 200
    answer = models_pb2_grpc.PredictionServiceStub(channel).Predict(models_pb2.PredictRequest(
        model="churn", features=struct({"clicks_1h": 3, "spend_1h": 1.0, "session_minutes": 2.0,
                                        "is_premium": True})), timeout=10)
    assert answer.model == "churn" and 0 <= answer.score <= 1
