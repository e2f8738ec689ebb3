"""The single-writer actor: the only code that writes to DuckDB.

Callers put commands on a bounded asyncio queue (back-pressure instead of unbounded memory). One task
drains the queue and hands whole batches to one writer thread, which applies them in a single transaction
(group commit). Consecutive Arrow appends to the same table are concatenated into one INSERT, which is
what makes many small writes as cheap as one large one. If a group commit fails, each command is retried
alone so one bad command cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import Overloaded, WarehouseError
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("warehouse")

T = TypeVar("T")
WriteMode = Literal["append", "upsert", "insert_ignore"]


@dataclass
class ArrowWrite:
    """Rows for one table. upsert replaces rows with the same key; insert_ignore keeps the first one."""

    table: str
    data: pa.Table
    mode: WriteMode = "append"
    key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode != "append" and not self.key:
            raise ValueError(f"{self.mode} into {self.table} needs a key")


@dataclass
class SqlWrite:
    """A parameterised statement (UPDATE, DELETE ...) applied in the same group commit."""

    sql: str
    params: Sequence[Any] = ()
    tables: tuple[str, ...] = ()


Command = ArrowWrite | SqlWrite


@dataclass
class _Pending:
    command: Command | None  # None: a flush marker
    future: asyncio.Future[int]
    enqueued: float = field(default_factory=time.monotonic)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dedupe(data: pa.Table, key: tuple[str, ...], keep: Literal["first", "last"]) -> pa.Table:
    """One row per key inside a batch, since DuckDB refuses to upsert the same key twice in one statement."""
    if data.num_rows < 2:
        return data
    indexed = data.append_column("__row", pa.array(range(data.num_rows), pa.int64()))
    agg = "min" if keep == "first" else "max"
    chosen = indexed.group_by(list(key), use_threads=False).aggregate([("__row", agg)])
    rows = pc.sort_indices(chosen[f"__row_{agg}"])
    return data.take(pc.take(chosen[f"__row_{agg}"], rows))


class WriterConnection:
    """Owns the DuckDB connection; every method runs on the single writer thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def apply(self, commands: Sequence[Command]) -> list[int]:
        """Apply all commands in one transaction; returns rows affected per command."""
        self.con.begin()
        try:
            counts = self._apply_folded(commands)
            self.con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.rollback()
            raise
        return counts

    def _apply_folded(self, commands: Sequence[Command]) -> list[int]:
        counts: list[int] = []
        i = 0
        while i < len(commands):
            cmd = commands[i]
            if isinstance(cmd, SqlWrite):
                self.con.execute(cmd.sql, list(cmd.params))
                counts.append(max(self.con.rowcount, 0))
                i += 1
                continue
            # fold a run of appends to the same table with the same schema into one insert
            j = i + 1
            while j < len(commands) and self._foldable(cmd, commands[j]):
                j += 1
            run = [c for c in commands[i:j] if isinstance(c, ArrowWrite)]
            # one contiguous table: DuckDB scans a many-chunked Arrow table markedly slower than the copy costs
            data = run[0].data if len(run) == 1 else pa.concat_tables([c.data for c in run]).combine_chunks()
            self._insert(cmd, data)
            counts.extend(c.data.num_rows for c in run)
            i = j
        return counts

    @staticmethod
    def _foldable(first: ArrowWrite, other: Command) -> bool:
        return (
            isinstance(other, ArrowWrite)
            and other.table == first.table
            and other.mode == first.mode
            and other.key == first.key
            and other.data.schema.equals(first.data.schema)
        )

    def _insert(self, cmd: ArrowWrite, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        verb = {"append": "INSERT", "upsert": "INSERT OR REPLACE", "insert_ignore": "INSERT OR IGNORE"}[cmd.mode]
        if cmd.mode == "upsert":  # DuckDB refuses to update one key twice in a statement; ignoring twice is fine
            data = _dedupe(data, cmd.key, "last")
        self.con.register("__mlplat_batch", data)
        try:
            self.con.execute(f"{verb} INTO {_quote(cmd.table)} BY NAME SELECT * FROM __mlplat_batch")
        finally:
            self.con.unregister("__mlplat_batch")


def tables_of(command: Command) -> tuple[str, ...]:
    return (command.table,) if isinstance(command, ArrowWrite) else command.tables


class WarehouseWriter:
    """The actor. `submit` waits for the commit, so a caller that got its result knows the rows are durable."""

    def __init__(
        self,
        connection: WriterConnection,
        executor: ThreadPoolExecutor,
        metrics: Metrics,
        *,
        queue_size: int,
        max_batch_commands: int,
        max_batch_rows: int,
        on_commit: Callable[[set[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._connection = connection
        self._executor = executor
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._max_commands = max_batch_commands
        self._max_rows = max_batch_rows
        self._on_commit = on_commit
        self._accepting = True
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None

    async def on_writer_thread(self, fn: Callable[[WriterConnection], T]) -> T:
        """Run fn with the connection on the writer thread (migrations, checkpoints)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._connection)

    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.create_task(self._drain_forever(), name="warehouse-writer")

    async def submit(self, command: Command) -> int:
        """Queue a write and wait until it is committed; waits for room when the queue is full."""
        if not self._accepting:
            raise WarehouseError("warehouse writer is shutting down; write refused")
        pending = _Pending(command, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        self._metrics.warehouse_queue_depth.set(self._queue.qsize())
        return await pending.future

    def submit_nowait(self, command: Command) -> asyncio.Future[int]:
        """Queue a write without waiting for room: raises Overloaded when the queue is full."""
        if not self._accepting:
            raise WarehouseError("warehouse writer is shutting down; write refused")
        pending = _Pending(command, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"warehouse write queue is full ({self._queue.maxsize} commands)") from None
        self._metrics.warehouse_queue_depth.set(self._queue.qsize())
        return pending.future

    async def flush(self) -> None:
        """Wait until everything submitted before this call is committed."""
        marker = _Pending(None, asyncio.get_running_loop().create_future())
        await self._queue.put(marker)
        await marker.future

    async def stop(self) -> None:
        """Refuse new writes, commit everything already queued, then stop the drain task."""
        self._accepting = False
        if self._task is None:
            return
        if not self._task.done():
            await self.flush()
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # anything that slipped in after the final flush is failed, never silently dropped
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(WarehouseError("warehouse writer stopped before this write"))

    async def join(self) -> None:
        """Return or raise when the drain task ends; cancelling the caller leaves the task running."""
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def _drain_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._commit(batch)
            self._metrics.warehouse_queue_depth.set(self._queue.qsize())

    async def _next_batch(self) -> list[_Pending]:
        first = await self._queue.get()
        batch = [first]
        rows = first.command.data.num_rows if isinstance(first.command, ArrowWrite) else 0
        while len(batch) < self._max_commands and rows < self._max_rows and not self._queue.empty():
            nxt = self._queue.get_nowait()
            batch.append(nxt)
            if isinstance(nxt.command, ArrowWrite):
                rows += nxt.command.data.num_rows
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        work = [p for p in batch if p.command is not None]
        commands = [p.command for p in work if p.command is not None]
        if commands:
            started = time.perf_counter()
            try:
                counts = await self.on_writer_thread(lambda c: c.apply(commands))
            except Exception as e:  # the group failed: find the culprit(s) one by one
                self._metrics.warehouse_commits.labels("failed").inc()
                log.warning("group_commit_failed", commands=len(commands), error=str(e))
                await self._commit_one_by_one(work)
            else:
                self._metrics.warehouse_commits.labels("ok").inc()
                self._metrics.warehouse_commit_seconds.observe(time.perf_counter() - started)
                self._metrics.warehouse_batch_commands.observe(len(commands))
                await self._after_commit(commands)
                for pending, count in zip(work, counts, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(count)
        for pending in batch:
            if pending.command is None and not pending.future.done():
                pending.future.set_result(0)

    async def _commit_one_by_one(self, work: list[_Pending]) -> None:
        for pending in work:
            command = pending.command
            assert command is not None
            try:
                counts = await self.on_writer_thread(functools.partial(WriterConnection.apply, commands=[command]))
            except Exception as e:
                self._metrics.warehouse_commits.labels("failed").inc()
                log.error("write_failed", tables=list(tables_of(command)), error=str(e))
                if not pending.future.done():
                    pending.future.set_exception(WarehouseError(f"write to {tables_of(command)} failed: {e}"))
                continue
            self._metrics.warehouse_commits.labels("ok").inc()
            await self._after_commit([command])
            if not pending.future.done():
                pending.future.set_result(counts[0])

    async def _after_commit(self, commands: Sequence[Command]) -> None:
        touched: set[str] = set()
        for command in commands:
            touched.update(tables_of(command))
            if isinstance(command, ArrowWrite):
                self._metrics.warehouse_rows_written.labels(command.table).inc(command.data.num_rows)
        if self._on_commit is not None and touched:
            try:
                await self._on_commit(touched)
            except Exception as e:  # a cache that cannot be invalidated must not fail a durable write
                log.warning("commit_hook_failed", tables=sorted(touched), error=str(e))
