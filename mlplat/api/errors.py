"""Translate domain exceptions into gRPC status codes at the servicer boundary, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from mlplat.errors import (
    BackendUnavailable,
    ConfigError,
    IncompatibleChange,
    MlplatError,
    NotFound,
    Overloaded,
    QueryForbidden,
    QueryRejected,
)
from mlplat.observability.logging import get_logger, mask_secrets
from mlplat.observability.metrics import Metrics

log = get_logger("api")

STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (QueryForbidden, grpc.StatusCode.PERMISSION_DENIED),
    (QueryRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (IncompatibleChange, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (MlplatError, grpc.StatusCode.INTERNAL),
)


def status_for(error: Exception) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


@asynccontextmanager
async def rpc_errors(context: grpc.aio.ServicerContext, method: str, metrics: Metrics) -> AsyncIterator[None]:
    """Count the call and turn any exception into an abort with a message a person can act on."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as e:
        code = status_for(e)
        metrics.grpc_requests.labels(method, code.name).inc()
        if code is grpc.StatusCode.INTERNAL:
            log.error("rpc_failed", method=method, error=str(e), exc_info=e)
            message = f"internal error in {method}: {e}"
        else:
            message = str(e)
        await context.abort(code, mask_secrets(message))
    else:
        metrics.grpc_requests.labels(method, "OK").inc()
