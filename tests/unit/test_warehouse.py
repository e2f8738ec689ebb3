"""The warehouse: single-writer actor, group commit, idempotent upserts, back-pressure, reads, migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from mlplat.config import WarehouseSettings
from mlplat.errors import Overloaded, WarehouseError
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.schema import MIGRATIONS, Migration, current_version, migrate
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite, SqlWrite

EVENTS = Migration(
    100, "events", "CREATE TABLE events (event_id BIGINT PRIMARY KEY, entity VARCHAR, value DOUBLE)"
)


def rows(ids: list[int], value: float = 1.0) -> pa.Table:
    return pa.table({"event_id": pa.array(ids, pa.int64()), "entity": [f"e{i}" for i in ids],
                     "value": [value] * len(ids)})


@pytest.fixture
async def warehouse(tmp_path: Path) -> AsyncIterator[Warehouse]:
    settings = WarehouseSettings(url=f"duckdb://{tmp_path / 'w.duckdb'}", queue_size=8, cache_enabled=False)
    wh = Warehouse(settings, Metrics(), migrations=(*MIGRATIONS, EVENTS))
    await wh.start()
    yield wh
    await wh.stop()


async def count(wh: Warehouse, sql: str = "SELECT count(*) AS n FROM events") -> int:
    return int((await wh.read(sql)).column(0)[0].as_py())


async def test_concurrent_appends_are_folded_into_few_commits(warehouse: Warehouse) -> None:
    """Many small writes submitted together commit in fewer transactions than writes, and all land."""
    metrics = warehouse._metrics
    await asyncio.gather(*(warehouse.write(ArrowWrite("events", rows([i]))) for i in range(200)))
    assert await count(warehouse) == 200
    commits = metrics.warehouse_commits.labels("ok")._value.get()
    assert commits < 200


async def test_upsert_keeps_the_last_row_per_key_and_insert_ignore_the_first(warehouse: Warehouse) -> None:
    """Idempotent writes: replaying a batch changes nothing; upsert replaces, insert_ignore keeps the first."""
    await warehouse.write(ArrowWrite("events", rows([1, 2, 2], 1.0), "insert_ignore", ("event_id",)))
    await warehouse.write(ArrowWrite("events", rows([1, 2, 2], 1.0), "insert_ignore", ("event_id",)))
    assert await count(warehouse) == 2
    batch = pa.table({"event_id": pa.array([3, 3], pa.int64()), "entity": ["a", "b"], "value": [1.0, 2.0]})
    await warehouse.write(ArrowWrite("events", batch, "upsert", ("event_id",)))
    got = await warehouse.read("SELECT entity FROM events WHERE event_id = 3")
    assert got.column(0).to_pylist() == ["b"]
    await warehouse.write(ArrowWrite("events", batch.slice(0, 1), "insert_ignore", ("event_id",)))
    got = await warehouse.read("SELECT entity FROM events WHERE event_id = 3")
    assert got.column(0).to_pylist() == ["b"]
    # duplicates inside one insert_ignore batch, far apart (different DuckDB vectors): the first one wins
    ids = [4, *range(100, 5100), 4]
    spread = pa.table({"event_id": pa.array(ids, pa.int64()), "entity": ["first"] + ["x"] * 5000 + ["last"],
                       "value": [1.0] * len(ids)})
    await warehouse.write(ArrowWrite("events", spread, "insert_ignore", ("event_id",)))
    got = await warehouse.read("SELECT entity FROM events WHERE event_id = 4")
    assert got.column(0).to_pylist() == ["first"]


async def test_a_bad_command_fails_alone_and_its_neighbours_commit(warehouse: Warehouse) -> None:
    """One failing write in a group commit does not fail the others submitted with it."""
    good = [warehouse.write(ArrowWrite("events", rows([i]))) for i in range(5)]
    bad = warehouse.write(ArrowWrite("no_such_table", rows([99])))
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:5] == [1] * 5
    assert isinstance(results[5], WarehouseError) and "no_such_table" in str(results[5])
    assert await count(warehouse) == 5


async def test_sql_writes_run_in_order_with_appends(warehouse: Warehouse) -> None:
    """Parameterised statements apply in submission order relative to appends."""
    a = warehouse.write(ArrowWrite("events", rows([1, 2, 3])))
    b = warehouse.write(SqlWrite("DELETE FROM events WHERE event_id = ?", [2], ("events",)))
    assert list(await asyncio.gather(a, b)) == [3, 1]
    assert await count(warehouse) == 2


async def test_full_queue_applies_back_pressure(warehouse: Warehouse) -> None:
    """With the writer thread busy, submit_nowait refuses beyond the bound and submit waits for room."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    blocker = asyncio.ensure_future(
        warehouse.writer.on_writer_thread(lambda _: asyncio.run_coroutine_threadsafe(release.wait(), loop).result())
    )
    await asyncio.sleep(0.05)
    accepted = [warehouse.writer.submit_nowait(ArrowWrite("events", rows([i]))) for i in range(8)]
    await asyncio.sleep(0.05)  # the drain task takes those 8 as one batch and waits for the busy thread
    accepted += [warehouse.writer.submit_nowait(ArrowWrite("events", rows([i]))) for i in range(8, 16)]
    with pytest.raises(Overloaded, match="queue is full"):
        warehouse.writer.submit_nowait(ArrowWrite("events", rows([99])))
    waiting = asyncio.ensure_future(warehouse.write(ArrowWrite("events", rows([1000]))))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    release.set()
    await blocker
    await asyncio.gather(*accepted, waiting)
    assert await count(warehouse) == len(accepted) + 1


