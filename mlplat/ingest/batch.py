"""Service A, batch: a spooled file is cut into partitions, parsed and validated in worker processes
(balancer, ingest class) and written like streamed events: idempotent rows, dead letters keyed by
upload id and position. Workers parse ahead of the writer (a bounded number of partitions), so the
writer finds several waiting and commits them as one insert. Each entity's newest value goes to the hot
store once, after the last partition is committed. Retrying an upload with the same id is a no-op.

Partitions are committed as they are ready (one transaction for a file larger than memory would hold the
single writer for all of it), so an upload can fail after some partitions were stored. It is then not
rolled back (rows already there are indistinguishable from the same rows stored before): every partition
is still tried, and UploadIncomplete says exactly what was stored. Uploading the same file again with the
same id stores the rest: rows are kept once per event id, dead letters once per upload id and position."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Lane, Priority
from mlplat.errors import MlplatError
from mlplat.features.definitions import FeatureSet
from mlplat.features.online import latest_per_entity
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.files import FileFormatError, Partition, detect_format, ingest_partition, plan_partitions
from mlplat.ingest.sink import IngestSink, gather_all
from mlplat.ingest.validation import DeadLetter, ValidatedBatch
from mlplat.observability.logging import get_logger

log = get_logger("ingest")
FIRST_REASONS = 5


@dataclass
class PartitionOutcome:
    """What of one partition is stored: all of it unless `error` says why not. Rows and dead letters are
    written separately, so a partition that failed may still have one of them stored (counted here)."""

    part: Partition
    rows_accepted: int = 0
    rows_rejected: int = 0
    error: str = ""
    cause: Exception | None = None


@dataclass
class UploadSummary:
    upload_id: str
    format: str
    partitions: int
    bytes: int
    rows_accepted: int = 0  # stored: in the feature set's table (once per event id)
    rows_rejected: int = 0  # stored: as dead letters
    first_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    not_stored: list[PartitionOutcome] = field(default_factory=list)  # in file order; empty: all stored


class UploadIncomplete(MlplatError):
    """Some partitions of an upload were not stored, or only in part; all others are. The summary counts
    what was stored; `cause` is the first partition's error."""

    def __init__(self, summary: UploadSummary, cause: Exception) -> None:
        super().__init__(_incomplete_message(summary, cause))
        self.summary = summary
        self.cause = cause


def _span(fmt: str, part: Partition) -> str:
    return f"row groups {part.start}-{part.end}" if fmt == "parquet" else f"bytes {part.start}-{part.end}"


def _incomplete_message(summary: UploadSummary, cause: Exception) -> str:
    first = summary.not_stored[0]
    where = f"partition {first.part.index} ({_span(summary.format, first.part)}): {first.error[:500]}"
    more = len(summary.not_stored) - 1
    where += f"; and {more} more partition{'s' if more > 1 else ''}" if more else ""
    if not (summary.rows_accepted or summary.rows_rejected):
        return f"upload {summary.upload_id}: nothing was stored: {where}"
    stored = summary.partitions - len(summary.not_stored)
    advice = ("correct the file and upload it again" if isinstance(cause, FileFormatError) else
              f"upload the same file again with upload id {summary.upload_id} to store the rest")
    return (f"upload {summary.upload_id} is incomplete: {stored} of {summary.partitions} partitions stored "
            f"({summary.rows_accepted} rows accepted, {summary.rows_rejected} rejected); not stored: {where}. "
            f"To finish it, {advice}: rows already stored are not stored twice")


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
        self, sink: IngestSink, registry: FeatureRegistry, balancer: Balancer, *, partition_bytes: int,
        parallel: int,
    ) -> None:
        self._sink = sink
        self._registry = registry
        self._balancer = balancer
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
        fs_json = fs.model_dump_json()
        parsing = asyncio.Semaphore(self._parallel)  # one partition per worker process
        held = asyncio.Semaphore(self._parallel * 2)  # partitions in memory: parsed, not yet committed
        newest = NewestPerEntity()
        outcomes = [PartitionOutcome(p) for p in parts]

        async def one(outcome: PartitionOutcome) -> None:
            part = outcome.part
            async with held:
                try:
                    async with parsing:
                        batch: ValidatedBatch = await self._balancer.run(
                            ingest_partition, str(path), chosen, part, fs_json, key, now,
                            priority=Priority.INGEST, lane=Lane.PROCESS,
                        )
                except Exception as e:
                    outcome.error, outcome.cause = str(e) or type(e).__name__, e
                    return
                letters = [(f"upload:{upload_id}:{part.index}:{d.index}", d) for d in batch.dead]
                rows_stored = await self._store(fs, batch, letters, now, outcome)
            if rows_stored:
                newest.add(batch.rows, part.index)
            summary.rows_accepted += outcome.rows_accepted
            summary.rows_rejected += outcome.rows_rejected
            if outcome.rows_rejected:
                room = FIRST_REASONS - len(summary.first_reasons)
                summary.first_reasons += [d.reason for d in batch.dead[:max(room, 0)]]

        # partitions queue for the semaphores in file order; every one is tried, even after a failure
        await gather_all(*(one(o) for o in outcomes))
        if newest.rows is not None:  # what was stored, also when not all of it was
            await self._sink.update_online(fs, newest.rows)
        summary.seconds = time.monotonic() - started
        summary.not_stored = [o for o in outcomes if o.error]
        if summary.not_stored:
            log.warning("upload_incomplete", feature_set=fs.name, upload_id=upload_id, format=chosen,
                        partitions=len(parts), not_stored=[o.part.index for o in summary.not_stored][:100],
                        accepted=summary.rows_accepted, rejected=summary.rows_rejected,
                        error=summary.not_stored[0].error)
            cause = summary.not_stored[0].cause
            raise UploadIncomplete(summary, cause or MlplatError(summary.not_stored[0].error))
        log.info("upload_ingested", feature_set=fs.name, upload_id=upload_id, format=chosen,
                 partitions=len(parts), accepted=summary.rows_accepted, rejected=summary.rows_rejected,
                 seconds=round(summary.seconds, 3))
        return summary

    async def _store(
        self, fs: FeatureSet, batch: ValidatedBatch, letters: list[tuple[str, DeadLetter]], now: dt.datetime,
        outcome: PartitionOutcome,
    ) -> bool:
        """Rows and dead letters as two writes, so the outcome can say exactly which of them was stored.
        Returns whether the rows were."""
        writes = [self._sink.store(fs, ValidatedBatch(batch.rows, [], batch.redelivered), [], source="upload",
                                   at=now, online=False)]
        if letters:
            writes.append(self._sink.store(fs, ValidatedBatch(batch.rows.slice(0, 0), batch.dead), letters,
                                           source="upload", at=now, online=False))
        results = await asyncio.gather(*writes, return_exceptions=True)
        for what, result in zip(("rows", "dead letters"), results, strict=False):
            if isinstance(result, Exception):
                outcome.error = "; ".join(filter(None, [outcome.error, f"{what} not stored: {result}"]))
                outcome.cause = outcome.cause or result
            elif isinstance(result, BaseException):  # cancelled: the upload is being abandoned
                raise result
        if letters and not isinstance(results[1], BaseException):
            outcome.rows_rejected = len(batch.dead)
        if isinstance(results[0], BaseException):
            return False
        outcome.rows_accepted = batch.rows.num_rows + len(batch.redelivered)  # in the warehouse, once
        return True
