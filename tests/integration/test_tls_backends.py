"""Encrypted, authenticated connections to Redis (rediss:// with an ACL user) and Kafka (TLS, SASL) against
real servers: the hot store and the bus work through them, and a wrong password, CA or mechanism is a clear
error naming the backend's URL, never a hang or a leaked secret.

Kafka: Tansu 0.6 (the test broker) has no TLS listener, so the TLS tests reach it through a TLS-terminating
proxy (tests/tls_proxy.py), as through a TLS load balancer. It speaks SASL SCRAM-SHA-256/512 with
--authentication, but stores users only in PostgreSQL, which the tests do not run: every login is refused,
so the tests prove refusals are reported clearly; a successful login is covered only by the clients being
built with the settings (tests/unit/test_backend_security.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from mlplat.backends.bus import open_bus
from mlplat.backends.hotstore import HotStore, open_hot_store
from mlplat.backends.security import SaslLogin, TlsFiles
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from mlplat.errors import BackendError, BackendUnavailable
from tests.daemons import daemon_settings
from tests.secrets import KAFKA_SASL_PASSWORD, REDIS_PASSWORD
from tests.servers import RedisTls, ServerProcess, free_port, start_redis, start_tansu, start_tls_proxy
from tests.waiting import receive, until

pytestmark = pytest.mark.integration

USER = "mlplat-app"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("client.mlplat.test")
    files = {"ca": ca.cert_pem, "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
             "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
             "stranger_ca": stranger.cert_pem}
    for name, blob in files.items():
        blob.write_to_path(str(root / f"{name}.pem"))
    return Pki(**{name: root / f"{name}.pem" for name in files})


@pytest.fixture(scope="module")
def rediss(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Redis on a TLS port only, with one ACL user and the default user off."""
    server = start_redis(tmp_path_factory.mktemp("rediss"), tls=RedisTls(pki.server_cert, pki.server_key, pki.ca),
                         acl_user=(USER, REDIS_PASSWORD))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rediss_mutual(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same, requiring a client certificate its CA signed."""
    server = start_redis(tmp_path_factory.mktemp("rediss-mutual"),
                         tls=RedisTls(pki.server_cert, pki.server_key, pki.ca, clients_must_present=True),
                         acl_user=(USER, REDIS_PASSWORD))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kafka_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tansu behind a TLS proxy requiring a client certificate; the broker advertises the proxy."""
    workdir, port = tmp_path_factory.mktemp("kafka-tls"), free_port()
    broker = start_tansu(workdir, advertised_port=port)
    try:
        proxy = start_tls_proxy(workdir, broker.port, pki.server_cert, pki.server_key, port=port, client_ca=pki.ca)
        yield f"kafka://127.0.0.1:{port}"
        proxy.stop()
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_sasl(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Tansu requiring a SASL login, reachable in plaintext and through a TLS proxy."""
    workdir, port = tmp_path_factory.mktemp("kafka-sasl"), free_port()
    broker = start_tansu(workdir, authentication=True)
    try:
        proxy = start_tls_proxy(workdir, broker.port, pki.server_cert, pki.server_key, port=port)
        yield {"plaintext": f"kafka://127.0.0.1:{broker.port}", "tls": f"kafka://127.0.0.1:{port}"}
        proxy.stop()
    finally:
        broker.stop()


def rediss_url(server: ServerProcess, userinfo: str = "") -> str:
    return f"rediss://{userinfo}127.0.0.1:{server.port}/0"


async def refusal(store: HotStore, server: ServerProcess, tls: TlsFiles) -> str:
    """The error connecting with these settings. redis-py ends a refused TLS connection in the background
    (TLS shutdown): wait until the server has let it go, so it does not outlive the test's event loop."""
    try:
        with pytest.raises(BackendError) as err:
            await store.connect()
        assert type(err.value) is BackendError  # refused, not unavailable: start-up stops at once, no waiting
    finally:
        await store.aclose()
    watcher = open_hot_store(rediss_url(server), username=USER, password=REDIS_PASSWORD, tls=tls)

    async def alone() -> bool:
        return len(await watcher._client.client_list()) == 1  # type: ignore[attr-defined]

    try:
        await until(alone, "the refused connections closed")
    finally:
        await watcher.aclose()
    return str(err.value)


# --- Redis ----------------------------------------------------------------------------------------------------

async def test_rediss_with_an_acl_user_serves_the_hot_store(
    rediss: ServerProcess, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings as production sets them (user and CA in the file, password from env) give a hot store that
    writes, reads, pipelines and subscribes over TLS, logged in as the ACL user."""
    monkeypatch.setenv("MLPLAT_HOT_STORE__PASSWORD", REDIS_PASSWORD)
    settings = load_settings(hot_store={"url": rediss_url(rediss), "username": USER, "tls_ca_file": str(pki.ca)})
    username, password = settings.hot_store.login()
    store = open_hot_store(settings.hot_store.url, username=username, password=password,
                           tls=settings.hot_store.tls())
    try:
        await store.connect()
        assert await store._client.acl_whoami() in (USER, USER.encode())  # type: ignore[attr-defined]
        await store.set("tls:k", b"v", ttl_s=60)
        await store.pipeline().hset("tls:h", {"a": b"1"}).incr("tls:n").execute()
        assert (await store.get("tls:k"), await store.hgetall("tls:h")) == (b"v", {"a": b"1"})
        assert await store.scan_keys("tls:") == ["tls:h", "tls:k", "tls:n"]
        async with store.subscribe("tls:ch") as messages:
            assert await store.publish("tls:ch", b"hello") == 1
            assert await asyncio.wait_for(anext(aiter(messages)), 10) == b"hello"
    finally:
        await store.aclose()


async def test_rediss_with_a_wrong_password_names_the_url_and_user_not_the_secret(
    rediss: ServerProcess, pki: Pki
) -> None:
    """Refused by the server: 'authentication failed as <user>', with the URL (password masked)."""
    ca = TlsFiles("hot_store", pki.ca)
    in_url = await refusal(open_hot_store(rediss_url(rediss, f"{USER}:wrong-pw@"), tls=ca), rediss, ca)
    assert f"hot store rediss://{USER}:***@127.0.0.1:{rediss.port}/0: authentication" in in_url
    as_settings = await refusal(open_hot_store(rediss_url(rediss), username=USER, password="wrong-pw", tls=ca),
                                rediss, ca)
    assert f"hot store rediss://127.0.0.1:{rediss.port}/0: authentication" in as_settings
    for message in (in_url, as_settings):
        assert f"authentication failed as '{USER}'" in message and "wrong-pw" not in message


async def test_rediss_with_a_ca_that_did_not_sign_the_server_is_a_tls_error(rediss: ServerProcess, pki: Pki) -> None:
    message = await refusal(open_hot_store(rediss_url(rediss), username=USER, password=REDIS_PASSWORD,
                                           tls=TlsFiles("hot_store", pki.stranger_ca)),
                            rediss, TlsFiles("hot_store", pki.ca))
    assert f"hot store rediss://127.0.0.1:{rediss.port}/0: TLS handshake failed" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message and "check hot_store.tls_ca_file" in message


async def test_rediss_requiring_a_client_certificate(rediss_mutual: ServerProcess, pki: Pki) -> None:
    """With tls_cert_file and tls_key_file the store works; without, the error says a certificate is wanted."""
    url, certified = rediss_url(rediss_mutual), TlsFiles("hot_store", pki.ca, pki.client_cert, pki.client_key)
    store = open_hot_store(url, username=USER, password=REDIS_PASSWORD, tls=certified)
    try:
        await store.set("k", b"v")
        assert await store.get("k") == b"v"
    finally:
        await store.aclose()
    message = await refusal(open_hot_store(url, username=USER, password=REDIS_PASSWORD,
                                           tls=TlsFiles("hot_store", pki.ca)), rediss_mutual, certified)
    assert "TLS handshake failed" in message and "wants a client certificate" in message


# --- Kafka ----------------------------------------------------------------------------------------------------

async def test_kafka_over_mutual_tls_publishes_and_consumes(kafka_tls: str, pki: Pki, unique_name: str) -> None:
    """bus.tls with a CA and a client certificate: topics, publishing, a consumer group and commits all work."""
    settings = load_settings(bus={"url": kafka_tls, "tls": True, "tls_ca_file": str(pki.ca),
                                  "tls_cert_file": str(pki.client_cert), "tls_key_file": str(pki.client_key)})
    tls, sasl = settings.bus.security()
    bus = open_bus(settings.bus.url, tls=tls, sasl=sasl)
    topic = f"tls-{unique_name}"
    try:
        await bus.connect()
        await bus.create_topic(topic, partitions=1)
        await bus.publish(topic, b"secret-free payload")
        consumer = bus.consumer([topic], group=f"g-{unique_name}")
        await consumer.start()
        message = await receive(consumer, b"secret-free payload")
        await consumer.commit({message.tp: message.offset + 1})
        assert await consumer.committed(message.tp) == 1
        await consumer.stop()
    finally:
        await bus.aclose()


async def test_kafka_tls_refusing_the_broker_certificate_stops_at_once(kafka_tls: str, pki: Pki) -> None:
    """A CA that did not sign the broker: BackendError (a setting to fix, not an outage to wait out)."""
    bus = open_bus(kafka_tls, tls=TlsFiles("bus", pki.stranger_ca, pki.client_cert, pki.client_key))
    with pytest.raises(BackendError) as err:
        await bus.connect()
    await bus.aclose()
    assert not isinstance(err.value, BackendUnavailable)
    assert str(err.value).startswith(f"bus {kafka_tls}: TLS: the certificate of 127.0.0.1:")
    assert "certificate" in str(err.value) and "check bus.tls_ca_file" in str(err.value)


async def test_kafka_tls_without_the_client_certificate_says_one_may_be_wanted(kafka_tls: str, pki: Pki) -> None:
    bus = open_bus(kafka_tls, tls=TlsFiles("bus", pki.ca))
    with pytest.raises(BackendUnavailable, match=re.escape(f"bus {kafka_tls} unreachable")) as err:
        await bus.connect()
    await bus.aclose()
    assert "does it want a client certificate? set bus.tls_cert_file and bus.tls_key_file" in str(err.value)


@pytest.mark.parametrize("transport", ["plaintext", "tls"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_refused_sasl_login_stops_at_once_naming_the_bus(
    kafka_sasl: dict[str, str], pki: Pki, transport: str, mechanism: Any
) -> None:
    """The broker refuses the login (over plaintext, or over TLS: SASL_SSL): a BackendError naming the bus,
    the mechanism and the user, not aiokafka's bare KeyError or 'Unable to bootstrap'; no password."""
    url = kafka_sasl[transport]
    bus = open_bus(url, tls=TlsFiles("bus", pki.ca) if transport == "tls" else None,
                   sasl=SaslLogin(mechanism, "alice", KAFKA_SASL_PASSWORD))
    with pytest.raises(BackendError) as err:
        await bus.connect()
    await bus.aclose()
    assert not isinstance(err.value, BackendUnavailable)
    assert str(err.value) == (f"bus {url}: SASL {mechanism} login as 'alice' at {url.removeprefix('kafka://')} "
                              "refused (wrong username or password?)")


async def test_a_sasl_mechanism_the_broker_does_not_offer_is_named(kafka_sasl: dict[str, str]) -> None:
    """Tansu offers SCRAM only: PLAIN is refused, the error says so (Tansu hangs up rather than answering)."""
    url = kafka_sasl["plaintext"]
    bus = open_bus(url, sasl=SaslLogin("PLAIN", "alice", KAFKA_SASL_PASSWORD))
    with pytest.raises(BackendError, match=re.escape(f"bus {url}: SASL PLAIN login as 'alice'")) as err:
        await bus.connect()
    await bus.aclose()
    assert "does it offer SASL PLAIN?" in str(err.value)


async def test_sasl_against_a_broker_without_sasl_stops_daemon_start_up(
    kafka_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon configured for SASL on a broker that has none fails start-up at once (no waiting out
    supervisor.startup_wait_s) with an error naming the bus and the mechanism."""
    monkeypatch.setenv("MLPLAT_BUS__SASL_PASSWORD", KAFKA_SASL_PASSWORD)
    settings = daemon_settings(tmp_path, bus={"url": kafka_url, "sasl_mechanism": "SCRAM-SHA-256",
                                              "sasl_username": "alice"},
                               supervisor={"startup_wait_s": 600.0})
    daemon = Daemon(settings)
    with pytest.raises(BackendError) as err:
        await asyncio.wait_for(daemon.start(), 60)
    assert not isinstance(err.value, BackendUnavailable)
    assert str(err.value).startswith(f"bus {kafka_url}: SASL SCRAM-SHA-256 login as 'alice' at ")
    assert "mechanism not offered" in str(err.value)
