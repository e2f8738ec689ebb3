"""Daemons and servers a benchmark starts as processes of its own, on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(workdir: Path, env: dict[str, str] | None = None, name: str = "daemon"
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """`mlplat run` in workdir (its data under workdir/.mlplat), once ready; returns it and its gRPC target."""
    grpc_port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    full_env = {**os.environ, "MLPLAT_LOGGING__LEVEL": "warning", "MLPLAT_LOGGING__FORMAT": "json", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "mlplat", "run", "--grpc-port", str(grpc_port), "--http-port",
                             str(http_port)], cwd=workdir, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))
    deadline = time.monotonic() + 60
    while not _ready(http_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not become ready: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{grpc_port}"


def _ready(http_port: int) -> bool:
    """/readyz answers 200: every service started (swap notices subscribed) and every backend reachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server (Debian's `redis-server`) that keeps nothing on disk; returns it and its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server), or pass --hot-store URL")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")
