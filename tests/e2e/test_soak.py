"""Load held (bounded in time): ingest (the demo's generated traffic and its labels), streaming and gRPC
predictions, drift runs and automation together. Zero errors, bounded memory growth (RSS sampled), bounded
queues. The figures are printed (`-s`) for the closing note; MLPLAT_SOAK_S makes the run longer."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import struct_pb2

from mlplat.api.v1 import models_pb2, models_pb2_grpc, monitoring_pb2, monitoring_pb2_grpc
from tests.daemons import start_daemon

pytestmark = pytest.mark.e2e
SOAK_S = float(os.environ.get("MLPLAT_SOAK_S", "75"))
WARM_UP_S = 25.0  # imports, first model, caches: growth is measured after this
ROW = {"clicks_1h": 3, "spend_1h": 10.0, "session_minutes": 5.0, "is_premium": False}


def family_rss(pid: int) -> int:
    """The daemon and its worker processes."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def gauge(text: str, name: str) -> float:
    values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return max(values, default=0.0)


@pytest.mark.timeout(300)
def test_ingest_prediction_and_drift_together_hold_memory_and_queues(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, {"MLPLAT_DEMO__RATE": "300", "MLPLAT_DEMO__SHIFT_AFTER_S": "40"},
                          "--demo", "--fast")
    stop = threading.Event()
    calls = {"ok": 0, "failed": 0, "predicted": 0}
    failures: list[str] = []

    def predict_forever() -> None:
        features = struct_pb2.Struct()
        features.update(ROW)
        with grpc.insecure_channel(daemon.target) as ch:
            stub = models_pb2_grpc.PredictionServiceStub(ch)
            while not stop.is_set():
                try:
                    stub.Predict(models_pb2.PredictRequest(model="churn", features=features), timeout=10)
                    calls["ok"] += 1
                    calls["predicted"] += 1
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.NOT_FOUND and calls["predicted"] == 0:
                        time.sleep(0.2)  # churn is not trained yet
                        continue
                    calls["failed"] += 1
                    failures.append(f"{e.code().name}: {e.details()}")

    def drift_forever() -> None:
        with grpc.insecure_channel(daemon.target) as ch:
            stub = monitoring_pb2_grpc.MonitoringServiceStub(ch)
            while not stop.wait(3.0):
                try:
                    stub.RunDrift(monitoring_pb2.DriftRequest(), timeout=30)
                    calls["ok"] += 1
                except grpc.RpcError as e:
                    calls["failed"] += 1
                    failures.append(f"drift {e.code().name}: {e.details()}")

    workers = [threading.Thread(target=predict_forever) for _ in range(3)] + [threading.Thread(target=drift_forever)]
    samples: list[tuple[float, int]] = []
    queues = {"warehouse": 0.0, "jobs": 0.0, "lag": 0.0, "actions": 0.0}
    try:
        started = time.monotonic()
        for worker in workers:
            worker.start()
        while (elapsed := time.monotonic() - started) < SOAK_S:
            samples.append((elapsed, family_rss(daemon.proc.pid)))
            text = daemon.http("/metrics")[1]
            queues["warehouse"] = max(queues["warehouse"], gauge(text, "mlplat_warehouse_queue_depth"))
            queues["jobs"] = max(queues["jobs"], gauge(text, "mlplat_jobs_queued"))
            queues["lag"] = max(queues["lag"], gauge(text, "mlplat_consumer_lag"))
            queues["actions"] = max(queues["actions"], gauge(text, "mlplat_actions_pending"))
            assert daemon.proc.poll() is None, daemon.logs()
            time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=40)
        daemon.proc.terminate()
        daemon.proc.wait(timeout=30)

    after_warm_up = [rss for t, rss in samples if t >= WARM_UP_S]
    growth_mb = (max(after_warm_up) - after_warm_up[0]) / 1e6
    errors = [json.loads(line) for line in daemon.logs().splitlines()
              if line.startswith("{") and json.loads(line).get("level") == "error"]
    peak_mb = max(rss for _, rss in samples) / 1e6
    print(f"\nsoak {SOAK_S:.0f} s: {calls['ok']} calls ok, {calls['failed']} failed; "
          f"RSS {after_warm_up[0] / 1e6:.0f} MB after warm-up, peak {peak_mb:.0f} MB, growth {growth_mb:.1f} MB; "
          f"max queues: {queues}")
    assert calls["failed"] == 0, failures[:5]
    assert calls["ok"] > 1000
    assert errors == [], errors[:3]
    assert growth_mb < 150, f"RSS grew {growth_mb:.1f} MB after warm-up"
    assert queues["warehouse"] <= 1024 and queues["lag"] < 100_000 and queues["actions"] <= 10_000
