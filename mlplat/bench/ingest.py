"""`mlplat bench ingest`: streaming and file ingestion next to floors measured in the same run.

(a) Streaming: events/s end to end (bus -> validated -> warehouse + hot store, offsets committed) against
    the raw rate at which the same client consumes the same events. Kafka when --bus names one.
(b) Files: rows/s for Parquet, CSV and NDJSON files of the same rows through the upload path (partitions
    parsed and validated in worker processes, written by the warehouse writer, latest values to the hot
    store) against DuckDB's own read_parquet / read_csv / read_json insert of that file. The floor does the
    same job: into a fresh copy of the feature set's table, keyed by event id, ignoring known ids. The
    plain `CREATE TABLE AS` of the file into an unkeyed table is reported beside it (`*_unkeyed_*`): the
    difference is the cost of the event-id index that makes ingest idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from mlplat.backends.bus import EventBus, TopicPartition, open_bus
from mlplat.backends.hotstore import open_hot_store
from mlplat.bench import BenchResult
from mlplat.compute.balancer import Balancer
from mlplat.config import BalancerSettings, IngestSettings, WarehouseSettings
from mlplat.features.definitions import FeatureCatalog, FeatureSet, catalog_from_dict
from mlplat.features.registry import SQL_TYPES, FeatureRegistry, create_table_sql
from mlplat.ingest.batch import BatchIngest
from mlplat.ingest.generator import GeneratorSpec, generate_payloads, write_file
from mlplat.ingest.sink import IngestSink
from mlplat.ingest.stream import StreamIngest
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse

CATALOG: dict[str, Any] = {
    "entities": {"user": {"key": "user_id"}},
    "feature_sets": {"bench": {"entity": "user", "online_ttl_s": 3600, "features": [
        {"name": "clicks", "type": "int", "min": 0},
        {"name": "spend", "type": "float", "min": 0.0, "nullable": False},
        {"name": "minutes", "type": "float", "min": 0.0, "max": 1440.0},
        {"name": "country", "type": "string", "allowed": ["de", "fr", "gb", "us", "other"]},
        {"name": "premium", "type": "bool"},
    ]}},
}
READERS = {"parquet": "read_parquet(?)", "csv": "read_csv(?)", "ndjson": "read_json(?, format = 'newline_delimited')"}


def _keyed_floor_sql(fs: FeatureSet, fmt: str) -> str:
    """DuckDB doing the same job itself: the file into the feature set's own table, ignoring known event ids."""
    features = ", ".join(f'"{f.name}"::{SQL_TYPES[f.type]} AS "{f.name}"' for f in fs.features)
    return (f'INSERT OR IGNORE INTO "{fs.table}" BY NAME SELECT event_id::VARCHAR AS event_id, '
            f"user_id::VARCHAR AS entity_id, event_time::TIMESTAMPTZ AS event_time, now() AS ingest_time, "
            f"{features} FROM {READERS[fmt]}")


def _floor_rate(db: Path, setup: str | None, sql: str, path: Path, rows: int) -> float:
    con = duckdb.connect(str(db))
    try:
        if setup:
            con.execute(setup)
        started = time.perf_counter()
        con.execute(sql, [str(path)])
        return rows / (time.perf_counter() - started)
    finally:
        con.close()


async def raw_consume_rate(bus: EventBus, topic: str, n: int) -> float:
    consumer = bus.consumer([topic], group=f"floor-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        got, started = 0, time.perf_counter()
        while got < n:
            for messages in (await consumer.poll(max_records=10_000, timeout_s=1.0)).values():
                got += len(messages)
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def _stream(bus_url: str, events: int, workdir: Path, progress: Callable[[str], None]) -> dict[str, float]:
    catalog: FeatureCatalog = catalog_from_dict(CATALOG)
    fs = catalog.feature_sets["bench"]
    bus, hot, metrics = open_bus(bus_url), open_hot_store("memory://"), Metrics()
    await bus.connect()
    await hot.connect()
    warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{workdir / 'stream.duckdb'}", cache_enabled=False),
                          metrics)
    await warehouse.start()
    balancer = Balancer(BalancerSettings(max_python_workers=1, spare_workers=0), metrics)
    await balancer.start()
    try:
        registry = FeatureRegistry(warehouse, hot)
        await registry.load(catalog)
        settings = IngestSettings(consumer_group=f"bench-{uuid.uuid4().hex[:8]}", partitions=4, batch_size=20_000,
                                  batch_wait_ms=50, dead_letter_topic=f"bench-dlq-{uuid.uuid4().hex[:8]}")
        topic = fs.topic if bus_url == "memory://" else f"{fs.topic}.{uuid.uuid4().hex[:8]}"
        await bus.create_topic(topic, partitions=settings.partitions)
        progress(f"publishing {events:,} events to {bus.url}")
        spec = GeneratorSpec(fs, "user_id", entities=10_000, seed=1)
        for start in range(0, events, 50_000):
            await bus.publish_many(topic, generate_payloads(spec, min(50_000, events - start), start))
        progress("floor: raw consume of the same events")
        floor = await raw_consume_rate(bus, topic, events)
        progress("ours: consume, validate, write warehouse and hot store, commit")
        ingest = StreamIngest(settings, bus, hot, warehouse, registry, balancer, metrics)
        ingest._topics = {topic: fs}
        await bus.create_topic(settings.dead_letter_topic, partitions=1)
        ingest._consumer = bus.consumer([topic], group=settings.consumer_group)
        await ingest._consumer.start()
        accepted = metrics.ingest_events.labels(fs.name, "accepted")
        started = time.perf_counter()
        loop = asyncio.create_task(ingest.run())
        try:
            while accepted._value.get() < events:
                if loop.done():
                    loop.result()  # raises what stopped it
                    raise RuntimeError("the ingest loop ended before every event was committed")
                await asyncio.sleep(0.005)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        ours = events / (time.perf_counter() - started)
        await ingest.stop()
        ends = await bus.end_offsets([TopicPartition(topic, p) for p in range(settings.partitions)])
        assert sum(ends.values()) >= events
    finally:
        await balancer.stop(drain_s=2)
        await warehouse.stop()
        await bus.aclose()
        await hot.aclose()
    return {"stream_events_per_s": round(ours, 1), "stream_floor_events_per_s": round(floor, 1),
            "stream_ratio": round(ours / floor, 4)}


