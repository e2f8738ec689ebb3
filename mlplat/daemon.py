"""Composition root: builds backends and services from settings and runs them under the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from mlplat import __version__
from mlplat.api.admin import AdminServicer
from mlplat.api.auth import TokenAuth
from mlplat.api.features import FeatureServicer
from mlplat.api.ingest import IngestServicer
from mlplat.api.models import ModelServicer, PredictionServicer
from mlplat.api.monitoring import MonitoringServicer
from mlplat.api.server import ApiServer, Servicers
from mlplat.api.training import TrainingServicer
from mlplat.automation.service import Automation
from mlplat.automation.specs import ModelSpec, load_specs
from mlplat.backends.artifacts import ArtifactStore, open_artifact_store
from mlplat.backends.bus import EventBus, open_bus
from mlplat.backends.hotstore import HotStore, open_hot_store
from mlplat.backends.monitor import BackendMonitor
from mlplat.backends.urls import redact_url
from mlplat.compute.balancer import Balancer, BalancerService
from mlplat.config import Settings
from mlplat.demo import DEMO_FEATURES, demo_models_file
from mlplat.demo.traffic import DemoTraffic
from mlplat.errors import BackendUnavailable
from mlplat.features.definitions import load_catalog
from mlplat.features.registry import FeatureRegistry, FeatureRegistryService
from mlplat.ingest.batch import BatchIngest
from mlplat.ingest.sink import IngestSink
from mlplat.ingest.stream import StreamIngest
from mlplat.monitoring.drift import DriftMonitor
from mlplat.observability.health import Readiness
from mlplat.observability.http import HttpServer
from mlplat.observability.logging import get_logger, register_secret
from mlplat.observability.metrics import Metrics
from mlplat.serving.prediction_log import PredictionLog
from mlplat.serving.registry import ModelRegistry
from mlplat.serving.service import ModelServing
from mlplat.streaming.actions import ActionExecutor
from mlplat.streaming.definitions import StreamingConfig, load_streaming_config
from mlplat.streaming.inference import StreamInference
from mlplat.supervisor import Supervisor
from mlplat.warehouse.cache import QueryCache
from mlplat.warehouse.store import Warehouse

log = get_logger("daemon")

STARTUP_RETRY_INITIAL_S = 0.5
STARTUP_RETRY_MAX_S = 5.0
"""Pauses between start-up attempts to reach a backend: the first, doubling up to the second."""


class Daemon:
    """Everything one `mlplat run` process owns. Tests build one in-process with port 0."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.readiness = Readiness()
        username, password = settings.hot_store.login()
        bus_tls, sasl = settings.bus.security()
        connection_string = settings.artifacts.secret(dict(os.environ))
        read_token, admin_token = settings.api.tokens()
        for secret in (password, sasl.password if sasl else None, connection_string, read_token, admin_token):
            register_secret(secret)
        for warning in settings.api.check_exposure():  # refuses an exposed API without a token before any bind
            log.warning("api_plaintext", reason=warning)

        self.hot_store: HotStore = open_hot_store(settings.hot_store.url, password=password, username=username,
                                                  tls=settings.hot_store.tls())
        self.bus: EventBus = open_bus(settings.bus.url, tls=bus_tls, sasl=sasl,
                                      consumer_stall_s=settings.bus.consumer_stall_s,
                                      session_timeout_ms=settings.bus.session_timeout_ms, metrics=self.metrics)
        self.artifacts: ArtifactStore = open_artifact_store(
            settings.artifacts.url, connection_string=connection_string
        )
        cache = QueryCache(
            self.hot_store, self.metrics, ttl_s=settings.warehouse.cache_ttl_s,
            max_bytes=settings.warehouse.cache_max_bytes,
        )
        self.warehouse = Warehouse(settings.warehouse, self.metrics, cache=cache)
        self.backends = {
            "hot_store": self.hot_store.url,
            "bus": self.bus.url,
            "artifacts": self.artifacts.url,
            "warehouse": redact_url(settings.warehouse.url),
        }
        self.balancer = Balancer(settings.balancer, self.metrics)
        features_file = settings.ingest.features_file or (DEMO_FEATURES if settings.demo.enabled else None)
        catalog = load_catalog(features_file) if features_file else None
        self.features = FeatureRegistry(self.warehouse, self.hot_store)
        models_file = settings.streaming.models_file or (demo_models_file(settings.demo.fast)
                                                         if settings.demo.enabled else None)
        streaming = load_streaming_config(models_file) if models_file else StreamingConfig()
        self.ingest = StreamIngest(settings.ingest, self.bus, self.hot_store, self.warehouse, self.features,
                                   self.balancer, self.metrics, streamed={s.feature_set for s in streaming.streams})
        admin = AdminServicer(self.warehouse, self.readiness, self.metrics, self.backends,
                              max_message_bytes=settings.api.max_message_mb << 20)
        self.batch = BatchIngest(
            IngestSink(self.warehouse, self.hot_store, self.metrics), self.features, self.balancer,
            partition_bytes=settings.ingest.partition_bytes, parallel=settings.ingest.upload_parallel,
        )
        ingest = IngestServicer(self.batch, self.bus, self.features, self.metrics,
                                spool_dir=settings.ingest.spool_dir, max_bytes=settings.ingest.max_upload_bytes)
        features = FeatureServicer(self.features, self.hot_store, self.warehouse, self.metrics)
        self.registry = ModelRegistry(self.warehouse, self.hot_store, self.artifacts, self.balancer)
        self.prediction_log = PredictionLog(self.warehouse, self.balancer, self.metrics,
                                            flush_ms=settings.serving.log_flush_ms,
                                            max_rows=settings.serving.log_buffer)
        self.serving = ModelServing(
            settings.serving, self.hot_store, self.artifacts, self.balancer, self.metrics, warehouse=self.warehouse,
            features=self.features, registry=self.registry, prediction_log=self.prediction_log,
        )
        specs: dict[str, ModelSpec] = load_specs(models_file) if models_file else {}
        self.streaming = StreamInference(settings.streaming, streaming, self.bus, self.hot_store, self.warehouse,
                                         self.features, self.serving, self.metrics)
        self.actions = ActionExecutor(settings.actions, settings.streaming, streaming, self.bus, self.warehouse,
                                      self.metrics)
        self.monitoring = DriftMonitor(settings.monitoring, self.warehouse, self.hot_store, self.serving,
                                       self.features, self.balancer, self.metrics)
        monitoring = MonitoringServicer(self.monitoring, self.metrics)
        self.automation = Automation(settings.automation, settings.monitoring, specs, str(models_file), self.warehouse,
                                     self.features, self.registry, self.serving, self.monitoring, self.balancer,
                                     self.metrics)
        training = TrainingServicer(self.automation, self.metrics)
        models = ModelServicer(self.registry, self.metrics, serve_here=self.serving.swap_to)
        predictions = PredictionServicer(self.serving, self.metrics)
        self.api = ApiServer(
            settings.api,
            self.readiness,
            Servicers(admin=admin, ingest=ingest, features=features, models=models, predictions=predictions,
                      monitoring=monitoring, training=training),
            interceptors=[TokenAuth(read_token, admin_token, self.metrics)] if admin_token else [],
        )
        self.http = HttpServer(settings.api.http_host, settings.api.http_port, self.metrics, self.readiness)
        self.monitor = BackendMonitor(
            {"hot_store": self.hot_store.ping, "bus": self.bus.ping, "artifacts": self.artifacts.ping},
            self.readiness, self.metrics, interval_s=settings.supervisor.health_interval_s,
        )
        # started in this order, stopped in reverse: the API stops taking work first, the writer flushes last
        self.supervisor = Supervisor(
            [self.http, self.warehouse,
             BalancerService(self.balancer, drain_s=settings.supervisor.shutdown_deadline_s / 2),
             FeatureRegistryService(self.features, catalog), self.monitor, self.ingest, self.serving,
             self.streaming, self.actions, self.monitoring, self.automation,
             *([DemoTraffic(settings.demo, self.bus, self.features, self.metrics)] if settings.demo.enabled else []),
             self.api],
            settings.supervisor, self.metrics, self.readiness,
        )

    async def connect_backends(self) -> None:
        """Reach every backend, waiting for those still starting (compose, Kubernetes start everything at once)
        with backoff up to supervisor.startup_wait_s; one still unreachable then is fatal, its URL in the error."""
        connects: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("hot_store", self.hot_store.connect), ("bus", self.bus.connect), ("artifacts", self.artifacts.connect),
        ]
        deadline = asyncio.get_running_loop().time() + self.settings.supervisor.startup_wait_s
        for name, connect in connects:
            try:
                await self._wait_for(name, connect, deadline)
            except BaseException:
                await self.close_backends()
                raise
            log.info("backend_connected", backend=name, url=self.backends[name])

    async def _wait_for(self, name: str, connect: Callable[[], Awaitable[None]], deadline: float) -> None:
        """Connect, retrying an unreachable backend (doubling pauses) until the deadline. Other errors (a
        wrong setting the backend reported) end start-up at once."""
        loop = asyncio.get_running_loop()
        pause = STARTUP_RETRY_INITIAL_S
        while True:
            try:
                await connect()
                return
            except BackendUnavailable as e:
                left = deadline - loop.time()
                if left <= 0:
                    raise BackendUnavailable(
                        f"{e} (gave up after supervisor.startup_wait_s = {self.settings.supervisor.startup_wait_s:g} s)"
                    ) from None
                pause = min(pause, left)
                log.warning("backend_waiting", backend=name, url=self.backends[name], error=str(e),
                            retry_in_s=round(pause, 2), gives_up_in_s=round(left, 1))
                await asyncio.sleep(pause)
                pause = min(pause * 2, STARTUP_RETRY_MAX_S)

    async def close_backends(self) -> None:
        for close in (self.bus.aclose, self.hot_store.aclose, self.artifacts.aclose):
            with contextlib.suppress(Exception):
                await close()

    async def start(self) -> None:
        log.info("daemon_starting", version=__version__, **self.backends)
        await self.connect_backends()
        try:
            await self.supervisor.start()
        except BaseException:
            await self.close_backends()
            raise
        # everything built so far lives as long as the daemon: move it out of the collector's sight, so the
        # full collections that ingest's many short-lived objects trigger do not walk it again and again
        gc.freeze()
        log.info("daemon_ready", grpc=f"{self.settings.api.host}:{self.api.port}",
                 http=f"{self.settings.api.http_host}:{self.http.port}")

    async def stop(self) -> bool:
        log.info("daemon_stopping")
        clean = await self.supervisor.stop()
        await self.close_backends()
        gc.unfreeze()  # what start() froze can be collected again
        log.info("daemon_stopped", clean=clean)
        return clean


DUPLICATE_SIGNAL_S = 1.0


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain; a second signal forces an immediate exit."""
    daemon = Daemon(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    first_signal_at: list[float] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # one Ctrl-C can arrive twice (e.g. `timeout` signals the process and then its group): only a
            # signal well after the first means "stop now"
            if loop.time() - first_signal_at[0] < DUPLICATE_SIGNAL_S:
                return
            log.error("forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        first_signal_at.append(loop.time())
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        starting = asyncio.create_task(daemon.start(), name="daemon-start")
        stopping = asyncio.create_task(stop.wait(), name="daemon-stop-signal")
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            stopping.cancel()
            starting.result()  # a start-up error ends here
        else:  # a signal while waiting for backends (or starting services): start() undoes what it began
            starting.cancel()
            try:
                await starting
            except asyncio.CancelledError:
                log.info("daemon_stopped", clean=True, during="start-up")
                return 0
        await stop.wait()
        clean = await daemon.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0 if clean else 1


def run_forever(settings: Settings) -> int:
    """The loop factory is uvloop when installed (as uvicorn does), else asyncio's own."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(settings))


def fatal(message: str, code: int = 1) -> int:
    print(f"mlplat: {message}", file=sys.stderr)
    return code
