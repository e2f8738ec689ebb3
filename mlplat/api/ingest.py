"""IngestService: the client-streaming Upload RPC. Spools to disk in chunks, then hands the file over.

An upload that fails after some partitions were stored fails with the status of the first failure; its
trailing metadata RESULT_METADATA holds an UploadResponse (incomplete = true) saying what was stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from mlplat.api.errors import STATUS_OF, rpc_errors
from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc
from mlplat.backends.bus import EventBus
from mlplat.errors import MlplatError, Overloaded
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.batch import BatchIngest, PartitionOutcome, UploadIncomplete, UploadSummary
from mlplat.ingest.files import FileFormatError
from mlplat.observability.metrics import Metrics

PUBLISH_BATCH = 1000
RESULT_METADATA = "mlplat-upload-bin"
# the result rides in trailing metadata, which gRPC clients cap at 8 KiB with the status message (base64 of
# a -bin value included): at most MAX_RUNS entries of not_stored, and texts cut short, keep it under 4 KiB
MAX_RUNS, RUN_ERRORS, TEXT_CHARS = 50, 3, 200
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, batch: BatchIngest, bus: EventBus, registry: FeatureRegistry, metrics: Metrics, *, spool_dir: Path,
        max_bytes: int,
    ) -> None:
        self._batch = batch
        self._bus = bus
        self._registry = registry
        self._metrics = metrics
        self._spool_dir = spool_dir
        self._max_bytes = max_bytes

    async def Upload(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadResponse:
        async with rpc_errors(context, "Upload", self._metrics):
            header = await self._header(request_iterator)
            upload_id = header.upload_id or uuid.uuid4().hex
            spool = await self._spool(request_iterator, upload_id, header.size)
            try:
                summary = await self._batch.ingest_file(
                    spool, header.feature_set, upload_id=upload_id, fmt=header.format or _fmt_of(header.filename)
                )
            except FileFormatError as e:
                raise ValueError(str(e)) from None
            except UploadIncomplete as e:
                context.set_trailing_metadata(((RESULT_METADATA, _result(e.summary)),))
                kind = next((k for k, _ in STATUS_OF if isinstance(e.cause, k)), MlplatError)
                raise kind(str(e)) from None  # the status of the first failure, the message of the whole
            finally:
                await asyncio.to_thread(_remove, spool)
        return _response(summary)

    async def Publish(
        self, request_iterator: AsyncIterator[ingest_pb2.PublishRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.PublishResponse:
        published = 0
        async with rpc_errors(context, "Publish", self._metrics):
            pending: dict[str, list[tuple[bytes | None, bytes]]] = {}
            async for message in request_iterator:
                topic = self._registry.get(message.feature_set).topic
                pending.setdefault(topic, []).append((message.key or None, message.payload))
                if sum(len(v) for v in pending.values()) >= PUBLISH_BATCH:
                    published += await self._flush(pending)
            published += await self._flush(pending)
        return ingest_pb2.PublishResponse(published=published)

    async def _flush(self, pending: dict[str, list[tuple[bytes | None, bytes]]]) -> int:
        count = 0
        for topic, items in pending.items():
            await self._bus.publish_many(topic, items)
            count += len(items)
        pending.clear()
        return count

    async def _header(self, requests: AsyncIterator[ingest_pb2.UploadRequest]) -> ingest_pb2.UploadHeader:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "header":
            raise ValueError("the first Upload message must carry the header (feature_set, format, upload_id)")
        header = first.header
        if not header.feature_set:
            raise ValueError("header.feature_set is required")
        if header.upload_id and not _UPLOAD_ID.match(header.upload_id):
            raise ValueError("header.upload_id may hold only letters, digits and _.:- (at most 128)")
        return header

    async def _spool(self, requests: AsyncIterator[ingest_pb2.UploadRequest], upload_id: str, size: int) -> Path:
        await asyncio.to_thread(self._spool_dir.mkdir, parents=True, exist_ok=True)
        path = self._spool_dir / f"{upload_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"
        received = 0
        f = await asyncio.to_thread(path.open, "wb")
        try:
            async for message in requests:
                if message.WhichOneof("part") != "chunk":
                    raise ValueError("only one header per upload; later messages must carry chunks")
                received += len(message.chunk)
                if received > self._max_bytes:
                    raise Overloaded(f"upload exceeds ingest.max_upload_bytes ({self._max_bytes} bytes)")
                await asyncio.to_thread(f.write, message.chunk)
            await asyncio.to_thread(f.flush)
        except BaseException:
            f.close()
            await asyncio.shield(asyncio.to_thread(_remove, path))
            raise
        f.close()
        if size and received != size:
            await asyncio.to_thread(_remove, path)
            raise ValueError(f"upload ended after {received} of {size} bytes (truncated); nothing was ingested")
        return path


def _response(summary: UploadSummary) -> ingest_pb2.UploadResponse:
    return ingest_pb2.UploadResponse(
        upload_id=summary.upload_id, rows_accepted=summary.rows_accepted, rows_rejected=summary.rows_rejected,
        first_reasons=summary.first_reasons, seconds=summary.seconds, partitions=summary.partitions,
        bytes=summary.bytes, format=summary.format, incomplete=bool(summary.not_stored),
        not_stored=_runs(summary.not_stored),
    )


def _result(summary: UploadSummary) -> bytes:
    """The summary of an incomplete upload, small enough for trailing metadata."""
    result = _response(summary)
    result.first_reasons[:] = [r[:TEXT_CHARS] for r in result.first_reasons]
    return result.SerializeToString()


def _runs(outcomes: list[PartitionOutcome]) -> list[ingest_pb2.UploadPartitions]:
    """Consecutive partitions with the same error as one entry; at most MAX_RUNS (the last then spans the
    rest, stored partitions between them included), error texts on the first RUN_ERRORS."""
    runs: list[ingest_pb2.UploadPartitions] = []
    for o in outcomes:
        last = runs[-1] if runs else None
        if last is not None and (len(runs) == MAX_RUNS or (o.part.index == last.last + 1 and o.error == last.error)):
            last.last, last.end = o.part.index, o.part.end
            last.rows_accepted += o.rows_accepted
            last.rows_rejected += o.rows_rejected
            continue
        runs.append(ingest_pb2.UploadPartitions(
            first=o.part.index, last=o.part.index, start=o.part.start, end=o.part.end, rows_accepted=o.rows_accepted,
            rows_rejected=o.rows_rejected, error=o.error))
    for i, run in enumerate(runs):
        run.error = run.error[:TEXT_CHARS] if i < RUN_ERRORS else ""
    return runs


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _fmt_of(filename: str) -> str | None:
    from mlplat.ingest.files import EXTENSIONS

    return EXTENSIONS.get(Path(filename).suffix.lower()) if filename else None
