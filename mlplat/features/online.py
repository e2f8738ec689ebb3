"""Online features: the latest value per entity in the hot store, with the warehouse as the fallback.

One hot-store key per (feature set, entity) holds a JSON document {"t": event time in µs, "f": {...}}.
Ingest only replaces it with a newer event (events can arrive out of order across batches), comparing and
setting in one atomic step. A read that misses the hot store, or finds it down, is answered from the
warehouse: slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.backends import compact
from mlplat.backends.hotstore import HotStore
from mlplat.errors import BackendError
from mlplat.features.definitions import FeatureSet
from mlplat.observability.logging import get_logger
from mlplat.warehouse.store import Warehouse

log = get_logger("features")
PREFIX = "mlplat:online:"


def online_key(fs: FeatureSet, entity_id: str) -> str:
    return f"{PREFIX}{fs.name}:{entity_id}"


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def latest_per_entity(rows: pa.Table, arrival: np.ndarray | None = None) -> pa.Table:
    """The row with the newest event_time for each entity; ties go to the later arrival (default: row order).

    Entities are hashed to integer codes first, so the sort is over three integer columns, not strings."""
    if rows.num_rows == 0:
        return rows
    codes = pc.dictionary_encode(rows["entity_id"].combine_chunks()).indices.to_numpy(zero_copy_only=False)
    times = rows["event_time"].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    ties = np.arange(rows.num_rows) if arrival is None else arrival
    order = np.lexsort((ties, times, codes))  # the last key sorts first
    sorted_codes = codes[order]
    last = np.append(np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]), len(order) - 1)
    return rows.take(pa.array(order[last], pa.int64()))


async def write_latest(store: HotStore, fs: FeatureSet, rows: pa.Table) -> int:
    """Store each entity's newest row unless the hot store already holds a newer one; returns how many.

    The compare and the set are one atomic step in the store, so an upload and the stream writing the same
    entity at once cannot leave the older event there. "t" goes first: the store reads the version there.
    Each value is copied out of orjson's 4 KiB buffer at once: an upload's 100k entities would otherwise hold
    400 MB at the same moment, which the allocator keeps after they are freed (`mlplat bench ingest --big`)."""
    newest = latest_per_entity(rows)
    if newest.num_rows == 0:
        return 0
    keys = [online_key(fs, e) for e in newest["entity_id"].to_pylist()]
    times = newest["event_time"].cast(pa.int64()).to_pylist()
    features = newest.select([f.name for f in fs.features]).to_pylist()
    items = [(key, t, compact(orjson.dumps({"t": t, "f": values})))
             for key, t, values in zip(keys, times, features, strict=True)]
    return await store.set_unless_older(items, ttl_s=fs.online_ttl_s)


async def read_online(
    store: HotStore, warehouse: Warehouse, fs: FeatureSet, entity_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Latest features per entity (None when the entity is unknown); hot store first, warehouse for misses."""
    found: dict[str, dict[str, Any] | None] = {}
    try:
        docs = await store.mget([online_key(fs, e) for e in entity_ids])
    except BackendError as e:  # an unreachable Redis fails fast (backends/hotstore/redis.py): no wait here
        log.warning("online_read_fallback", feature_set=fs.name, reason=str(e))
        docs = [None] * len(entity_ids)
    missing = []
    for entity, doc in zip(entity_ids, docs, strict=True):
        if doc is None:
            missing.append(entity)
        else:
            found[entity] = orjson.loads(doc)["f"]
    if missing:
        found.update(await read_from_warehouse(warehouse, fs, missing))
    return found


async def read_from_warehouse(
    warehouse: Warehouse, fs: FeatureSet, entity_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    columns = ", ".join(f'"{f.name}"' for f in fs.features)
    # the hot store's TTL counts from the write, which is the ingest time here
    fresh = "AND ingest_time >= now() - to_seconds(?::DOUBLE)" if fs.online_ttl_s else ""
    params: list[object] = [list(entity_ids)] + ([fs.online_ttl_s] if fs.online_ttl_s else [])
    table = await warehouse.read(
        f'SELECT entity_id, {columns} FROM "{fs.table}" WHERE entity_id IN (SELECT unnest(?::VARCHAR[])) {fresh} '
        "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC, ingest_time DESC) = 1",
        params,
    )
    result: dict[str, dict[str, Any] | None] = dict.fromkeys(entity_ids)
    for row in table.to_pylist():
        entity = row.pop("entity_id")
        result[entity] = {k: _jsonable(v) for k, v in row.items()}
    return result
