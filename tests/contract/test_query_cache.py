"""The query cache, on both hot-store backends: repeated reads are cached, any write invalidates."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pyarrow as pa
import pytest

from mlplat.backends.hotstore import HotStore
from mlplat.config import WarehouseSettings
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.cache import QueryCache
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite


@pytest.fixture
async def warehouse(hot_store: HotStore) -> AsyncIterator[Warehouse]:
    metrics = Metrics()
    cache = QueryCache(hot_store, metrics, ttl_s=60, max_bytes=1 << 20)
    wh = Warehouse(WarehouseSettings(url="duckdb://:memory:"), metrics, cache=cache)
    await wh.start()
    await wh.execute("CREATE TABLE a (x INT)", tables=("a",))
    await wh.execute("CREATE TABLE b (y INT)", tables=("b",))
    await wh.append("a", pa.table({"x": pa.array([1, 2], pa.int32())}))
    yield wh
    await wh.stop()


def hits(wh: Warehouse) -> float:
    return float(wh._metrics.query_cache.labels("hit")._value.get())


async def test_a_repeated_query_is_answered_from_the_cache(warehouse: Warehouse) -> None:
    """The second identical query is a cache hit with the same rows."""
    first = await warehouse.query("SELECT sum(x) AS s FROM a")
    second = await warehouse.query("SELECT sum(x) AS s FROM a")
    assert not first.cached and second.cached
    assert second.table.to_pylist() == first.table.to_pylist() == [{"s": 3}]
    assert hits(warehouse) == 1


async def test_a_write_to_a_table_read_invalidates_the_result(warehouse: Warehouse) -> None:
    """After a committed write to a table the query read, the next answer is fresh."""
    await warehouse.query("SELECT sum(x) AS s FROM a")
    await warehouse.write(ArrowWrite("a", pa.table({"x": pa.array([10], pa.int32())})))
    result = await warehouse.query("SELECT sum(x) AS s FROM a")
    assert not result.cached and result.table.to_pylist() == [{"s": 13}]


async def test_a_write_to_another_table_keeps_the_result(warehouse: Warehouse) -> None:
    """Writes only invalidate queries that read the written table."""
    await warehouse.query("SELECT sum(x) AS s FROM a")
    await warehouse.write(ArrowWrite("b", pa.table({"y": pa.array([5], pa.int32())})))
    assert (await warehouse.query("SELECT sum(x) AS s FROM a")).cached


async def test_sql_writes_invalidate_the_tables_they_name(warehouse: Warehouse) -> None:
    """A parameterised UPDATE/DELETE invalidates the tables it declares."""
    await warehouse.query("SELECT count(*) AS n FROM a")
    await warehouse.execute("DELETE FROM a WHERE x = ?", [1], tables=("a",))
    result = await warehouse.query("SELECT count(*) AS n FROM a")
    assert not result.cached and result.table.to_pylist() == [{"n": 1}]


async def test_joins_and_ctes_are_invalidated_by_any_table_they_read(warehouse: Warehouse) -> None:
    """A query over two tables is invalidated by a write to either."""
    sql = "WITH t AS (SELECT x FROM a) SELECT count(*) AS n FROM t, b"
    await warehouse.query(sql)
    assert (await warehouse.query(sql)).cached
    await warehouse.append("b", pa.table({"y": pa.array([1], pa.int32())}))
    result = await warehouse.query(sql)
    assert not result.cached and result.table.to_pylist() == [{"n": 2}]


async def test_no_cache_bypasses_the_cache(warehouse: Warehouse) -> None:
    """use_cache=False always reads the warehouse."""
    await warehouse.query("SELECT 1 AS one")
    assert not (await warehouse.query("SELECT 1 AS one", use_cache=False)).cached


async def test_results_with_different_row_limits_are_cached_apart(warehouse: Warehouse) -> None:
    """A truncated answer is never served for a query that asked for more rows."""
    await warehouse.query("SELECT * FROM range(100)", max_rows=5)
    result = await warehouse.query("SELECT * FROM range(100)", max_rows=50)
    assert result.table.num_rows == 50


async def test_the_cache_is_bypassed_until_the_data_has_an_identity(hot_store: HotStore) -> None:
    """Without identify() nothing is read or stored (keys would be shared by every daemon on the Redis)."""
    metrics = Metrics()
    cache = QueryCache(hot_store, metrics, ttl_s=60, max_bytes=1 << 20)
    assert await cache.get("SELECT 1", [], ["a"]) == ("", None)
    assert metrics.query_cache.labels("bypass")._value.get() == 1
    await cache.invalidate({"a"})
    assert await hot_store.scan_keys("mlplat:qcache:") == []
    with pytest.raises(ValueError, match="'warehouse' is empty"):
        cache.identify("warehouse", "")
    cache.identify("warehouse", "w1")
    key, hit = await cache.get("SELECT 1", [], ["a"])
    assert key and hit is None


async def test_every_identity_takes_part_in_the_key(hot_store: HotStore) -> None:
    """Adding or changing the identity of any source gives new keys; the same identities, the same keys."""
    cache = QueryCache(hot_store, Metrics(), ttl_s=60, max_bytes=1 << 20)
    keys = []
    for source, identity in [("warehouse", "w1"), ("lake", "l1"), ("lake", "l2"), ("lake", "l1")]:
        cache.identify(source, identity)
        keys.append((await cache.get("SELECT 1", [], ["a"]))[0])
    assert len(set(keys)) == 3 and keys[1] == keys[3]
