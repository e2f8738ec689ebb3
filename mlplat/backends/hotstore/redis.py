"""The production hot store on Redis (redis-py asyncio), shared by every daemon pointing at the same server.

Connection failures are retried with capped exponential backoff by redis-py itself; what still fails
surfaces as BackendUnavailable naming the URL without its password. The pool reconnects by itself when
the server returns, so the same object keeps working after an outage.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from mlplat.backends.urls import redact_url
from mlplat.errors import BackendError, BackendUnavailable, NotFound

T = TypeVar("T")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisHotStore:
    def __init__(self, url: str, *, password: str | None = None) -> None:
        self._url = redact_url(url)
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
            "health_check_interval": 15,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
        }
        if password is not None:
            kwargs["password"] = password
        self._client: aioredis.Redis = aioredis.Redis.from_url(url, **kwargs)

    @property
    def url(self) -> str:
        return self._url

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise BackendUnavailable(f"hot store {self._url} unreachable: {_reason(e)}") from None
        except RedisError as e:
            raise BackendError(f"hot store {self._url}: {_reason(e)}") from None

    async def connect(self) -> None:
        await self.ping()

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self._call(self._client.get(key)))

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        return [_as_bytes(v) for v in await self._call(self._client.mget(keys))]

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(int(ttl_s * 1000), 1)
        await self._call(self._client.set(key, value, px=px))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call(self._client.delete(*keys)))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self._client.exists(key)))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._call(self._client.pttl(key)))
        if ms == -2:
            raise NotFound(f"hot store key {key!r} does not exist")
        return None if ms == -1 else ms / 1000

    async def expire(self, key: str, ttl_s: float) -> bool:
        return bool(await self._call(self._client.pexpire(key, max(int(ttl_s * 1000), 1))))

    async def incr(self, key: str, amount: int = 1) -> int:
        try:
            return int(await self._call(self._client.incrby(key, amount)))
        except BackendError as e:
            if "not an integer" in str(e):
                raise ValueError(f"value of {key!r} is not an integer") from None
            raise

    async def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if mapping:
            await self._call(self._client.hset(key, mapping=dict(mapping)))  # type: ignore[arg-type]

    async def hget(self, key: str, field: str) -> bytes | None:
        return _as_bytes(await self._call(self._client.hget(key, field)))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._call(self._client.hgetall(key))
        return {_text(k): _as_bytes(v) or b"" for k, v in raw.items()}

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        return int(await self._call(self._client.hdel(key, *fields)))

    async def scan_keys(self, prefix: str) -> list[str]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"

        async def collect() -> list[str]:
            return [k.decode() async for k in self._client.scan_iter(match=pattern, count=1000)]

        return sorted(await self._call(collect()))

    def pipeline(self) -> RedisPipeline:
        return RedisPipeline(self)

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self._call(self._client.publish(channel, message)))

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._subscription(channel)

    @asynccontextmanager
    async def _subscription(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(pubsub.subscribe(channel))
            # wait for the server's confirmation, so a publish after entering is never missed
            await self._call(pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0))

            async def messages() -> AsyncIterator[bytes]:
                while True:
                    msg = await self._call(pubsub.get_message(timeout=1.0))
                    if msg is not None and msg.get("type") == "message":
                        yield bytes(msg["data"])

            yield messages()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run_pipeline(self, ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        async def go() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for name, args, kwargs in ops:
                    getattr(pipe, name)(*args, **kwargs)
                await pipe.execute()

        await self._call(go())


class RedisPipeline:
    """MULTI/EXEC: every buffered command is applied, or none."""

    def __init__(self, store: RedisHotStore) -> None:
        self._store = store
        self._ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> RedisPipeline:
        px = None if ttl_s is None else max(int(ttl_s * 1000), 1)
        self._ops.append(("set", (key, value), {"px": px}))
        return self

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> RedisPipeline:
        if mapping:
            self._ops.append(("hset", (key,), {"mapping": dict(mapping)}))
        return self

    def expire(self, key: str, ttl_s: float) -> RedisPipeline:
        self._ops.append(("pexpire", (key, max(int(ttl_s * 1000), 1)), {}))
        return self

    def delete(self, *keys: str) -> RedisPipeline:
        if keys:
            self._ops.append(("delete", keys, {}))
        return self

    def incr(self, key: str) -> RedisPipeline:
        self._ops.append(("incr", (key,), {}))
        return self

    async def execute(self) -> None:
        ops, self._ops = self._ops, []
        if ops:
            await self._store.run_pipeline(ops)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
