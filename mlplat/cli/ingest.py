"""`mlplat ingest FILE`: upload a file to the daemon with a progress bar and print what happened."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

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
    "SELECT reason, count(*) FROM dead_letters GROUP BY ALL").
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
                resp = stub.Upload(requests(lambda n: progress.advance(task, n)))
        else:
            resp = stub.Upload(requests())
    summary = {
        "upload_id": resp.upload_id, "format": resp.format, "bytes": resp.bytes, "partitions": resp.partitions,
        "rows_accepted": resp.rows_accepted, "rows_rejected": resp.rows_rejected,
        "first_reasons": list(resp.first_reasons), "seconds": round(resp.seconds, 3),
    }
    if json_out:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{file.name}: {resp.rows_accepted:,} rows accepted, {resp.rows_rejected:,} rejected "
               f"({resp.format}, {resp.partitions} partitions, {resp.seconds:.2f}s)")
    for reason in resp.first_reasons:
        typer.echo(f"  rejected: {reason}")


__all__ = ["ClientError", "ingest_command"]
