"""TLS and SASL settings of the bus and the hot store: validated at load naming the key, secrets only from
env or a file, and every aiokafka client built with them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from mlplat.backends.bus import kafka
from mlplat.backends.security import SaslLogin, TlsFiles
from mlplat.config import load_settings
from mlplat.errors import BackendError, ConfigError
from tests.daemons import MLPLAT
from tests.secrets import KAFKA_SASL_PASSWORD, REDIS_PASSWORD

KAFKA = "kafka://127.0.0.1:9092"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MLPLAT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    client = ca.issue_cert("client.mlplat.test")
    files = {"ca": ca.cert_pem, "cert": client.cert_chain_pems[0], "key": client.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(root / f"{name}.pem"))
    (root / "junk.pem").write_text("not a certificate\n")
    return {name: root / f"{name}.pem" for name in (*files, "junk")}


def test_the_sasl_mechanism_is_plain_or_scram(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any other mechanism is refused naming the key and the ones accepted; case does not matter."""
    with pytest.raises(ConfigError) as err:
        load_settings(bus={"url": KAFKA, "sasl_mechanism": "SCRAM-SHA-1"})
    assert "bus.sasl_mechanism = 'SCRAM-SHA-1'" in str(err.value)
    assert all(m in str(err.value) for m in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    monkeypatch.setenv("MLPLAT_BUS__SASL_PASSWORD", KAFKA_SASL_PASSWORD)
    settings = load_settings(bus={"url": KAFKA, "sasl_mechanism": "scram-sha-512", "sasl_username": "alice"})
    assert settings.bus.security() == (None, SaslLogin("SCRAM-SHA-512", "alice", KAFKA_SASL_PASSWORD))


@pytest.mark.parametrize(("bus", "message"), [
    ({"sasl_mechanism": "PLAIN", "sasl_username": "alice"}, "bus.sasl_username = 'alice' needs a password"),
    ({"sasl_mechanism": "PLAIN"}, "bus.sasl_mechanism = 'PLAIN' needs bus.sasl_username"),
    ({"sasl_username": "alice"}, "bus.sasl_username is set but bus.sasl_mechanism is not"),
    ({"tls_ca_file": "/etc/hostname"}, "bus.tls_ca_file is set but bus.tls = false"),
])
def test_incomplete_bus_security_names_the_key(bus: dict[str, Any], message: str) -> None:
    """A login or TLS setting that cannot work alone stops loading, naming what is missing."""
    with pytest.raises(ConfigError, match=message):
        load_settings(bus={"url": KAFKA, **bus})


def test_security_settings_on_an_embedded_backend_are_refused() -> None:
    """TLS or SASL on memory:// (or TLS files on redis://) would be silently ignored: refused instead."""
    with pytest.raises(ConfigError, match=r"bus\.tls is set but bus\.url = 'memory://'"):
        load_settings(bus={"tls": True})
    with pytest.raises(ConfigError, match=r"hot_store\.tls_ca_file is set .* use a rediss:// URL"):
        load_settings(hot_store={"url": "redis://h:6379/0", "tls_ca_file": "/etc/hostname"})


def test_an_acl_user_needs_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """hot_store.username without a password anywhere is refused; with one (env or URL) it is the login."""
    with pytest.raises(ConfigError, match=r"hot_store\.username = 'alice' needs a password"):
        load_settings(hot_store={"url": "rediss://h:6380/0", "username": "alice"})
    assert load_settings(hot_store={"url": "rediss://:pw@h:6380/0", "username": "alice"}).hot_store.login() == (
        "alice", None)
    monkeypatch.setenv("MLPLAT_HOT_STORE__PASSWORD", REDIS_PASSWORD)
    settings = load_settings(hot_store={"url": "rediss://h:6380/0", "username": "alice"})
    assert settings.hot_store.login() == ("alice", REDIS_PASSWORD)


@pytest.mark.parametrize(("section", "key"), [
    ("bus", "tls_ca_file"), ("bus", "tls_cert_file"), ("bus", "tls_key_file"), ("bus", "sasl_password_file"),
    ("hot_store", "tls_ca_file"), ("hot_store", "tls_cert_file"), ("hot_store", "tls_key_file"),
])
def test_a_missing_file_names_its_key(section: str, key: str, pem: dict[str, Path], tmp_path: Path) -> None:
    """Every TLS or secret file is read at load: one that does not exist is an error naming its key."""
    complete: dict[str, dict[str, Any]] = {
        "bus": {"url": KAFKA, "tls": True, "tls_ca_file": str(pem["ca"]), "tls_cert_file": str(pem["cert"]),
                "tls_key_file": str(pem["key"]), "sasl_mechanism": "PLAIN", "sasl_username": "alice",
                "sasl_password_file": str(pem["key"])},
        "hot_store": {"url": "rediss://h:6380/0", "tls_ca_file": str(pem["ca"]), "tls_cert_file": str(pem["cert"]),
                      "tls_key_file": str(pem["key"])},
    }
    values = complete[section]
    load_settings(None, **{section: values})  # complete: loads
    values[key] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=rf"config: {section}\.{key} = '.*missing\.pem'"):
        load_settings(None, **{section: values})


