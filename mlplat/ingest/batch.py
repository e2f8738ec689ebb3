"""Service A, batch: a spooled file is cut into partitions, parsed and validated in worker processes
(balancer, ingest class) and written like streamed events: idempotent rows, dead letters keyed by
upload id and position, latest values to the hot store. Retrying an upload with the same id is a no-op."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.jobs import Lane, Priority
from mlplat.errors import BackendError
from mlplat.features.online import write_latest
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.files import Partition, detect_format, ingest_partition, plan_partitions
from mlplat.ingest.stream import dead_letter_table
from mlplat.ingest.validation import ValidatedBatch
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse import ArrowWrite, Warehouse

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
        limit = asyncio.Semaphore(self._parallel)
        fs_json = fs.model_dump_json()

        async def one(part: Partition) -> None:
            async with limit:
                batch: ValidatedBatch = await self._balancer.run(
                    ingest_partition, str(path), chosen, part, fs_json, key, now,
                    priority=Priority.INGEST, lane=Lane.PROCESS,
                )
                await self._store(fs.name, fs.table, batch, upload_id, part.index, now)
            summary.rows_accepted += batch.rows.num_rows
            summary.rows_rejected += len(batch.dead)
            room = FIRST_REASONS - len(summary.first_reasons)
            summary.first_reasons += [d.reason for d in batch.dead[:max(room, 0)]]

        await asyncio.gather(*(one(p) for p in parts))
        summary.seconds = time.monotonic() - started
        self._metrics.ingest_events.labels(fs.name, "accepted").inc(summary.rows_accepted)
        if summary.rows_rejected:
            self._metrics.ingest_events.labels(fs.name, "dead_letter").inc(summary.rows_rejected)
        log.info("upload_ingested", feature_set=fs.name, upload_id=upload_id, format=chosen,
                 partitions=len(parts), accepted=summary.rows_accepted, rejected=summary.rows_rejected,
                 seconds=round(summary.seconds, 3))
        return summary

    async def _store(
        self, fs_name: str, table: str, batch: ValidatedBatch, upload_id: str, partition: int, now: dt.datetime
    ) -> None:
        writes = [self._warehouse.write(ArrowWrite(table, batch.rows, "insert_ignore", ("event_id",)))]
        if batch.dead:
            letters = [(f"upload:{upload_id}:{partition}:{d.index}", d) for d in batch.dead]
            writes.append(self._warehouse.write(ArrowWrite(
                "dead_letters", dead_letter_table(letters, "upload", fs_name, now), "insert_ignore",
                ("source_key",))))
            for d in batch.dead:
                self._metrics.dead_letters.labels(d.code).inc()
        await asyncio.gather(*writes)
        try:
            await write_latest(self._hot_store, self._registry.get(fs_name), batch.rows)
        except BackendError as e:
            log.warning("hot_store_update_failed", feature_set=fs_name, error=str(e))
