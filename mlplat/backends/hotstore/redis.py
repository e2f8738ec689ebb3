"""The production hot store on Redis (redis-py asyncio), shared by every daemon pointing at the same server.

Connection failures are retried with capped exponential backoff by redis-py itself, and every call has an
overall deadline, so an outage surfaces within seconds as BackendUnavailable naming the URL without its
password. Once it has, calls fail at once for FAIL_FAST_S instead of each paying for its own connection
attempts (a request path falls back to the warehouse without waiting); ping() always tries, so health
checks notice the server's return. The pool drops broken connections and opens new ones, so the same
object works again once the server is back; nothing has to be rebuilt.

Caveat inherited from Redis clients in general: a command whose connection breaks after it was sent is
retried, so an INCR (or a pipeline holding one) can, rarely, be applied twice across an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from mlplat.backends.hotstore.memory import check_expire_ttl, check_ttl, check_version
from mlplat.backends.security import TlsFiles
from mlplat.backends.urls import redact_url
from mlplat.errors import BackendError, BackendUnavailable, ConfigError, NotFound

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0
"""Bound on one call, retries included: callers (readiness, the query cache) must not hang in an outage."""
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 3.0
RETRIES = 3
FAIL_FAST_S = 1.0  # after a call found the server unreachable, others fail at once for this long
SUBSCRIBE_POLL_S = 1.0
"""How often an idle subscription wakes, which is when redis-py sends its health-check PING."""
SCAN_COUNT = 1000
SCRIPT_KEYS = 1000
"""Keys per set_unless_older script call: Redis runs nothing else during a script, so serving reads wait
at most a few milliseconds behind a large ingest batch."""

_UNLESS_OLDER_LUA = r"""
-- KEYS: the keys; ARGV[1]: TTL in ms, '' for none; ARGV[2i], ARGV[2i+1]: KEYS[i]'s version and value.
-- Every GET comes first, so a key holding a hash (WRONGTYPE) stops the call before anything is written.
local versions = {}
for _, key in ipairs(KEYS) do
  if versions[key] == nil then
    local current = redis.call('GET', key)
    local t = current and string.match(current, '^{"t":(%-?%d+)[,}]')
    versions[key] = t and tonumber(t) or false
  end
end
local ttl, written = ARGV[1], 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i])
  local stored = versions[key]
  if not stored or stored <= version then
    if ttl == '' then
      redis.call('SET', key, ARGV[2 * i + 1])
    else
      redis.call('SET', key, ARGV[2 * i + 1], 'PX', ttl)
    end
    versions[key] = version
    written = written + 1
  end
