"""ModelService (the registry) and PredictionService (serving) over gRPC: proto in, one call, proto out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from mlplat.api.errors import rpc_errors, status_for
from mlplat.api.v1 import models_pb2, models_pb2_grpc
from mlplat.errors import MlplatError
from mlplat.observability.metrics import Metrics
from mlplat.serving.registry import InputFeature, ModelRegistry, ModelVersion
from mlplat.serving.service import ModelServing, PredictionResult

MAX_MODEL_BYTES = 1 << 30
MAX_BATCH_ROWS = 1_000_000
STREAM_IN_FLIGHT = 64


def version_info(mv: ModelVersion) -> models_pb2.ModelVersionInfo:
    return models_pb2.ModelVersionInfo(
        model=mv.model, version=mv.version, stage=mv.stage, flavour=mv.flavour, sha256=mv.sha256,
        features=[models_pb2.InputFeature(name=f.name, type=f.type) for f in mv.features],
        feature_set=mv.feature_set or "", metrics=mv.metrics, created_by=mv.created_by, reason=mv.reason,
        created_at=mv.created_at, training_start=mv.training_window.get("start", ""),
        training_end=mv.training_window.get("end", ""),
        exports={flavour: export["key"] for flavour, export in mv.exports.items()},
        artifacts_deleted_at=mv.artifacts_deleted_at,
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: Metrics,
                 serve_here: Callable[[ModelVersion], Awaitable[bool]] | None = None) -> None:
        self._registry = registry
        self._metrics = metrics
        self._serve_here = serve_here  # so that a Promote answered here means "served here"

    async def RegisterModel(
        self, request_iterator: AsyncIterator[models_pb2.RegisterModelRequest], context: grpc.aio.ServicerContext
    ) -> models_pb2.ModelVersionInfo:
        async with rpc_errors(context, "RegisterModel", self._metrics):
            header: models_pb2.RegisterModelRequest | None = None
            chunks: list[bytes] = []
            size = 0
            async for message in request_iterator:
                header = header or message
                size += len(message.chunk)
                if size > MAX_MODEL_BYTES:
                    raise ValueError(f"model file larger than {MAX_MODEL_BYTES:,} bytes")
                chunks.append(message.chunk)
            if header is None or not header.name:
                raise ValueError("the first message must name the model (name, flavour, features)")
            mv = await self._registry.register(
                header.name, b"".join(chunks), header.flavour,
                [InputFeature(f.name, f.type or "float") for f in header.features],
                feature_set=header.feature_set or None, metrics=dict(header.metrics),
                training_window={k: v for k, v in (("start", header.training_start), ("end", header.training_end))
                                 if v},
                reason=header.reason or "registered",
            )
        return version_info(mv)

    async def ListVersions(
        self, request: models_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListVersionsResponse:
        async with rpc_errors(context, "ListVersions", self._metrics):
            versions = await self._registry.versions(request.model or None)
        return models_pb2.ListVersionsResponse(versions=[version_info(v) for v in versions])

    async def Promote(self, request: models_pb2.StageRequest, context: grpc.aio.ServicerContext
                      ) -> models_pb2.ModelVersionInfo:
        async with rpc_errors(context, "Promote", self._metrics):
            mv = await self._registry.promote(request.model, request.version, reason=request.reason or "promoted")
            if self._serve_here is not None:
                await self._serve_here(mv)
        return version_info(mv)

    async def Archive(self, request: models_pb2.StageRequest, context: grpc.aio.ServicerContext
                      ) -> models_pb2.ModelVersionInfo:
        async with rpc_errors(context, "Archive", self._metrics):
            mv = await self._registry.archive(request.model, request.version, reason=request.reason or "archived")
        return version_info(mv)

    async def History(self, request: models_pb2.HistoryRequest, context: grpc.aio.ServicerContext
                      ) -> models_pb2.HistoryResponse:
        async with rpc_errors(context, "History", self._metrics):
            if not 0 <= request.limit <= 10_000:
                raise ValueError(f"limit must be between 0 (200) and 10000, not {request.limit}")
            entries = await self._registry.history(request.model, request.limit or 200)
        return models_pb2.HistoryResponse(entries=[
            models_pb2.AuditEntry(recorded_at=e.recorded_at, actor=e.actor, action=e.action, subject=e.subject,
                                  reason=e.reason, details_json=json.dumps(e.details)) for e in entries])


def _response(result: PredictionResult) -> models_pb2.PredictResponse:
    return models_pb2.PredictResponse(score=result.score, model=result.model, version=result.version,
                                      latency_ms=result.latency_ms, request_id=result.request_id)


class PredictionServicer(models_pb2_grpc.PredictionServiceServicer):
    def __init__(self, serving: ModelServing, metrics: Metrics) -> None:
        self._serving = serving
        self._metrics = metrics

    async def ListModels(self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> models_pb2.ListVersionsResponse:
        async with rpc_errors(context, "ListModels", self._metrics):
            served = self._serving.served()
        return models_pb2.ListVersionsResponse(versions=[version_info(v) for v in served])

    async def GetModel(self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
                       ) -> models_pb2.ModelVersionInfo:
        async with rpc_errors(context, "GetModel", self._metrics):
            served = await self._serving.version_for(request.model, request.version)
        return version_info(served.mv)

    async def _predict(self, request: models_pb2.PredictRequest) -> PredictionResult:
        features: dict[str, Any] = json_format.MessageToDict(request.features) if request.HasField("features") else {}
        return await self._serving.predict(request.model, features, entity_id=request.entity_id or None,
                                           version=request.version, request_id=request.request_id)

    async def Predict(self, request: models_pb2.PredictRequest, context: grpc.aio.ServicerContext
                      ) -> models_pb2.PredictResponse:
        async with rpc_errors(context, "Predict", self._metrics):
            result = await self._predict(request)
        return _response(result)

    async def PredictBatch(self, request: models_pb2.PredictBatchRequest, context: grpc.aio.ServicerContext
                           ) -> models_pb2.PredictBatchResponse:
        async with rpc_errors(context, "PredictBatch", self._metrics):
            names = list(request.feature_names)
            if not 0 < request.rows <= MAX_BATCH_ROWS:
                raise ValueError(f"rows must be between 1 and {MAX_BATCH_ROWS:,}, not {request.rows}")
            expected = request.rows * len(names) * 8
            if len(request.float64_rows) != expected:
                raise ValueError(f"float64_rows has {len(request.float64_rows):,} bytes; {request.rows} rows x "
                                 f"{len(names)} features x 8 = {expected:,}")
            matrix = np.frombuffer(request.float64_rows, dtype="<f8").reshape(request.rows, len(names))
            scores, result = await self._serving.predict_batch(request.model, names, matrix,
                                                               version=request.version)
        return models_pb2.PredictBatchResponse(scores=scores.tolist(), model=result.model, version=result.version,
                                               latency_ms=result.latency_ms)

    async def PredictStream(
        self, request_iterator: AsyncIterator[models_pb2.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[models_pb2.PredictResponse]:
        """Up to STREAM_IN_FLIGHT requests of one stream run at once (so they can share micro-batches);
        answers go back in request order, and a failed request is answered with its error, not fatal."""
        pending: asyncio.Queue[tuple[models_pb2.PredictRequest, asyncio.Task[PredictionResult]] | None] = (
            asyncio.Queue(STREAM_IN_FLIGHT))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put((request, asyncio.create_task(self._predict(request))))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                request, task = item
                try:
                    result = await task
                except (MlplatError, ValueError) as e:
                    code = status_for(e)
                    self._metrics.grpc_requests.labels("PredictStream", code.name).inc()
                    yield models_pb2.PredictResponse(model=request.model, request_id=request.request_id,
                                                     error=str(e), error_code=code.name)
                    continue
                self._metrics.grpc_requests.labels("PredictStream", "OK").inc()
                yield _response(result)
        finally:  # the client went away: nothing of this stream keeps running
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            while not pending.empty():
                if (left := pending.get_nowait()) is not None:
                    left[1].cancel()
