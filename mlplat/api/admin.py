"""AdminService: read-only SQL over the warehouse, and the daemon's status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping

import grpc

from mlplat import __version__
from mlplat.api.convert import columns_of, rows_of
from mlplat.api.errors import rpc_errors
from mlplat.api.v1 import admin_pb2, admin_pb2_grpc
from mlplat.errors import Overloaded
from mlplat.observability.health import Readiness
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, warehouse: Warehouse, readiness: Readiness, metrics: Metrics, backends: Mapping[str, str],
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self._max_bytes = max_message_bytes - 4096  # room for the message's own framing
        self._warehouse = warehouse
        self._readiness = readiness
        self._metrics = metrics
        self._backends = dict(backends)

    async def Query(
        self, request: admin_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.QueryResponse]:
        async with rpc_errors(context, "Query", self._metrics):  # one block: the call is counted once
            result = await self._warehouse.query(
                request.sql, max_rows=request.max_rows or None, use_cache=not request.no_cache, lossless=True
            )
            yield admin_pb2.QueryResponse(columns=columns_of(result.table.schema))
            for rows in rows_of(result.table, typed=request.typed):
                for message in self._fitting(rows):
                    yield message
                    await asyncio.sleep(0)  # let other RPCs in between large results
        yield admin_pb2.QueryResponse(truncated=result.truncated, cached=result.cached)

    def _fitting(self, rows: list[admin_pb2.Row]) -> Iterator[admin_pb2.QueryResponse]:
        """Rows split into messages under the size limit; one row over it alone is refused, clearly."""
        batch: list[admin_pb2.Row] = []
        size = 0
        for row in rows:
            row_size = row.ByteSize() + 8
            if row_size > self._max_bytes:
                raise Overloaded(f"a row of the result is {row_size / 1e6:.1f} MB, more than a message may carry "
                                 f"(api.max_message_mb): select fewer or smaller columns")
            if batch and size + row_size > self._max_bytes:
                yield admin_pb2.QueryResponse(rows=batch)
                batch, size = [], 0
            batch.append(row)
            size += row_size
        if batch:
            yield admin_pb2.QueryResponse(rows=batch)

    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusResponse:
        async with rpc_errors(context, "Status", self._metrics):
            checks = [
                admin_pb2.CheckStatus(name=name, ok=bool(c["ok"]), reason=str(c["reason"]))
                for name, c in self._readiness.report().items()
            ]
        return admin_pb2.StatusResponse(
            version=__version__, ready=self._readiness.ready, checks=checks, backends=self._backends
        )
