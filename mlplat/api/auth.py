"""Token authentication for the gRPC API: read RPCs and admin RPCs have separate tokens.

With no token configured the API is open (the embedded default binds to loopback). With tokens, every
call but the health check carries `authorization: Bearer <token>`: a read RPC takes the read or the admin
token, anything that changes state (register, promote, archive, train, declare, upload, publish, query,
drift runs, feature-set registration) takes the admin token only. A missing or unknown token is
UNAUTHENTICATED, a read token on an admin RPC PERMISSION_DENIED; both are counted in
mlplat_auth_failures_total{method,code}. Unknown methods need the admin token (fail closed).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("api")
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
READ_METHODS = frozenset({
    "/mlplat.v1.AdminService/Status",
    "/mlplat.v1.FeatureService/ListFeatureSets",
    "/mlplat.v1.FeatureService/GetOnlineFeatures",
    "/mlplat.v1.FeatureService/GetHistoricalFeatures",
    "/mlplat.v1.ModelService/ListVersions",
    "/mlplat.v1.ModelService/History",
    "/mlplat.v1.PredictionService/ListModels",
    "/mlplat.v1.PredictionService/GetModel",
    "/mlplat.v1.PredictionService/Predict",
    "/mlplat.v1.PredictionService/PredictBatch",
    "/mlplat.v1.PredictionService/PredictStream",
    "/mlplat.v1.MonitoringService/GetDrift",
    "/mlplat.v1.TrainingService/ListSpecs",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
})


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as the real one that only aborts."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as a streaming handler must be

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types for it
    def __init__(self, read_token: str | None, admin_token: str | None, metrics: Metrics) -> None:
        self._read = read_token
        self._admin = admin_token
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        read = method in READ_METHODS
        if token is None:
            return self._refuse(handler, method, grpc.StatusCode.UNAUTHENTICATED,
                                "this mlplat needs a token: send `authorization: Bearer <token>` "
                                "(the CLI reads MLPLAT_TOKEN or MLPLAT_TOKEN_FILE)")
        if _same(token, self._admin) or (read and _same(token, self._read)):
            return handler
        if _same(token, self._read):
            return self._refuse(handler, method, grpc.StatusCode.PERMISSION_DENIED,
                                f"{method.rsplit('/', 1)[-1]} changes state: it needs the admin token, "
                                "not the read token")
        return self._refuse(handler, method, grpc.StatusCode.UNAUTHENTICATED, "the token is not valid here")

    def _refuse(self, handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode,
                message: str) -> grpc.RpcMethodHandler:
        self._metrics.auth_failures.labels(method.rsplit("/", 1)[-1], code.name).inc()
        log.warning("rpc_refused", method=method, code=code.name)
        return _refusing(handler, code, message)