async def test_user_queries_leave_every_pooled_cursor_usable(warehouse: Warehouse) -> None:
    """A checked query and a truncated one must not leave a result open on their cursor: the next read on
    that cursor (here: with an Arrow table registered, as training sets do) would be refused."""
    await warehouse.write(ArrowWrite("events", rows(list(range(50)))))
    for _ in range(2 * warehouse._settings.read_threads):
        await warehouse.query("SELECT * FROM events", max_rows=10, use_cache=False)  # truncated
        await warehouse.query("SELECT count(*) FROM events", use_cache=False)
    spine = pa.table({"event_id": pa.array([1, 2], pa.int64())})
    for _ in range(2 * warehouse._settings.read_threads):
        joined = await warehouse.read("SELECT count(*) FROM events JOIN spine USING (event_id)",
                                      tables={"spine": spine})
        assert joined.column(0)[0].as_py() == 2


async def test_reads_run_while_the_writer_is_busy(warehouse: Warehouse) -> None:
    """A read does not wait for the writer: DuckDB cursors read their own snapshot."""
    await warehouse.write(ArrowWrite("events", rows([1])))
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    blocker = asyncio.ensure_future(
        warehouse.writer.on_writer_thread(lambda _: asyncio.run_coroutine_threadsafe(release.wait(), loop).result())
    )
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(count(warehouse), 5) == 1
    release.set()
    await blocker


async def test_stop_commits_everything_accepted_then_refuses(tmp_path: Path) -> None:
    """Shutdown flushes queued writes to disk; writes after stop are refused, never silently dropped."""
    settings = WarehouseSettings(url=f"duckdb://{tmp_path / 'w.duckdb'}", cache_enabled=False)
    wh = Warehouse(settings, Metrics(), migrations=(*MIGRATIONS, EVENTS))
    await wh.start()
    pending = [asyncio.ensure_future(wh.write(ArrowWrite("events", rows([i])))) for i in range(50)]
    await asyncio.sleep(0)
    await wh.stop()
    assert all(p.done() and p.result() == 1 for p in pending)
    with pytest.raises(WarehouseError, match=r"not started|shutting down"):
        await wh.write(ArrowWrite("events", rows([999])))
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert con.execute("SELECT count(*) FROM events").fetchone() == (50,)
    con.close()


def test_migrations_apply_once_and_record_their_version(tmp_path: Path) -> None:
    """Pending migrations run in order once; re-running is a no-op."""
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    assert migrate(con, (*MIGRATIONS, EVENTS)) == [*(m.version for m in MIGRATIONS), 100]
    assert migrate(con, (*MIGRATIONS, EVENTS)) == []
    assert current_version(con) == 100
    con.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    """Old code never runs against a schema newer than it knows."""
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    migrate(con, (*MIGRATIONS, EVENTS))
    with pytest.raises(WarehouseError, match=f"version 100 but this mlplat knows only up to {MIGRATIONS[-1].version}"):
        migrate(con, MIGRATIONS)
    con.close()


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    """A broken migration rolls back entirely and names itself."""
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    last = MIGRATIONS[-1].version
    broken = Migration(last + 1, "broken", "CREATE TABLE ok_table (a INT); CREATE TABLE ok_table (a INT);")
    with pytest.raises(WarehouseError, match=rf"migration {last + 1} \(broken\)"):
        migrate(con, (*MIGRATIONS, broken))
    assert current_version(con) == last
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'ok_table'").fetchone() == (0,)
    con.close()


async def test_slow_query_is_interrupted(tmp_path: Path) -> None:
    """A read query past the timeout is interrupted with a clear error and the reader is reusable."""
    settings = WarehouseSettings(url="duckdb://:memory:", query_timeout_s=0.3, read_threads=1,
                                 cache_enabled=False)
    wh = Warehouse(settings, Metrics())
    await wh.start()
    try:
        with pytest.raises(WarehouseError, match="interrupted"):
            await wh.read("SELECT count(*) FROM range(10000000000) a, range(10) b WHERE a.range % 7 = b.range")
        assert (await wh.read("SELECT 1")).num_rows == 1
    finally:
        await wh.stop()
