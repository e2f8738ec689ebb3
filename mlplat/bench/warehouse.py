"""`mlplat bench warehouse`: rows/s through the writer actor vs DuckDB's own Arrow insert of the same rows.

Both sides write the same Arrow data into a fresh on-disk database. The floor is DuckDB inserting the
whole table in one statement, the fastest way DuckDB itself offers; ours submits the data as many
independent batches (as ingest does) and lets group commit fold them. Best of `repeat` runs each.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from mlplat.bench import BenchResult
from mlplat.config import WarehouseSettings
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.schema import Migration
from mlplat.warehouse.store import Warehouse

TABLE_DDL = """
CREATE TABLE bench_events (
    event_id BIGINT, entity_id VARCHAR, event_time TIMESTAMP,
    f0 DOUBLE, f1 DOUBLE, f2 DOUBLE, f3 DOUBLE, f4 DOUBLE, label INTEGER
)
"""


def make_data(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    entities = np.array([f"user_{i}" for i in range(10_000)])
    columns: dict[str, pa.Array] = {
        "event_id": pa.array(np.arange(rows, dtype=np.int64)),
        "entity_id": pa.array(entities[rng.integers(0, len(entities), rows)]),
        "event_time": pa.array(
            (np.int64(1_700_000_000_000_000) + np.arange(rows, dtype=np.int64) * 1000).astype("datetime64[us]")
        ),
    }
    for i in range(5):
        columns[f"f{i}"] = pa.array(rng.normal(size=rows))
    columns["label"] = pa.array(rng.integers(0, 2, rows, dtype=np.int32))
    return pa.table(columns)


def floor_rows_per_s(data: pa.Table, workdir: Path) -> float:
    con = duckdb.connect(str(workdir / "floor.duckdb"))
    try:
        con.execute(TABLE_DDL)
        con.register("data", data)
        started = time.perf_counter()
        con.execute("INSERT INTO bench_events SELECT * FROM data")
        elapsed = time.perf_counter() - started
    finally:
        con.close()
    return float(data.num_rows / elapsed)


async def writer_rows_per_s(data: pa.Table, batch_rows: int, workdir: Path) -> float:
    settings = WarehouseSettings(url=f"duckdb://{workdir / 'ours.duckdb'}", cache_enabled=False)
    warehouse = Warehouse(settings, Metrics(), migrations=(Migration(1, "bench", TABLE_DDL),))
    await warehouse.start()
    try:
        batches = [data.slice(i, batch_rows) for i in range(0, data.num_rows, batch_rows)]
        started = time.perf_counter()
        await asyncio.gather(*(warehouse.append("bench_events", b) for b in batches))
        elapsed = time.perf_counter() - started
    finally:
        await warehouse.stop()
    return float(data.num_rows / elapsed)


def run(rows: int, batch_rows: int, repeat: int, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    data = make_data(rows)
    ours: list[float] = []
    floor: list[float] = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="mlplat-bench-") as tmp:
            progress(f"run {i + 1}/{repeat}: DuckDB floor")
            floor.append(floor_rows_per_s(data, Path(tmp)))
            progress(f"run {i + 1}/{repeat}: writer actor")
            ours.append(asyncio.run(writer_rows_per_s(data, batch_rows, Path(tmp))))
    best, best_floor = max(ours), max(floor)
    return BenchResult(
        "warehouse",
        {"rows": rows, "batch_rows": batch_rows, "repeat": repeat},
        {"rows_per_s": round(best, 1), "floor_rows_per_s": round(best_floor, 1),
         "ratio": round(best / best_floor, 4)},
    )
