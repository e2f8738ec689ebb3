"""The Warehouse service: everything that is not a model file, in one DuckDB database owned by this process.

Writes go through the single-writer actor (writer.py); reads run concurrently on their own cursors on a
small thread pool (DuckDB is MVCC), so a long query never holds up ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mlplat.config import WarehouseSettings
from mlplat.errors import QueryRejected, WarehouseError
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.cache import QueryCache
from mlplat.warehouse.query_guard import check_query
from mlplat.warehouse.schema import MIGRATIONS, Migration, migrate, warehouse_id
from mlplat.warehouse.writer import ArrowWrite, Command, SqlWrite, WarehouseWriter, WriterConnection

log = get_logger("warehouse")


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    truncated: bool
    cached: bool


class Warehouse:
    """A supervised service: start() opens and migrates, stop() flushes every accepted write and closes."""

    name = "warehouse"

    def __init__(
        self,
        settings: WarehouseSettings,
        metrics: Metrics,
        *,
        cache: QueryCache | None = None,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache if settings.cache_enabled else None
        self._migrations = migrations
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warehouse-writer")
        self._read_threads = ThreadPoolExecutor(
            max_workers=settings.read_threads, thread_name_prefix="warehouse-reader"
        )
        self._cursors: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer: WarehouseWriter | None = None
        self._id: str | None = None

    @property
    def identity(self) -> str | None:
        """The database's random id (schema migration 8), once started; it travels with the file."""
        return self._id

    @property
    def writer(self) -> WarehouseWriter:
        if self._writer is None:
            raise WarehouseError("warehouse is not started")
        return self._writer

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._con = await loop.run_in_executor(self._write_thread, self._open)
        self._writer = WarehouseWriter(
            WriterConnection(self._con),
            self._write_thread,
            self._metrics,
            queue_size=self._settings.queue_size,
            max_batch_commands=self._settings.max_batch_commands,
            max_batch_rows=self._settings.max_batch_rows,
            on_commit=self._cache.invalidate if self._cache else None,
        )
        applied = await self._writer.on_writer_thread(lambda c: migrate(c.con, self._migrations))
        self._id = await self._writer.on_writer_thread(lambda c: warehouse_id(c.con))
        if self._cache is not None and self._id is not None:  # before any write: keys are scoped from the first
            self._cache.identify("warehouse", self._id)
        for _ in range(self._settings.read_threads):
            self._cursors.put(await self._writer.on_writer_thread(lambda c: c.con.cursor()))
        self._writer.start()
        log.info("warehouse_open", path=self._settings.path, warehouse_id=self._id, migrations_applied=applied)

    def _open(self) -> duckdb.DuckDBPyConnection:
        path = self._settings.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = (
            {} if self._settings.memory_limit is None else {"memory_limit": self._settings.memory_limit})
        try:
            return duckdb.connect(path, config=config)
        except duckdb.Error as e:
            raise WarehouseError(f"warehouse.url = {self._settings.url!r}: cannot open: {e}") from None

    async def run(self) -> None:
        # the writer's drain task does the work; surface its crash so the supervisor restarts us
        await self.writer.join()
        raise WarehouseError("warehouse writer stopped unexpectedly")

    async def stop(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
        loop = asyncio.get_running_loop()
        while not self._cursors.empty():
            cursor = self._cursors.get_nowait()
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        if self._con is not None:
            con = self._con
            self._con = None
            await loop.run_in_executor(self._write_thread, self._close, con)
        self._read_threads.shutdown(wait=True, cancel_futures=True)
        self._write_thread.shutdown(wait=True)

    @staticmethod
    def _close(con: duckdb.DuckDBPyConnection) -> None:
        with contextlib.suppress(duckdb.Error):
            con.execute("CHECKPOINT")
        con.close()

    # --- writes -------------------------------------------------------------------------------------
    async def write(self, command: Command) -> int:
        """Apply one write command; returns once it is committed (rows affected)."""
        return await self.writer.submit(command)

    async def append(self, table: str, data: pa.Table) -> int:
        return await self.write(ArrowWrite(table, data))

    async def execute(self, sql: str, params: Sequence[Any] = (), *, tables: tuple[str, ...] = ()) -> int:
        return await self.write(SqlWrite(sql, params, tables))

    async def flush(self) -> None:
        await self.writer.flush()

    # --- reads --------------------------------------------------------------------------------------
    async def read(
        self, sql: str, params: Sequence[Any] = (), *, max_rows: int | None = None,
        tables: dict[str, pa.Table] | None = None,
    ) -> pa.Table:
        """A trusted internal read (our own SQL, parameterised). Runs on a reader thread.

        `tables` are Arrow tables visible to the query under those names (e.g. a training-set spine).
        """
        table, _ = await self._run_read(sql, params, max_rows, tables=tables)
        return table

    async def query(
        self, sql: str, *, max_rows: int | None = None, use_cache: bool = True, lossless: bool = False
    ) -> QueryResult:
        """An untrusted user query: checked by the guard, run read-only, cached in the hot store.

        `lossless` keeps the DuckDB types Arrow has no name for (HUGEINT, UHUGEINT, BIGNUM, BIT, TIMETZ, UUID,
        BOOLEAN as bool8) as extension types, which mlplat/api/convert.py decodes exactly; by default HUGEINT
        becomes a decimal, a UHUGEINT above 2^127 wraps and TIMETZ loses its offset.
        """
        limit = min(max_rows or self._settings.query_max_rows, self._settings.query_max_rows)
        started = time.perf_counter()
        try:
            checked = await self._on_reader(lambda cur: check_query(cur, sql, self._known_tables(cur)))
            key = ""
            if self._cache is not None and use_cache:
                key, hit = await self._cache.get(checked.sql, [limit, lossless], checked.tables)
                if hit is not None:
                    self._metrics.queries.labels("cached").inc()
                    return QueryResult(hit.slice(0, limit), hit.num_rows > limit, cached=True)
            table, truncated = await self._run_read(checked.sql, (), limit, read_only=True, lossless=lossless)
            if self._cache is not None and key:
                await self._cache.put(key, table)
        except QueryRejected:
            self._metrics.queries.labels("rejected").inc()
            raise
        except Exception:
            self._metrics.queries.labels("failed").inc()
            raise
        finally:
            self._metrics.query_seconds.observe(time.perf_counter() - started)
        self._metrics.queries.labels("ok").inc()
        return QueryResult(table, truncated, cached=False)

    @staticmethod
    def _known_tables(cur: duckdb.DuckDBPyConnection) -> set[str]:
        rows = cur.execute(
            "SELECT lower(table_name) FROM duckdb_tables() WHERE schema_name = 'main' "
            "UNION ALL SELECT lower(view_name) FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal"
        ).fetchall()
        return {r[0] for r in rows}

    async def _on_reader(self, fn: Any) -> Any:
        loop = asyncio.get_running_loop()

        def with_cursor() -> Any:
            cursor = self._cursors.get(timeout=self._settings.query_timeout_s)
            try:
                return fn(cursor)
            finally:
                self._cursors.put(cursor)

        return await loop.run_in_executor(self._read_threads, with_cursor)

    async def _run_read(
        self, sql: str, params: Sequence[Any], max_rows: int | None, *, read_only: bool = False,
        tables: dict[str, pa.Table] | None = None, lossless: bool = False,
    ) -> tuple[pa.Table, bool]:
        if self._con is None:
            raise WarehouseError("warehouse is not started")
        loop = asyncio.get_running_loop()
        holder: dict[str, duckdb.DuckDBPyConnection] = {}

        def run() -> tuple[pa.Table, bool]:
            cursor = self._cursors.get(timeout=self._settings.query_timeout_s)
            holder["cursor"] = cursor
            for name, data in (tables or {}).items():
                cursor.register(name, data)
            try:
                return _fetch(cursor, sql, params, max_rows, read_only, lossless)
            finally:
                for name in tables or {}:
                    cursor.unregister(name)
                holder.pop("cursor", None)
                self._cursors.put(cursor)

        future = loop.run_in_executor(self._read_threads, run)
        try:
            async with asyncio.timeout(self._settings.query_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            cursor = holder.get("cursor")
            if cursor is not None:
                cursor.interrupt()
            with contextlib.suppress(Exception):
                await future
            raise WarehouseError(f"query interrupted after {self._settings.query_timeout_s:g}s") from None


def _fetch(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any], max_rows: int | None, read_only: bool,
    lossless: bool = False,
) -> tuple[pa.Table, bool]:
    if lossless:  # a session setting of this pooled cursor: RESET below, so other reads keep the default
        cursor.execute("SET SESSION arrow_lossless_conversion = true")
    if read_only:
        cursor.execute("BEGIN TRANSACTION READ ONLY")
    try:
        try:
            relation = cursor.sql(sql, params=list(params) if params else None)
            if relation is None:
                raise WarehouseError("statement returned no rows")
            if max_rows is None:
                return relation.to_arrow_table(), False
            reader = relation.to_arrow_reader(min(max_rows + 1, 65_536))
            batches: list[pa.RecordBatch] = []
            rows = 0
            try:
                for batch in reader:
                    batches.append(batch)
                    rows += batch.num_rows
                    if rows > max_rows:
                        break
            finally:  # a result left open makes the pooled cursor refuse its next query
                reader.close()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as e:
            if read_only:  # the user's query is wrong (unknown column, bad cast ...): their error to fix
                raise QueryRejected(f"query failed: {' '.join(str(e).split())}") from None
            raise WarehouseError(f"read failed: {e}") from e
        table = pa.Table.from_batches(batches, schema=reader.schema)
        return table.slice(0, max_rows), rows > max_rows
    finally:
        if read_only:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
        if lossless:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("RESET SESSION arrow_lossless_conversion")
