"""`mlplat bench serve`: gRPC prediction over loopback next to the in-process model call, in the same run.

A daemon runs as its own process (`mlplat run`, embedded backends) with a 20-feature feature set whose
latest values are uploaded for 1,000 entities. Two models of those 20 features are registered and
promoted: gradient boosting (keys without prefix) and a decision tree (keys prefixed `tree_`). Measured
from this process:
- single-row Predict by entity id (features read from the hot store) at 1 client: p50, p99, requests/s;
- requests/s at 8 and 32 concurrent clients;
- PredictBatch of 1,000 rows: rows/s, next to the floor of `predict` on the same 1,000 rows in-process;
- 32 clients each on one PredictStream, and the no-op health Check from 32 clients (the most unary gRPC
  calls per second this machine allows, whatever the handler does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc, models_pb2, models_pb2_grpc
from mlplat.bench import BenchResult, run_async
from mlplat.bench.daemons import start_daemon, stop
from mlplat.features.definitions import catalog_from_dict
from mlplat.ingest.generator import GeneratorSpec, write_file
from mlplat.serving.flavours import load_model, save_sklearn

N_FEATURES = 20
ENTITIES = 1000
NAMES = [f"f{i:02d}" for i in range(N_FEATURES)]
FEATURES_TOML = "[entities.user]\nkey = \"user_id\"\n\n[feature_sets.bench20]\nentity = \"user\"\n" + "".join(
    f"\n[[feature_sets.bench20.features]]\nname = \"{n}\"\ntype = \"float\"\nmin = 0.0\nmax = 100.0\n" for n in NAMES)


def _models() -> dict[str, bytes]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.random((5000, N_FEATURES)) * 100
    y = (x[:, :5].sum(axis=1) + rng.normal(0, 20, len(x)) > 250).astype(int)
    return {"gbm": save_sklearn(GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(x, y)),
            "tree": save_sklearn(DecisionTreeClassifier(max_depth=8, random_state=0).fit(x, y))}


def _prepare(target: str, workdir: Path, models: dict[str, bytes]) -> None:
    """Latest features for every entity (through a real upload), then both models registered and promoted."""
    fs = catalog_from_dict({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"bench20": {
        "entity": "user", "features": [{"name": n, "type": "float", "min": 0.0, "max": 100.0} for n in NAMES]}}}
    ).feature_sets["bench20"]
    path = workdir / "latest.parquet"
    for _ in write_file(GeneratorSpec(fs, "user_id", entities=ENTITIES, seed=1), ENTITIES * 20, path, "parquet"):
        pass

    def chunks() -> Iterator[ingest_pb2.UploadRequest]:
        data = path.read_bytes()
        yield ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(feature_set="bench20", filename=path.name,
                                                                      size=len(data)))
        yield ingest_pb2.UploadRequest(chunk=data)

    with grpc.insecure_channel(target) as ch:
        ingest_pb2_grpc.IngestServiceStub(ch).Upload(chunks())
        registry = models_pb2_grpc.ModelServiceStub(ch)
        inputs = [models_pb2.InputFeature(name=n, type="float") for n in NAMES]
        for name, data in models.items():
            info = registry.RegisterModel(iter([models_pb2.RegisterModelRequest(
                name=name, flavour="sklearn", features=inputs, feature_set="bench20", chunk=data)]))
            registry.Promote(models_pb2.StageRequest(model=name, version=info.version))


async def _clients(target: str, model: str, clients: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (ms) of single-row Predicts by entity id from `clients` concurrent callers, and requests/s."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as ch:
        stub = models_pb2_grpc.PredictionServiceStub(ch)
        requests = [models_pb2.PredictRequest(model=model, entity_id=f"user_{i % ENTITIES}") for i in range(997)]
        warm_until = time.perf_counter() + 1.0  # connection, model, allocator and caches settle first
        while time.perf_counter() < warm_until:
            await stub.Predict(requests[0])
        stop_at = time.perf_counter() + seconds

        async def one(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.Predict(requests[i % len(requests)])
                latencies.append((time.perf_counter() - started) * 1000)
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(c * 31) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


async def _stream_clients(target: str, model: str, clients: int, seconds: float) -> float:
    """Requests/s when each client keeps one PredictStream open and one request in flight on it."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = models_pb2_grpc.PredictionServiceStub(ch)
        requests = [models_pb2.PredictRequest(model=model, entity_id=f"user_{i % ENTITIES}") for i in range(997)]
        done = 0
        stop_at = time.perf_counter() + seconds

        async def one(offset: int) -> None:
            nonlocal done
            call = stub.PredictStream()
            i = offset
            while time.perf_counter() < stop_at:
                await call.write(requests[i % len(requests)])
                answer = await call.read()
                if answer.error:
                    raise RuntimeError(answer.error)
                done += 1
                i += 1
            await call.done_writing()

        started = time.perf_counter()
        await asyncio.gather(*(one(c * 31) for c in range(clients)))
        return done / (time.perf_counter() - started)


