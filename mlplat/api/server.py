"""The gRPC server as a supervised service: health (mirrors readiness) and reflection included."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlplat.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from mlplat.config import ApiSettings
from mlplat.observability.health import Readiness
from mlplat.observability.logging import get_logger

if TYPE_CHECKING:
    from mlplat.api.admin import AdminServicer
    from mlplat.api.features import FeatureServicer
    from mlplat.api.ingest import IngestServicer
    from mlplat.api.models import ModelServicer, PredictionServicer
    from mlplat.api.monitoring import MonitoringServicer
    from mlplat.api.training import TrainingServicer

log = get_logger("api")

Registrar = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class Servicers:
    """The daemon's gRPC services, one servicer each; the composition root builds them, the server adds them."""

    admin: AdminServicer
    ingest: IngestServicer
    features: FeatureServicer
    models: ModelServicer
    predictions: PredictionServicer
    monitoring: MonitoringServicer
    training: TrainingServicer

    def registrars(self) -> list[tuple[str, Registrar]]:
        """(full service name, add to a server) per service: the names go to health and reflection."""
        return [
            (admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
             lambda server: admin_pb2_grpc.add_AdminServiceServicer_to_server(self.admin, server)),
            (ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
             lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.ingest, server)),
            (features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name,
             lambda server: features_pb2_grpc.add_FeatureServiceServicer_to_server(self.features, server)),
            (models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
             lambda server: models_pb2_grpc.add_ModelServiceServicer_to_server(self.models, server)),
            (models_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
             lambda server: models_pb2_grpc.add_PredictionServiceServicer_to_server(self.predictions, server)),
            (monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name,
             lambda server: monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(self.monitoring, server)),
            (training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
             lambda server: training_pb2_grpc.add_TrainingServiceServicer_to_server(self.training, server)),
        ]


class ApiServer:
    """start() binds (port 0 picks a free one, read back into .port); stop() drains under a grace period."""

    name = "api"

    def __init__(
        self, settings: ApiSettings, readiness: Readiness, servicers: Servicers,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._settings = settings
        self._interceptors = list(interceptors)
        self._readiness = readiness
        self._registrars = servicers.registrars()
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = settings.grpc_port
        self._changed: asyncio.Event | None = None

    async def start(self) -> None:
        limit = self._settings.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        for full_name, register in self._registrars:
            register(server)
            names.append(full_name)
        reflection.enable_server_reflection(names, server)
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        tls = self._settings.tls()
        try:
            if tls is None:
                self.port = server.add_insecure_port(address)
            else:
                chain, key, client_ca = tls
                credentials = grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                                          require_client_auth=client_ca is not None)
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise OSError(f"api: cannot listen on {address}: {e}") from None
        if self.port == 0:
            raise OSError(f"api: cannot listen on {address}: address in use or not available")
        await server.start()
        self._server = server
        self._service_names = [n for n, _ in self._registrars]
        if self._changed is None:  # before our own "started" mark, so none is missed; once per daemon
            self._changed = self._readiness.changed()
        await self._mirror_readiness()
        log.info("grpc_listening", address=f"{self._settings.host}:{self.port}",
                 tls="mutual" if tls and tls[2] else ("on" if tls else "off"),
                 tokens=any(self._settings.tokens()))

    async def _mirror_readiness(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._readiness.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self._health.set(name, status)

    async def run(self) -> None:
        assert self._changed is not None, "start() first"
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._mirror_readiness()

    async def stop(self) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace=self._settings.grace_s)
        self._server = None
