"""set_unless_older on a real Redis as deployments run it: an ACL user, TLS, and a server that forgot the script."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
import trustme

from mlplat.backends.hotstore.redis import RedisHotStore
from mlplat.backends.security import TlsFiles
from mlplat.errors import BackendError
from tests.servers import RedisTls, ServerProcess, start_redis

pytestmark = pytest.mark.integration


def doc(t: int) -> bytes:
    return orjson.dumps({"t": t, "f": {}})


@pytest.fixture
def app_user(redis_url: str) -> Iterator[tuple[str, str]]:
    """A user limited as production would limit mlplat: its own keys, no admin (@dangerous) commands."""
    name, password = f"mlplat-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["mlplat:*"], channels=["*"],
                      commands=["+@all", "-@dangerous"])
    yield name, password
    admin.acl_deluser(name)
    admin.close()


@pytest.mark.parametrize("password_in", ["url", "setting"])
async def test_an_acl_user_writes_newer_only_within_its_keys(
    redis_server: ServerProcess, app_user: tuple[str, str], password_in: str
) -> None:
    """The script runs for a user without @dangerous, with the password in the URL or from hot_store.password;
    a key outside the user's patterns is refused with Redis's reason, not written."""
    name, password = app_user
    host = f"127.0.0.1:{redis_server.port}/0"
    if password_in == "url":
        store = RedisHotStore(f"redis://{name}:{password}@{host}")
    else:
        store = RedisHotStore(f"redis://{name}@{host}", password=password)
    try:
        await store.connect()
        assert await store.set_unless_older([("mlplat:online:k", 5, doc(5))], ttl_s=60) == 1
        assert await store.set_unless_older([("mlplat:online:k", 4, doc(4))], ttl_s=60) == 0
        assert await store.get("mlplat:online:k") == doc(5)
        with pytest.raises(BackendError, match="no permissions to access one of the keys"):
            await store.set_unless_older([("elsewhere:k", 1, doc(1))])
    finally:
        await store.aclose()
    admin = redis.Redis(port=redis_server.port)
    assert admin.exists("elsewhere:k") == 0
    admin.close()


async def test_the_script_is_loaded_again_when_redis_has_forgotten_it(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A restarted Redis (or SCRIPT FLUSH) answers NOSCRIPT; the store loads the script and the write lands."""
    server = start_redis(tmp_path_factory.mktemp("redis-restart"))
    store = RedisHotStore(f"redis://127.0.0.1:{server.port}/0")
    try:
        await store.connect()
        assert await store.set_unless_older([("k", 1, doc(1))]) == 1
        server.restart()
        assert await store.set_unless_older([("k", 2, doc(2))]) == 1  # empty after the restart: no save
        admin = redis.Redis(port=server.port)
        admin.script_flush()
        admin.close()
        assert await store.set_unless_older([("k", 1, doc(1)), ("k", 3, doc(3))]) == 1
        assert await store.get("k") == doc(3)
    finally:
        await store.aclose()
        server.stop()


async def test_newer_only_writes_over_tls_as_an_acl_user(tmp_path_factory: pytest.TempPathFactory) -> None:
    """rediss:// with the CA from hot_store.tls_ca_file and the user from the login settings: the script runs."""
    workdir = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(workdir / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    tls = RedisTls(cert=workdir / "server.pem", key=workdir / "server.key", client_ca=workdir / "ca.pem")
    server = start_redis(workdir, tls=tls, acl_user=("ingest", "pw-17"))
    store = RedisHotStore(f"rediss://127.0.0.1:{server.port}/0", username="ingest", password="pw-17",
                          tls=TlsFiles("hot_store", ca_file=workdir / "ca.pem"))
    try:
        await store.connect()
        assert await store.set_unless_older([("k", 2, doc(2)), ("k", 1, doc(1))], ttl_s=60) == 1
        assert await store.get("k") == doc(2)
    finally:
        await store.aclose()
        server.stop()
