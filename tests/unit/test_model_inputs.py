"""The one row builder (serving/inputs.py) and the validated topic's messages (ingest/validated.py)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest

from mlplat.backends.bus import Message, TopicPartition
from mlplat.backends.bus.memory import partition_for_key
from mlplat.ingest.validated import CHUNK_ROWS, OFFSET, ValidatedChunk, chunks, key_for_partition
from mlplat.serving.inputs import InvalidInput, build_row, fill_online, given_matrix, lacking, table_matrix
from mlplat.serving.registry import ModelVersion
from tests.models import FEATURES

MV = ModelVersion(model="churn", version=1, flavour="sklearn", artifact_key="k", sha256="0" * 64, stage="production",
                  features=FEATURES, feature_set="fs")


def test_a_request_row_takes_the_request_first_then_the_online_values_and_names_what_is_wrong() -> None:
    row = build_row(MV, {"clicks_1h": 3, "is_premium": True}, {"spend_1h": 2.5, "session_minutes": 7, "clicks_1h": 9})
    assert row.tolist() == [3.0, 2.5, 7.0, 1.0]
    with pytest.raises(InvalidInput, match=r"'session_minutes' .* missing .*online store"):
        build_row(MV, {"clicks_1h": 3, "spend_1h": 1.0, "is_premium": False}, {})
    with pytest.raises(InvalidInput, match="'clicks_1h' must be an integer"):
        build_row(MV, {"clicks_1h": 3.5, "spend_1h": 1.0, "session_minutes": 1.0, "is_premium": False}, None)
    with pytest.raises(InvalidInput, match="no feature 'nope'"):
        build_row(MV, {"nope": 1}, None)


def test_event_rows_and_warehouse_rows_become_the_same_matrix_as_a_request_row() -> None:
    """Streaming (validated events) and drift (warehouse rows) build what Predict builds from the same values."""
    table = pa.table({"clicks_1h": pa.array([3, None], pa.int64()), "spend_1h": [2.5, 1.0],
                      "session_minutes": [7.0, 8.0], "is_premium": [True, False], "other": ["a", "b"]})
    matrix = table_matrix(table, MV.feature_names)
    first = {k: v for k, v in table.to_pylist()[0].items() if k != "other"}
    assert matrix[0].tolist() == build_row(MV, first, None).tolist() == [3.0, 2.5, 7.0, 1.0]
    assert math.isnan(matrix[1, 0]) and matrix[1, 1:].tolist() == [1.0, 8.0, 0.0]


def test_holes_are_filled_from_the_online_features_and_a_value_that_is_no_number_stays_a_hole() -> None:
    given = {"clicks_1h": np.array([1.0, np.nan, np.nan]), "spend_1h": np.array([2.0, 2.0, 2.0])}
    matrix = given_matrix(MV, given, 3)
    rows, wanted = lacking(matrix, ["u1", "u2", "u2"])
    assert rows.tolist() == [0, 1, 2] and wanted == ["u1", "u2"]
    fill_online(matrix, MV, rows, ["u1", "u2", "u2"], {
        "u1": {"session_minutes": 5, "is_premium": True, "clicks_1h": 99},
        "u2": {"clicks_1h": "many", "session_minutes": math.inf, "is_premium": False}})
    assert matrix[0].tolist() == [1.0, 2.0, 5.0, 1.0]  # the given value wins over the online one
    assert np.isnan(matrix[1, 0]) and np.isnan(matrix[1, 2]) and matrix[1, 3] == 0.0


def test_a_validated_chunk_keeps_its_rows_types_offsets_and_counts() -> None:
    ts = pa.timestamp("us", tz="UTC")
    rows = pa.table({"event_id": ["e1", "e2"], "event_time": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 2, ts),
                     "is_premium": [True, None], OFFSET: pa.array([7, 9], pa.int64())})
    [chunk] = chunks(TopicPartition("events", 2), rows, invalid=3, redelivered=1)
    back = ValidatedChunk.from_message(Message("events.validated", 2, 0, None, chunk.to_bytes(), 0))
    assert back == ValidatedChunk(TopicPartition("events", 2), rows, 3, 1)
    assert back.rows.schema == rows.schema
    with pytest.raises(ValueError, match=r"events\.validated:2:5 is not a validated chunk"):
        ValidatedChunk.from_message(Message("events.validated", 2, 5, None, b'{"event_id": "e1"}', 0))


def test_a_big_batch_is_cut_into_chunks_and_a_batch_of_dead_letters_only_still_carries_its_counts() -> None:
    rows = pa.table({"event_id": [f"e{i}" for i in range(CHUNK_ROWS * 2 + 1)]})
    cut = chunks(TopicPartition("t", 0), rows, 2, 1)
    assert [c.rows.num_rows for c in cut] == [CHUNK_ROWS, CHUNK_ROWS, 1]
    assert [(c.invalid, c.redelivered) for c in cut] == [(2, 1), (0, 0), (0, 0)]
    assert [(c.invalid, c.rows.num_rows) for c in chunks(TopicPartition("t", 0), rows.slice(0, 0), 4, 0)] == [(4, 0)]
    assert chunks(TopicPartition("t", 0), rows.slice(0, 0), 0, 0) == []


@pytest.mark.parametrize("partitions", [1, 3, 4, 16])
def test_the_validated_chunk_of_a_partition_goes_to_the_partition_of_the_same_number(partitions: int) -> None:
    for p in range(partitions):
        assert partition_for_key(key_for_partition(p, partitions), partitions) == p
