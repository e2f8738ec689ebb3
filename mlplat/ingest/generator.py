"""Realistic random events for a feature set (seed 000: "generates random JSON data and JSON/Parquet files").

Values respect each feature's type and constraints, so by default every event validates; a chosen
fraction of bad records (each of a different kind) exercises dead letters, and a shift moves the mean of
chosen numeric features so drift monitoring has something to find. Label events (ground truth) can be
produced alongside, to arrive later than the events they label.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlplat.features.definitions import Feature, FeatureSet

BAD_KINDS = ("invalid_json", "missing_id", "wrong_type", "out_of_range", "null_required")


@dataclass
class GeneratorSpec:
    fs: FeatureSet
    entity_key: str
    entities: int = 1000
    seed: int = 0
    shift: dict[str, float] = field(default_factory=dict)
    bad_fraction: float = 0.0
    start: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    step_ms: float = 1.0
    id_prefix: str = "e"

    def __post_init__(self) -> None:
        for name in self.shift:
            feature = self.fs.feature(name) if any(f.name == name for f in self.fs.features) else None
            if feature is None or feature.type not in ("int", "float"):
                raise ValueError(f"--shift {name}: not a numeric feature of {self.fs.name!r}")
        if not 0 <= self.bad_fraction <= 1:
            raise ValueError(f"bad fraction {self.bad_fraction} must be between 0 and 1")


def _column(feature: Feature, n: int, rng: np.random.Generator, shift: float) -> list[Any]:
    if feature.allowed is not None:
        return [feature.allowed[i] for i in rng.integers(0, len(feature.allowed), n)]
    if feature.type == "bool":
        return list((rng.random(n) < 0.3).tolist())
    if feature.type == "string":
        return [f"v{i}" for i in rng.integers(0, 50, n)]
    if feature.type == "timestamp":
        base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        return [(base + dt.timedelta(seconds=int(s))).isoformat() for s in rng.integers(0, 86400 * 30, n)]
    low = feature.min if feature.min is not None else 0.0
    high = feature.max if feature.max is not None else low + 100.0
    span = high - low
    centre = low + span * 0.3 + shift
    values = np.clip(rng.gamma(2.0, span * 0.08, n) + centre - span * 0.16, low, high)
    if feature.type == "int":
        return list(np.rint(values).astype(np.int64).tolist())
    return list(np.round(values, 4).tolist())


def generate_records(spec: GeneratorSpec, n: int, offset: int = 0) -> list[dict[str, Any]]:
    """n events (deterministic for a seed and offset) as dicts, before any corruption."""
    rng = np.random.default_rng([spec.seed, offset])
    entities = rng.integers(0, spec.entities, n)
    start_us = int(spec.start.timestamp() * 1e6)
    columns = {f.name: _column(f, n, rng, spec.shift.get(f.name, 0.0)) for f in spec.fs.features}
    records = []
    for i in range(n):
        t = dt.datetime.fromtimestamp((start_us + (offset + i) * spec.step_ms * 1000) / 1e6, dt.UTC)
        record: dict[str, Any] = {
            "event_id": f"{spec.id_prefix}{spec.seed}-{offset + i}", spec.entity_key: f"{spec.fs.entity}_{entities[i]}",
            "event_time": t.isoformat(),
        }
        record.update({name: col[i] for name, col in columns.items()})
        records.append(record)
    return records


def _corrupt(record: dict[str, Any], kind: str, spec: GeneratorSpec) -> bytes:
    numeric = [f for f in spec.fs.features if f.type in ("int", "float")]
    required = [f for f in spec.fs.features if not f.nullable]
    bad = dict(record)
    if kind == "invalid_json":
        return json.dumps(bad).encode()[:-3]
    if kind == "missing_id":
        bad.pop("event_id")
    elif kind == "wrong_type" and numeric:
        bad[numeric[0].name] = "not a number"
    elif kind == "out_of_range" and numeric:
        f = next((f for f in numeric if f.min is not None or f.max is not None), numeric[0])
        bad[f.name] = (f.min - 1000) if f.min is not None else (f.max or 0) + 1000
    elif kind == "null_required" and required:
        bad[required[0].name] = None
    else:
        return b"{broken"
    return json.dumps(bad).encode()


def generate_payloads(
    spec: GeneratorSpec, n: int, offset: int = 0, *, well_formed: bool = False
) -> list[tuple[bytes, bytes]]:
    return [(key, payload) for key, payload, _ in generate_labelled(spec, n, offset, well_formed=well_formed)]


def generate_labelled(
    spec: GeneratorSpec, n: int, offset: int = 0, *, well_formed: bool = False
) -> list[tuple[bytes, bytes, bytes | None]]:
    """(key, JSON bytes) pairs; about bad_fraction of them are invalid, in rotating kinds.

    well_formed: never emit broken JSON syntax (inside one JSON array it would break every later item).
    """
    rng = np.random.default_rng([spec.seed, offset, 1])
    bad = rng.random(n) < spec.bad_fraction
    out: list[tuple[bytes, bytes, bytes | None]] = []
    for i, record in enumerate(generate_records(spec, n, offset)):
        key = str(record[spec.entity_key]).encode()
        kind = BAD_KINDS[(offset + i) % len(BAD_KINDS)]
        if well_formed and kind == "invalid_json":
            kind = "wrong_type"
        if bad[i]:
            out.append((key, _corrupt(record, kind, spec), None))  # a rejected event gets no label
        else:
            out.append((key, json.dumps(record).encode(), json.dumps(label_for(record, spec)).encode()))
    return out


def label_for(record: dict[str, Any], spec: GeneratorSpec) -> dict[str, Any]:
    """Ground truth for an event: a noisy rule a model can learn, about half of them 1. It names the event in
    `for_id`, so a drift run judges the prediction made on that event against it (its time is the event's).

    The rule reads each numeric feature relative to its population's centre, shift included: when the
    generator shifts a feature, what counts as "high" moves with it (concept drift), so a model trained
    before the shift is measurably worse after it and a retrained one is better.
    """
    z = []
    for f in spec.fs.features:
        value = record.get(f.name)
        if f.type not in ("int", "float") or value is None or f.allowed is not None:
            continue
        low = f.min if f.min is not None else 0.0
        span = (f.max if f.max is not None else low + 100.0) - low
        z.append((float(value) - spec.shift.get(f.name, 0.0) - low - span * 0.3) / (span * 0.113))
    score = float(np.tanh(sum(z) / len(z))) if z else 0.0
    noise = (zlib.crc32(record["event_id"].encode()) % 1000) / 1000 - 0.5
    return {"event_id": f"label-{record['event_id']}", spec.entity_key: record[spec.entity_key],
            "event_time": record["event_time"], "label": int(score + noise > 0), "for_id": record["event_id"]}


def _break_some(records: list[dict[str, Any]], spec: GeneratorSpec, offset: int) -> None:
    """Typed formats keep their column types: bad rows get an out-of-range value instead."""
    bounded = [f for f in spec.fs.features if f.type in ("int", "float") and (f.min is not None or f.max is not None)]
    if not spec.bad_fraction or not bounded:
        return
    f = bounded[0]
    bad_value = (f.min - 1000) if f.min is not None else (f.max or 0) + 1000
    rng = np.random.default_rng([spec.seed, offset, 1])
    for i in np.flatnonzero(rng.random(len(records)) < spec.bad_fraction):
        records[int(i)][f.name] = int(bad_value) if f.type == "int" else float(bad_value)


def write_file(spec: GeneratorSpec, rows: int, out: Path, fmt: str, chunk: int = 100_000) -> Iterator[int]:
    """Write rows to out in chunks (never all in memory), yielding rows written so far."""
    if fmt == "ndjson":
        with out.open("wb") as f:
            for start in range(0, rows, chunk):
                payloads = generate_payloads(spec, min(chunk, rows - start), start)
                f.write(b"\n".join(p for _, p in payloads) + b"\n")
                yield min(start + chunk, rows)
        return
    if fmt == "json":
        with out.open("wb") as f:
            f.write(b"[")
            for start in range(0, rows, chunk):
                payloads = generate_payloads(spec, min(chunk, rows - start), start, well_formed=True)
                f.write((b"," if start else b"") + b",\n".join(p for _, p in payloads))
                yield min(start + chunk, rows)
            f.write(b"]\n")
        return
    writer: Any = None
    try:
        for start in range(0, rows, chunk):
            records = generate_records(spec, min(chunk, rows - start), start)
            _break_some(records, spec, start)
            table = pa.Table.from_pylist(records)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema) if fmt == "parquet" else \
                    pacsv.CSVWriter(str(out), table.schema)
            writer.write_table(table)
            yield min(start + chunk, rows)
    finally:
        if writer is not None:
            writer.close()
