"""`mlplat bench ingest --big`: an upload larger than the daemon should ever hold in memory.

A generated NDJSON file (1 GiB by default) goes to a real `mlplat run` over the Upload RPC, with a small
`ingest.partition_bytes`. The daemon spools the stream to disk and parses it a partition at a time, so its
resident memory must not follow the file's size: the daemon process's RSS is sampled every 20 ms and its
growth over the idle, warmed-up daemon is reported (the promise: under 300 MB), beside the worker processes'
peak. Afterwards the warehouse is counted: every row once (`rows_lost` and `rows_duplicated` are 0).
The floor is the client's own read of the file from disk, in the same run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil

from mlplat.api.convert import from_value
from mlplat.api.v1 import admin_pb2, admin_pb2_grpc, features_pb2, features_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from mlplat.bench import BenchResult
from mlplat.bench.daemons import start_daemon, stop
from mlplat.bench.ingest import CATALOG
from mlplat.features.definitions import catalog_from_dict
from mlplat.ingest.generator import GeneratorSpec, write_file

CHUNK = 1 << 20
RSS_PROMISE_MB = 300


def _write(path: Path, size_mb: int, progress: Callable[[str], None]) -> int:
    """An NDJSON file of at least size_mb MiB; returns its row count."""
    fs = catalog_from_dict(CATALOG).feature_sets["bench"]
    spec = GeneratorSpec(fs, "user_id", entities=100_000, seed=7)
    sample = path.with_suffix(".sample")
    for _ in write_file(spec, 10_000, sample, "ndjson"):
        pass
    rows = int(size_mb * (1 << 20) / (sample.stat().st_size / 10_000) * 1.01) + 1
    sample.unlink()
    last = 0.0
    for written in write_file(spec, rows, path, "ndjson", chunk=200_000):
        if time.monotonic() - last > 5:
            progress(f"writing {rows:,} rows: {written / rows:.0%}")
            last = time.monotonic()
    return rows


class _RssSampler:
    """The peak RSS of one process, and of its children together, sampled on a thread until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self._proc = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = self.children_peak = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
                children = 0
                for child in self._proc.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        children += child.memory_info().rss
                self.children_peak = max(self.children_peak, children)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self._interval_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _start_daemon(workdir: Path, partition_bytes: int) -> tuple[subprocess.Popen[bytes], str]:
    proc, target = start_daemon(workdir, {"MLPLAT_INGEST__PARTITION_BYTES": str(partition_bytes),
                                          "MLPLAT_INGEST__MAX_UPLOAD_BYTES": str(1 << 40)})
    with grpc.insecure_channel(target) as ch:
        features_pb2_grpc.FeatureServiceStub(ch).RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
            feature_set_json=json.dumps({"name": "bench", **CATALOG["feature_sets"]["bench"]}),
            entity_json=json.dumps({"name": "user", **CATALOG["entities"]["user"]})))
    return proc, target


def _upload(target: str, path: Path, upload_id: str) -> ingest_pb2.UploadResponse:
    def requests() -> Iterator[ingest_pb2.UploadRequest]:
        yield ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
            feature_set="bench", format="ndjson", upload_id=upload_id, filename=path.name, size=path.stat().st_size))
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                yield ingest_pb2.UploadRequest(chunk=block)

    with grpc.insecure_channel(target) as ch:
        response: ingest_pb2.UploadResponse = ingest_pb2_grpc.IngestServiceStub(ch).Upload(requests())
        return response


def _count(target: str) -> tuple[int, int]:
    sql = "SELECT count(*), count(DISTINCT event_id) FROM fs_bench"
    with grpc.insecure_channel(target) as ch:
        messages = list(admin_pb2_grpc.AdminServiceStub(ch).Query(admin_pb2.QueryRequest(sql=sql, no_cache=True)))
    [row] = [row for m in messages for row in m.rows]
    total, distinct = (int(from_value(v)) for v in row.values)
    return total, distinct


def _read_floor(path: Path) -> float:
    """MB/s of reading the file in the client's chunks: what a client can send at most."""
    started = time.perf_counter()
    with path.open("rb") as f:
        while f.read(CHUNK):
            pass
    return path.stat().st_size / (1 << 20) / (time.perf_counter() - started)


def run(size_mb: int, partition_mb: float, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    partition_bytes = max(1024, int(partition_mb * (1 << 20)))
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-big-") as tmp:
        workdir = Path(tmp)
        path = workdir / "big.ndjson"
        progress(f"writing a {size_mb:,} MiB NDJSON file")
        rows = _write(path, size_mb, progress)
        size = path.stat().st_size
        progress("starting `mlplat run` and warming it up with a small upload")
        proc, target = _start_daemon(workdir, partition_bytes)
        try:
            warm = workdir / "warm.ndjson"
            fs = catalog_from_dict(CATALOG).feature_sets["bench"]
            for _ in write_file(GeneratorSpec(fs, "user_id", entities=100, seed=8, id_prefix="w"), 2_000, warm,
                                "ndjson"):
                pass
            _upload(target, warm, "warm-up")
            time.sleep(1.0)
            baseline = psutil.Process(proc.pid).memory_info().rss
            progress(f"uploading {size / (1 << 20):,.0f} MiB ({rows:,} rows) in partitions of "
                     f"{partition_bytes / (1 << 20):g} MiB; sampling the daemon's RSS")
            with _RssSampler(proc.pid) as rss:
                started = time.perf_counter()
                response = _upload(target, path, "big")
                seconds = time.perf_counter() - started
            stored, distinct = _count(target)
            stored -= 2_000  # the warm-up's rows
            distinct -= 2_000
        finally:
            stop(proc, 30)
        floor = _read_floor(path)
    mb = size / (1 << 20)
    metrics.update({
        "file_mb": round(mb, 1), "rows": rows, "rows_accepted": response.rows_accepted,
        "rows_rejected": response.rows_rejected, "partitions": response.partitions, "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1), "mb_per_s": round(mb / seconds, 1),
        "floor_read_mb_per_s": round(floor, 1), "rss_baseline_mb": round(baseline / (1 << 20), 1),
        "rss_peak_mb": round(rss.peak / (1 << 20), 1), "rss_growth_mb": round((rss.peak - baseline) / (1 << 20), 1),
        "workers_rss_peak_mb": round(rss.children_peak / (1 << 20), 1),
        "rows_lost": rows - distinct, "rows_duplicated": stored - distinct,
    })
    params: dict[str, Any] = {"size_mb": size_mb, "partition_mb": partition_mb, "rss_promise_mb": RSS_PROMISE_MB,
                              "warehouse_memory_limit": os.environ.get("MLPLAT_WAREHOUSE__MEMORY_LIMIT", "duckdb's"),
                              "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return BenchResult("ingest-big", params, metrics)
