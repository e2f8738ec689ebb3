"""Turn raw JSON events into a typed Arrow table for one feature set, column by column.

Each record is parsed once (json, in C); after that every check works on whole columns with pyarrow and
numpy: coercion to the declared type, required fields, nulls, ranges, allowed values, NaN/Inf, and
duplicate event ids. A record that fails any check is not dropped: it becomes a dead letter carrying its
original bytes and the first reason it failed. Reason codes are few and fixed (they label a metric);
the detail after the colon names the field and the value.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.features.definitions import Feature, FeatureSet

REASONS = (
    "invalid_json", "not_an_object", "missing_field", "wrong_type", "null_not_allowed", "out_of_range",
    "not_allowed", "not_finite", "duplicate_event_id", "too_large",
)
MAX_RECORD_BYTES = 1 << 20
UTC = dt.UTC


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
            obj = json.loads(raw)
        except (ValueError, RecursionError) as e:
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


def _coerce(feature: Feature, values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """The typed column and a mask of rows whose value could not be coerced (wrong type)."""
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
        if wrong:
            if clean is values:
                clean = list(values)
            clean[i] = None
            bad[i] = True
    return pa.array(clean, feature.arrow_type), bad


def _constraint_reasons(feature: Feature, column: pa.Array, reasons: np.ndarray) -> None:
    def flag(mask: Any, code: str, detail: str) -> None:
        hits = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
        for i in map(int, np.flatnonzero(hits & (reasons == None))):  # noqa: E711 - elementwise, object array
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


def validate_rows(
    fs: FeatureSet, entity_key: str, rows: list[dict[str, Any]], ingest_time: dt.datetime, *, from_text: bool
) -> ValidatedBatch:
    """Rows already split into fields (CSV, Parquet). from_text: values are strings to be parsed (CSV)."""
    return _validate(fs, entity_key, rows, [None] * len(rows),
                     lambda i: json.dumps(rows[i], default=str).encode(), ingest_time, from_text=from_text)


def _validate(
    fs: FeatureSet, entity_key: str, present: list[dict[str, Any]], parse_reasons: list[str | None],
    payload_of: Callable[[int], bytes], ingest_time: dt.datetime, *, from_text: bool,
) -> ValidatedBatch:
    n = len(present)
    reasons = np.array(parse_reasons, dtype=object)
    to_time = _text_to_time if from_text else _to_time
    event_ids = [_to_id(o.get("event_id")) for o in present]
    entities = [_to_id(o.get(entity_key)) for o in present]
    times = [to_time(o.get("event_time")) for o in present]
    for i in range(n):
        if reasons[i] is not None:
            continue
        if event_ids[i] is None:
            reasons[i] = _missing(present[i], "event_id", "a non-empty string or integer")
        elif entities[i] is None:
            reasons[i] = _missing(present[i], entity_key, "a non-empty string or integer")
        elif times[i] is None:
            reasons[i] = _missing(present[i], "event_time", "ISO 8601 or epoch seconds/milliseconds")

    columns: dict[str, pa.Array] = {}
    for feature in fs.features:
        raw = [o.get(feature.name) for o in present]
        column, wrong = _coerce_text(feature, raw) if from_text else _coerce(feature, raw)
        for i in map(int, np.flatnonzero(wrong & (reasons == None))):  # noqa: E711
            reasons[i] = f"wrong_type: {feature.name}={raw[i]!r} is not {feature.type}"
        _constraint_reasons(feature, column, reasons)
        columns[feature.name] = column

    seen: set[str] = set()
    for i in range(n):
        if reasons[i] is None:
            eid = event_ids[i]
            assert eid is not None
            if eid in seen:
                reasons[i] = f"duplicate_event_id: {eid!r} appears twice in one batch"
            seen.add(eid)

    ok = np.array([r is None for r in reasons], dtype=bool)
    keep = pa.array(ok)
    table = pa.table(
        {
            "event_id": pa.array(event_ids, pa.string()),
            "entity_id": pa.array(entities, pa.string()),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array([ingest_time] * n, pa.timestamp("us", tz="UTC")),
            **columns,
        },
        schema=schema_for(fs).with_metadata(None),
    ).filter(keep) if n else schema_for(fs).empty_table()
    dead = [DeadLetter(i, payload_of(i), str(reasons[i]), event_ids[i]) for i in map(int, np.flatnonzero(~ok))]
    return ValidatedBatch(table, dead)


def _text_to_time(value: Any) -> dt.datetime | None:
    if isinstance(value, str):
        try:
            return _to_time(float(value))
        except ValueError:
            return _to_time(value)
    return _to_time(value)


_TRUE, _FALSE = frozenset({"true", "1", "yes", "t"}), frozenset({"false", "0", "no", "f"})


def _coerce_text(feature: Feature, values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """Strings from a CSV: one vectorised cast when the column is clean, value by value when it is not."""
    texts = [None if v in (None, "") else str(v) for v in values]
    if feature.type == "string":
        return pa.array(texts, pa.string()), np.zeros(len(values), dtype=bool)
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
