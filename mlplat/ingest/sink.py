"""Where validated rows go, for streamed events and uploaded files alike.

Rows go to the feature set's table (insert-or-ignore by event id, so a replay changes nothing), dead
letters to the dead_letters table (insert-or-ignore by their source position), and each entity's newest
row to the hot store, all at once: a replay after a failed commit rewrites the same values (newer-only),
so updating the hot store while the warehouse commits never shows a value the warehouse will not have.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Sequence

import pyarrow as pa

from mlplat.backends.hotstore import HotStore
from mlplat.errors import BackendError
from mlplat.features.definitions import FeatureSet
from mlplat.features.online import write_latest
from mlplat.ingest.validation import DeadLetter, ValidatedBatch
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

log = get_logger("ingest")

DEAD_LETTER_SCHEMA = pa.schema([
    ("source_key", pa.string()), ("received_at", pa.timestamp("us", tz="UTC")), ("source", pa.string()),
    ("feature_set", pa.string()), ("event_id", pa.string()), ("reason_code", pa.string()),
    ("reason", pa.string()), ("payload", pa.binary()),
])


def dead_letter_table(
    letters: Sequence[tuple[str, DeadLetter]], source: str, feature_set: str | None, at: dt.datetime
) -> pa.Table:
    return pa.table({
        "source_key": [key for key, _ in letters],
        "received_at": [at] * len(letters),
        "source": [source] * len(letters),
        "feature_set": [feature_set] * len(letters),
        "event_id": [d.event_id for _, d in letters],
        "reason_code": [d.code for _, d in letters],
        "reason": [d.reason for _, d in letters],
        "payload": [d.payload for _, d in letters],
    }, schema=DEAD_LETTER_SCHEMA)


async def gather_all(*aws: Awaitable[object]) -> None:
    """Wait for every one, even after one failed (so none outlives the caller), then raise the first error."""
    for result in await asyncio.gather(*aws, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class IngestSink:
    def __init__(self, warehouse: Warehouse, hot_store: HotStore, metrics: Metrics) -> None:
        self._warehouse = warehouse
        self._hot_store = hot_store
        self._metrics = metrics

    async def store(
        self, fs: FeatureSet, batch: ValidatedBatch, letters: Sequence[tuple[str, DeadLetter]], *,
        source: str, at: dt.datetime, online: bool = True,
    ) -> None:
        """Returns once rows and dead letters are committed; raises (nothing counted) if they were not.

        With online=False the caller updates the hot store itself (an upload does it once, at the end)."""
        writes = [self._warehouse.write(ArrowWrite(fs.table, batch.rows, "insert_ignore", ("event_id",)))]
        if letters:
            writes.append(self._warehouse.write(ArrowWrite(
                "dead_letters", dead_letter_table(letters, source, fs.name, at), "insert_ignore", ("source_key",))))
        if online:
            writes.append(self.update_online(fs, batch.rows))
        await gather_all(*writes)
        self._count(fs.name, batch.rows.num_rows, batch.dead, len(batch.redelivered))

    async def update_online(self, fs: FeatureSet, rows: pa.Table) -> int:
        """Each entity's newest row to the hot store; a hot store that is down is logged, not raised."""
        try:
            return await write_latest(self._hot_store, fs, rows)
        except BackendError as e:  # the warehouse has the rows; online reads fall back to it
            log.warning("hot_store_update_failed", feature_set=fs.name, error=str(e))
            return 0

    def _count(self, feature_set: str, accepted: int, dead: Sequence[DeadLetter], redelivered: int) -> None:
        self._metrics.ingest_events.labels(feature_set, "accepted").inc(accepted)
        if redelivered:
            self._metrics.ingest_events.labels(feature_set, "redelivered").inc(redelivered)
        if dead:
            self._metrics.ingest_events.labels(feature_set, "dead_letter").inc(len(dead))
        for d in dead:
            self._metrics.dead_letters.labels(d.code).inc()