async def _noop_rate(target: str, clients: int, seconds: float) -> float:
    """Requests/s of the standard health Check (no work at all): what unary gRPC itself allows here."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        done, stop_at = 0, time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await stub.Check(health_pb2.HealthCheckRequest())
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return done / (time.perf_counter() - started)


def _batch_rate(target: str, model: str, matrix: np.ndarray, repeat: int) -> float:
    request = models_pb2.PredictBatchRequest(model=model, feature_names=NAMES, rows=len(matrix),
                                             float64_rows=matrix.astype("<f8").tobytes())
    with grpc.insecure_channel(target) as ch:
        stub = models_pb2_grpc.PredictionServiceStub(ch)
        stub.PredictBatch(request)
        started = time.perf_counter()
        for _ in range(repeat):
            stub.PredictBatch(request)
        return len(matrix) * repeat / (time.perf_counter() - started)


def _floor_rate(data: bytes, matrix: np.ndarray, repeat: int) -> float:
    model = load_model("sklearn", data)
    model.predict(matrix)
    started = time.perf_counter()
    for _ in range(repeat):
        model.predict(matrix)
    return len(matrix) * repeat / (time.perf_counter() - started)


def run(seconds: float = 3.0, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-serve-") as tmp:
        workdir = Path(tmp)
        progress("training the models (gradient boosting, decision tree; 20 features)")
        models = _models()
        progress("starting `mlplat run` and uploading the latest features of 1,000 entities")
        (workdir / "features.toml").write_text(FEATURES_TOML)
        proc, target = start_daemon(workdir, {"MLPLAT_INGEST__FEATURES_FILE": str(workdir / "features.toml")})
        try:
            _prepare(target, workdir, models)
            matrix = np.random.default_rng(2).random((1000, N_FEATURES)) * 100
            progress("floor for unary calls: the no-op health Check from 32 clients")
            metrics["grpc_noop_rps_c32"] = round(run_async(_noop_rate(target, 32, seconds)), 1)
            for name, prefix in (("gbm", ""), ("tree", "tree_")):
                progress(f"{name}: 1 client")
                latencies, rps = run_async(_clients(target, name, 1, seconds))
                metrics[f"{prefix}p50_ms_c1"] = round(float(np.percentile(latencies, 50)), 3)
                metrics[f"{prefix}p99_ms_c1"] = round(float(np.percentile(latencies, 99)), 3)
                metrics[f"{prefix}rps_c1"] = round(rps, 1)
                for clients in (8, 32):
                    progress(f"{name}: {clients} clients")
                    metrics[f"{prefix}rps_c{clients}"] = round(run_async(_clients(target, name, clients,
                                                                                    seconds))[1], 1)
                progress(f"{name}: 32 clients, each on its own PredictStream")
                metrics[f"{prefix}stream_rps_c32"] = round(run_async(_stream_clients(target, name, 32, seconds)), 1)
                progress(f"{name}: PredictBatch of 1,000 rows, and the in-process floor")
                ours = _batch_rate(target, name, matrix, 50)
                floor = _floor_rate(models[name], matrix, 50)
                metrics.update({f"{prefix}batch_rows_per_s": round(ours, 1),
                                f"{prefix}floor_batch_rows_per_s": round(floor, 1),
                                f"{prefix}batch_ratio": round(ours / floor, 4)})
        finally:
            stop(proc)
    params: dict[str, Any] = {"seconds": seconds, "features": N_FEATURES, "entities": ENTITIES,
                              "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return BenchResult("serve", params, metrics)
