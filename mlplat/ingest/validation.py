"""Turn raw JSON events into a typed Arrow table for one feature set, column by column.

Each record is parsed once (json, in C); after that every check works on whole columns with pyarrow and
numpy: coercion to the declared type, required fields, nulls, ranges, allowed values, NaN/Inf, and
duplicate event ids. A record that fails any check is not dropped: it becomes a dead letter carrying its
original bytes and the first reason it failed. Reason codes are few and fixed (they label a metric);
the detail after the colon names the field and the value.

An event id that comes twice with the same content is one event delivered twice (a producer retrying a
publish the broker had in fact taken): it is kept once and counted as redelivered, as a copy in a later
batch is (the warehouse ignores a known event id). Twice with different content, the second is a dead letter.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.features.definitions import Feature, FeatureSet

REASONS = (
    "invalid_json", "not_an_object", "missing_field", "wrong_type", "null_not_allowed", "out_of_range",
    "not_allowed", "not_finite", "duplicate_event_id", "too_large",
)
MAX_RECORD_BYTES = 1 << 20
UTC = dt.UTC
_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class DeadLetter:
    index: int  # position of the record in the batch it came in
    payload: bytes
    reason: str  # "<code>: <detail>"
    event_id: str | None = None

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class ValidatedBatch:
    rows: pa.Table
    dead: list[DeadLetter]
    redelivered: list[int] = field(default_factory=list)
    """Positions of identical copies of an event earlier in the batch: left out of rows, not dead letters."""


REDELIVERED = "redelivered"  # a row's reason while it is an identical copy: neither kept nor a dead letter


def schema_for(fs: FeatureSet) -> pa.Schema:
    fields = [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ingest_time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    fields += [pa.field(f.name, f.arrow_type) for f in fs.features]
    return pa.schema(fields)


def _parse(payloads: Sequence[bytes]) -> tuple[list[dict[str, Any] | None], list[str | None]]:
    objects: list[dict[str, Any] | None] = []
    reasons: list[str | None] = []
    for raw in payloads:
        if len(raw) > MAX_RECORD_BYTES:
            objects.append(None)
            reasons.append(f"too_large: {len(raw)} bytes (limit {MAX_RECORD_BYTES})")
            continue
        try:
            obj = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError) as e:
            objects.append(None)
            reasons.append(f"invalid_json: {str(e)[:120]}")
            continue
        if not isinstance(obj, dict):
            objects.append(None)
            reasons.append(f"not_an_object: got {type(obj).__name__}")
            continue
        objects.append(obj)
        reasons.append(None)
    return objects, reasons


def _to_id(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _to_time(value: Any) -> dt.datetime | None:
    """ISO 8601 strings (naive means UTC), epoch seconds/milliseconds, or a datetime (Parquet)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return dt.datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "float": (int, float), "int": (int,), "bool": (bool,), "string": (str,),
}


def _inferred_fits(feature: Feature, inferred: pa.DataType) -> bool:
    if pa.types.is_null(inferred):
        return True
    fits = {
        "int": pa.types.is_integer, "float": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
        "bool": pa.types.is_boolean, "string": pa.types.is_string, "timestamp": pa.types.is_string,
    }[feature.type]
    return bool(fits(inferred))


