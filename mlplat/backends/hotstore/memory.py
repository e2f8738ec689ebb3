"""The embedded hot store: Redis semantics (TTL, hashes, counters, MULTI pipelines, pub/sub) in one process.

Everything a caller can observe matches tests/contract/test_hot_store.py, which runs against a real Redis too,
so code developed against `memory://` behaves the same in production on `redis://`.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from mlplat.backends import compact
from mlplat.errors import BackendUnavailable, NotFound

SUBSCRIBER_QUEUE = 1024
"""Messages buffered per subscriber; past this the oldest is dropped so publishers never wait."""
SWEEP_BATCH = 1000
"""Most expired keys freed per call, so a mass expiry never stalls the event loop (the rest go next call)."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_REDIS_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,19}")  # as Redis's string2ll: no "+", spaces or leading 0

_Value = bytes | dict[str, bytes]

VERSION_LIMIT = 2**53 - 1
"""Versions compare exactly in Redis's Lua (its numbers are doubles) only up to this; event times in µs fit
until the year 2255."""
_STORED_VERSION = re.compile(rb'\{"t":(-?[0-9]+)[,}]')  # the Lua script's pattern in redis.py, the same


def _int64(raw: bytes) -> int | None:
    """The integer Redis would read from a string value, or None where INCR would refuse it."""
    if not _REDIS_INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def check_ttl(ttl_s: float) -> float:
    """Redis refuses SET with a zero, negative or non-numeric expiry; both backends refuse it the same way."""
    if not 0 < ttl_s < math.inf:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return ttl_s


def check_expire_ttl(ttl_s: float) -> float:
    """EXPIRE takes any finite number of seconds; zero or less deletes the key at once."""
    if not -math.inf < ttl_s < math.inf:
        raise ValueError(f"ttl_s must be a finite number of seconds, got {ttl_s!r}")
    return ttl_s


def check_version(key: str, version: int) -> int:
    """set_unless_older takes integer versions that both backends compare exactly."""
    if isinstance(version, bool) or not isinstance(version, int) or not -VERSION_LIMIT <= version <= VERSION_LIMIT:
        raise ValueError(
            f"hot store key {key!r}: version must be an integer within ±{VERSION_LIMIT}, got {version!r}"
        )
    return version


def stored_version(value: bytes) -> int | None:
    """The version set_unless_older reads from a stored value: the integer `t` opening its JSON object."""
    match = _STORED_VERSION.match(value)
    return None if match is None else int(match.group(1))


