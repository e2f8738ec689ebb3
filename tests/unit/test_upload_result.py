"""The result of an incomplete upload: consecutive failures in one entry, small enough for gRPC metadata."""

from __future__ import annotations

from mlplat.api.ingest import MAX_RUNS, _result
from mlplat.api.v1 import ingest_pb2
from mlplat.ingest.batch import PartitionOutcome, UploadSummary
from mlplat.ingest.files import Partition

MB = 1 << 20


def outcome(i: int, error: str, accepted: int = 0, rejected: int = 0) -> PartitionOutcome:
    return PartitionOutcome(Partition(i, i * MB, (i + 1) * MB), accepted, rejected, error)


def test_consecutive_partitions_failing_alike_are_one_entry() -> None:
    """Partitions 3-5 failed the same way, 7 differently: two entries, with what of them was stored."""
    summary = UploadSummary("u", "csv", 10, 10 * MB, rows_accepted=60, rows_rejected=2, not_stored=[
        outcome(3, "disk full"), outcome(4, "disk full", rejected=2), outcome(5, "disk full"), outcome(7, "bad CSV")])
    result = ingest_pb2.UploadResponse.FromString(_result(summary))
    assert result.incomplete and (result.rows_accepted, result.rows_rejected) == (60, 2)
    assert [(r.first, r.last, r.start, r.end, r.rows_accepted, r.rows_rejected, r.error) for r in result.not_stored] \
        == [(3, 5, 3 * MB, 6 * MB, 0, 2, "disk full"), (7, 7, 7 * MB, 8 * MB, 0, 0, "bad CSV")]


def test_the_result_stays_small_enough_for_trailing_metadata() -> None:
    """Thousands of partitions failing each in its own way, with huge error texts and reasons: the result
    stays under 4 KiB (gRPC clients refuse trailing metadata beyond about 8 KiB), its last entry spanning
    the rest."""
    failed = [outcome(i, f"error {i}: " + "x" * 10_000, accepted=1) for i in range(0, 8000, 2)]
    summary = UploadSummary("u" * 128, "ndjson", 8000, 8000 * MB, rows_accepted=2**40, rows_rejected=2**40,
                            first_reasons=["r" * 100_000] * 5, not_stored=failed)
    data = _result(summary)
    assert len(data) < 4096
    result = ingest_pb2.UploadResponse.FromString(data)
    assert len(result.not_stored) == MAX_RUNS
    assert (result.not_stored[-1].last, result.not_stored[-1].end) == (7998, 7999 * MB)
    assert sum(r.rows_accepted for r in result.not_stored) == len(failed)