async def _warm_up(batch: BatchIngest, fs: FeatureSet, fmt: str, workdir: Path, workers: int) -> None:
    """A daemon is warm: every worker has run the pyarrow kernels once. One small upload per worker, at once."""
    paths = [workdir / f"warm-{i}.{fmt}" for i in range(workers)]
    for i, path in enumerate(paths):
        for _ in write_file(GeneratorSpec(fs, "user_id", entities=100, seed=100 + i), 2_000, path, fmt):
            pass
    await asyncio.gather(*(batch.ingest_file(p, fs.name, upload_id=p.name, fmt=fmt) for p in paths))


async def _files(rows: int, workdir: Path, workers: int, progress: Callable[[str], None]) -> dict[str, float]:
    catalog: FeatureCatalog = catalog_from_dict(CATALOG)
    fs = catalog.feature_sets["bench"]
    spec = GeneratorSpec(fs, "user_id", entities=10_000, seed=2)
    out: dict[str, float] = {}
    for fmt in ("parquet", "csv", "ndjson"):
        path = workdir / f"bench.{fmt}"
        progress(f"writing {rows:,} rows as {fmt}")
        for _ in write_file(spec, rows, path, fmt):
            pass
        keyed = _floor_rate(workdir / f"keyed-{fmt}.duckdb", create_table_sql(fs), _keyed_floor_sql(fs, fmt), path,
                            rows)
        unkeyed = _floor_rate(workdir / f"unkeyed-{fmt}.duckdb", None,
                              f"CREATE TABLE floor AS SELECT * FROM {READERS[fmt]}", path, rows)
        progress(f"{fmt}: upload path ({workers} worker processes)")
        metrics, hot = Metrics(), open_hot_store("memory://")
        warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{workdir / f'ours-{fmt}.duckdb'}",
                                                cache_enabled=False), metrics)
        await warehouse.start()
        balancer = Balancer(BalancerSettings(max_python_workers=workers, spare_workers=0), metrics)
        await balancer.start()
        try:
            registry = FeatureRegistry(warehouse, hot)
            await registry.load(catalog)
            batch = BatchIngest(IngestSink(warehouse, hot, metrics), registry, balancer,
                                partition_bytes=IngestSettings().partition_bytes, parallel=workers)
            await _warm_up(batch, fs, fmt, workdir, workers)
            gc.freeze()
            started = time.perf_counter()
            summary = await batch.ingest_file(path, "bench", upload_id=f"bench-{fmt}", fmt=fmt)
            ours = rows / (time.perf_counter() - started)
            assert summary.rows_accepted == rows, summary
        finally:
            gc.unfreeze()
            await balancer.stop(drain_s=2)
            await warehouse.stop()
        out.update({f"{fmt}_rows_per_s": round(ours, 1), f"{fmt}_floor_rows_per_s": round(keyed, 1),
                    f"{fmt}_ratio": round(ours / keyed, 4), f"{fmt}_unkeyed_floor_rows_per_s": round(unkeyed, 1),
                    f"{fmt}_unkeyed_ratio": round(ours / unkeyed, 4)})
    return out


def run(events: int, rows: int, bus_url: str, workers: int,
        progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="mlplat-bench-ingest-") as tmp:
        metrics = asyncio.run(_stream(bus_url, events, Path(tmp), progress))
        metrics.update(asyncio.run(_files(rows, Path(tmp), workers, progress)))
    return BenchResult("ingest", {"events": events, "rows": rows, "bus": bus_url, "workers": workers,
                                  "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, metrics)
