"""MonitoringService: run drift now, or read the latest results (thin: proto in, one call, proto out)."""

from __future__ import annotations

import grpc

from mlplat.api.errors import rpc_errors
from mlplat.api.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlplat.monitoring.drift import DriftMonitor, ModelDrift
from mlplat.observability.metrics import Metrics


def drift_message(d: ModelDrift) -> monitoring_pb2.ModelDrift:
    return monitoring_pb2.ModelDrift(
        model=d.model, version=d.version, bucket_start=d.bucket_start, bucket_end=d.bucket_end,
        computed_at=d.computed_at, detected=d.detected, reason=d.reason,
        values=[monitoring_pb2.DriftValue(
            feature=v.feature, statistic=v.statistic, value=v.value, has_threshold=v.threshold is not None,
            threshold=v.threshold or 0.0, crossed=v.crossed, reference_n=v.reference_n, current_n=v.current_n,
            source=v.source)
            for v in d.values])


class MonitoringServicer(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, monitor: DriftMonitor, metrics: Metrics) -> None:
        self._monitor = monitor
        self._metrics = metrics

    async def RunDrift(self, request: monitoring_pb2.DriftRequest, context: grpc.aio.ServicerContext
                       ) -> monitoring_pb2.DriftReport:
        async with rpc_errors(context, "RunDrift", self._metrics):
            results = await self._monitor.run_drift(list(request.models) or None)
        return monitoring_pb2.DriftReport(models=[drift_message(d) for d in results])

    async def GetDrift(self, request: monitoring_pb2.DriftRequest, context: grpc.aio.ServicerContext
                       ) -> monitoring_pb2.DriftReport:
        async with rpc_errors(context, "GetDrift", self._metrics):
            names: list[str | None] = list(request.models) or [None]
            results = [d for name in names for d in await self._monitor.latest(name)]
        return monitoring_pb2.DriftReport(models=[drift_message(d) for d in results])
