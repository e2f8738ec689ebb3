"""The embedded hot store: Redis semantics (TTL, hashes, counters, MULTI pipelines, pub/sub) in one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from mlplat.errors import BackendUnavailable, NotFound

SUBSCRIBER_QUEUE = 10_000

_Value = bytes | dict[str, bytes]


class MemoryHotStore:
    """Single-process and loop-confined; expiry is checked on access, so expired keys are never seen."""

    def __init__(self) -> None:
        self._data: dict[str, _Value] = {}
        self._expires: dict[str, float] = {}
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._closed = False
        self.dropped_messages = 0

    @property
    def url(self) -> str:
        return "memory://"

    def _check(self) -> None:
        if self._closed:
            raise BackendUnavailable("hot store memory:// is closed")

    def _live(self, key: str) -> _Value | None:
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return None
        return self._data.get(key)

    def _bytes(self, key: str) -> bytes | None:
        value = self._live(key)
        if isinstance(value, dict):
            raise TypeError(f"WRONGTYPE {key!r} holds a hash, not a string")
        return value

    def _hash(self, key: str) -> dict[str, bytes] | None:
        value = self._live(key)
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"WRONGTYPE {key!r} holds a string, not a hash")
        return value

    async def connect(self) -> None:
        self._check()

    async def ping(self) -> None:
        self._check()

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self._bytes(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self._check()
        return [v if isinstance(v := self._live(k), bytes) else None for k in keys]

    def _set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        self._data[key] = bytes(value)
        if ttl_s is None:
            self._expires.pop(key, None)  # SET without EX clears an old TTL, as Redis does
        else:
            self._expires[key] = time.monotonic() + ttl_s

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        self._check()
        self._set(key, value, ttl_s)

    def _delete(self, keys: tuple[str, ...]) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                removed += 1
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return removed

    async def delete(self, *keys: str) -> int:
        self._check()
        return self._delete(keys)

    async def exists(self, key: str) -> bool:
        self._check()
        return self._live(key) is not None

    async def ttl(self, key: str) -> float | None:
        self._check()
        if self._live(key) is None:
            raise NotFound(f"hot store key {key!r} does not exist")
        deadline = self._expires.get(key)
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _expire(self, key: str, ttl_s: float) -> bool:
        if self._live(key) is None:
            return False
        self._expires[key] = time.monotonic() + ttl_s
        return True

    async def expire(self, key: str, ttl_s: float) -> bool:
        self._check()
        return self._expire(key, ttl_s)

    def _incr(self, key: str, amount: int) -> int:
        current = self._bytes(key)
        try:
            value = int(current or b"0") + amount
        except ValueError:
            raise ValueError(f"value of {key!r} is not an integer") from None
        self._data[key] = str(value).encode()
        return value

    async def incr(self, key: str, amount: int = 1) -> int:
        self._check()
        return self._incr(key, amount)

    def _hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        current = self._hash(key)
        if current is None:
            current = {}
            self._data[key] = current
        current.update({k: bytes(v) for k, v in mapping.items()})

    async def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        self._check()
        self._hset(key, mapping)

    async def hget(self, key: str, field: str) -> bytes | None:
        self._check()
        current = self._hash(key)
        return None if current is None else current.get(field)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        self._check()
        return dict(self._hash(key) or {})

    async def hdel(self, key: str, *fields: str) -> int:
        self._check()
        current = self._hash(key)
        if current is None:
            return 0
        removed = sum(1 for f in fields if current.pop(f, None) is not None)
        if not current:
            self._delete((key,))
        return removed

    async def scan_keys(self, prefix: str) -> list[str]:
        self._check()
        return sorted(k for k in list(self._data) if k.startswith(prefix) and self._live(k) is not None)

    def pipeline(self) -> MemoryPipeline:
        return MemoryPipeline(self)

    async def publish(self, channel: str, message: bytes) -> int:
        self._check()
        queues = self._subscribers.get(channel, set())
        for queue in queues:
            if queue.full():  # a slow subscriber loses its oldest message rather than blocking publishers
                queue.get_nowait()
                self.dropped_messages += 1
            queue.put_nowait(bytes(message))
        return len(queues)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        self._check()
        return self._subscription(channel)

    @asynccontextmanager
    async def _subscription(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.setdefault(channel, set()).add(queue)

        async def messages() -> AsyncIterator[bytes]:
            while True:
                yield await queue.get()

        try:
            yield messages()
        finally:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[channel]

    async def aclose(self) -> None:
        self._closed = True


class MemoryPipeline:
    """Buffers commands and applies them all at once in execute(), with nothing interleaved (MULTI/EXEC)."""

    def __init__(self, store: MemoryHotStore) -> None:
        self._store = store
        self._ops: list[Callable[[], object]] = []

    def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> MemoryPipeline:
        self._ops.append(lambda: self._store._set(key, value, ttl_s))
        return self

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> MemoryPipeline:
        snapshot = dict(mapping)
        self._ops.append(lambda: self._store._hset(key, snapshot))
        return self

    def expire(self, key: str, ttl_s: float) -> MemoryPipeline:
        self._ops.append(lambda: self._store._expire(key, ttl_s))
        return self

    def delete(self, *keys: str) -> MemoryPipeline:
        self._ops.append(lambda: self._store._delete(keys))
        return self

    def incr(self, key: str) -> MemoryPipeline:
        self._ops.append(lambda: self._store._incr(key, 1))
        return self

    async def execute(self) -> None:
        self._store._check()
        ops, self._ops = self._ops, []
        for op in ops:
            op()
