"""Service A, batch: a spooled file is cut into partitions, parsed and validated in worker processes
(balancer, ingest class) and written like streamed events: idempotent rows, dead letters keyed by
upload id and position. Workers parse ahead of the writer (a bounded number of partitions), so the
writer finds several waiting and commits them as one insert. Each entity's newest value goes to the hot
store once, after the last partition is committed. Retrying an upload with the same id is a no-op."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.jobs import Lane, Priority
from mlplat.features.online import latest_per_entity
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.files import Partition, detect_format, ingest_partition, plan_partitions
from mlplat.ingest.sink import IngestSink, gather_all
from mlplat.ingest.validation import ValidatedBatch
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse import Warehouse

log = get_logger("ingest")
FIRST_REASONS = 5


@dataclass
class UploadSummary:
    upload_id: str
    format: str
    partitions: int
    bytes: int
    rows_accepted: int = 0
    rows_rejected: int = 0
    first_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


class NewestPerEntity:
    """Each entity's newest row over an upload's partitions, so the hot store is written once per entity
    when the upload is committed (memory grows with the number of entities, not rows)."""

    def __init__(self) -> None:
        self.rows: pa.Table | None = None

    def add(self, rows: pa.Table, partition: int) -> None:
        latest = latest_per_entity(rows)
        latest = latest.append_column("__partition", pa.array(np.full(latest.num_rows, partition, np.int64)))
        merged = latest if self.rows is None else pa.concat_tables([self.rows, latest])
        self.rows = latest_per_entity(merged, arrival=merged["__partition"].to_numpy())


class BatchIngest:
    def __init__(
        self, warehouse: Warehouse, hot_store: HotStore, registry: FeatureRegistry, balancer: Balancer,
        metrics: Metrics, *, partition_bytes: int, parallel: int,
    ) -> None:
        self._warehouse = warehouse
        self._hot_store = hot_store
        self._registry = registry
        self._balancer = balancer
        self._metrics = metrics
        self._partition_bytes = partition_bytes
        self._parallel = parallel
        self._sink = IngestSink(warehouse, hot_store, metrics)

    async def ingest_file(
        self, path: Path, feature_set: str, *, upload_id: str, fmt: str | None = None
    ) -> UploadSummary:
        started = time.monotonic()
        fs = self._registry.get(feature_set)
        key = self._registry.key_of(fs)
        chosen = await asyncio.to_thread(detect_format, path, fmt or None)
        parts = await asyncio.to_thread(plan_partitions, path, chosen, self._partition_bytes)
        size = (await asyncio.to_thread(path.stat)).st_size
        summary = UploadSummary(upload_id, chosen, len(parts), size)
        now = dt.datetime.now(dt.UTC)
        fs_json = fs.model_dump_json()
        parsing = asyncio.Semaphore(self._parallel)  # one partition per worker process
        held = asyncio.Semaphore(self._parallel * 2)  # partitions in memory: parsed, not yet committed
        newest = NewestPerEntity()

        async def one(part: Partition) -> None:
            async with held:
                async with parsing:
                    batch: ValidatedBatch = await self._balancer.run(
                        ingest_partition, str(path), chosen, part, fs_json, key, now,
                        priority=Priority.INGEST, lane=Lane.PROCESS,
                    )
                letters = [(f"upload:{upload_id}:{part.index}:{d.index}", d) for d in batch.dead]
                await self._sink.store(fs, batch, letters, source="upload", at=now, online=False)
            newest.add(batch.rows, part.index)
            summary.rows_accepted += batch.rows.num_rows + len(batch.redelivered)  # in the warehouse, once
            summary.rows_rejected += len(batch.dead)
            room = FIRST_REASONS - len(summary.first_reasons)
            summary.first_reasons += [d.reason for d in batch.dead[:max(room, 0)]]

        # partitions queue for the semaphores in file order; every one is awaited, even after a failure
        await gather_all(*(one(p) for p in parts))
        if newest.rows is not None:
            await self._sink.update_online(fs, newest.rows)
        summary.seconds = time.monotonic() - started
        log.info("upload_ingested", feature_set=fs.name, upload_id=upload_id, format=chosen,
                 partitions=len(parts), accepted=summary.rows_accepted, rejected=summary.rows_rejected,
                 seconds=round(summary.seconds, 3))
        return summary
