"""The HTTP endpoint: /metrics (Prometheus text), /healthz (alive), /readyz (every check passing)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mlplat.observability.health import Readiness
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("http")


class HttpServer:
    """A supervised service; binds in start() so a port clash fails start-up with a clear error."""

    name = "http"

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness) -> None:
        self._host = host
        self._port = port  # as asked: 0 picks a free port, read back into self.port
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port: int = port

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._get_healthz)
        app.router.add_get("/readyz", self._get_readyz)
        return app

    async def _get_metrics(self, _: web.Request) -> web.Response:
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _get_readyz(self, _: web.Request) -> web.Response:
        ready = self._readiness.ready
        body = {"ready": ready, "checks": self._readiness.report()}
        return web.Response(
            text=json.dumps(body), status=200 if ready else 503, content_type="application/json"
        )

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(
                f"http: cannot listen on {self._host}:{self._port}: {e.strerror}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("http_listening", address=f"{self._host}:{self.port}")

    async def run(self) -> None:
        # aiohttp serves from its own tasks; this service has nothing else to do until stopped
        await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
