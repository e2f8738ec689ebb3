"""Bad input everywhere, generated (hypothesis): events, files, SQL, definitions and conditions end as a
clear error or a dead letter with a reason, never a crash, a hang or a silently dropped record.

Examples are derandomized (the same cases every run, so CI is reproducible) and counted: together with
tests/e2e/test_fuzz_rpc.py they run more than 10,000 generated cases.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplat.demo import DEMO_FEATURES
from mlplat.errors import ConfigError, QueryForbidden, QueryRejected
from mlplat.features.definitions import catalog_from_dict, load_catalog
from mlplat.ingest.files import FileFormatError, detect_format, ingest_partition, plan_partitions
from mlplat.ingest.generator import GeneratorSpec, write_file
from mlplat.ingest.validation import validate_events
from mlplat.streaming.definitions import Condition
from mlplat.warehouse.query_guard import check_query
from tests.fuzz_cases import INPUT_CASES, RPC_CASES

# thousands of cases per test: bounded by the case count; the limit only catches a hang
pytestmark = pytest.mark.timeout(600)
FS = load_catalog(DEMO_FEATURES).feature_sets["user_activity"]
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
FIELDS = ["event_id", "user_id", "event_time", *(f.name for f in FS.features)]
CASES = INPUT_CASES
GUARD_CONNECTION = duckdb.connect(":memory:")  # the guard only parses: one connection serves every case
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.tuples(st.integers(5000, 50_000), st.characters()).map(lambda t: t[1] * t[0]))  # huge strings
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                              max_size=4),
                      max_leaves=12)
good_time = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                         timezones=st.just(dt.UTC)).map(lambda t: t.isoformat())


@st.composite
def event(draw: st.DrawFn) -> bytes:
    """Mostly well-shaped events with some fields wrong; sometimes raw bytes, broken text or odd JSON."""
    kind = draw(st.sampled_from(["object", "object", "object", "bytes", "duplicate_keys", "deep", "nan"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return ('{"event_id": "x", "user_id": "u", "nested": ' + "[" * depth + "]" * depth + "}").encode()
    record: dict[str, Any] = {}
    for name in FIELDS:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        record[name] = draw(values) if draw(st.integers(0, 3)) == 0 else _plausible(draw, name)
    for key in draw(st.lists(st.text(max_size=12), max_size=3)):  # extra fields, any name (also SQL-ish)
        record[key] = draw(values)
    text = json.dumps(record, default=str, allow_nan=True)  # NaN/Infinity tokens are not JSON: a dead letter
    if kind == "duplicate_keys" and len(text) > 2:
        text = text[:-1] + ', "event_id": ' + json.dumps(draw(st.text(max_size=10))) + "}"
    if kind == "nan":
        text = text.replace("}", ', "spend_1h": NaN}', 1)
    data = text.encode()
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    if draw(st.integers(0, 9)) == 0:
        data = data + b"\xff\xfe"  # invalid UTF-8
    return data


def _plausible(draw: st.DrawFn, name: str) -> Any:
    if name == "event_id":
        return draw(st.text(min_size=1, max_size=20))
    if name == "user_id":
        return draw(st.sampled_from(["user_1", "user_2", ""]) | st.integers(-5, 5))
    if name == "event_time":
        return draw(good_time | st.integers(-(2**40), 2**45) | st.sampled_from(["yesterday", "2026-13-45T99:00"]))
    feature = FS.feature(name)
    if feature.type == "int":
        return draw(st.integers(-10, 10**6))
    if feature.type == "float":
        return draw(st.floats(-10, 1e6, allow_nan=False) | st.sampled_from([math.inf, -math.inf]))
    if feature.type == "bool":
        return draw(st.booleans())
    return draw(st.sampled_from([*(feature.allowed or ()), "zz"]))


@settings(FUZZ, max_examples=CASES["events"])
@given(st.lists(event(), min_size=1, max_size=12), st.lists(st.integers(0, 11), max_size=3))
def test_every_event_is_accepted_or_a_dead_letter_with_a_reason(payloads: list[bytes], copies: list[int]) -> None:
    payloads = payloads + [payloads[i % len(payloads)] for i in copies]  # a producer's retries: exact copies
    batch = validate_events(FS, "user_id", payloads, NOW)
    # nothing silently dropped: a redelivered copy is an accepted event's second delivery
    assert batch.rows.num_rows + len(batch.dead) + len(batch.redelivered) == len(payloads)
    assert len({d.index for d in batch.dead}) == len(batch.dead)
    for letter in batch.dead:
        code, _, detail = letter.reason.partition(": ")
        assert code and detail, letter.reason
        assert letter.payload == bytes(payloads[letter.index])
    ids = batch.rows.column("event_id").to_pylist()
    assert all(isinstance(i, str) and i for i in ids)
    for value in batch.rows.column("spend_1h").to_pylist():
        assert value is None or math.isfinite(value)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """One small valid file per format, to be truncated and damaged."""
    root = tmp_path_factory.mktemp("files")
    spec = GeneratorSpec(FS, "user_id", entities=20, seed=1, bad_fraction=0.1, start=NOW)
    out = {}
    for fmt in ("ndjson", "json", "csv", "parquet"):
        path = root / f"events.{fmt}"
        for _ in write_file(spec, 60, path, fmt):
            pass
        out[fmt] = path.read_bytes()
    return out


@settings(FUZZ, max_examples=CASES["files"])
@given(fmt=st.sampled_from(["ndjson", "json", "csv", "parquet"]), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       declared=st.sampled_from([None, "ndjson", "json", "csv", "parquet"]))
def test_a_truncated_or_damaged_file_is_a_clear_error_or_rows_and_dead_letters(
        tmp_path_factory: pytest.TempPathFactory, good_files: dict[str, bytes], fmt: str, cut: float,
        flips: list[tuple[float, int]], declared: str | None) -> None:
    data = bytearray(good_files[fmt][: int(len(good_files[fmt]) * cut)])
    for where, byte in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = byte
    path = tmp_path_factory.getbasetemp() / f"damaged.{fmt}"
    path.write_bytes(bytes(data))
    batches, problem = [], ""
    try:
        chosen = detect_format(path, declared)
        for part in plan_partitions(path, chosen, target_bytes=512):
            batches.append(ingest_partition(str(path), chosen, part, FS.model_dump_json(), "user_id", NOW))
    except FileFormatError as e:  # a clear error naming the problem
        problem = str(e) or "(empty message)"
    assert problem != "(empty message)"
    assert all(letter.reason.partition(": ")[2] for batch in batches for letter in batch.dead)


@settings(FUZZ, max_examples=CASES["queries"])
@given(sql=st.one_of(
    st.text(max_size=200),
    st.sampled_from(["SELECT", "DROP TABLE", "ATTACH", "COPY", "PRAGMA", "INSTALL", "LOAD", "SET", "CALL",
                     "CREATE TABLE x AS", "DELETE FROM", "UPDATE", "INSERT INTO", "EXPORT DATABASE"]).flatmap(
        lambda verb: st.text(max_size=60).map(lambda rest: f"{verb} {rest}")),
    st.sampled_from(["read_csv('/etc/passwd')", "'/etc/passwd'", "read_parquet('x')", "glob('*')",
                     "duckdb_secrets()", "getenv('HOME')", "current_setting('home_directory')"]).map(
        lambda f: f"SELECT * FROM {f}"),
    st.text(max_size=30).map(lambda t: f"SELECT 1; {t}"),
))
def test_a_user_query_is_checked_or_refused_with_a_reason(sql: str) -> None:
    checked, problem = None, ""
    try:
        checked = check_query(GUARD_CONNECTION, sql, {"fs_user_activity"})
    except (QueryRejected, QueryForbidden) as e:
        problem = str(e)
    assert (checked is not None and checked.sql.strip()) or problem


@settings(FUZZ, max_examples=CASES["names"])
@given(name=st.text(max_size=70), feature=st.text(max_size=70),
       kind=st.sampled_from(["int", "float", "bool", "string", "timestamp", "decimal", "'; DROP TABLE x; --"]))
def test_feature_and_set_names_are_identifiers_or_a_config_error(name: str, feature: str, kind: str) -> None:
    data = {"entities": {"user": {"key": "user_id"}},
            "feature_sets": {name: {"entity": "user", "features": [{"name": feature, "type": kind}]}}}
    try:
        catalog = catalog_from_dict(data)
    except ConfigError as e:
        problem = str(e)
        assert problem
        return
    for fs in catalog.feature_sets.values():  # whatever was accepted is safe to quote into SQL
        for identifier in (fs.name, *(f.name for f in fs.features)):
            assert identifier.isascii() and identifier.replace("_", "").isalnum() and identifier[0].isalpha()


@settings(FUZZ, max_examples=CASES["conditions"])
@given(text=st.one_of(st.text(max_size=60), st.lists(
    st.tuples(st.sampled_from(["score", "Score", "x", "__import__('os')"]),
              st.sampled_from([">", "<", ">=", "<=", "==", "!=", "=>", "="]),
              st.one_of(st.floats(allow_nan=True).map(str), st.text(max_size=6))),
    min_size=1, max_size=3).map(lambda parts: " and ".join(" ".join(p) for p in parts))))
def test_an_action_condition_is_parsed_never_evaluated_as_code(text: str) -> None:
    try:
        condition = Condition(text)
    except ValueError as e:
        problem = str(e)
        assert problem
        return
    for score in (-1.0, 0.0, 0.5, 1.0, math.inf):
        assert condition(score) in (True, False)


def test_the_generated_cases_add_up_to_more_than_ten_thousand() -> None:
    """The counts in tests/fuzz_cases.py (these and the RPC fuzzing's) are what CI runs: keep them honest."""
    assert sum(INPUT_CASES.values()) + sum(RPC_CASES.values()) >= 10_000

