"""Arrow rows to protobuf Values: lossless where JSON is, strings where it is not (big ints, NaN, bytes)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from google.protobuf import struct_pb2

from mlplat.api.v1 import admin_pb2

_MAX_SAFE_INT = 2**53


def to_value(x: Any) -> struct_pb2.Value:
    if isinstance(x, (dict, list, tuple)):
        return _nested_value(x)
    v = struct_pb2.Value()
    if x is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, int):
        if abs(x) <= _MAX_SAFE_INT:
            v.number_value = x
        else:
            v.string_value = str(x)
    elif isinstance(x, float):
        if math.isfinite(x):
            v.number_value = x
        else:
            v.string_value = "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, (dt.datetime, dt.date, dt.time)):
        v.string_value = x.isoformat()
    elif isinstance(x, bytes):
        v.string_value = base64.b64encode(x).decode()
    elif isinstance(x, (decimal.Decimal, dt.timedelta, uuid.UUID)):
        v.string_value = str(x)
    else:
        v.string_value = str(x)
    return v


def _nested_value(x: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if isinstance(x, dict):
        for k, item in x.items():
            v.struct_value.fields[str(k)].CopyFrom(to_value(item))
    else:
        v.list_value.values.extend(to_value(item) for item in x)
    return v


def from_value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "list_value":
        return [from_value(item) for item in v.list_value.values]
    if kind == "struct_value":
        return {k: from_value(item) for k, item in v.struct_value.fields.items()}
    return getattr(v, kind)


def columns_of(schema: pa.Schema) -> list[admin_pb2.Column]:
    return [admin_pb2.Column(name=f.name, type=str(f.type)) for f in schema]


def rows_of(table: pa.Table, chunk_rows: int = 1000) -> Iterator[list[admin_pb2.Row]]:
    """Rows in chunks, so a large result streams as several messages instead of one huge one."""
    for batch in table.to_batches(max_chunksize=chunk_rows):
        columns = [col.to_pylist() for col in batch.columns]
        yield [admin_pb2.Row(values=[to_value(col[i]) for col in columns]) for i in range(batch.num_rows)]
