"""`mlplat bench swap`: how long after a promotion every daemon sharing the hot store serves the new version.

N daemons (`mlplat run`, default 2) share one Redis (the hot store: production pointers and swap notices)
and one artifact folder; each has its own warehouse. A model is registered on the first daemon. While
clients on every daemon send unary Predicts without pause (features in the request), a new version is
registered and promoted on the first daemon, `--swaps` times. For each promotion and each daemon the swap
time is the moment after which that daemon answers only with the new version: the start of the last request
it answered with an older one, less the moment Promote was called (0 when the first request after the call
was already new). Every failed request on every daemon is counted. The floor is the same Predict's p50 on
one daemon with no promotion going on, measured in the same run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2

from mlplat.api.v1 import models_pb2, models_pb2_grpc
from mlplat.bench import BenchResult, run_async
from mlplat.bench.daemons import start_daemon, start_redis, stop
from mlplat.serving.flavours import save_sklearn

NAMES = ["a", "b", "c", "d"]
MODEL = "swapbench"


def _artifacts(count: int) -> list[bytes]:
    """Distinct small trees (one per version), so every promotion loads new bytes."""
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.random((2000, len(NAMES)))
    y = (x[:, 0] + x[:, 1] > 1).astype(int)
    return [save_sklearn(DecisionTreeClassifier(max_depth=3 + i % 5, random_state=i).fit(x, y))
            for i in range(count)]


async def _register(stub: models_pb2_grpc.ModelServiceStub, data: bytes) -> int:
    request = models_pb2.RegisterModelRequest(
        name=MODEL, flavour="sklearn", features=[models_pb2.InputFeature(name=n, type="float") for n in NAMES],
        reason="bench swap", chunk=data)
    info = await stub.RegisterModel(iter([request]))
    return int(info.version)


@dataclass
class _Answers:
    """(start time, version) of every answered request on one daemon, and its failures."""

    answers: list[tuple[float, int]] = field(default_factory=list)
    failed: int = 0
    first_error: str = ""


async def _load(target: str, clients: int, stop_at: asyncio.Event, out: _Answers) -> None:
    features = struct_pb2.Struct()
    features.update(dict.fromkeys(NAMES, 0.5))
    request = models_pb2.PredictRequest(model=MODEL, features=features)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = models_pb2_grpc.PredictionServiceStub(ch)

        async def one() -> None:
            while not stop_at.is_set():
                started = time.perf_counter()
                try:
                    answer = await stub.Predict(request, timeout=5)
                except grpc.aio.AioRpcError as e:
                    out.failed += 1
                    out.first_error = out.first_error or f"{e.code().name}: {e.details()}"
                    continue
                out.answers.append((started, answer.version))

        await asyncio.gather(*(one() for _ in range(clients)))


def _swap_ms(answers: list[tuple[float, int]], promoted_at: float, version: int, until: float) -> float | None:
    """Since promoted_at: when this daemon last started a request it answered with an older version."""
    window = [(t, v) for t, v in answers if promoted_at <= t < until]
    if not any(v == version for _, v in window):
        return None  # never served it in the window: reported as a missed swap
    old = [t for t, v in window if v != version]
    return max(0.0, (max(old) - promoted_at) * 1000) if old else 0.0


async def _serving(target: str, version: int, timeout_s: float = 30) -> None:
    """Wait until a daemon answers with this version: the load starts once every daemon serves the model."""
    features = struct_pb2.Struct()
    features.update(dict.fromkeys(NAMES, 0.5))
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as ch:
        stub = models_pb2_grpc.PredictionServiceStub(ch)
        while True:
            try:
                if (await stub.Predict(models_pb2.PredictRequest(model=MODEL, features=features))).version == version:
                    return
            except grpc.aio.AioRpcError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} does not serve {MODEL} v{version}: {e.details()}") from None
            await asyncio.sleep(0.05)


async def _floor_p50(target: str, seconds: float) -> float:
    answers = _Answers()
    stop_at = asyncio.Event()
    task = asyncio.create_task(_load(target, 1, stop_at, answers))
    await asyncio.sleep(seconds)
    stop_at.set()
    await task
    gaps = np.diff([t for t, _ in answers.answers]) * 1000
    return float(np.percentile(gaps, 50)) if len(gaps) else 0.0


async def _measure(targets: list[str], swaps: int, clients: int, settle_s: float, progress: Callable[[str], None]
                   ) -> dict[str, float]:
    artifacts = _artifacts(swaps + 1)
    async with grpc.aio.insecure_channel(targets[0]) as ch:
        registry = models_pb2_grpc.ModelServiceStub(ch)
        first = await _register(registry, artifacts[0])
        await registry.Promote(models_pb2.StageRequest(model=MODEL, version=first, reason="bench swap"))
        await asyncio.gather(*(_serving(t, first) for t in targets))
        progress("floor: Predict p50 from one client, no promotion going on")
        floor = await _floor_p50(targets[0], 1.0)
        per_daemon = [_Answers() for _ in targets]
        stop_at = asyncio.Event()
        loads = [asyncio.create_task(_load(t, clients, stop_at, a)) for t, a in zip(targets, per_daemon, strict=True)]
        promotions: list[tuple[float, int]] = []
        try:
            await asyncio.sleep(settle_s)
            for i in range(swaps):
                version = await _register(registry, artifacts[i + 1])
                progress(f"promotion {i + 1}/{swaps}: version {version}")
                promoted_at = time.perf_counter()
                await registry.Promote(models_pb2.StageRequest(model=MODEL, version=version, reason="bench swap"))
                promotions.append((promoted_at, version))
                await asyncio.sleep(settle_s)
        finally:
            stop_at.set()
            await asyncio.gather(*loads)
    ends = [t for t, _ in promotions[1:]] + [time.perf_counter()]
    swap_ms: list[float] = []
    missed = 0
    for (promoted_at, version), until in zip(promotions, ends, strict=True):
        for answers in per_daemon:
            ms = _swap_ms(answers.answers, promoted_at, version, until)
            if ms is None:
                missed += 1
            else:
                swap_ms.append(ms)
    metrics: dict[str, float] = {
        "swaps": len(promotions), "daemons": len(targets),
        "swap_p50_ms": round(float(np.percentile(swap_ms, 50)), 1) if swap_ms else -1.0,
        "swap_p99_ms": round(float(np.percentile(swap_ms, 99)), 1) if swap_ms else -1.0,
        "swap_max_ms": round(max(swap_ms), 1) if swap_ms else -1.0,
        "swaps_missed": missed,
        "failed_requests_during_swap": sum(a.failed for a in per_daemon),
        "requests": sum(len(a.answers) for a in per_daemon),
        "floor_predict_p50_ms": round(floor, 3),
    }
    for i, answers in enumerate(per_daemon):
        metrics[f"daemon{i}_failed_requests"] = answers.failed
        metrics[f"daemon{i}_requests"] = len(answers.answers)
        if answers.failed:
            progress(f"daemon {i}: {answers.failed} requests failed, the first with {answers.first_error}")
    return metrics


def run(daemons: int = 2, swaps: int = 20, clients: int = 4, settle_s: float = 1.5, hot_store: str | None = None,
        progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-swap-") as tmp:
        workdir = Path(tmp)
        redis = None
        if hot_store is None:
            progress("starting redis-server")
            redis, hot_store = start_redis(workdir)
        procs = []
        try:
            env = {"MLPLAT_HOT_STORE__URL": hot_store, "MLPLAT_ARTIFACTS__URL": f"file://{workdir / 'artifacts'}",
                   "MLPLAT_AUTOMATION__ENABLED": "false"}
            targets = []
            for i in range(daemons):
                progress(f"starting daemon {i + 1}/{daemons}")
                proc, target = start_daemon(workdir / f"d{i}", env, name=f"daemon{i}")
                procs.append(proc)
                targets.append(target)
            metrics = run_async(_measure(targets, swaps, clients, settle_s, progress))
        finally:
            for proc in procs:
                stop(proc)
            if redis is not None:
                stop(redis)
    params: dict[str, Any] = {"daemons": daemons, "swaps": swaps, "clients_per_daemon": clients,
                              "settle_s": settle_s, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return BenchResult("swap", params, metrics)
