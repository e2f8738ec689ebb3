"""Settings: precedence, defaults file, and one-line errors naming key, value and expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mlplat.config import Settings, load_settings
from mlplat.errors import ConfigError
from tests.secrets import ADMIN_TOKEN, READ_TOKEN, leaked_in

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MLPLAT_") or key == "AZURE_STORAGE_CONNECTION_STRING":
            monkeypatch.delenv(key)


def test_default_toml_equals_built_in_defaults() -> None:
    """config/default.toml documents exactly the defaults mlplat uses without a config file."""
    from_file = load_settings(REPO / "config" / "default.toml")
    assert from_file.model_dump() == Settings().model_dump()


def test_production_toml_loads_with_real_backends() -> None:
    """config/production.toml is valid and points every backend at a real server."""
    with (REPO / "config" / "production.toml").open("rb") as f:
        assert tomllib.load(f)
    s = load_settings(REPO / "config" / "production.toml")
    assert s.hot_store.url.startswith("redis://")
    assert s.bus.url.startswith("kafka://")
    assert s.artifacts.url.startswith("azure://")


def test_env_overrides_file_and_flags_override_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Precedence is defaults < --config file < MLPLAT_* env < command-line flags."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[api]\ngrpc_port = 1000\nhttp_port = 2000\n[warehouse]\nread_threads = 2\n")
    monkeypatch.setenv("MLPLAT_API__GRPC_PORT", "3000")
    s = load_settings(cfg, api={"http_port": 4000})
    assert (s.api.grpc_port, s.api.http_port, s.warehouse.read_threads) == (3000, 4000, 2)
    assert s.api.host == "127.0.0.1"  # untouched keys keep their defaults


def test_unknown_scheme_names_key_value_and_expected(tmp_path: Path) -> None:
    """A bad URL fails with the key, the value (password masked) and the schemes accepted."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hot_store]\nurl = "reddis://:pw123@host:6379/0"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "hot_store.url" in msg and "reddis" in msg and "memory, redis, rediss" in msg
    assert "pw123" not in msg and "\n" not in msg


def test_bad_env_value_and_unknown_key_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Wrong types from env and misspelled keys from a file are named in one line."""
    monkeypatch.setenv("MLPLAT_API__GRPC_PORT", "abc")
    with pytest.raises(ConfigError, match=r"api\.grpc_port = 'abc'"):
        load_settings()
    monkeypatch.delenv("MLPLAT_API__GRPC_PORT")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[api]\ngrpc_prot = 1\n")
    with pytest.raises(ConfigError, match=r"api\.grpc_prot: unknown key"):
        load_settings(cfg)


def test_missing_and_invalid_config_files(tmp_path: Path) -> None:
    """A missing file or broken TOML is a clear error, not a traceback."""
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[api\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords and connection strings are read from env or a secret file and never echoed by repr."""
    secret_file = tmp_path / "redis-password"
    secret_file.write_text("from-file-secret\n")
    s = load_settings(hot_store={"password_file": str(secret_file)})
    assert s.hot_store.secret() == "from-file-secret"
    monkeypatch.setenv("MLPLAT_HOT_STORE__PASSWORD", "from-env-secret")
    s = load_settings()
    assert s.hot_store.secret() == "from-env-secret"
    assert "from-env-secret" not in repr(s)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=abc123")
    assert load_settings().artifacts.secret({"AZURE_STORAGE_CONNECTION_STRING": "AccountKey=abc123"})


def test_missing_secret_file_fails_at_load(tmp_path: Path) -> None:
    """A secret file that cannot be read is a start-up error naming the key."""
    with pytest.raises(ConfigError, match=r"hot_store\.password_file"):
        load_settings(hot_store={"password_file": str(tmp_path / "missing")})


def test_warehouse_path_from_url() -> None:
    """duckdb:// URLs map to a relative path, an absolute path or an in-memory database."""
    assert load_settings(warehouse={"url": "duckdb://./x/w.duckdb"}).warehouse.path == "./x/w.duckdb"
    assert load_settings(warehouse={"url": "duckdb:///var/w.duckdb"}).warehouse.path == "/var/w.duckdb"
    assert load_settings(warehouse={"url": "duckdb://:memory:"}).warehouse.path == ":memory:"


def test_every_listener_binds_to_loopback_and_the_api_is_open_only_without_tokens() -> None:
    """gRPC, /metrics and health listen on 127.0.0.1 unless configured; no token configured: an open API."""
    settings = load_settings()
    assert (settings.api.host, settings.api.http_host) == ("127.0.0.1", "127.0.0.1")
    assert settings.api.tokens() == (None, None) and settings.api.tls() is None


