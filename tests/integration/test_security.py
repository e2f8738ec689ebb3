"""The API's security: TLS (and mutual TLS), separate read and admin tokens, refusals counted, tokens
never in logs; the CLI reaches a secured daemon through its top-level options."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc, models_pb2, models_pb2_grpc
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from mlplat.errors import ConfigError
from tests.daemons import MLPLAT, daemon_settings, start_daemon
from tests.secrets import ADMIN_TOKEN, READ_TOKEN

READ, ADMIN = READ_TOKEN, ADMIN_TOKEN


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.mlplat.test")
    other = stranger.issue_cert("client.mlplat.test")
    files = {
        "ca": ca.cert_pem, "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
        "other_client_cert": other.cert_chain_pems[0], "other_client_key": other.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(root / f"{name}.pem"))
    return Pki(**{name: root / f"{name}.pem" for name in files})


def secured(tmp_path: Path, pki: Pki, mutual: bool = False) -> Any:
    api: dict[str, Any] = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key),
                           "read_token": READ, "admin_token": ADMIN}
    if mutual:
        api["tls_client_ca_file"] = str(pki.ca)
    return daemon_settings(tmp_path, api=api)


@pytest.fixture
async def daemon(tmp_path: Path, pki: Pki) -> AsyncIterator[Daemon]:
    d = Daemon(secured(tmp_path, pki))
    await d.start()
    yield d
    await d.stop()


def tls_channel(daemon: Daemon, pki: Pki, client: tuple[Path, Path] | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{daemon.api.port}", credentials)


def bearer(token: str | None) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {token}")] if token is not None else None


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_tokens_separate_reads_from_admin_calls_and_refusals_are_counted(daemon: Daemon, pki: Pki,
                                                                               capfd: pytest.CaptureFixture[str]
                                                                               ) -> None:
    async with tls_channel(daemon, pki) as ch:
        predictions = models_pb2_grpc.PredictionServiceStub(ch)
        registry = models_pb2_grpc.ModelServiceStub(ch)
        listing = models_pb2.ListModelsRequest()
        assert await code_of(predictions.ListModels(listing)) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(predictions.ListModels(listing, metadata=bearer("guess"))) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(predictions.ListModels(listing, metadata=bearer(READ))) == grpc.StatusCode.OK
        assert await code_of(predictions.ListModels(listing, metadata=bearer(ADMIN))) == grpc.StatusCode.OK
        promote = models_pb2.StageRequest(model="churn", version=1)
        assert await code_of(registry.Promote(promote, metadata=bearer(READ))) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(registry.Promote(promote, metadata=bearer(ADMIN))) == grpc.StatusCode.NOT_FOUND

        # streaming shapes are refused the same way: client streaming (upload), bidirectional (predict)
        upload = ingest_pb2_grpc.IngestServiceStub(ch).Upload(iter([ingest_pb2.UploadRequest()]),
                                                              metadata=bearer(READ))
        assert await code_of(upload) == grpc.StatusCode.PERMISSION_DENIED
        stream = predictions.PredictStream(iter([models_pb2.PredictRequest(model="nope")]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stream:
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = [a async for a in predictions.PredictStream(iter([models_pb2.PredictRequest(model="nope")]),
                                                              metadata=bearer(READ))]
        assert answers[0].error_code == "NOT_FOUND"  # through auth, answered by serving

        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # no token needed

    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as plain:
        call = models_pb2_grpc.PredictionServiceStub(plain).ListModels(listing, metadata=bearer(ADMIN), timeout=3)
        assert await code_of(call) == grpc.StatusCode.UNAVAILABLE  # no plaintext on a TLS port

    text = daemon.metrics.render().decode()
    assert 'mlplat_auth_failures_total{code="UNAUTHENTICATED",method="ListModels"} 2.0' in text
    assert 'mlplat_auth_failures_total{code="PERMISSION_DENIED",method="Promote"} 1.0' in text
    assert 'mlplat_auth_failures_total{code="PERMISSION_DENIED",method="Upload"} 1.0' in text
    assert 'mlplat_auth_failures_total{code="UNAUTHENTICATED",method="PredictStream"} 1.0' in text
    out, err = capfd.readouterr()
    assert "rpc_refused" in out + err and READ not in out + err and ADMIN not in out + err


async def test_mutual_tls_requires_a_client_certificate_the_ca_signed(tmp_path: Path, pki: Pki) -> None:
    daemon = Daemon(secured(tmp_path, pki, mutual=True))
    await daemon.start()
    try:
        request = models_pb2.ListModelsRequest()
        for client in (None, (pki.other_client_cert, pki.other_client_key)):
            async with tls_channel(daemon, pki, client) as ch:
                call = models_pb2_grpc.PredictionServiceStub(ch).ListModels(request, metadata=bearer(READ),
                                                                             timeout=3)
                assert await code_of(call) == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(daemon, pki, (pki.client_cert, pki.client_key)) as ch:
            call = models_pb2_grpc.PredictionServiceStub(ch).ListModels(request, metadata=bearer(READ))
            assert await code_of(call) == grpc.StatusCode.OK
    finally:
        await daemon.stop()


@pytest.mark.parametrize(("api", "message"), [
    ({"tls_cert_file": "a.pem"}, "tls_cert_file and tls_key_file go together"),
    ({"tls_client_ca_file": "ca.pem"}, "tls_client_ca_file needs tls_cert_file"),
    ({"read_token": "r"}, "api.read_token without api.admin_token"),
    ({"tls_cert_file": "/nonexistent/a.pem", "tls_key_file": "/nonexistent/a.key"},
     "api.tls_cert_file = '/nonexistent/a.pem': cannot read"),
    ({"admin_token_file": "/nonexistent/token"}, "api.admin_token_file"),
])
def test_a_bad_security_setting_stops_start_up_naming_it(api: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(api=api)


@pytest.fixture
def secured_subprocess(tmp_path: Path, pki: Pki) -> Iterator[Any]:
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    daemon = start_daemon(tmp_path, {
        "MLPLAT_API__TLS_CERT_FILE": str(pki.server_cert), "MLPLAT_API__TLS_KEY_FILE": str(pki.server_key),
        "MLPLAT_API__READ_TOKEN": READ, "MLPLAT_API__ADMIN_TOKEN_FILE": str(tmp_path / "admin.token"),
        "MLPLAT_INGEST__FEATURES_FILE": str(Path("config/features.toml").resolve())})
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def test_the_cli_reaches_a_secured_daemon_through_its_top_level_options(secured_subprocess: Any, pki: Pki,
                                                                        tmp_path: Path) -> None:
    daemon = secured_subprocess

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MLPLAT, *args, "--target", daemon.target], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env={**os.environ, **(env or {})})

    tls = ["--tls-ca", str(pki.ca)]
    refused = cli(*tls, "status")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr and "MLPLAT_TOKEN" in refused.stderr
    ok = cli(*tls, "status", env={"MLPLAT_TOKEN": READ})
    assert ok.returncode == 0 and "ready" in ok.stdout, ok.stderr
    weak = cli(*tls, "query", "SELECT 1", env={"MLPLAT_TOKEN": READ})
    assert weak.returncode == 1 and "PERMISSION_DENIED" in weak.stderr and "admin token" in weak.stderr
    strong = cli(*tls, "--token-file", str(tmp_path / "admin.token"), "query", "SELECT 42 AS answer", "--json")
    assert strong.returncode == 0 and "42" in strong.stdout, strong.stderr
    shown = subprocess.run([*MLPLAT, "config", "show", "--json"], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "MLPLAT_API__READ_TOKEN": READ, "MLPLAT_API__ADMIN_TOKEN": ADMIN})
    assert shown.returncode == 0 and READ not in shown.stdout and ADMIN not in shown.stdout
    metrics = daemon.http("/metrics")[1]  # metrics and health stay open
    assert "mlplat_auth_failures_total" in metrics and READ not in metrics and ADMIN not in metrics
    assert daemon.http("/readyz")[0] == 200
    logs = daemon.logs()
    assert '"tls": "on"' in logs and READ not in logs and ADMIN not in logs
