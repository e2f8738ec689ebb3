"""Query cache in the hot store (seed 000, future feature 3).

A cached result's key includes a generation number for every table the query read. The writer bumps a
table's generation after each commit that touched it, so a stale result is never found again: no scan
for keys to delete, and it works the same for several readers sharing one Redis. Results are Arrow IPC
bytes with a TTL, so abandoned generations expire by themselves.

Every key (results and generations) is scoped by the identity of the data the queries read: the
warehouse's id, made once per database file (schema migration 8), plus any other source added with
identify(). Daemons with different warehouses sharing one Redis therefore never see each other's
results, while a daemon restarted on the same file finds its own again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from mlplat.backends.hotstore import HotStore
from mlplat.errors import BackendError
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("query_cache")

PREFIX = "mlplat:qcache:"


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_from_bytes(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


class QueryCache:
    """Never serves a result older than the last committed write to any table it read.

    If an invalidation cannot reach the hot store, the cache is bypassed until one succeeds; it is also
    bypassed until the data has an identity (identify()).
    """

    def __init__(self, store: HotStore, metrics: Metrics, *, ttl_s: float, max_bytes: int) -> None:
        self._store = store
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._unconfirmed: set[str] = set()
        self._identities: dict[str, str] = {}
        self._scope = ""  # PREFIX + a digest of the identities + ":", once there is one

    def identify(self, source: str, identity: str) -> None:
        """Set the identity of one source the queries read (e.g. "warehouse"); keys depend on all of them."""
        if not identity:
            raise ValueError(f"query cache: the identity of {source!r} is empty")
        self._identities[source] = identity
        named = "\x1f".join(f"{name}={value}" for name, value in sorted(self._identities.items()))
        self._scope = f"{PREFIX}{hashlib.sha256(named.encode()).hexdigest()[:32]}:"

    async def _key(self, sql: str, params: Sequence[Any], tables: Iterable[str]) -> str:
        names = sorted(set(tables))
        gens = await self._store.mget([f"{self._scope}gen:{t}" for t in names]) if names else []
        parts = [sql, repr(list(params))] + [f"{t}@{(g or b'0').decode()}" for t, g in zip(names, gens, strict=True)]
        return self._scope + "q:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    async def get(self, sql: str, params: Sequence[Any], tables: Iterable[str]) -> tuple[str, pa.Table | None]:
        """Returns the cache key to store under and the cached table, if any. Raises nothing."""
        if not self._scope:
            self._metrics.query_cache.labels("bypass").inc()
            return "", None
        if self._unconfirmed:
            await self.invalidate(set())
            if self._unconfirmed:
                self._metrics.query_cache.labels("bypass").inc()
                return "", None
        try:
            key = await self._key(sql, params, tables)
            data = await self._store.get(key)
        except BackendError as e:
            self._metrics.query_cache.labels("error").inc()
            log.debug("cache_unavailable", error=str(e))
            return "", None
        if data is None:
            self._metrics.query_cache.labels("miss").inc()
            return key, None
        self._metrics.query_cache.labels("hit").inc()
        return key, table_from_bytes(data)

    async def put(self, key: str, table: pa.Table) -> None:
        if not key:
            return
        data = table_to_bytes(table)
        if len(data) > self._max_bytes:
            return
        try:
            await self._store.set(key, data, ttl_s=self._ttl_s)
        except BackendError as e:
            log.debug("cache_unavailable", error=str(e))

    async def invalidate(self, tables: set[str]) -> None:
        """Bump the generation of every table written; remembers failures and retries them next time."""
        todo = {t.lower() for t in tables} | self._unconfirmed
        if not todo or not self._scope:  # nothing is cached before there is a scope
            return
        try:
            pipe = self._store.pipeline()
            for table in sorted(todo):
                pipe.incr(f"{self._scope}gen:{table}")
            await pipe.execute()
        except BackendError as e:
            self._unconfirmed = todo
            log.warning("cache_invalidation_failed", tables=sorted(todo), error=str(e))
            return
        self._unconfirmed = set()
