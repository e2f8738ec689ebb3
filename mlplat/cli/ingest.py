"""`mlplat ingest FILE`: upload a file to the daemon with a progress bar and print what happened."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import grpc
import typer

from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc
from mlplat.cli.client import ClientError, JsonOption, TargetOption, channel

CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def ingest_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="NDJSON, JSON array, CSV or Parquet file.",
                                         exists=True, dir_okay=False, readable=True)],
    feature_set: Annotated[str, typer.Option("--feature-set", "-f", help="Feature set the rows belong to.")],
    fmt: Annotated[str | None, typer.Option("--format", help="ndjson|json|csv|parquet (default: from the name).")]
    = None,
    upload_id: Annotated[str | None, typer.Option(help="Idempotency key (default: the file's sha256).")] = None,
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Upload a file of events to a feature set; retrying the same file ingests nothing twice.

    Rows that fail validation become dead letters with their reason (see: mlplat query
    "SELECT reason, count(*) FROM dead_letters GROUP BY ALL"). If some parts of the file could not be
    stored, it says which were and which not, and exits 1: run the same command again to store the rest.
    """
    size = file.stat().st_size
    header = ingest_pb2.UploadHeader(
        feature_set=feature_set, format=fmt or "", upload_id=upload_id or _sha256(file), filename=file.name,
        size=size,
    )
    show_progress = not json_out and sys.stderr.isatty()

    def requests(advance: Callable[[int], object] | None = None) -> Iterator[ingest_pb2.UploadRequest]:
        yield ingest_pb2.UploadRequest(header=header)
        with file.open("rb") as f:
            while block := f.read(CHUNK):
                yield ingest_pb2.UploadRequest(chunk=block)
                if advance is not None:
                    advance(len(block))

    with channel(target) as ch:
        stub = ingest_pb2_grpc.IngestServiceStub(ch)
        if show_progress:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as progress:
                task = progress.add_task(f"uploading {file.name}", total=size)
                resp, failed = _upload(stub, requests(lambda n: progress.advance(task, n)))
        else:
            resp, failed = _upload(stub, requests())
    summary = {
        "upload_id": resp.upload_id, "format": resp.format, "bytes": resp.bytes, "partitions": resp.partitions,
        "rows_accepted": resp.rows_accepted, "rows_rejected": resp.rows_rejected,
        "first_reasons": list(resp.first_reasons), "seconds": round(resp.seconds, 3), "complete": failed is None,
    }
    unit = "row_groups" if resp.format == "parquet" else "bytes"
    if failed is not None:
        summary["not_stored"] = [{"partitions": [r.first, r.last], unit: [r.start, r.end], "rows_accepted":
                                  r.rows_accepted, "rows_rejected": r.rows_rejected, "error": r.error}
                                 for r in resp.not_stored]
        summary["error"] = {"code": failed.code().name, "message": failed.details()}
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(file.name, resp, failed is not None)
    if failed is not None:
        at_fault = failed.code() == grpc.StatusCode.INVALID_ARGUMENT
        what = ("the file is at fault there: correct it and upload it again" if at_fault else
                "run the same command again to store the rest")
        raise ClientError(f"upload incomplete: {what} (rows already stored are not stored twice)")


def _upload(stub: ingest_pb2_grpc.IngestServiceStub, requests: Iterator[ingest_pb2.UploadRequest]
            ) -> tuple[ingest_pb2.UploadResponse, grpc.RpcError | None]:
    """The summary, and the error of an upload that failed after storing part of the file (whose trailing
    metadata says what was stored). Any other failure is raised."""
    try:
        return stub.Upload(requests), None
    except grpc.RpcError as e:
        from mlplat.api.ingest import RESULT_METADATA  # the daemon's side: imported only when needed

        trailing = e.trailing_metadata() if isinstance(e, grpc.Call) else None
        result = next((v for k, v in trailing or () if k == RESULT_METADATA), None)
        if not isinstance(result, bytes):
            raise
        resp = ingest_pb2.UploadResponse.FromString(result)
        if not (resp.rows_accepted or resp.rows_rejected):
            raise  # nothing was stored: a plain error
        return resp, e


def _print_summary(name: str, resp: ingest_pb2.UploadResponse, incomplete: bool) -> None:
    stored = resp.partitions - sum(r.last - r.first + 1 for r in resp.not_stored)
    head = f"INCOMPLETE: {stored} of {resp.partitions} partitions stored, " if incomplete else ""
    typer.echo(f"{name}: {head}{resp.rows_accepted:,} rows accepted, {resp.rows_rejected:,} rejected "
               f"({resp.format}, {resp.partitions} partitions, {resp.seconds:.2f}s)")
    for reason in resp.first_reasons:
        typer.echo(f"  rejected: {reason}")
    unit = "row groups" if resp.format == "parquet" else "bytes"
    for r in resp.not_stored:
        which = f"partition {r.first}" if r.first == r.last else f"partitions {r.first}-{r.last}"
        why = f": {r.error}" if r.error else ""
        typer.echo(f"  not stored: {which} ({unit} {r.start:,}-{r.end:,}){why}")
        if r.rows_accepted or r.rows_rejected:  # rows and dead letters are written apart
            typer.echo(f"    stored of it nonetheless: {r.rows_accepted:,} rows accepted, {r.rows_rejected:,} rejected")


__all__ = ["ClientError", "ingest_command"]
