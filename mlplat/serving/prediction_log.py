"""Every prediction to the warehouse (table predictions), in batches and off the request path.

Requests append to a bounded buffer and return; a flush task writes the buffer through the writer actor
every `log_flush_ms`. When the buffer is full (the warehouse is far behind), new rows are dropped and
counted in `mlplat_prediction_log_dropped_total` rather than slowing predictions or growing memory.
A streaming prediction also keeps the id of the event it was made on: that is what its label names.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Lane, Priority
from mlplat.errors import MlplatError
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

log = get_logger("serving")
_TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("request_id", pa.string()), ("model", pa.string()), ("version", pa.int32()),
    ("predicted_at", pa.timestamp("us", tz="UTC")), ("entity_id", pa.string()), ("features", pa.list_(pa.float64())),
    ("score", pa.float64()), ("latency_ms", pa.float64()), ("event_id", pa.string()),
])


class PredictionLog:
    def __init__(self, warehouse: Warehouse, balancer: Balancer, metrics: Metrics, *, flush_ms: float,
                 max_rows: int) -> None:
        self._warehouse = warehouse
        self._balancer = balancer
        self._metrics = metrics
        self._flush_s = flush_ms / 1000
        self._max_rows = max_rows
        self._singles: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}  # one list per column
        self._offsets = [0]  # features of single predictions: one flat list of floats, cut at these offsets
        self._tables: list[pa.Table] = []
        self._held = 0

    def _room(self, n: int) -> bool:
        if self._held + n > self._max_rows:
            self._metrics.prediction_log_dropped.inc(n)
            return False
        self._held += n
        return True

    def add_one(self, request_id: str, model: str, version: int, entity_id: str | None, features: list[float],
                score: float, latency_ms: float) -> None:
        """One Predict: appended to column lists, so the table is built without a Python object per row."""
        if not self._room(1):
            return
        for name, value in (("request_id", request_id), ("model", model), ("version", version),
                            ("predicted_at", int(time.time() * 1e6)), ("entity_id", entity_id),
                            ("score", score), ("latency_ms", latency_ms), ("event_id", None)):
            self._singles[name].append(value)
        flat = self._singles["features"]
        flat.extend(features)  # floats are not containers: nothing more for the garbage collector to walk
        self._offsets.append(len(flat))

    def add_rows(self, ids: pa.Array, model: str, version: int, entity_ids: pa.Array, matrix: np.ndarray,
                 scores: np.ndarray, latency_ms: float, event_ids: pa.Array | None = None) -> None:
        """Many predictions of one version at once (a batch call, a streaming batch), one id per row, and
        for streaming predictions the event each was made on."""
        n = len(matrix)
        if not n or not self._room(n):
            return
        flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float64).ravel())
        features = pa.ListArray.from_arrays(pa.array(np.arange(0, n * matrix.shape[1] + 1, matrix.shape[1],
                                                               dtype=np.int32)), flat)
        self._tables.append(pa.table({
            "request_id": ids, "model": pa.array([model] * n, pa.string()),
            "version": pa.array(np.full(n, version, np.int32)),
            "predicted_at": pa.array(np.full(n, int(time.time() * 1e6), np.int64)).cast(_TS),
            "entity_id": entity_ids, "features": features, "score": pa.array(scores, pa.float64()),
            "latency_ms": pa.array(np.full(n, latency_ms)),
            "event_id": pa.nulls(n, pa.string()) if event_ids is None else event_ids,
        }, schema=SCHEMA))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._held:
            return
        singles, offsets, tables = self._singles, self._offsets, self._tables
        self._singles, self._offsets, self._tables = {name: [] for name in SCHEMA.names}, [0], []
        self._held = 0
        # built on a thread, not on the loop that answers requests
        table = await self._balancer.run(_table_of, singles, offsets, tables, priority=Priority.MONITOR,
                                         lane=Lane.THREAD)
        try:
            await self._warehouse.write(ArrowWrite("predictions", table))
        except MlplatError as e:  # the log must never fail a prediction; it is counted as dropped
            self._metrics.prediction_log_dropped.inc(table.num_rows)
            log.warning("prediction_log_write_failed", rows=table.num_rows, error=str(e))


def _table_of(singles: dict[str, list[Any]], offsets: list[int], tables: list[pa.Table]) -> pa.Table:
    columns = {name: pa.array(values, type=SCHEMA.field(name).type)
               for name, values in singles.items() if name not in ("predicted_at", "features")}
    columns["predicted_at"] = pa.array(singles["predicted_at"], pa.int64()).cast(_TS)
    columns["features"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                                   pa.array(singles["features"], pa.float64()))
    return pa.concat_tables([*tables, pa.table(columns, schema=SCHEMA)])


def batch_ids(request_id: str, rows: int) -> pa.Array:
    """The logged ids of a PredictBatch call's rows: `<request_id>:<row>` (no per-row Python)."""
    return pc.binary_join_element_wise(request_id + ":", pa.array(np.arange(rows)).cast(pa.string()), "")