class MemoryHotStore:
    """Single-process and loop-confined (no locks: every method runs to completion without awaiting).

    Expired keys are invisible from the moment their deadline passes (checked on every access) and are
    also swept from memory, a bounded batch at the start of each call, so unread keys do not pile up.
    """

    def __init__(self, *, subscriber_queue: int = SUBSCRIBER_QUEUE) -> None:
        if subscriber_queue < 1:
            raise ValueError(f"subscriber_queue must be at least 1, got {subscriber_queue}")
        self._data: dict[str, _Value] = {}
        self._expires: dict[str, float] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; entries whose TTL changed since are stale
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._subscriber_queue = subscriber_queue
        self._closed = False
        self.dropped_messages = 0
        """Messages lost by slow subscribers since start (their queue was full)."""

    @property
    def url(self) -> str:
        return "memory://"

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _enter(self) -> None:
        """Every public call starts here: refuse after aclose(), then reclaim what has expired."""
        if self._closed:
            raise BackendUnavailable("hot store memory:// is closed")
        now = time.monotonic()
        for _ in range(SWEEP_BATCH):
            if not self._deadlines or self._deadlines[0][0] > now:
                break
            deadline, key = heapq.heappop(self._deadlines)
            if self._expires.get(key) == deadline:
                self._forget(key)

    def _forget(self, key: str) -> None:
        self._data.pop(key, None)
        self._expires.pop(key, None)

    def _set_deadline(self, key: str, ttl_s: float) -> None:
        deadline = time.monotonic() + ttl_s
        self._expires[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))
        if len(self._deadlines) > 2 * len(self._expires) + 64:  # keys re-TTL'd often: drop the stale entries
            self._deadlines = [(d, k) for k, d in self._expires.items()]
            heapq.heapify(self._deadlines)

    def _live(self, key: str) -> _Value | None:
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._forget(key)
            return None
        return self._data.get(key)

    def _bytes(self, key: str) -> bytes | None:
        value = self._live(key)
        if isinstance(value, dict):
            raise TypeError(f"WRONGTYPE hot store key {key!r} holds a hash, not a string")
        return value

    def _hash(self, key: str) -> dict[str, bytes] | None:
        value = self._live(key)
        if isinstance(value, bytes):
            raise TypeError(f"WRONGTYPE hot store key {key!r} holds a string, not a hash")
        return value

    # -- commands, shared by the store and its pipelines -----------------------------------------------------

    def _set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        self._data[key] = compact(value)
        if ttl_s is None:
            self._expires.pop(key, None)  # SET without PX clears an old TTL, as Redis does
        else:
            self._set_deadline(key, ttl_s)

    def _delete(self, keys: tuple[str, ...]) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                removed += 1
                self._forget(key)
        return removed

    def _expire(self, key: str, ttl_s: float) -> bool:
        if self._live(key) is None:
            return False
        if ttl_s <= 0:  # PEXPIRE with a deadline in the past deletes at once
            self._forget(key)
        else:
            self._set_deadline(key, ttl_s)
        return True

    def _incr(self, key: str, amount: int) -> int:
        current = self._bytes(key)
        start = 0 if current is None else _int64(current)
        if start is None:
            raise ValueError(f"hot store key {key!r}: value is not an integer or out of range")
        if not _INT64_MIN <= amount <= _INT64_MAX:
            raise ValueError(f"increment {amount} is not an integer or out of range")
        value = start + amount
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"hot store key {key!r}: increment or decrement would overflow")
        self._data[key] = str(value).encode()  # the TTL, if any, is kept, as INCRBY does
        return value

    def _hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if not mapping:  # Redis has no empty hashes; the Redis backend sends nothing either
            return
        current = self._hash(key)
        if current is None:
            current = self._data[key] = {}
        current.update({field: compact(value) for field, value in mapping.items()})  # the TTL is kept

    # -- HotStore -------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        self._enter()

    async def ping(self) -> None:
        self._enter()

    async def get(self, key: str) -> bytes | None:
        self._enter()
        return self._bytes(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self._enter()
        return [value if isinstance(value := self._live(key), bytes) else None for key in keys]  # MGET: nil

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        self._enter()
        self._set(key, value, None if ttl_s is None else check_ttl(ttl_s))

    async def delete(self, *keys: str) -> int:
        self._enter()
        return self._delete(keys)

    async def exists(self, key: str) -> bool:
        self._enter()
        return self._live(key) is not None

    async def ttl(self, key: str) -> float | None:
        self._enter()
        if self._live(key) is None:
            raise NotFound(f"hot store key {key!r} does not exist")
        deadline = self._expires.get(key)
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    async def expire(self, key: str, ttl_s: float) -> bool:
        self._enter()
        return self._expire(key, check_expire_ttl(ttl_s))

    async def incr(self, key: str, amount: int = 1) -> int:
        self._enter()
        return self._incr(key, amount)

    async def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        self._enter()
        self._hset(key, mapping)

    async def set_unless_older(
        self, items: Sequence[tuple[str, int, bytes]], *, ttl_s: float | None = None
    ) -> int:
        """One step with no await, so nothing interleaves between a key's compare and its set."""
        self._enter()
        ttl = None if ttl_s is None else check_ttl(ttl_s)
        for key, version, _ in items:
            check_version(key, version)
        versions: dict[str, int | None] = {}
        for key, _, _ in items:
            if key not in versions:
                current = self._bytes(key)  # a hash raises TypeError here, before anything is written
                versions[key] = None if current is None else stored_version(current)
        written = 0
        for key, version, value in items:
            stored = versions[key]
            if stored is None or stored <= version:
                self._set(key, value, ttl)
                versions[key] = version
                written += 1
        return written

    async def hget(self, key: str, field: str) -> bytes | None:
        self._enter()
        current = self._hash(key)
        return None if current is None else current.get(field)

    async def hgetall(self, key: str) -> dict[str, bytes]:
        self._enter()
        return dict(self._hash(key) or {})

    async def hdel(self, key: str, *fields: str) -> int:
        self._enter()
        current = self._hash(key)
        if current is None:
            return 0
        removed = sum(1 for field in fields if current.pop(field, None) is not None)
        if not current:  # the last field gone: the key goes too, as in Redis
            self._forget(key)
        return removed

    async def scan_keys(self, prefix: str) -> list[str]:
        self._enter()
        return sorted(k for k in list(self._data) if k.startswith(prefix) and self._live(k) is not None)

    def pipeline(self) -> MemoryPipeline:
        return MemoryPipeline(self)

    async def publish(self, channel: str, message: bytes) -> int:
        self._enter()
        subscribers = self._subscribers.get(channel, set())
        message = bytes(message)
        for subscriber in subscribers:
            if subscriber.push(message):
                self.dropped_messages += 1
        return len(subscribers)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._subscription(channel)

    @asynccontextmanager
    async def _subscription(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._enter()
        subscriber = _Subscriber(self, self._subscriber_queue)
        self._subscribers.setdefault(channel, set()).add(subscriber)  # active before the caller gets control
        try:
            yield subscriber
        finally:
            subscriber.end()
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[channel]

    async def aclose(self) -> None:
        """Idempotent. Wakes every subscriber, whose next message then raises BackendUnavailable."""
        self._closed = True
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.wake()
        self._data.clear()
        self._expires.clear()
        self._deadlines.clear()


class _Subscriber:
    """One subscription's bounded buffer and its async iterator."""

    def __init__(self, store: MemoryHotStore, limit: int) -> None:
        self._store = store
        self._buffer: deque[bytes] = deque(maxlen=limit)
        self._wakeup = asyncio.Event()
        self._ended = False

    def push(self, message: bytes) -> bool:
        """Buffer a message without ever waiting; True when the oldest buffered one had to be dropped."""
        dropped = len(self._buffer) == self._buffer.maxlen
        self._buffer.append(message)  # a full deque with maxlen discards from the other end
        self._wakeup.set()
        return dropped

    def wake(self) -> None:
        self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    def __aiter__(self) -> _Subscriber:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._store._closed:
                raise BackendUnavailable("hot store memory:// is closed")
            if self._ended:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()


class MemoryPipeline:
    """Buffers commands and applies them in execute() with nothing interleaved, like MULTI/EXEC.

    As in Redis, a command that fails when applied (e.g. INCR of a non-integer) does not undo the others:
    all are applied, then execute() raises the first error.
    """

    def __init__(self, store: MemoryHotStore) -> None:
        self._store = store
        self._ops: list[Callable[[], object]] = []

    def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> MemoryPipeline:
        data, ttl = compact(value), None if ttl_s is None else check_ttl(ttl_s)
        self._ops.append(lambda: self._store._set(key, data, ttl))
        return self

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> MemoryPipeline:
        snapshot = {field: compact(value) for field, value in mapping.items()}
        self._ops.append(lambda: self._store._hset(key, snapshot))
        return self

    def expire(self, key: str, ttl_s: float) -> MemoryPipeline:
        ttl = check_expire_ttl(ttl_s)
        self._ops.append(lambda: self._store._expire(key, ttl))
        return self

    def delete(self, *keys: str) -> MemoryPipeline:
        self._ops.append(lambda: self._store._delete(keys))
        return self

    def incr(self, key: str) -> MemoryPipeline:
        self._ops.append(lambda: self._store._incr(key, 1))
        return self

    async def execute(self) -> None:
        self._store._enter()
        ops, self._ops = self._ops, []
        first_error: Exception | None = None
        for op in ops:
            try:
                op()
            except (TypeError, ValueError) as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
