"""Hot store: latest features, production pointers, model metadata, drift results, query cache.

`memory://` (embedded, one process) and `redis://` / `rediss://` (shared by daemons) behave the same;
tests/contract/test_hot_store.py runs one suite against both. Besides BackendUnavailable (unreachable, or
closed) and NotFound, both raise what Redis would refuse: TypeError for a command on the wrong kind of
value (WRONGTYPE), ValueError for INCR of a non-integer or a `set` TTL that is not positive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from mlplat.backends.security import TlsFiles
from mlplat.backends.urls import redact_url, scheme_of
from mlplat.errors import ConfigError

SCHEMES = ("memory", "redis", "rediss")


@runtime_checkable
class HotPipeline(Protocol):
    """Commands buffered and sent in one round trip by `execute()`, applied with nothing interleaved.

    MULTI/EXEC semantics: an unexecuted pipeline changes nothing, but a command that fails while being
    applied (INCR of a non-integer) does not undo the others; execute() raises its error afterwards.
    """

    def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> HotPipeline: ...
    def hset(self, key: str, mapping: Mapping[str, bytes]) -> HotPipeline: ...
    def expire(self, key: str, ttl_s: float) -> HotPipeline: ...
    def delete(self, *keys: str) -> HotPipeline: ...
    def incr(self, key: str) -> HotPipeline: ...
    async def execute(self) -> None: ...


@runtime_checkable
class HotStore(Protocol):
    """Key/value with TTL, hashes, counters, pipelines and pub/sub. Values are bytes; keys are str."""

    @property
    def url(self) -> str:
        """The URL with credentials redacted."""
        ...

    async def connect(self) -> None:
        """Open connections and check the server answers; raises BackendUnavailable naming the URL."""
        ...

    async def ping(self) -> None:
        """Raise BackendUnavailable if the store does not answer now."""
        ...

    async def get(self, key: str) -> bytes | None: ...
    async def mget(self, keys: list[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None: ...
    async def set_unless_older(
        self, items: Sequence[tuple[str, int, bytes]], *, ttl_s: float | None = None
    ) -> int:
        """Set each (key, version, value) unless the key holds a higher version; returns how many were set.

        Per key, compare and set are one atomic step (a Lua script on Redis), so writers racing on a key
        always leave the highest version; an equal version is replaced. A value's version is the integer
        `t` opening its JSON object, `{"t":<version>,...` as orjson writes it; a value without one counts
        as older than any. Versions are integers within ±memory.VERSION_LIMIT (ValueError otherwise). A key
        holding a hash raises TypeError, and other keys of the batch may or may not have been written.
        """
        ...

    async def delete(self, *keys: str) -> int: ...
    async def exists(self, key: str) -> bool: ...
    async def ttl(self, key: str) -> float | None:
        """Seconds left, None if the key has no TTL; raises NotFound if the key does not exist."""
        ...

    async def expire(self, key: str, ttl_s: float) -> bool: ...
    async def incr(self, key: str, amount: int = 1) -> int: ...
    async def hset(self, key: str, mapping: Mapping[str, bytes]) -> None: ...
    async def hget(self, key: str, field: str) -> bytes | None: ...
    async def hgetall(self, key: str) -> dict[str, bytes]: ...
    async def hdel(self, key: str, *fields: str) -> int: ...
    async def scan_keys(self, prefix: str) -> list[str]:
        """Every key starting with prefix (SCAN, never KEYS, on Redis)."""
        ...

    def pipeline(self) -> HotPipeline: ...
    async def publish(self, channel: str, message: bytes) -> int:
        """Send to every current subscriber of channel; returns how many received it."""
        ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """`async with store.subscribe(ch) as messages: async for m in messages: ...`

        The subscription is active when the context is entered, so a publish after entering is received.
        """
        ...

    async def aclose(self) -> None: ...


def open_hot_store(url: str, *, password: str | None = None, username: str | None = None,
                   tls: TlsFiles | None = None) -> HotStore:
    """Build (not connect) the hot store for a URL; the scheme picks the implementation. username (ACL) and
    tls (rediss://) are Redis' (see HotStoreSettings.login and tls)."""
    scheme = scheme_of(url)
    if scheme == "memory":
        from mlplat.backends.hotstore.memory import MemoryHotStore

        return MemoryHotStore()
    if scheme in ("redis", "rediss"):
        from mlplat.backends.hotstore.redis import RedisHotStore

        return RedisHotStore(url, password=password, username=username, tls=tls)
    raise ConfigError(
        f"hot_store.url = {redact_url(url)!r}: unknown scheme {scheme!r} (expected {', '.join(SCHEMES)})"
    )
