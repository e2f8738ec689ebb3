"""Batch upload over gRPC: every format, partitioned files, idempotent retries, partial failures, and clear
refusals."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplat.api.ingest import RESULT_METADATA
from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from mlplat.warehouse.writer import ArrowWrite, WriterConnection
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


@contextlib.asynccontextmanager
async def running(tmp_path: Path, partition_bytes: int) -> AsyncIterator[Daemon]:
    d = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 2, "spare_workers": 0},
        ingest={"features_file": str(REPO / "config" / "features.toml"), "spool_dir": str(tmp_path / "spool"),
                "partition_bytes": partition_bytes},
    ))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with running(tmp_path, 64 * 1024) as d:
        yield d


@pytest.fixture
async def small_partitions(tmp_path: Path) -> AsyncIterator[Daemon]:
    """ingest.partition_bytes at its least (1 KiB): a file of a few hundred KiB has hundreds of cuts."""
    async with running(tmp_path, 1024) as d:
        yield d


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


TEXT = ["comma, inside", 'a "quoted" word', "line\nbreak", "crlf\r\nbreak", "ünïcödé ✓ 😀", '",\n"',
        'all, "of"\n😀\r\n, it', " spaced ", "'single'", '"""', "ends\n"]


async def test_csv_values_with_quoted_line_breaks_round_trip_across_every_partition_boundary(
        small_partitions: Daemon, tmp_path: Path) -> None:
    """A valid CSV whose values hold quoted line breaks, commas, quotes and UTF-8, in every record, cut into
    hundreds of partitions: every value of every row is in the warehouse exactly as written."""
    d = small_partitions
    rows = [(f"e{i} {TEXT[i % len(TEXT)]}", f"u{i % 7} {TEXT[(i + 3) % len(TEXT)]}",
             f"{TEXT[(i + 5) % len(TEXT)]}\n{i}") for i in range(2000)]
    path = tmp_path / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["event_id", "user_id", "event_time", "label", "for_id"])
        writer.writerows([event_id, user, 1_700_000_000 + i, i % 2, for_id]
                         for i, (event_id, user, for_id) in enumerate(rows))
    resp = await upload(d, requests(path, "quoted", feature_set="user_labels"))
    assert (resp.rows_accepted, resp.rows_rejected, list(resp.first_reasons)) == (len(rows), 0, [])
    assert resp.partitions > 100
    stored = await d.warehouse.read("SELECT event_id, entity_id, for_id FROM fs_user_labels")
    assert sorted(zip(*(stored.column(c).to_pylist() for c in stored.column_names), strict=True)) == sorted(rows)


def fail_writes_of(monkeypatch: pytest.MonkeyPatch, event_id: str) -> list[bool]:
    """While the returned flag holds, the warehouse cannot write a batch of rows holding event_id (injected
    at the DuckDB connection: disk full); every other write goes through."""
    failing = [True]
    apply = WriterConnection.apply

    def failing_apply(self: WriterConnection, commands: Any) -> list[int]:
        for c in commands:
            if failing[0] and isinstance(c, ArrowWrite) and c.table == "fs_user_activity" and \
                    event_id in c.data.column("event_id").to_pylist():
                raise duckdb.IOException('IO Error: Could not write file "w.duckdb": No space left on device')
        return apply(self, commands)

    monkeypatch.setattr(WriterConnection, "apply", failing_apply)
    return failing


