"""Model input rows, built one way for every caller: a request's values (strict: a bad value is an error
naming the feature), a batch of validated events or warehouse rows (columns as float64, NaN for null), and
the entity's online features for whatever a row lacks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import MlplatError
from mlplat.serving.registry import ModelVersion


class InvalidInput(MlplatError, ValueError):
    """A request whose features do not fit the model; the message names the feature."""


def _number(name: str, kind: str, value: Any) -> float:
    if kind == "bool":
        if isinstance(value, bool):
            return float(value)
        raise InvalidInput(f"feature {name!r} must be a bool (true/false), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"feature {name!r} must be a number ({kind}), got {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"feature {name!r} must be finite, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise InvalidInput(f"feature {name!r} must be an integer, got {value!r}")
    return float(value)


def build_row(mv: ModelVersion, given: Mapping[str, Any], online: Mapping[str, Any] | None) -> np.ndarray:
    """The model's input row: request values first, then the entity's online values; one check per value
    on the common path, and the slow path only to say exactly what is wrong."""
    names = mv.feature_names
    if len(given) and not given.keys() <= set(names):
        unknown = sorted(set(given) - set(names))
        raise InvalidInput(f"{mv.model} has no feature {unknown[0]!r} (it takes {', '.join(names)})")
    values = [given.get(n) for n in names]
    if online is not None:
        values = [online.get(n) if v is None else v for v, n in zip(values, names, strict=True)]
    fine = all(type(v) is (bool if f.type == "bool" else float) or (type(v) is int and f.type != "bool")
               for v, f in zip(values, mv.features, strict=True))
    row = np.array(values, dtype=np.float64) if fine else None
    if row is None or not np.isfinite(row).all() or any(
            f.type == "int" and not row[i].is_integer() for i, f in enumerate(mv.features)):
        for value, feature in zip(values, mv.features, strict=True):
            if value is None:
                where = " (not in the request nor the online store)" if online is not None else ""
                raise InvalidInput(f"feature {feature.name!r} ({feature.type}) is missing{where}")
            _number(feature.name, feature.type, value)
        row = np.array(values, dtype=np.float64)  # every value passed: e.g. numpy scalars from a caller
    return row


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A feature column as float64 with NaN for nulls (bools become 0/1)."""
    if not pa.types.is_floating(column.type):
        column = pc.cast(column, pa.float64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def table_matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    """Rows of a table (validated events, warehouse rows) as a model's input matrix, columns in `names`."""
    return np.column_stack([floats(table[n]) for n in names]) if names else np.empty((table.num_rows, 0))


def given_matrix(mv: ModelVersion, given: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
    """The model's input matrix from the columns that are given (by name); NaN for the others."""
    matrix = np.full((rows, len(mv.features)), np.nan)
    for j, name in enumerate(mv.feature_names):
        if name in given:
            matrix[:, j] = given[name]
    return matrix


def lacking(matrix: np.ndarray, entities: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows with a hole, and the entities whose online features could fill them."""
    rows = np.flatnonzero(np.isnan(matrix).any(axis=1))
    return rows, sorted({entities[i] for i in rows.tolist()})


def fill_online(matrix: np.ndarray, mv: ModelVersion, rows: np.ndarray, entities: list[str],
                online: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Fills the holes of `rows` in place from each row's entity's online features; a value that is not a
    finite number stays NaN (the caller skips that row and says which input was missing)."""
    holes = np.isnan(matrix)
    for i in rows.tolist():
        doc = online.get(entities[i]) or {}
        for j in np.flatnonzero(holes[i]).tolist():
            matrix[i, j] = _lenient(doc.get(mv.feature_names[j]))


def _lenient(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return math.nan