@pytest.mark.parametrize("key", ["host", "http_host"])
@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "10.1.2.3", "mlplat.internal"])
def test_a_listener_other_machines_can_reach_without_an_admin_token_is_refused(key: str, address: str) -> None:
    """gRPC or HTTP on anything but loopback, without an admin token: one config line naming the key and
    value (the CLI exits 2). HTTP counts too: the console will serve pages that change state on it."""
    settings = load_settings(api={key: address})
    with pytest.raises(ConfigError) as err:
        settings.api.check_exposure()
    msg = str(err.value)
    assert msg.startswith(f"config: api.{key} = {address!r}: not loopback, and no admin token is set")
    assert "api.admin_token_file" in msg and "\n" not in msg


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_listeners_need_no_token(address: str) -> None:
    """Only this machine can connect: no token, no warning."""
    assert load_settings(api={"host": address, "http_host": address}).api.check_exposure() == []


def test_production_toml_refuses_to_start_without_an_admin_token(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """config/production.toml binds 0.0.0.0: without a token start-up stops; with the token file the compose
    file passes as a secret it starts, warning that gRPC and HTTP are plaintext."""
    production = REPO / "config" / "production.toml"
    with pytest.raises(ConfigError, match=r"^config: api\.host = '0\.0\.0\.0', api\.http_host = '0\.0\.0\.0': "):
        load_settings(production).api.check_exposure()
    token = tmp_path / "mlplat_admin_token"
    token.write_text(ADMIN_TOKEN + "\n")
    monkeypatch.setenv("MLPLAT_API__ADMIN_TOKEN_FILE", str(token))
    warnings = load_settings(production).api.check_exposure()
    assert [w.split(" = ")[0] for w in warnings] == ["api.host", "api.http_host"]
    assert "without TLS" in warnings[0] and "HTTP has no TLS" in warnings[1]
    assert all("api.allow_plaintext = true" in w and ADMIN_TOKEN not in w for w in warnings)


def test_allow_plaintext_silences_the_warning_and_tls_answers_it_for_grpc(tmp_path: Path) -> None:
    """The plaintext warning goes away when the user says the network is trusted; gRPC over TLS needs none
    (HTTP still has no TLS, so its warning stays)."""
    exposed = {"host": "0.0.0.0", "http_host": "0.0.0.0", "admin_token": ADMIN_TOKEN}
    assert load_settings(api={**exposed, "allow_plaintext": True}).api.check_exposure() == []
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not checked here")
    key.write_text("not checked here")
    tls = {**exposed, "tls_cert_file": str(cert), "tls_key_file": str(key)}
    [warning] = load_settings(api=tls).api.check_exposure()
    assert warning.startswith("api.http_host = '0.0.0.0': HTTP has no TLS")
    assert load_settings(api={**tls, "http_host": "127.0.0.1"}).api.check_exposure() == []


def test_startup_wait_defaults_to_a_minute_and_cannot_be_negative() -> None:
    """Compose and Kubernetes start the backends beside mlplat: start-up waits for them, 60 s by default."""
    assert load_settings().supervisor.startup_wait_s == 60.0
    assert load_settings(supervisor={"startup_wait_s": 0}).supervisor.startup_wait_s == 0
    with pytest.raises(ConfigError, match=r"supervisor\.startup_wait_s = -1"):
        load_settings(supervisor={"startup_wait_s": -1})


def test_an_error_about_a_whole_section_never_prints_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A check across a section (the TLS pair) names the section and the rule, not its raw input."""
    monkeypatch.setenv("MLPLAT_API__READ_TOKEN", READ_TOKEN)
    monkeypatch.setenv("MLPLAT_API__ADMIN_TOKEN", ADMIN_TOKEN)
    with pytest.raises(ConfigError) as refused:
        load_settings(api={"tls_cert_file": "/nonexistent/cert.pem"})
    assert "tls_cert_file and tls_key_file go together" in str(refused.value)
    assert leaked_in(str(refused.value)) == []


def test_the_kafka_session_timeout_is_a_setting_that_reaches_the_consumers(tmp_path: Path) -> None:
    """bus.session_timeout_ms (10 s by default) goes to every Kafka consumer; the watchdog's stall must be longer,
    as a healthy rebalance keeps a member out of its group for up to a session."""
    from mlplat.backends.bus.kafka import KafkaBus
    from mlplat.daemon import Daemon

    assert load_settings().bus.session_timeout_ms == 10_000
    settings = load_settings(bus={"url": "kafka://127.0.0.1:9", "session_timeout_ms": 3000},
                             warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"})
    bus = Daemon(settings).bus
    assert isinstance(bus, KafkaBus) and bus._consumer_options()["session_timeout_ms"] == 3000
    with pytest.raises(ConfigError, match=r"^config: bus: consumer_stall_s must be longer than session_timeout_ms"):
        load_settings(bus={"consumer_stall_s": 5, "session_timeout_ms": 6000})
    with pytest.raises(ConfigError, match=r"bus\.session_timeout_ms = 10"):
        load_settings(bus={"session_timeout_ms": 10})
