"""Retrieval: online with warehouse fallback, and point-in-time-correct training sets."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest

from mlplat.backends.hotstore import open_hot_store
from mlplat.config import WarehouseSettings
from mlplat.errors import NotFound
from mlplat.features.definitions import catalog_from_dict
from mlplat.features.offline import training_set
from mlplat.features.online import read_online, write_latest
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.validation import schema_for
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite
from tests.servers import ServerProcess

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
CATALOG = catalog_from_dict({
    "entities": {"user": {"key": "user_id"}},
    "feature_sets": {
        "spend": {"entity": "user", "features": [{"name": "amount", "type": "float"}]},
        "visits": {"entity": "user", "features": [{"name": "count", "type": "int"}]},
    },
})


def rows(fs_name: str, data: list[tuple[str, str, int, object]]) -> pa.Table:
    fs = CATALOG.feature_sets[fs_name]
    feature = fs.features[0].name
    return pa.table({
        "event_id": [d[0] for d in data], "entity_id": [d[1] for d in data],
        "event_time": [T0 + dt.timedelta(hours=d[2]) for d in data], "ingest_time": [T0] * len(data),
        feature: [d[3] for d in data],
    }, schema=schema_for(fs))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[Warehouse, FeatureRegistry]]:
    warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{tmp_path / 'w.duckdb'}", cache_enabled=False), Metrics())
    await warehouse.start()
    hot = open_hot_store("memory://")
    registry = FeatureRegistry(warehouse, hot)
    await registry.load(CATALOG)
    await warehouse.write(ArrowWrite("fs_spend", rows("spend", [
        ("s1", "ann", 1, 10.0), ("s2", "ann", 5, 50.0), ("s3", "bob", 3, 30.0), ("s4", "ann", 9, 90.0),
    ])))
    await warehouse.write(ArrowWrite("fs_visits", rows("visits", [("v1", "ann", 4, 1), ("v2", "ann", 8, 2)])))
    yield warehouse, registry
    await warehouse.stop()


async def test_training_rows_see_only_values_from_their_past(store: tuple[Warehouse, FeatureRegistry]) -> None:
    """Each spine row gets the latest value at or before its timestamp, never a later one (no leakage)."""
    warehouse, registry = store
    spine = pa.table({
        "entity_id": ["ann", "ann", "ann", "bob", "ann", "carl"],
        "timestamp": [T0 + dt.timedelta(hours=h) for h in (0, 1, 6, 2, 9, 5)],
        "label": [0, 1, 0, 1, 1, 0],
    })
    result = await training_set(warehouse, registry, spine, ["spend.amount", "visits"])
    assert result.column_names == ["entity_id", "timestamp", "label", "spend__amount", "visits__count"]
    assert result.to_pydict()["spend__amount"] == [None, 10.0, 50.0, None, 90.0, None]
    assert result.to_pydict()["visits__count"] == [None, None, 1, None, 2, None]
    assert result["label"].to_pylist() == [0, 1, 0, 1, 1, 0]  # spine order and extra columns are kept


async def test_unknown_features_are_named(store: tuple[Warehouse, FeatureRegistry]) -> None:
    """Asking for a feature or set that does not exist fails with its name and what exists."""
    warehouse, registry = store
    spine = pa.table({"entity_id": ["ann"], "timestamp": [T0]})
    with pytest.raises(ValueError, match="has no feature 'nope'"):
        await training_set(warehouse, registry, spine, ["spend.nope"])
    with pytest.raises(NotFound, match="feature set 'ghost' does not exist"):
        await training_set(warehouse, registry, spine, ["ghost"])


async def test_online_reads_fall_back_to_the_warehouse_on_a_miss(store: tuple[Warehouse, FeatureRegistry]) -> None:
    """An entity missing from the hot store is answered from the warehouse with its latest value."""
    warehouse, registry = store
    hot = open_hot_store("memory://")
    fs = registry.get("spend")
    assert await read_online(hot, warehouse, fs, ["ann", "bob", "zed"]) == {
        "ann": {"amount": 90.0}, "bob": {"amount": 30.0}, "zed": None}


@pytest.mark.integration
async def test_online_reads_survive_redis_stopping(
    store: tuple[Warehouse, FeatureRegistry], redis_server: ServerProcess, redis_url: str
) -> None:
    """With Redis stopped mid-test, online reads still answer, from the warehouse, with the same values."""
    warehouse, registry = store
    hot = open_hot_store(redis_url)
    fs = registry.get("spend")
    await write_latest(hot, fs, rows("spend", [("s9", "ann", 9, 90.0)]))
    assert await read_online(hot, warehouse, fs, ["ann"]) == {"ann": {"amount": 90.0}}
    redis_server.stop()
    try:
        assert await read_online(hot, warehouse, fs, ["ann", "bob"]) == {
            "ann": {"amount": 90.0}, "bob": {"amount": 30.0}}
    finally:
        redis_server.start()
        await hot.aclose()
