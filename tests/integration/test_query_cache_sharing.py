"""Daemons sharing one real Redis keep their query caches apart by the identity of their warehouse (issue 17).

Each "daemon" here is what answers a query: a Warehouse on its own DuckDB file with its own QueryCache and
its own Redis client, all on the same redis-server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from mlplat.backends.hotstore import open_hot_store
from mlplat.config import WarehouseSettings
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.cache import QueryCache
from mlplat.warehouse.schema import MIGRATIONS, migrate
from mlplat.warehouse.store import Warehouse

pytestmark = pytest.mark.integration

COUNT = "SELECT count(*) AS n FROM t"
Opener = Callable[[Path], AbstractAsyncContextManager[Warehouse]]


@pytest.fixture
def daemon(redis_url: str) -> Opener:
    """Opens a warehouse file with a query cache on the shared Redis, as `mlplat run` would."""

    @contextlib.asynccontextmanager
    async def open_daemon(path: Path) -> AsyncIterator[Warehouse]:
        store = open_hot_store(redis_url)
        await store.connect()
        metrics = Metrics()
        cache = QueryCache(store, metrics, ttl_s=60, max_bytes=1 << 20)
        warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{path}"), metrics, cache=cache)
        await warehouse.start()
        try:
            yield warehouse
        finally:
            await warehouse.stop()
            await store.aclose()

    return open_daemon


async def fill(warehouse: Warehouse, rows: int) -> None:
    await warehouse.execute("CREATE TABLE t (x INT)", tables=("t",))
    await warehouse.append("t", pa.table({"x": pa.array(range(rows), pa.int32())}))


async def count(warehouse: Warehouse) -> tuple[int, bool]:
    result = await warehouse.query(COUNT)
    return result.table.column(0)[0].as_py(), result.cached


async def test_daemons_with_different_warehouses_never_answer_from_each_others_cache(
    daemon: Opener, tmp_path: Path
) -> None:
    """Same table, same writes, same SQL, one Redis: each daemon answers with its own rows (B used to get A's)."""
    async with daemon(tmp_path / "a.duckdb") as a, daemon(tmp_path / "b.duckdb") as b:
        await fill(a, 3)
        await fill(b, 5)
        assert a.identity and b.identity and a.identity != b.identity
        assert await count(a) == (3, False)
        assert await count(a) == (3, True)  # the cache works on the shared Redis
        assert await count(b) == (5, False)
        assert await count(b) == (5, True)
        assert await count(a) == (3, True)


async def test_a_write_in_one_warehouse_leaves_the_others_cached_results(daemon: Opener, tmp_path: Path) -> None:
    """Invalidations are scoped too: A's write refreshes A's answer and leaves B's cached one."""
    async with daemon(tmp_path / "a.duckdb") as a, daemon(tmp_path / "b.duckdb") as b:
        await fill(a, 3)
        await fill(b, 5)
        await count(a)
        await count(b)
        await a.append("t", pa.table({"x": pa.array([7], pa.int32())}))
        assert await count(a) == (4, False)
        assert await count(b) == (5, True)


async def test_a_daemon_restarted_on_its_file_finds_its_cache_again(daemon: Opener, tmp_path: Path) -> None:
    """The identity lives in the warehouse file: the same file after a restart has the same id and cache."""
    async with daemon(tmp_path / "a.duckdb") as a:
        await fill(a, 3)
        assert await count(a) == (3, False)
        identity = a.identity
    async with daemon(tmp_path / "a.duckdb") as again:
        assert again.identity == identity
        assert await count(again) == (3, True)


async def test_a_warehouse_from_before_the_identity_gets_one_when_upgraded(
    daemon: Opener, tmp_path: Path
) -> None:
    """A database last migrated by an older mlplat is given its own id by the upgrade, and its cache works."""
    old = tmp_path / "old.duckdb"
    con = duckdb.connect(str(old))
    migrate(con, tuple(m for m in MIGRATIONS if m.version < 8))
    con.close()
    async with daemon(tmp_path / "new.duckdb") as new:
        await fill(new, 4)
        assert await count(new) == (4, False)  # now cached
    async with daemon(old) as upgraded:
        assert upgraded.identity and upgraded.identity != new.identity
        await fill(upgraded, 2)
        assert await count(upgraded) == (2, False)
        assert await count(upgraded) == (2, True)
