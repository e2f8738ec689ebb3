"""A real Redis unreachable, going away or wanting a password: bounded failures, no secrets, self-recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mlplat.backends.hotstore.redis import RedisHotStore
from mlplat.errors import BackendError, BackendUnavailable
from tests.servers import ServerProcess, free_port, start_redis

pytestmark = pytest.mark.integration

FAIL_WITHIN_S = 8.0  # the store promises a few seconds; leave room for a loaded CI machine


async def unavailable_error(operation: Callable[[], Awaitable[object]]) -> str:
    """Run an operation that must fail with BackendUnavailable within FAIL_WITHIN_S; return the message."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        await operation()
    assert time.monotonic() - started < FAIL_WITHIN_S
    return str(err.value)


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:{port}/0", None, "redis://:***@127.0.0.1:{port}/0"),
        ("redis://app:s3cret@127.0.0.1:{port}/0", None, "redis://app:***@127.0.0.1:{port}/0"),
        ("redis://127.0.0.1:{port}/0", "s3cret", "redis://127.0.0.1:{port}/0"),
    ],
)
async def test_an_unreachable_redis_is_named_without_its_password(
    url: str, password: str | None, shown: str
) -> None:
    """connect() to a closed port fails fast with the URL in the message and the password nowhere in it."""
    port = free_port()
    store = RedisHotStore(url.format(port=port), password=password)
    try:
        message = await unavailable_error(store.connect)
    finally:
        await store.aclose()
    assert shown.format(port=port) in message and "unreachable" in message
    assert "s3cret" not in message and store.url == shown.format(port=port)


async def test_the_same_store_fails_fast_while_redis_is_down_and_recovers_by_itself(
    redis_server: ServerProcess, redis_url: str
) -> None:
    """While Redis is stopped calls raise BackendUnavailable quickly; once it is back the object works."""
    store = RedisHotStore(redis_url)
    try:
        await store.connect()
        await store.set("k", b"before")
        await asyncio.to_thread(redis_server.stop)
        try:
            for operation in (store.ping, lambda: store.get("k"), store.pipeline().incr("n").execute):
                assert redis_url in await unavailable_error(operation)
            with pytest.raises(BackendUnavailable):
                async with store.subscribe("ch"):
                    pass
        finally:
            await asyncio.to_thread(redis_server.start)
        await store.ping()  # no reconnect call: the pool replaces its dead connections
        await store.set("k", b"after")
        assert await store.get("k") == b"after"  # a fresh server: the old data is gone, the store is not
        async with store.subscribe("ch") as messages:
            assert await store.publish("ch", b"back") == 1
            assert await asyncio.wait_for(anext(messages), 5) == b"back"
    finally:
        await store.aclose()
        if redis_server.proc is None:  # leave it running for the tests after us
            await asyncio.to_thread(redis_server.start)


async def test_an_open_subscription_raises_during_an_outage_and_delivers_after_it(
    redis_server: ServerProcess, redis_url: str
) -> None:
    """An open subscription raises BackendUnavailable in the outage and delivers again once Redis is back."""
    store = RedisHotStore(redis_url)
    try:
        async with store.subscribe("ch") as messages:
            await asyncio.to_thread(redis_server.stop)
            try:
                await unavailable_error(lambda: anext(messages))
            finally:
                await asyncio.to_thread(redis_server.start)

            async def read() -> bytes:
                return await anext(messages)

            reader = asyncio.create_task(read())  # reading reconnects and resubscribes
            for _ in range(int(FAIL_WITHIN_S / 0.05)):  # until the resubscription is in place
                with contextlib.suppress(BackendUnavailable):  # calls fail fast for a moment after an outage
                    if await store.publish("ch", b"again"):
                        break
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader, 5) == b"again"
    finally:
        await store.aclose()
        if redis_server.proc is None:
            await asyncio.to_thread(redis_server.start)


async def test_the_password_argument_wins_over_the_one_in_the_url(tmp_path: Path) -> None:
    """With a password-protected Redis the argument is used even if the URL carries another; neither leaks."""
    server = await asyncio.to_thread(start_redis, tmp_path, "right-pw")
    try:
        store = RedisHotStore(f"redis://:wrong-pw@127.0.0.1:{server.port}/0", password="right-pw")
        try:
            await store.connect()
            await store.set("k", b"v")
            assert await store.get("k") == b"v"
        finally:
            await store.aclose()
        refused = RedisHotStore(f"redis://:right-pw@127.0.0.1:{server.port}/0", password="wrong-pw")
        try:
            with pytest.raises(BackendError) as err:  # refused, not unreachable: start-up does not wait for it
                await refused.connect()
            assert type(err.value) is BackendError
            message = str(err.value)
            assert "unreachable" not in message
            later = await unavailable_error(refused.ping)  # while running, a refusing server is an outage
        finally:
            await refused.aclose()
        assert "authentication failed" in later
        assert f"127.0.0.1:{server.port}" in message and "authentication failed" in message
        assert "wrong-pw" not in message and "right-pw" not in message
    finally:
        await asyncio.to_thread(server.stop)
