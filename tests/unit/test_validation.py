"""Event validation: every kind of bad record becomes a dead letter with its reason; good ones are typed."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from mlplat.features.definitions import catalog_from_dict
from mlplat.ingest.validation import validate_events

FS = catalog_from_dict({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
    "features": [
        {"name": "n", "type": "int", "min": 0, "max": 100},
        {"name": "x", "type": "float", "nullable": False},
        {"name": "c", "type": "string", "allowed": ["a", "b"]},
        {"name": "flag", "type": "bool"},
        {"name": "seen", "type": "timestamp"},
    ]}}}).feature_sets["s"]
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def ev(**fields: object) -> bytes:
    base: dict[str, object] = {"event_id": "e1", "user_id": "u1", "event_time": "2026-01-01T00:00:00Z", "x": 1.0}
    return json.dumps({**base, **fields}).encode()


def test_a_good_event_is_typed() -> None:
    """Types are coerced as declared: ints, floats (an int is a valid float), bools, strings, timestamps."""
    batch = validate_events(FS, "user_id", [ev(n=5, x=2, c="a", flag=True, seen=1_700_000_000_000)], NOW)
    assert batch.dead == []
    row = batch.rows.to_pylist()[0]
    assert (row["n"], row["x"], row["c"], row["flag"]) == (5, 2.0, "a", True)
    assert row["seen"] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert row["event_time"] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC) and row["ingest_time"] == NOW


@pytest.mark.parametrize(("payload", "code"), [
    (b"{oops", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_json"),
    (b'"just a string"', "not_an_object"),
    (json.dumps({"user_id": "u1", "event_time": 1, "x": 1.0}).encode(), "missing_field"),
    (ev(event_id=""), "wrong_type"),
    (ev(user_id=None), "wrong_type"),
    (ev(event_time="yesterday"), "wrong_type"),
    (ev(n="5"), "wrong_type"),
    (ev(n=1.5), "wrong_type"),
    (ev(n=True), "wrong_type"),
    (ev(n=2**70), "wrong_type"),
    (ev(flag=1), "wrong_type"),
    (ev(x=None), "null_not_allowed"),
    (ev(n=-1), "out_of_range"),
    (ev(n=101), "out_of_range"),
    (ev(c="z"), "not_allowed"),
    (ev(x=float("nan")), "invalid_json"),  # NaN and Infinity are not JSON (strict parser)
    (ev(x=float("inf")), "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    (b'{"a": "' + b"x" * (2 << 20) + b'"}', "too_large"),
])
def test_each_kind_of_bad_record_is_a_dead_letter(payload: bytes, code: str) -> None:
    """A bad record is kept byte for byte in a dead letter whose reason starts with a fixed code."""
    batch = validate_events(FS, "user_id", [payload, ev(event_id="ok")], NOW)
    assert batch.rows["event_id"].to_pylist() == ["ok"]
    (dead,) = batch.dead
    assert dead.code == code and dead.payload == payload and dead.index == 0


def test_an_integer_for_a_float_beyond_double_precision_is_taken_as_its_nearest_double() -> None:
    """Found by the fuzzing: Arrow refused 2**53 + 1 for a float column and the whole batch failed."""
    events = [ev(event_id="a", x=2**53 + 1), ev(event_id="b", x=2**63 - 1), ev(event_id="c", x=1.5),
              ev(event_id="d", x=10**400)]  # beyond 64 bits the JSON parser itself refuses the number
    batch = validate_events(FS, "user_id", events, NOW)
    assert batch.rows.column("x").to_pylist() == [float(2**53), float(2**63), 1.5]
    assert [(d.index, d.code) for d in batch.dead] == [(3, "invalid_json")]


def test_duplicate_event_ids_keep_the_first() -> None:
    """Within a batch the first event with an id wins; a different event with the same id is a dead letter."""
    batch = validate_events(FS, "user_id", [ev(x=1.0), ev(x=2.0)], NOW)
    assert batch.rows["x"].to_pylist() == [1.0]
    assert [d.code for d in batch.dead] == ["duplicate_event_id"] and batch.redelivered == []
    assert "different content" in batch.dead[0].reason


def test_an_identical_copy_of_an_event_is_one_event_delivered_twice() -> None:
    """A producer that retried a publish the broker had taken sends the same bytes again: kept once, counted
    as redelivered, no dead letter (found by the broker outage test). A copy of a bad event stays bad."""
    events = [ev(event_id="a"), ev(event_id="b"), ev(event_id="a"), ev(event_id="a", x=3.0), ev(event_id="a"),
              ev(event_id="bad", n=-1), ev(event_id="bad", n=-1)]
    batch = validate_events(FS, "user_id", events, NOW)
    assert batch.rows["event_id"].to_pylist() == ["a", "b"]
    assert batch.redelivered == [2, 4]
    assert [(d.index, d.code) for d in batch.dead] == [(3, "duplicate_event_id"), (5, "out_of_range"),
                                                       (6, "out_of_range")]


def test_nulls_and_unknown_fields_are_accepted() -> None:
    """Missing nullable features are null; fields the set does not declare are ignored."""
    batch = validate_events(FS, "user_id", [ev(surprise=[1, 2], c=None)], NOW)
    assert batch.dead == [] and batch.rows.to_pylist()[0]["c"] is None


def test_an_empty_batch_is_an_empty_table() -> None:
    """No events, no rows, no dead letters, and the schema is still right."""
    batch = validate_events(FS, "user_id", [], NOW)
    assert batch.rows.num_rows == 0 and "seen" in batch.rows.column_names


def test_typed_tables_follow_the_same_rules() -> None:
    """Parquet-like typed columns: clean rows pass in one cast; bad ones get the same reason codes as JSON."""
    import pyarrow as pa

    from mlplat.ingest.validation import validate_table

    table = pa.table({
        "event_id": ["a", "b", "c", "a", None, "a"],
        "user_id": ["u", "u", "u", "u", "u", "u"],
        "event_time": ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z",
                       "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"],
        "n": pa.array([1, 500, 2, 3, 4, 1], pa.int64()),
        "x": [1.0, 1.0, None, 1.0, 1.0, 1.0],
    })
    batch = validate_table(FS, "user_id", table, NOW, from_text=False)
    assert batch.rows["event_id"].to_pylist() == ["a"]
    assert [d.code for d in batch.dead] == ["out_of_range", "null_not_allowed", "duplicate_event_id",
                                            "missing_field"]
    assert batch.redelivered == [5]  # the last row repeats the first exactly
    assert json.loads(batch.dead[0].payload)["n"] == 500


def test_text_tables_parse_strings_and_name_bad_values() -> None:
    """CSV text: numbers, booleans and times are parsed; an unparsable value is wrong_type with its text."""
    import pyarrow as pa

    from mlplat.ingest.validation import validate_table

    table = pa.table({
        "event_id": ["1", "2", "3"], "user_id": ["u", "u", "u"],
        "event_time": ["1700000000", "2026-01-01T00:00:00", "2026-01-01T00:00:00Z"],
        "n": ["7", "seven", "8"], "x": ["1.5", "2", "3"], "flag": ["true", "false", "maybe"],
    })
    batch = validate_table(FS, "user_id", table, NOW, from_text=True)
    assert batch.rows.to_pylist()[0]["n"] == 7 and batch.rows.to_pylist()[0]["flag"] is True
    assert [d.reason for d in batch.dead] == ["wrong_type: n='seven' is not int",
                                              "wrong_type: flag='maybe' is not bool"]


def test_csv_null_markers_are_null_for_numbers_bools_and_times_but_values_for_strings() -> None:
    """R writes NA, databases NULL, spreadsheets #N/A for a missing number; "NA" as a string is Namibia."""
    import pyarrow as pa

    from mlplat.ingest.validation import validate_table

    fs = catalog_from_dict({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
        "features": [{"name": "n", "type": "int"}, {"name": "flag", "type": "bool"},
                     {"name": "seen", "type": "timestamp"}, {"name": "country", "type": "string"}]}}}
    ).feature_sets["s"]
    markers = ["NA", "NULL", "#N/A", "NaN", None]  # None: an empty cell, as the CSV reader gives it
    table = pa.table({"event_id": [str(i) for i in range(len(markers))], "user_id": ["u"] * len(markers),
                      "event_time": ["2026-01-01T00:00:00Z"] * len(markers), "n": markers, "flag": markers,
                      "seen": markers, "country": markers})
    batch = validate_table(fs, "user_id", table, NOW, from_text=True)
    assert batch.dead == []
    rows = batch.rows.to_pylist()
    assert [(r["n"], r["flag"], r["seen"]) for r in rows] == [(None, None, None)] * len(markers)
    assert [r["country"] for r in rows] == ["NA", "NULL", "#N/A", "NaN", None]