def test_files_that_are_not_pem_or_come_alone_name_their_key(pem: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"bus\.tls_ca_file = '.*junk\.pem': not a PEM CA bundle"):
        load_settings(bus={"url": KAFKA, "tls": True, "tls_ca_file": str(pem["junk"])})
    with pytest.raises(ConfigError, match=r"hot_store\.tls_cert_file = '.*junk\.pem': not a PEM certificate"):
        load_settings(hot_store={"url": "rediss://h:6380/0", "tls_cert_file": str(pem["junk"]),
                                 "tls_key_file": str(pem["key"])})
    with pytest.raises(ConfigError, match=r"bus\.tls_key_file is not set"):
        load_settings(bus={"url": KAFKA, "tls": True, "tls_cert_file": str(pem["cert"])})


@pytest.mark.parametrize(("section", "key"), [("bus", "sasl_password"), ("hot_store", "password")])
def test_secrets_in_the_config_file_are_refused(section: str, key: str, tmp_path: Path) -> None:
    """A password in the TOML file stops loading, naming the key and where it goes instead, never echoing it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[{section}]\n{key} = "{KAFKA_SASL_PASSWORD}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    message = str(err.value)
    assert f"{section}.{key}" in message and f"MLPLAT_{section.upper()}__{key.upper()}" in message
    assert f"{section}.{key}_file" in message and KAFKA_SASL_PASSWORD not in message


def test_the_sasl_password_comes_from_env_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Either source gives the login; the password shows in neither the settings' nor the login's repr."""
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(KAFKA_SASL_PASSWORD + "\n")
    bus = {"url": KAFKA, "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "alice"}
    from_file = load_settings(bus={**bus, "sasl_password_file": str(secret_file)}).bus.security()[1]
    monkeypatch.setenv("MLPLAT_BUS__SASL_PASSWORD", KAFKA_SASL_PASSWORD)
    settings = load_settings(bus=bus)
    from_env = settings.bus.security()[1]
    assert from_file == from_env == SaslLogin("SCRAM-SHA-256", "alice", KAFKA_SASL_PASSWORD)
    assert KAFKA_SASL_PASSWORD not in repr(settings) + repr(from_env)


def test_config_show_masks_the_sasl_password() -> None:
    env = {"PATH": "/usr/bin:/bin", "MLPLAT_BUS__URL": KAFKA, "MLPLAT_BUS__SASL_MECHANISM": "PLAIN",
           "MLPLAT_BUS__SASL_USERNAME": "alice", "MLPLAT_BUS__SASL_PASSWORD": KAFKA_SASL_PASSWORD}
    shown = subprocess.run([*MLPLAT, "config", "show", "--json"], capture_output=True, text=True, timeout=60,
                           env=env)
    assert shown.returncode == 0, shown.stderr
    bus = json.loads(shown.stdout)["bus"]
    assert bus["sasl_password"] == "***" and bus["sasl_username"] == "alice"
    assert KAFKA_SASL_PASSWORD not in shown.stdout + shown.stderr


async def test_every_kafka_client_gets_the_tls_and_sasl_settings(
    pem: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer, the admin client, the offsets reader and group members all connect with TLS and SASL
    (brokers that need a login refuse every client without one), and connect() checks the login first."""
    made: list[Any] = []

    def recorded(cls: type) -> type:
        class Recorded(cls):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

            async def start(self) -> None:  # no broker: stop() and close() still release the client
                return None

        return Recorded

    for name, cls in (("AIOKafkaProducer", AIOKafkaProducer), ("AIOKafkaAdminClient", AIOKafkaAdminClient),
                      ("AIOKafkaConsumer", AIOKafkaConsumer)):
        monkeypatch.setattr(kafka, name, recorded(cls))
    checked: list[float] = []

    async def check_login(deadline: float) -> None:
        checked.append(deadline)

    login = SaslLogin("SCRAM-SHA-512", "alice", KAFKA_SASL_PASSWORD)
    bus = kafka.KafkaBus(KAFKA, tls=TlsFiles("bus", pem["ca"], pem["cert"], pem["key"]), sasl=login)
    monkeypatch.setattr(bus, "check_login", check_login)
    await bus.connect()
    member = bus.consumer(["t"], group="g")
    await member.start()
    await member.stop()
    await bus.aclose()

    assert len(checked) == 1 and len(made) == 4  # producer, admin, offsets reader, group member
    for client in made:
        core = client.client if isinstance(client, AIOKafkaProducer) else client._client
        assert core._security_protocol == "SASL_SSL" and core._ssl_context is bus._ssl_context
        assert (core._sasl_mechanism, core._sasl_plain_username, core._sasl_plain_password) == (
            "SCRAM-SHA-512", "alice", KAFKA_SASL_PASSWORD)
    assert KAFKA_SASL_PASSWORD not in repr(bus) + repr(login)


async def test_a_reset_from_a_tls_server_when_no_client_certificate_is_set_is_a_refusal() -> None:
    """TLS 1.3: a server wanting a client certificate may reset the connection instead of sending its alert
    in time. Without a certificate set, that is named as such and stops start-up, rather than waited for."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from mlplat.backends.hotstore.redis import RedisHotStore

    async def reset() -> None:
        raise RedisConnectionError("Error while reading from 127.0.0.1:6380 : (104, 'Connection reset by peer')")

    store = RedisHotStore("rediss://127.0.0.1:6380/0")
    store._client.ping = reset  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(BackendError) as err:
            await store.connect()
    finally:
        await store.aclose()
    assert type(err.value) is BackendError and "wants a client certificate" in str(err.value)