end
return written
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class RedisHotStore:
    """A HotStore on one Redis server (or proxy); safe to share between the tasks of one event loop."""

    def __init__(self, url: str, *, password: str | None = None, username: str | None = None,
                 tls: TlsFiles | None = None) -> None:
        """password and username (an ACL user) win over the URL's; tls: the CA and client files of rediss://."""
        self._url = redact_url(url)
        url_password = urlsplit(url).password
        self._secrets = {s for s in (password, unquote(url_password or "")) if s}
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": READ_TIMEOUT_S,
            "socket_keepalive": True,
            "health_check_interval": 15,  # PING a connection idle this long before using it again
            # the asyncio Retry: redis.retry.Retry would be called without being awaited and never retry
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=RETRIES),
        }
        parts = urlsplit(url)
        user = username or unquote(parts.username or "")
        self._as_user = f" as {user!r}" if user else ""
        if password or username:
            # redis-py lets the URL's user and password win over keyword arguments; ours must win instead
            options["username"] = username or unquote(parts.username or "") or None
            options["password"] = password or unquote(parts.password or "") or None
            url = _without_userinfo(url)
        # TLS 1.3: a server wanting a client certificate may just reset the connection after the handshake
        self._no_client_cert = urlsplit(url).scheme == "rediss" and (tls is None or tls.cert_file is None)
        if tls is not None:
            if urlsplit(url).scheme != "rediss":
                raise ConfigError(f"hot_store.url = {self._url!r}: TLS settings need a rediss:// URL")
            options |= {"ssl_ca_certs": tls.ca_file, "ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
        self._client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        # EVALSHA, loading the script (SCRIPT LOAD) when the server answers NOSCRIPT, e.g. after a restart
        self._unless_older = self._client.register_script(_UNLESS_OLDER_LUA)
        self._closed = False
        self._failing_fast: tuple[float, str] | None = None  # (until, why) after an unreachable server
        self._refused = False  # the last failure was the server saying no (password, TLS), not an outage

    @property
    def url(self) -> str:
        return self._url

    async def _call(self, command: Callable[[], Awaitable[T]], *, timeout_s: float = CALL_TIMEOUT_S,
                    probe: bool = False) -> T:
        """Run one command under the call deadline and translate redis-py's errors into mlplat's."""
        if self._closed:
            raise BackendUnavailable(f"hot store {self._url} is closed")
        if self._failing_fast is not None and not probe:
            until, why = self._failing_fast
            if time.monotonic() < until:
                raise BackendUnavailable(why)
        try:
            async with asyncio.timeout(timeout_s):  # cancelling a read makes redis-py drop that connection
                result = await command()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:  # OSError covers asyncio's timeout
            self._refused = False
            if type(e) is TimeoutError:
                reason = f"no answer within {timeout_s:g}s"
            elif isinstance(e, AuthenticationError):  # up but saying no: fix the password, not the network
                reason, self._refused = f"authentication failed{self._as_user}: {self._reason(e)}", True
            elif (tls_error := _tls_error(e)) is not None:  # up, but TLS failed: fix the settings, not the network
                reason, self._refused = f"TLS handshake failed: {self._reason(e)}{_tls_hint(tls_error)}", True
            elif self._no_client_cert and _reset(e):
                reason, self._refused = f"TLS handshake failed: {self._reason(e)}{CLIENT_CERT_HINT}", True
            else:
                reason = self._reason(e)
            why = f"hot store {self._url} unreachable: {reason}"
            self._failing_fast = (time.monotonic() + FAIL_FAST_S, why)
            raise BackendUnavailable(why) from None
        except ResponseError as e:
            raise self._command_error(e) from None
        except RedisError as e:
            raise BackendError(f"hot store {self._url}: {self._reason(e)}") from None
        self._failing_fast = None
        return result

    def _command_error(self, error: ResponseError) -> Exception:
        """The same exception types the memory backend raises for the same mistakes."""
        reason = self._reason(error)
        if reason.startswith("WRONGTYPE"):
            return TypeError(f"hot store {self._url}: {reason}")
        if "not an integer" in reason or "would overflow" in reason:
            return ValueError(f"hot store {self._url}: {reason}")
        return BackendError(f"hot store {self._url}: {reason}")

    def _reason(self, error: BaseException) -> str:
        text = " ".join((str(error) or type(error).__name__).split())
        for secret in self._secrets:  # no redis-py message is known to echo it, but never risk a leak
            text = text.replace(secret, "***")
        return text

    async def connect(self) -> None:
        """A server that refuses the password or the TLS settings is a BackendError (start-up stops at once);
        one that does not answer is BackendUnavailable (start-up waits for it)."""
        try:
            await self.ping()
        except BackendUnavailable as e:
            if self._refused:
                raise BackendError(str(e).replace(" unreachable: ", ": ", 1)) from None
            raise

    async def ping(self) -> None:
        await self._call(self._client.ping, probe=True)

    async def get(self, key: str) -> bytes | None:
        return _bytes(await self._call(functools.partial(self._client.get, key)))

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:  # MGET needs at least one key
            return []
        return [_bytes(v) for v in await self._call(functools.partial(self._client.mget, keys))]

    async def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else _set_ms(ttl_s)
        await self._call(functools.partial(self._client.set, key, value, px=px))

    async def set_unless_older(
        self, items: Sequence[tuple[str, int, bytes]], *, ttl_s: float | None = None
    ) -> int:
        px = "" if ttl_s is None else str(_set_ms(ttl_s))
        for key, version, _ in items:
            check_version(key, version)
        written = 0
        for start in range(0, len(items), SCRIPT_KEYS):
            chunk = items[start:start + SCRIPT_KEYS]
            args: list[EncodableT] = [px]
            for _, version, value in chunk:
                args += (version, bytes(value))
            call = functools.partial(self._unless_older, keys=[key for key, _, _ in chunk], args=args)
            written += int(await self._call(call))
        return written

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._call(functools.partial(self._client.delete, *keys)))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(functools.partial(self._client.exists, key)))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._call(functools.partial(self._client.pttl, key)))
        if ms == -2:
            raise NotFound(f"hot store key {key!r} does not exist")
        return None if ms == -1 else ms / 1000

    async def expire(self, key: str, ttl_s: float) -> bool:
        return bool(await self._call(functools.partial(self._client.pexpire, key, _expire_ms(ttl_s))))

    async def incr(self, key: str, amount: int = 1) -> int:
        return int(await self._call(functools.partial(self._client.incrby, key, amount)))

    async def hset(self, key: str, mapping: Mapping[str, bytes]) -> None:
        if mapping:  # HSET needs at least one field
            fields: dict[FieldT, EncodableT] = {field: value for field, value in mapping.items()}
            await self._call(functools.partial(self._client.hset, key, mapping=fields))

    async def hget(self, key: str, field: str) -> bytes | None:
        return _bytes(await self._call(functools.partial(self._client.hget, key, field)))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        raw = await self._call(functools.partial(self._client.hgetall, key))
        return {_text(field): _bytes(value) or b"" for field, value in raw.items()}

    async def hdel(self, key: str, *fields: str) -> int:
        if not fields:
            return 0
        return int(await self._call(functools.partial(self._client.hdel, key, *fields)))

    async def scan_keys(self, prefix: str) -> list[str]:
        """SCAN in batches, each with its own deadline: a big keyspace neither blocks Redis nor times out."""
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
        found: set[str] = set()  # SCAN may return a key more than once
        cursor = 0
        while True:
            cursor, batch = await self._call(
                functools.partial(self._client.scan, cursor, match=pattern, count=SCAN_COUNT)
            )
            found.update(_text(key) for key in batch)
            if cursor == 0:
                return sorted(found)

    def pipeline(self) -> RedisPipeline:
        return RedisPipeline(self)

    async def _execute(self, ops: list[Callable[[Pipeline], object]]) -> None:
        """One MULTI/EXEC round trip; a command that failed inside it raises like the single command would."""

        async def run() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                for op in ops:
                    op(pipe)
                results: list[Any] = await pipe.execute(raise_on_error=False)
                return results

        if self._closed:
            raise BackendUnavailable(f"hot store {self._url} is closed")
        if not ops:
            return
        for result in await self._call(run):
            if isinstance(result, ResponseError):
                raise self._command_error(result)

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self._call(functools.partial(self._client.publish, channel, message)))

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._subscription(channel)

    @asynccontextmanager
    async def _subscription(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        pubsub = self._client.pubsub()  # its own connection: a subscribed connection can run nothing else
        messages = _RedisMessages(self, pubsub)
        confirmed = False
        try:
            # a subscription holds its own connection and reconnects by itself: its calls always try
            await self._call(functools.partial(pubsub.subscribe, channel), probe=True)
            # SUBSCRIBE and a later PUBLISH travel on different connections: only the server's confirmation
            # proves a publish made after we return will be delivered
            await self._call(functools.partial(_await_reply, pubsub, "subscribe", channel), probe=True)
            confirmed = True
            yield messages
        finally:
            messages.end()
            if confirmed and not self._closed:
                with contextlib.suppress(BackendError, RuntimeError):  # best effort: closing drops it anyway
                    await self._call(functools.partial(_unsubscribe, pubsub, channel), timeout_s=2.0, probe=True)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Idempotent: closes every pooled connection."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()


class _RedisMessages:
    """The payloads published on one subscribed channel, in order; ends when the subscription is left."""

    def __init__(self, store: RedisHotStore, pubsub: PubSub) -> None:
        self._store = store
        self._pubsub = pubsub
        self._ended = asyncio.Event()  # an Event rather than a bool: another task may set it while we await

    def end(self) -> None:
        self._ended.set()

    def __aiter__(self) -> _RedisMessages:
        return self

    async def __anext__(self) -> bytes:
        poll = functools.partial(self._pubsub.get_message, timeout=SUBSCRIBE_POLL_S)
        while not self._ended.is_set():
            try:
                message: dict[str, Any] | None = await self._store._call(poll, probe=True)
            except (BackendError, RuntimeError):
                if self._ended.is_set():  # the subscription was closed under a reader in another task
                    break
                raise
            if message is not None and message["type"] == "message":  # not (re)subscribe confirmations
                return bytes(message["data"])
        raise StopAsyncIteration


async def _await_reply(pubsub: PubSub, kind: str, channel: str) -> None:
    """Read until the server confirms `kind` (subscribe/unsubscribe) of channel; callers bound the wait."""
    expected = channel.encode()
    while True:
        message = await pubsub.get_message(timeout=SUBSCRIBE_POLL_S)
        if message is not None and message["type"] == kind and message["channel"] == expected:
            return


async def _unsubscribe(pubsub: PubSub, channel: str) -> None:
    # waiting for the confirmation means a publish made after leaving the context no longer counts us
    await pubsub.unsubscribe(channel)
    await _await_reply(pubsub, "unsubscribe", channel)


class RedisPipeline:
    """MULTI/EXEC: the commands run back to back with nothing interleaved.

    As in Redis, a command that fails when applied (e.g. INCR of a non-integer) does not undo the others:
    all are applied, then execute() raises the first error.
    """

    def __init__(self, store: RedisHotStore) -> None:
        self._store = store
        self._ops: list[Callable[[Pipeline], object]] = []

    def set(self, key: str, value: bytes, *, ttl_s: float | None = None) -> RedisPipeline:
        data, px = bytes(value), None if ttl_s is None else _set_ms(ttl_s)
        self._ops.append(lambda pipe: pipe.set(key, data, px=px))
        return self

    def hset(self, key: str, mapping: Mapping[str, bytes]) -> RedisPipeline:
        fields: dict[FieldT, EncodableT] = {field: value for field, value in mapping.items()}
        if fields:
            self._ops.append(lambda pipe: pipe.hset(key, mapping=fields))
        return self

    def expire(self, key: str, ttl_s: float) -> RedisPipeline:
        ms = _expire_ms(ttl_s)
        self._ops.append(lambda pipe: pipe.pexpire(key, ms))
        return self

    def delete(self, *keys: str) -> RedisPipeline:
        if keys:
            self._ops.append(lambda pipe: pipe.delete(*keys))
        return self

    def incr(self, key: str) -> RedisPipeline:
        self._ops.append(lambda pipe: pipe.incrby(key, 1))
        return self

    async def execute(self) -> None:
        ops, self._ops = self._ops, []
        await self._store._execute(ops)


# decode_responses is off, so replies are bytes; redis-py's types also allow str, which these convert


def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _set_ms(ttl_s: float) -> int:
    """Milliseconds for SET PX, rounded up so a tiny positive TTL never becomes the invalid 0."""
    return math.ceil(check_ttl(ttl_s) * 1000)


def _expire_ms(ttl_s: float) -> int:
    return math.ceil(check_expire_ttl(ttl_s) * 1000)


def _tls_error(error: BaseException) -> ssl.SSLError | None:
    """redis-py reports a failed TLS handshake as a ConnectionError caused by the ssl module's error."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


CLIENT_CERT_HINT = " (the server wants a client certificate: set hot_store.tls_cert_file and tls_key_file)"


def _tls_hint(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return " (check hot_store.tls_ca_file)"
    if "CERTIFICATE_REQUIRED" in (error.reason or ""):
        return CLIENT_CERT_HINT
    return ""


def _reset(error: BaseException) -> bool:
    """The server reset the connection (as a TLS 1.3 server refusing a client without a certificate may,
    instead of sending its alert in time)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionResetError) or "Connection reset by peer" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
