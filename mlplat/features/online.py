"""Online features: the latest value per entity in the hot store, with the warehouse as the fallback.

One hot-store key per (feature set, entity) holds a JSON document {"t": event time in µs, "f": {...}}.
Ingest only replaces it with a newer event (events can arrive out of order across batches). A read that
misses the hot store, or finds it down, is answered from the warehouse: slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.backends.hotstore import HotStore
from mlplat.errors import BackendError
from mlplat.features.definitions import FeatureSet
from mlplat.observability.logging import get_logger
from mlplat.warehouse import Warehouse

log = get_logger("features")
PREFIX = "mlplat:online:"


def online_key(fs: FeatureSet, entity_id: str) -> str:
    return f"{PREFIX}{fs.name}:{entity_id}"


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def latest_per_entity(rows: pa.Table) -> pa.Table:
    """The row with the newest event_time for each entity (ties: the later row), all in Arrow kernels."""
    if rows.num_rows == 0:
        return rows
    indexed = rows.append_column("__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    order = pc.sort_indices(indexed, sort_keys=[("entity_id", "ascending"), ("event_time", "ascending"),
                                                ("__row", "ascending")])
    ordered = indexed.take(order)
    entity = ordered["entity_id"].combine_chunks()
    changes = pc.not_equal(entity.slice(1), entity.slice(0, len(entity) - 1)).to_numpy(zero_copy_only=False)
    last = np.append(np.flatnonzero(changes), len(entity) - 1)
    return ordered.take(pa.array(last, pa.int64())).drop_columns(["__row"])


async def write_latest(store: HotStore, fs: FeatureSet, rows: pa.Table) -> int:
    """Store each entity's newest row unless the hot store already holds a newer one; returns how many."""
    newest = latest_per_entity(rows)
    if newest.num_rows == 0:
        return 0
    entities = newest["entity_id"].to_pylist()
    times = newest["event_time"].cast(pa.int64()).to_pylist()
    keys = [online_key(fs, e) for e in entities]
    current = await store.mget(keys)
    names = [f.name for f in fs.features]
    columns = [newest[n].to_pylist() for n in names]
    pipe = store.pipeline()
    written = 0
    for i, (key, row) in enumerate(zip(keys, zip(*columns, strict=True), strict=True)):
        existing = current[i]
        if existing is not None and orjson.loads(existing)["t"] > times[i]:
            continue
        doc = {"t": times[i], "f": dict(zip(names, row, strict=True))}
        pipe.set(key, orjson.dumps(doc), ttl_s=fs.online_ttl_s)
        written += 1
    await pipe.execute()
    return written


async def read_online(
    store: HotStore, warehouse: Warehouse, fs: FeatureSet, entity_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Latest features per entity (None when the entity is unknown); hot store first, warehouse for misses."""
    found: dict[str, dict[str, Any] | None] = {}
    try:
        docs = await store.mget([online_key(fs, e) for e in entity_ids])
    except BackendError as e:
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
