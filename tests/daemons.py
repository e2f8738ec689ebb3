"""The daemon as tests run it: in-process (settings for a test's own directory, readiness over HTTP) or as a
user runs it (`mlplat run` in a subprocess, driven through its CLI and HTTP). Shared by many test modules, so
that no test module imports another."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mlplat.config import load_settings
from mlplat.daemon import Daemon
from tests.servers import free_port

MLPLAT = [sys.executable, "-m", "mlplat"]


def daemon_settings(tmp_path: Path, **sections: Any) -> Any:
    """Settings for an in-process daemon keeping everything under tmp_path, on free ports, with one worker;
    each keyword is a section whose keys override these."""
    defaults: dict[str, Any] = dict(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 1, "spare_workers": 0},
        ingest={"spool_dir": str(tmp_path / "spool"), "features_file": "config/features.toml"},
        serving={"log_flush_ms": 50.0, "reconcile_s": 0.5},
    )
    for name, values in sections.items():
        defaults[name] = {**defaults.get(name, {}), **values}
    return load_settings(**defaults)


async def readyz(d: Daemon) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.http.port}/readyz") as r:
        return r.status, await r.json()


async def wait_ready(d: Daemon, want: bool, limit_s: float = 30) -> dict[str, object]:
    """Wait until the in-process daemon's /readyz says `want`; returns its body."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        status, body = await readyz(d)
        if (status == 200) == want:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"readyz still {status}: {body}")
        await asyncio.sleep(0.1)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The mlplat CLI in a subprocess."""
    return subprocess.run([*MLPLAT, *args], capture_output=True, text=True, timeout=120)


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    workdir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MLPLAT, *args, "--target", self.target], capture_output=True, text=True,
                              timeout=60, cwd=self.workdir)

    def logs(self) -> str:
        return (self.workdir / "daemon.log").read_text()


def start_daemon(workdir: Path, env: dict[str, str] | None = None, *args: str) -> RunningDaemon:
    """`mlplat run` in workdir (logging JSON to daemon.log there), returned once /readyz answers 200."""
    grpc_port, http_port = free_port(), free_port()
    with (workdir / "daemon.log").open("a") as log:
        proc = subprocess.Popen(
            [*MLPLAT, "run", "--grpc-port", str(grpc_port), "--http-port", str(http_port), *args],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "MLPLAT_LOGGING__FORMAT": "json", **(env or {})},
        )
    daemon = RunningDaemon(proc, grpc_port, http_port, workdir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{daemon.logs()}")
        try:
            if daemon.http("/readyz")[0] == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"daemon not ready in 60s:\n{daemon.logs()}")