async def cli(d: Daemon, *args: str) -> tuple[int, str, str]:
    """`mlplat ingest ...` in its own process against the daemon."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlplat", "ingest", *args, "--target", f"127.0.0.1:{d.api.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def event_ids(d: Daemon, sql: str) -> list[str]:
    return [str(v) for v in (await d.warehouse.read(sql)).column(0).to_pylist()]


async def test_a_partly_failed_upload_says_what_was_stored_and_the_same_upload_again_stores_the_rest_once(
        daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One partition's rows cannot be written after others were committed: the upload fails, and its
    result says exactly which rows were stored (all partitions but that one, and that one's dead letters,
    which are written apart). `mlplat ingest` says so and what to do; trying again while the fault lasts
    changes nothing, and once it is gone stores the rest: each row and each dead letter once."""
    path = write(tmp_path / "events.ndjson", "ndjson")
    failing = fail_writes_of(monkeypatch, "e1500")
    code, out, err = await cli(daemon, str(path), "-f", "user_activity")
    assert code == 1, err
    head, *lines = out.splitlines()
    assert head.startswith("events.ndjson: INCOMPLETE: ") and "partitions stored, " in head
    [gap_line] = [i for i, line in enumerate(lines) if line.startswith("  not stored: partition ")]
    assert "(bytes " in lines[gap_line] and "No space left on device" in lines[gap_line]
    partly = "    stored of it nonetheless: 0 rows accepted, "  # its dead letters were stored
    assert [line[:len(partly)] for line in lines[gap_line + 1:gap_line + 2]] == [partly]
    assert err.strip() == "mlplat: upload incomplete: run the same command again to store the rest (rows already " \
                          "stored are not stored twice)"

    code, out, err = await cli(daemon, str(path), "-f", "user_activity", "--json")  # again, still failing
    assert code == 1 and "upload incomplete" in err
    report = json.loads(out)
    assert report["complete"] is False and report["error"]["code"] == "INTERNAL"
    [gap] = report["not_stored"]
    assert gap["partitions"][0] == gap["partitions"][1] and 0 < gap["partitions"][0] < report["partitions"] - 1
    assert "rows not stored" in gap["error"] and "No space left on device" in gap["error"]
    start, end = gap["bytes"]
    missing = [json.loads(line) for line in path.read_bytes()[start:end].splitlines()]
    assert "e1500" in {r["event_id"] for r in missing}
    good = {r["event_id"] for r in ROWS if r["spend_1h"] >= 0}
    missing_good = {r["event_id"] for r in missing if r["spend_1h"] >= 0}
    missing_bad = len(missing) - len(missing_good)
    assert missing_bad > 0  # that partition's dead letters are among what was stored
    assert (gap["rows_accepted"], gap["rows_rejected"]) == (0, missing_bad)
    stored = await event_ids(daemon, "SELECT event_id FROM fs_user_activity")
    assert sorted(stored) == sorted(good - missing_good)
    assert (report["rows_accepted"], report["rows_rejected"]) == (len(stored), BAD)
    assert await count(daemon, "SELECT count(*) FROM dead_letters") == BAD

    failing[0] = False  # the disk is back: the same command again
    code, out, err = await cli(daemon, str(path), "-f", "user_activity")
    assert code == 0, err
    assert out.startswith(f"events.ndjson: {len(ROWS) - BAD:,} rows accepted, {BAD:,} rejected")
    assert sorted(await event_ids(daemon, "SELECT event_id FROM fs_user_activity")) == sorted(good)
    dead = await event_ids(daemon, "SELECT event_id FROM dead_letters")
    assert sorted(dead) == sorted(r["event_id"] for r in ROWS if r["spend_1h"] < 0)


async def test_the_result_of_a_partly_failed_upload_is_in_the_error_s_metadata(
        daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over gRPC: the status of the failure, a message naming what was stored and how to finish, and an
    UploadResponse with incomplete = true in the trailing metadata; a successful upload is not incomplete."""
    path = write(tmp_path / "events.parquet", "parquet")
    failing = fail_writes_of(monkeypatch, "e1500")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(daemon, requests(path, "part"))
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "upload part is incomplete" in details and "upload the same file again with upload id part" in details
    [result] = [v for k, v in err.value.trailing_metadata() or () if k == RESULT_METADATA]
    assert isinstance(result, bytes)
    resp = ingest_pb2.UploadResponse.FromString(result)
    assert resp.incomplete and resp.format == "parquet" and len(resp.not_stored) == 1
    gap = resp.not_stored[0]
    assert gap.start <= 2 < gap.end < 5  # row groups of 700 rows: e1500 is in the third, and not all are in it
    missing = ROWS[gap.start * 700:gap.end * 700]
    assert resp.rows_accepted == len(ROWS) - BAD - sum(1 for r in missing if r["spend_1h"] >= 0)
    assert gap.rows_rejected == sum(1 for r in missing if r["spend_1h"] < 0)
    failing[0] = False
    ok = await upload(daemon, requests(path, "part"))
    assert (ok.rows_accepted, ok.rows_rejected) == (len(ROWS) - BAD, BAD)
    assert not ok.incomplete and not ok.not_stored


@pytest.mark.parametrize(("content", "fmt", "named"), [
    (b"PAR1 not really parquet", "parquet", "Parquet"),
    (b'[{"event_id": "a"}, {"event_id": ', "json", "not closed"),
    (b"garbage", "xml", "unknown format"),
    (b'event_id,user_id\ne1,"u1\ne2,u2\n', "csv", "quoted CSV value opened at byte 20 is never closed"),
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