def _fast_coerce(feature: Feature, values: list[Any]) -> pa.Array | None:
    """One C-level conversion when every value already has the right JSON type; None means look closer."""
    try:
        inferred = pa.array(values)
        if not _inferred_fits(feature, inferred.type):
            return None
        if feature.type == "timestamp" and not pa.types.is_null(inferred.type):
            return pc.cast(inferred, _TS)
        return pc.cast(inferred, feature.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return None


def _coerce(feature: Feature, values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """The typed column and a mask of rows whose value could not be coerced (wrong type)."""
    fast = _fast_coerce(feature, values)
    if fast is not None:
        return fast, np.zeros(len(values), dtype=bool)
    bad = np.zeros(len(values), dtype=bool)
    if feature.type == "timestamp":
        out: list[dt.datetime | None] = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            t = _to_time(v)
            bad[i] = t is None
            out.append(t)
        return pa.array(out, feature.arrow_type), bad
    accepted = _PY_TYPES[feature.type]
    clean: list[Any] = values
    for i, v in enumerate(values):
        # bool is an int in Python; a JSON true is not a number, and 1.5 is not an int
        wrong = v is not None and (not isinstance(v, accepted) or (feature.type != "bool" and isinstance(v, bool)))
        if not wrong and feature.type == "int" and isinstance(v, int) and not -(2**63) <= v < 2**63:
            wrong = True
        if not wrong and feature.type == "float" and isinstance(v, int) and not isinstance(v, bool):
            # a JSON number is a double: an integer beyond 2**53 is taken at its nearest double, as JSON
            # parsers do (Arrow refuses the inexact conversion); one beyond the double range is wrong
            try:
                as_float = float(v)
            except OverflowError:
                wrong = True
            else:
                if clean is values:
                    clean = list(values)
                clean[i] = as_float
        if wrong:
            if clean is values:
                clean = list(values)
            clean[i] = None
            bad[i] = True
    return pa.array(clean, feature.arrow_type), bad


def _unreasoned(mask: np.ndarray, reasons: np.ndarray) -> list[int]:
    """Rows the mask flags that have no reason yet (a row keeps the first reason it failed for).

    Most masks flag nothing, so the object array of reasons is only looked at for the rows flagged."""
    return [int(i) for i in np.flatnonzero(mask) if reasons[i] is None]


def _constraint_reasons(feature: Feature, column: pa.Array, reasons: np.ndarray) -> None:
    def flag(mask: Any, code: str, detail: str) -> None:
        hits = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
        for i in _unreasoned(hits, reasons):
            reasons[i] = f"{code}: {feature.name}={column[i].as_py()!r} {detail}".rstrip()

    if not feature.nullable:
        flag(pc.is_null(column), "null_not_allowed", "")
    if feature.type == "float":
        flag(pc.invert(pc.is_finite(column)), "not_finite", "")
    if feature.min is not None:
        flag(pc.less(column, feature.min), "out_of_range", f"(min {feature.min:g})")
    if feature.max is not None:
        flag(pc.greater(column, feature.max), "out_of_range", f"(max {feature.max:g})")
    if feature.allowed is not None:
        allowed = pa.array(list(feature.allowed), type=column.type)
        outside = pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, value_set=allowed)))
        flag(outside, "not_allowed", f"(allowed {list(feature.allowed)})")


def validate_events(
    fs: FeatureSet, entity_key: str, payloads: Sequence[bytes], ingest_time: dt.datetime
) -> ValidatedBatch:
    """Raw JSON records (stream messages, NDJSON lines, JSON array items)."""
    objects, parse_reasons = _parse(payloads)
    return _validate(fs, entity_key, [o or {} for o in objects], parse_reasons, lambda i: bytes(payloads[i]),
                     ingest_time, from_text=False)


def _validate(
    fs: FeatureSet, entity_key: str, present: list[dict[str, Any]], parse_reasons: list[str | None],
    payload_of: Callable[[int], bytes], ingest_time: dt.datetime, *, from_text: bool,
) -> ValidatedBatch:
    n = len(present)
    reasons = np.array(parse_reasons, dtype=object)
    event_ids = _ids([o.get("event_id") for o in present])
    entities = _ids([o.get(entity_key) for o in present])
    times = _times([o.get("event_time") for o in present], from_text)
    for column, name, expected in ((event_ids, "event_id", "a non-empty string or integer"),
                                   (entities, entity_key, "a non-empty string or integer"),
                                   (times, "event_time", "ISO 8601 or epoch seconds/milliseconds")):
        missing = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
        for i in _unreasoned(missing, reasons):
            reasons[i] = _missing(present[i], name, expected)

    columns: dict[str, pa.Array] = {}
    for feature in fs.features:
        raw = [o.get(feature.name) for o in present]
        column, wrong = _coerce_text(feature, raw) if from_text else _coerce(feature, raw)
        for i in _unreasoned(wrong, reasons):
            reasons[i] = f"wrong_type: {feature.name}={raw[i]!r} is not {feature.type}"
        _constraint_reasons(feature, column, reasons)
        columns[feature.name] = column
    _flag_duplicates(event_ids, reasons, lambda i, first: payload_of(i) == payload_of(first))

    ok = np.asarray(reasons == None, dtype=bool)  # noqa: E711 - elementwise, object array
    if not n:
        return ValidatedBatch(schema_for(fs).empty_table(), [])
    ingest_us = np.full(n, int(ingest_time.timestamp() * 1e6), dtype=np.int64)
    table = pa.table(
        {"event_id": event_ids, "entity_id": entities, "event_time": times,
         "ingest_time": pa.array(ingest_us).cast(_TS), **columns},
        schema=schema_for(fs),
    ).filter(pa.array(ok))
    redelivered = np.asarray(reasons == REDELIVERED, dtype=bool)
    dead = [DeadLetter(i, payload_of(i), str(reasons[i]), event_ids[i].as_py())
            for i in map(int, np.flatnonzero(~ok & ~redelivered))]
    return ValidatedBatch(table, dead, [int(i) for i in np.flatnonzero(redelivered)])


