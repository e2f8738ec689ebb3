"""deploy/: docker is not available where the tests run, so the compose file is checked as data: every service
has a healthcheck, `restart: unless-stopped` and health-gated dependencies; the API tokens are compose secrets
from files never committed, written by deploy/make-secrets.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mlplat.config import load_settings
from tests.secrets import ADMIN_TOKEN

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def test_compose_runs_every_service_with_a_healthcheck_a_restart_policy_and_health_gated_dependencies() -> None:
    """docker is not available where the tests run, so the file is checked as data: every service has a
    healthcheck and `restart: unless-stopped`, every dependency names a condition, mlplat starts only once
    its backends are healthy, and ports are published on the host's loopback only."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        for dependency, condition in service.get("depends_on", {}).items():  # a list would have no conditions
            assert dependency in services and "healthcheck" in services[dependency], (name, dependency)
            assert condition["condition"] in ("service_healthy", "service_started"), (name, dependency)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert services["mlplat"]["depends_on"] == {backend: {"condition": "service_healthy"}
                                                for backend in ("redis", "kafka", "azurite")}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "9464/readyz" in " ".join(services["mlplat"]["healthcheck"]["test"])


def test_compose_passes_the_api_tokens_as_secrets_the_production_config_starts_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokens are compose secrets backed by files that are never committed; the daemon reads them from
    /run/secrets through api.*_token_file, and with them config/production.toml passes the exposure check."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mlplat = compose["services"]["mlplat"]
    assert set(mlplat["secrets"]) == {"mlplat_admin_token", "mlplat_read_token"}
    for name in mlplat["secrets"]:
        source = DEPLOY / compose["secrets"][name]["file"]
        assert source.parent == DEPLOY / "secrets"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(source)], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{source} could be committed"
    environment = mlplat["environment"]
    assert environment["MLPLAT_API__ADMIN_TOKEN_FILE"] == "/run/secrets/mlplat_admin_token"
    assert environment["MLPLAT_API__READ_TOKEN_FILE"] == "/run/secrets/mlplat_read_token"
    assert not any("TOKEN" in key and not key.endswith("_FILE") for key in environment)
    # the container's view: the secrets mounted where the environment says, production.toml as the config
    for key in list(os.environ):
        if key.startswith("MLPLAT_"):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith("MLPLAT_API__") and key.endswith("_TOKEN_FILE"):
            secret = tmp_path / Path(value).name
            secret.write_text(ADMIN_TOKEN if "ADMIN" in key else "read-token-for-compose")
            monkeypatch.setenv(key, str(secret))
        elif key.startswith("MLPLAT_API__"):
            monkeypatch.setenv(key, value)
    settings = load_settings(REPO / "config" / "production.toml")
    assert settings.api.tokens() == ("read-token-for-compose", ADMIN_TOKEN)
    assert settings.api.check_exposure() == []  # allow_plaintext: the ports stay on this machine


def test_make_secrets_writes_private_tokens_once(tmp_path: Path) -> None:
    """deploy/make-secrets.sh writes the files the compose secrets name, readable by their owner only, and
    keeps existing ones."""
    script = tmp_path / "make-secrets.sh"
    script.write_text((DEPLOY / "make-secrets.sh").read_text())
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    first = {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir()}
    assert set(first) == {"admin_token", "read_token"}
    assert all(len(token) == 64 for token in first.values()) and first["admin_token"] != first["read_token"]
    assert all((tmp_path / "secrets" / name).stat().st_mode & 0o077 == 0 for name in first)
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir()} == first
