"""Batch upload over gRPC: every format, partitioned files, idempotent retries, and clear refusals."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]
ROWS: list[dict[str, Any]] = [
    {"event_id": f"e{i}", "user_id": f"u{i % 13}", "event_time": 1_700_000_000 + i, "clicks_1h": i % 40,
     "spend_1h": -1.0 if i % 100 == 7 else i / 10, "country": "de", "is_premium": i % 3 == 0}
    for i in range(3000)
]
BAD = sum(1 for r in ROWS if float(r["spend_1h"]) < 0)


def write(path: Path, fmt: str) -> Path:
    if fmt == "ndjson":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=700)
    return path


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 2, "spare_workers": 0},
        ingest={"features_file": str(REPO / "config" / "features.toml"), "spool_dir": str(tmp_path / "spool"),
                "partition_bytes": 64 * 1024},
    ))
    await d.start()
    yield d
    await d.stop()


def requests(path: Path, upload_id: str, fmt: str = "", size: int | None = None,
             feature_set: str = "user_activity") -> Iterator[ingest_pb2.UploadRequest]:
    header = ingest_pb2.UploadHeader(feature_set=feature_set, format=fmt, upload_id=upload_id, filename=path.name,
                                     size=path.stat().st_size if size is None else size)
    yield ingest_pb2.UploadRequest(header=header)
    data = path.read_bytes()
    for i in range(0, len(data), 100_000):  # several chunks per file
        yield ingest_pb2.UploadRequest(chunk=data[i:i + 100_000])


async def upload(d: Daemon, reqs: Iterator[ingest_pb2.UploadRequest]) -> ingest_pb2.UploadResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{d.api.port}") as ch:
        resp: ingest_pb2.UploadResponse = await ingest_pb2_grpc.IngestServiceStub(ch).Upload(reqs, timeout=120)
        return resp


async def count(d: Daemon, sql: str) -> int:
    return int((await d.warehouse.read(sql)).column(0)[0].as_py())


@pytest.mark.parametrize("fmt", ["ndjson", "json", "csv", "parquet"])
async def test_each_format_is_ingested_in_partitions(daemon: Daemon, tmp_path: Path, fmt: str) -> None:
    """A file larger than one partition and one chunk: every good row lands once, bad ones are dead letters."""
    path = write(tmp_path / f"events.{fmt}", fmt)
    resp = await upload(daemon, requests(path, f"up-{fmt}"))
    assert (resp.rows_accepted, resp.rows_rejected) == (len(ROWS) - BAD, BAD)
    assert resp.format == fmt and resp.partitions > 1
    assert resp.first_reasons[0].startswith("out_of_range: spend_1h=-1.0")
    assert await count(daemon, "SELECT count(*) FROM fs_user_activity") == len(ROWS) - BAD
    assert await count(daemon, "SELECT count(*) FROM dead_letters WHERE source = 'upload'") == BAD


async def test_retrying_an_upload_ingests_nothing_twice(daemon: Daemon, tmp_path: Path) -> None:
    """The same upload id again: same summary, no new rows, no new dead letters."""
    path = write(tmp_path / "events.ndjson", "ndjson")
    first = await upload(daemon, requests(path, "same-id"))
    again = await upload(daemon, requests(path, "same-id"))
    assert (again.rows_accepted, again.rows_rejected) == (first.rows_accepted, first.rows_rejected)
    assert await count(daemon, "SELECT count(*) FROM fs_user_activity") == len(ROWS) - BAD
    assert await count(daemon, "SELECT count(*) FROM dead_letters") == BAD


async def test_an_interrupted_upload_ingests_nothing_and_a_retry_everything(daemon: Daemon, tmp_path: Path) -> None:
    """A stream that ends short of its announced size is refused whole; the retry then ingests it once."""
    path = write(tmp_path / "events.ndjson", "ndjson")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(daemon, requests(path, "cut", size=path.stat().st_size + 10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in (err.value.details() or "")
    assert await count(daemon, "SELECT count(*) FROM fs_user_activity") == 0
    resp = await upload(daemon, requests(path, "cut"))
    assert resp.rows_accepted == len(ROWS) - BAD
    assert list((tmp_path / "spool").iterdir()) == []  # spool files are removed either way


async def test_an_upload_whose_client_goes_away_mid_stream_ingests_nothing_and_a_retry_everything(
        daemon: Daemon, tmp_path: Path) -> None:
    """The client is cut off after part of the file (its call cancelled, as when the process dies or the
    network drops): it gets an error, nothing lands, the spool is cleaned, and the retry ingests the file once."""
    path = write(tmp_path / "events.ndjson", "ndjson")
    sent = asyncio.Event()

    async def half_then_hang() -> AsyncIterator[ingest_pb2.UploadRequest]:
        all_requests = list(requests(path, "cut-off"))
        for request in all_requests[: len(all_requests) // 2]:
            yield request
        sent.set()
        await asyncio.Event().wait()  # the rest never comes

    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as ch:
        call = ingest_pb2_grpc.IngestServiceStub(ch).Upload(half_then_hang(), timeout=120)
        await sent.wait()
        await asyncio.sleep(0.3)  # the daemon has the first half
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    spool = tmp_path / "spool"
    await until(lambda: not spool.exists() or list(spool.iterdir()) == [], "the spool file removed", limit_s=10)
    assert await count(daemon, "SELECT count(*) FROM fs_user_activity") == 0
    resp = await upload(daemon, requests(path, "cut-off"))
    assert resp.rows_accepted == len(ROWS) - BAD
    assert await count(daemon, "SELECT count(*) FROM fs_user_activity") == len(ROWS) - BAD
    assert await count(daemon, "SELECT count(*) FROM dead_letters") == BAD


@pytest.mark.parametrize(("content", "fmt", "named"), [
    (b"PAR1 not really parquet", "parquet", "Parquet"),
    (b'[{"event_id": "a"}, {"event_id": ', "json", "not closed"),
    (b"garbage", "xml", "unknown format"),
])
async def test_broken_files_are_refused_clearly(daemon: Daemon, tmp_path: Path, content: bytes, fmt: str,
                                                named: str) -> None:
    """Truncated or mislabelled files get INVALID_ARGUMENT naming the problem."""
    path = tmp_path / "broken.bin"
    path.write_bytes(content)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(daemon, requests(path, "broken", fmt=fmt))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (err.value.details() or "")


async def test_an_unknown_feature_set_is_not_found(daemon: Daemon, tmp_path: Path) -> None:
    """Uploading to a feature set that does not exist is NOT_FOUND, naming the ones that do."""
    path = write(tmp_path / "events.ndjson", "ndjson")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(daemon, requests(path, "x", feature_set="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "user_activity" in (err.value.details() or "")