def _ids(raw: list[Any]) -> pa.Array:
    """Ids as a string column (null where missing or invalid); one C-level pass in the common case."""
    try:
        arr = pa.array(raw)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([_to_id(v) for v in raw], pa.string())
    if pa.types.is_string(arr.type):
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    if pa.types.is_integer(arr.type) or pa.types.is_null(arr.type):
        return pc.cast(arr, pa.string())
    return pa.array([_to_id(v) for v in raw], pa.string())


def _times(raw: list[Any], from_text: bool) -> pa.Array:
    """Event times; ISO strings with an offset convert in one C-level cast, anything else value by value."""
    convert = _text_to_time if from_text else _to_time
    try:
        arr = pa.array(raw)
        if pa.types.is_string(arr.type):
            return pc.cast(arr, _TS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        pass
    return pa.array([convert(v) for v in raw], _TS)


def _text_to_time(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        try:
            return _to_time(float(value))
        except ValueError:
            return _to_time(value)
    return _to_time(value)


_TRUE, _FALSE = frozenset({"true", "1", "yes", "t"}), frozenset({"false", "0", "no", "f"})


NULL_MARKERS = frozenset({"", "NA", "N/A", "#N/A", "NULL", "null", "NaN", "nan", "-NaN", "-nan", "None"})
"""What CSV writers (R, Excel, databases) put for a missing number, bool or time. A string feature keeps them
as written ("NA" is Namibia): there only an empty cell is null."""


def _coerce_text(feature: Feature, values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """Strings from a CSV: one vectorised cast when the column is clean, value by value when it is not."""
    if feature.type == "string":
        texts = [None if v in (None, "") else str(v) for v in values]
        return pa.array(texts, pa.string()), np.zeros(len(values), dtype=bool)
    texts = [None if v is None or v in NULL_MARKERS else str(v) for v in values]
    if feature.type in ("int", "float"):
        try:
            return pc.cast(pa.array(texts, pa.string()), feature.arrow_type), np.zeros(len(values), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    parsed: list[Any] = []
    for t in texts:
        parsed.append(None if t is None else _parse_text(feature, t))
    column, wrong = _coerce(feature, [None if p is _BAD else p for p in parsed])
    wrong |= np.array([p is _BAD for p in parsed], dtype=bool)
    return column, wrong


_BAD = object()


def _parse_text(feature: Feature, text: str) -> Any:
    try:
        if feature.type == "int":
            return int(text)
        if feature.type == "float":
            return float(text)
    except ValueError:
        return _BAD
    if feature.type == "bool":
        lowered = text.strip().lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else _BAD
    if feature.type == "timestamp":
        return _text_to_time(text) or _BAD
    return text


def _missing(obj: dict[str, Any], name: str, expected: str) -> str:
    if name not in obj:
        return f"missing_field: {name}"
    return f"wrong_type: {name}={obj[name]!r} is not {expected}"


# --- whole tables (Parquet, CSV): clean columns are cast in one call, only dirty ones go value by value ---

def _id_array(column: pa.ChunkedArray | None, n: int) -> tuple[pa.Array, np.ndarray]:
    if column is None:
        return pa.nulls(n, pa.string()), np.ones(n, dtype=bool)
    arr = column.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    elif pa.types.is_integer(arr.type):
        arr = pc.cast(arr, pa.string())
    else:
        values = [_to_id(v) for v in arr.to_pylist()]
        arr = pa.array(values, pa.string())
    bad = pc.fill_null(pc.or_(pc.is_null(arr), pc.equal(arr, "")), True)
    return arr, np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def _time_array(column: pa.ChunkedArray | None, n: int, from_text: bool) -> tuple[pa.Array, np.ndarray]:
    if column is None:
        return pa.nulls(n, _TS), np.ones(n, dtype=bool)
    arr = column.combine_chunks()
    try:
        if pa.types.is_timestamp(arr.type):
            out = pc.cast(arr if arr.type.tz else pc.assume_timezone(arr, "UTC"), _TS)
        elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            out = pc.cast(arr, _TS)
        else:
            raise pa.ArrowInvalid("numbers are epoch seconds or milliseconds")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        convert = _text_to_time if from_text else _to_time
        out = pa.array([convert(v) for v in arr.to_pylist()], _TS)
    bad = pc.is_null(out)
    return out, np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def _castable(source: pa.DataType, target: pa.DataType, from_text: bool) -> bool:
    text = bool(pa.types.is_string(source))
    if source == target:
        return True
    if pa.types.is_timestamp(target):
        return bool(pa.types.is_timestamp(source)) or text
    if pa.types.is_floating(target):
        return bool(pa.types.is_integer(source) or pa.types.is_floating(source)) or (from_text and text)
    return from_text and text


def _feature_array(feature: Feature, column: pa.ChunkedArray | None, n: int, from_text: bool
                   ) -> tuple[pa.Array, np.ndarray, list[Any] | None]:
    """(typed column, wrong-type mask, raw values when the slow path ran, for messages)."""
    if column is None:
        return pa.nulls(n, feature.arrow_type), np.zeros(n, dtype=bool), None
    arr = column.combine_chunks()
    if pa.types.is_null(arr.type):
        return pa.nulls(n, feature.arrow_type), np.zeros(n, dtype=bool), None
    if _castable(arr.type, feature.arrow_type, from_text):
        try:
            if pa.types.is_timestamp(arr.type) and not arr.type.tz:
                arr = pc.assume_timezone(arr, "UTC")
            return pc.cast(arr, feature.arrow_type), np.zeros(n, dtype=bool), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    raw = arr.to_pylist()
    typed, wrong = _coerce_text(feature, raw) if from_text else _coerce(feature, raw)
    return typed, wrong, raw


def validate_table(
    fs: FeatureSet, entity_key: str, table: pa.Table, ingest_time: dt.datetime, *, from_text: bool
) -> ValidatedBatch:
    """Typed (Parquet) or text (CSV, from_text) columns; the same rules and reasons as validate_events."""
    n = table.num_rows
    names = set(table.column_names)

    def column(name: str) -> pa.ChunkedArray | None:
        return table.column(name) if name in names else None

    reasons = np.full(n, None, dtype=object)
    ids, bad_id = _id_array(column("event_id"), n)
    entities, bad_entity = _id_array(column(entity_key), n)
    times, bad_time = _time_array(column("event_time"), n, from_text)
    for mask, field_name, expected in ((bad_id, "event_id", "a non-empty string or integer"),
                                       (bad_entity, entity_key, "a non-empty string or integer"),
                                       (bad_time, "event_time", "ISO 8601 or epoch seconds/milliseconds")):
        for i in _unreasoned(mask, reasons):
            value = None if field_name not in names else table.column(field_name)[i].as_py()
            reasons[i] = f"missing_field: {field_name}" if value is None else \
                f"wrong_type: {field_name}={value!r} is not {expected}"
    columns: dict[str, pa.Array] = {}
    for feature in fs.features:
        typed, wrong, raw = _feature_array(feature, column(feature.name), n, from_text)
        for i in _unreasoned(wrong, reasons):
            shown = raw[i] if raw is not None else None
            reasons[i] = f"wrong_type: {feature.name}={shown!r} is not {feature.type}"
        _constraint_reasons(feature, typed, reasons)
        columns[feature.name] = typed
    _flag_duplicates(ids, reasons, lambda i, first: _row(table, i) == _row(table, first))
    ok = np.asarray(reasons == None, dtype=bool)  # noqa: E711 - elementwise, object array
    redelivered = np.asarray(reasons == REDELIVERED, dtype=bool)
    result = pa.table(
        {"event_id": ids, "entity_id": entities, "event_time": times,
         "ingest_time": pa.array(np.full(n, int(ingest_time.timestamp() * 1e6), dtype=np.int64)).cast(_TS),
         **columns},
        schema=schema_for(fs),
    ).filter(pa.array(ok))
    bad_rows = np.flatnonzero(~ok & ~redelivered)
    originals = table.take(pa.array(bad_rows, pa.int64())).to_pylist() if len(bad_rows) else []
    id_values = ids.take(pa.array(bad_rows, pa.int64())).to_pylist() if len(bad_rows) else []
    dead = [DeadLetter(int(i), json.dumps(row, default=str).encode(), str(reasons[i]), eid)
            for i, row, eid in zip(bad_rows, originals, id_values, strict=True)]
    return ValidatedBatch(result, dead, [int(i) for i in np.flatnonzero(redelivered)])


def _row(table: pa.Table, i: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.slice(i, 1).to_pylist()
    return rows


def _flag_duplicates(ids: pa.Array, reasons: np.ndarray, same: Callable[[int, int], bool]) -> None:
    """Keep the first row of each event id among rows still valid; a later one is redelivered if `same`
    says it equals the first, else a duplicate."""
    valid = np.flatnonzero(reasons == None)  # noqa: E711
    if len(valid) < 2:
        return
    candidates = ids if len(valid) == len(ids) else ids.take(pa.array(valid, pa.int64()))
    codes = pc.dictionary_encode(candidates)
    if len(codes.dictionary) == len(valid):  # the common case: one hash pass, no duplicates
        return
    _, firsts, inverse = np.unique(codes.indices.to_numpy(zero_copy_only=False), return_index=True,
                                   return_inverse=True)
    repeated = np.ones(len(valid), dtype=bool)
    repeated[firsts] = False
    for position in np.flatnonzero(repeated):
        i, first = int(valid[position]), int(valid[firsts[inverse[position]]])
        reasons[i] = REDELIVERED if same(i, first) else \
            f"duplicate_event_id: {ids[i].as_py()!r} appears twice in one batch with different content"
