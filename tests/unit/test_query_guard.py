"""The read-only query path: one SELECT over warehouse tables, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mlplat.config import WarehouseSettings
from mlplat.errors import QueryForbidden, QueryRejected
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse


@pytest.fixture
async def warehouse() -> AsyncIterator[Warehouse]:
    wh = Warehouse(WarehouseSettings(url="duckdb://:memory:", cache_enabled=False), Metrics())
    await wh.start()
    await wh.execute("CREATE TABLE t (a INT, b VARCHAR)", tables=("t",))
    await wh.execute("INSERT INTO t VALUES (1, 'x'), (2, 'y')", tables=("t",))
    yield wh
    await wh.stop()


ALLOWED = [
    ("SELECT 42", [(42,)]),
    ("select a from t order by a", [(1,), (2,)]),
    ("WITH x AS (SELECT * FROM t) SELECT count(*) FROM x", [(2,)]),
    ("SELECT count(*) FROM main.t", [(2,)]),
    ("SELECT sum(range) FROM range(4)", [(6,)]),
    ("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'", [(1,)]),
    ("-- a comment\nSELECT a FROM t WHERE b = 'y'", [(2,)]),
]


@pytest.mark.parametrize(("sql", "expected"), ALLOWED)
async def test_plain_selects_are_answered(warehouse: Warehouse, sql: str, expected: list[tuple[object]]) -> None:
    """Ordinary read-only queries over warehouse tables return their rows."""
    result = await warehouse.query(sql)
    assert [tuple(r.values()) for r in result.table.to_pylist()] == expected


FORBIDDEN = [
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM '/etc/passwd'", "files"),
    ("SELECT * FROM 'data.parquet'", "files"),
    ("SELECT * FROM read_text('/etc/hostname')", "read_text"),
    ("SELECT (SELECT count(*) FROM read_parquet('x.parquet'))", "read_parquet"),
    ("SELECT * FROM t WHERE a IN (SELECT 1 FROM glob('/*'))", "glob"),
    ("SELECT * FROM 'https://example.com/x.csv'", "files"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH"),
    ("INSERT INTO t VALUES (3, 'z')", "INSERT"),
    ("UPDATE t SET a = 0", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("DROP TABLE t", "DROP"),
    ("CREATE TABLE u AS SELECT 1", "CREATE"),
    ("COPY t TO '/tmp/out.csv'", "COPY"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SELECT getenv('HOME')", "getenv"),
    ("SELECT current_setting('threads')", "current_setting"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
    ("SELECT * FROM other.main.t", "other databases"),
    ("SELECT * FROM information_schema.tables", "schema"),
    ("SELECT * FROM query('SELECT 1')", "query"),
]


@pytest.mark.parametrize(("sql", "named"), FORBIDDEN)
async def test_reaching_outside_the_warehouse_is_forbidden(warehouse: Warehouse, sql: str, named: str) -> None:
    """Writes, files, URLs, other databases, settings and extensions are refused, naming what was wrong."""
    with pytest.raises(QueryForbidden) as err:
        await warehouse.query(sql)
    assert named.lower() in str(err.value).lower()


REJECTED = [
    ("", "empty"),
    ("SELECT 1; SELECT 2", "exactly one"),
    ("SELEC 1", "parse"),
    ("SELECT * FROM missing_table", "no table named"),
    ("SELECT nope FROM t", "nope"),
]


@pytest.mark.parametrize(("sql", "named"), REJECTED)
async def test_malformed_queries_are_rejected_clearly(warehouse: Warehouse, sql: str, named: str) -> None:
    """Bad SQL gets an error that says what is wrong, on one line."""
    with pytest.raises(QueryRejected) as err:
        await warehouse.query(sql)
    assert named.lower() in str(err.value).lower()
    assert "\n" not in str(err.value)


async def test_results_are_truncated_at_max_rows(warehouse: Warehouse) -> None:
    """A query returns at most max_rows and says it was truncated."""
    result = await warehouse.query("SELECT * FROM range(1000)", max_rows=10)
    assert result.table.num_rows == 10 and result.truncated
    result = await warehouse.query("SELECT * FROM range(10)", max_rows=10)
    assert result.table.num_rows == 10 and not result.truncated


async def test_the_query_path_cannot_write_even_through_a_select(warehouse: Warehouse) -> None:
    """After every refused attempt the table is unchanged."""
    for sql, _ in FORBIDDEN:
        with pytest.raises(QueryRejected):
            await warehouse.query(sql)
    result = await warehouse.query("SELECT count(*) AS n FROM t")
    assert result.table.to_pylist() == [{"n": 2}]
