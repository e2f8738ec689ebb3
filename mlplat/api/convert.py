"""Warehouse results and online features to protobuf and back, with every type kept.

A query cell travels as a TypedValue chosen by its Arrow column's type (nested types recursively), because
google.protobuf.Value has only doubles: 42 would read 42.0. The legacy Row.values (clients that do not ask
for `typed`) are made from the same decoded values, so both agree on everything a Value can hold.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import math
import re
import struct
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
from google.protobuf import struct_pb2

from mlplat.api.v1 import admin_pb2, features_pb2
from mlplat.errors import QueryRejected

TypedValue = admin_pb2.TypedValue
_MAX_SAFE_INT = 2**53
_INFINITE_64 = 2**63 - 1  # DuckDB's infinity timestamps, in every unit; -infinity is its negative
_INFINITE_32 = 2**31 - 1  # the same for dates
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_NULL = TypedValue(null_value=struct_pb2.NULL_VALUE)
_OFFSET = re.compile(r"^([+-])(\d\d):?(\d\d)$")
_EPOCH = dt.datetime(1970, 1, 1)


# --- Arrow to TypedValue ------------------------------------------------------------------------------
def typed_values(array: pa.Array | pa.ChunkedArray) -> list[admin_pb2.TypedValue]:
    """One TypedValue per element of array."""
    if isinstance(array, pa.ChunkedArray):
        return [v for chunk in array.chunks for v in typed_values(chunk)]
    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        return _extension(array)
    if pa.types.is_dictionary(t):  # ENUM
        return typed_values(array.dictionary_decode())
    if pa.types.is_null(t):
        return [_NULL] * len(array)
    if pa.types.is_boolean(t):
        return _each(array.to_pylist(), lambda v: TypedValue(bool_value=v))
    if pa.types.is_integer(t):
        return _each(array.to_pylist(), _int)
    if pa.types.is_float32(t):
        return _each(array.to_pylist(), lambda v: TypedValue(float_value=v))
    if pa.types.is_floating(t):
        return _each(array.cast(pa.float64()).to_pylist(), lambda v: TypedValue(double_value=v))
    if pa.types.is_decimal(t):
        return _each(array.to_pylist(), lambda v: TypedValue(decimal_value=format(v, "f")))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _each(array.to_pylist(), lambda v: TypedValue(string_value=v))
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t)):
        return _each(array.to_pylist(), lambda v: TypedValue(bytes_value=v))
    return _temporal(array) if pa.types.is_temporal(t) or pa.types.is_interval(t) else _nested(array)


def _each(values: list[Any], make: Callable[[Any], admin_pb2.TypedValue]) -> list[admin_pb2.TypedValue]:
    return [_NULL if v is None else make(v) for v in values]


def _int(v: int) -> admin_pb2.TypedValue:
    if -(2**63) <= v < 2**63:
        return TypedValue(int_value=v)
    if 0 <= v < 2**64:
        return TypedValue(uint_value=v)
    return TypedValue(big_int_value=str(v))


def _temporal(array: pa.Array) -> list[admin_pb2.TypedValue]:
    """Dates and times from their integer storage: to_pylist cannot hold infinity, nanoseconds or year 294247."""
    t = array.type
    if pa.types.is_timestamp(t):
        zone = _zone(t.tz) if t.tz else None
        return _each(array.cast(pa.int64()).to_pylist(),
                     lambda v: TypedValue(timestamp_value=_timestamp_text(v, _PER_SECOND[t.unit], zone)))
    if pa.types.is_date32(t):
        return _each(array.cast(pa.int32()).to_pylist(), lambda v: TypedValue(date_value=_date_text(v)))
    if pa.types.is_date64(t):
        return _each(array.cast(pa.int64()).to_pylist(),
                     lambda v: TypedValue(date_value=_date_text(v // 86_400_000)))
    if pa.types.is_time(t):
        per_second = _PER_SECOND[t.unit]
        return _each(array.cast(pa.int64()).to_pylist(),
                     lambda v: TypedValue(time_value=_clock_text(v // per_second, v % per_second, per_second)))
    if pa.types.is_duration(t):
        to_nanos = 1_000_000_000 // _PER_SECOND[t.unit]
        return _each(array.cast(pa.int64()).to_pylist(),
                     lambda v: TypedValue(interval_value=_interval_text(0, 0, v * to_nanos)))
    if t == pa.month_day_nano_interval():
        return _each(array.to_pylist(), lambda v: TypedValue(interval_value=_interval_text(*v)))
    raise QueryRejected(f"mlplat cannot send values of type {t} yet: cast the column, e.g. to VARCHAR")


def _nested(array: pa.Array) -> list[admin_pb2.TypedValue]:
    t = array.type
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _nested(array.cast(pa.large_list(t.value_field)))
    if pa.types.is_map(t):
        bounds, start, length = _sublists(array)
        keys, items = array.values.slice(start, length).flatten()
        pairs = [admin_pb2.TypedMapEntry(key=k, value=v)
                 for k, v in zip(typed_values(keys), typed_values(items), strict=True)]
        return [_NULL if b is None else TypedValue(map_value=admin_pb2.TypedMap(entries=pairs[b[0]:b[1]]))
                for b in bounds]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        bounds, start, length = _sublists(array)
        items = typed_values(array.values.slice(start, length))
        return [_NULL if b is None else TypedValue(list_value=admin_pb2.TypedList(values=items[b[0]:b[1]]))
                for b in bounds]
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        columns = [typed_values(f) for f in array.flatten()]
        nulls = array.is_null().to_pylist()
        return [_NULL if nulls[i] else TypedValue(struct_value=admin_pb2.TypedStruct(
            fields=[admin_pb2.TypedField(name=n, value=c[i]) for n, c in zip(names, columns, strict=True)]))
            for i in range(len(array))]
    if pa.types.is_union(t):  # DuckDB's UNION: the value of the member that is set
        # type_codes and offsets ignore a slice's offset (field() does not): read them from the buffers
        children = [typed_values(array.field(i)) for i in range(t.num_fields)]
        child_of = {code: i for i, code in enumerate(t.type_codes)}
        codes = pa.Array.from_buffers(pa.int8(), len(array), [None, array.buffers()[1]], offset=array.offset)
        if t.mode == "sparse":
            return [children[child_of[c]][i] for i, c in enumerate(codes.to_pylist())]
        offsets = pa.Array.from_buffers(pa.int32(), len(array), [None, array.buffers()[2]], offset=array.offset)
        return [children[child_of[c]][o] for c, o in zip(codes.to_pylist(), offsets.to_pylist(), strict=True)]
    raise QueryRejected(f"mlplat cannot send values of type {t} yet: cast the column, e.g. to VARCHAR")


def _sublists(array: Any) -> tuple[list[tuple[int, int] | None], int, int]:
    """Each list's [start, end) in the child slice that array's lists cover, None for a null list."""
    nulls = array.is_null().to_pylist()
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        bounds = [None if nulls[i] else (i * size, (i + 1) * size) for i in range(len(array))]
        return bounds, array.offset * size, len(array) * size
    offsets = array.offsets.to_pylist()
    first = offsets[0]
    bounds = [None if nulls[i] else (offsets[i] - first, offsets[i + 1] - first) for i in range(len(array))]
    return bounds, first, offsets[-1] - first


def _extension(array: Any) -> list[admin_pb2.TypedValue]:
    """DuckDB's types without an Arrow equivalent (arrow_lossless_conversion), decoded from their bytes."""
    t = array.type
    storage = array.storage
    if t.extension_name == "arrow.bool8":  # DuckDB's BOOLEAN, lossless
        return _each(storage.to_pylist(), lambda v: TypedValue(bool_value=bool(v)))
    if t.extension_name == "arrow.uuid":
        return _each(storage.to_pylist(), lambda v: TypedValue(string_value=_uuid(v)))
    if t.extension_name == "arrow.opaque" and t.vendor_name == "DuckDB":
        decode = _DUCKDB_OPAQUE.get(t.type_name)
        if decode is not None:
            return _each(storage.to_pylist(), decode)
    return typed_values(storage)  # arrow.json (its text) and anything else: as its storage


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _bignum(raw: bytes) -> int:
    """DuckDB BIGNUM: a 3-byte header whose top bit is set for >= 0, then the big-endian magnitude; a negative
    number has every byte inverted."""
    if raw[0] & 0x80:
        return int.from_bytes(raw[3:], "big")
    return -int.from_bytes(bytes(0xFF ^ b for b in raw[3:]), "big")


def _bits(raw: bytes) -> str:
    """DuckDB BIT: the first byte counts the padding bits that lead the rest."""
    return "".join(f"{b:08b}" for b in raw[1:])[raw[0]:]


def _time_tz(raw: bytes) -> str:
    """DuckDB TIMETZ: microseconds in the upper 40 bits, 57599 - offset seconds in the lower 24."""
    packed = int.from_bytes(raw, "little")
    micros, offset = packed >> 24, 57_599 - (packed & 0xFFFFFF)
    return _clock_text(micros // 1_000_000, micros % 1_000_000, 1_000_000) + _offset_text(offset)


_DUCKDB_OPAQUE: dict[str, Callable[[bytes], admin_pb2.TypedValue]] = {
    "hugeint": lambda raw: _int(int.from_bytes(raw, "little", signed=True)),
    "uhugeint": lambda raw: _int(int.from_bytes(raw, "little")),
    "bignum": lambda raw: _int(_bignum(raw)),
    "varint": lambda raw: _int(_bignum(raw)),  # BIGNUM's name before DuckDB 1.4
    "bit": lambda raw: TypedValue(bit_value=_bits(raw)),
    "time_tz": lambda raw: TypedValue(time_value=_time_tz(raw)),
}


# --- dates and times as ISO 8601 text -----------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _zone(name: str) -> dt.tzinfo:
    """The column's time zone; one Python does not know is shown as UTC (the same instant, another offset)."""
    fixed = _OFFSET.match(name)
    if fixed:
        minutes = int(fixed[2]) * 60 + int(fixed[3])
        return dt.timezone(dt.timedelta(minutes=-minutes if fixed[1] == "-" else minutes))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _timestamp_text(value: int, per_second: int, zone: dt.tzinfo | None) -> str:
    if abs(value) == _INFINITE_64:
        return "infinity" if value > 0 else "-infinity"
    if per_second <= 1_000_000:  # Python's datetime writes the same text, faster, within its years 1-9999
        try:
            moment = _EPOCH + dt.timedelta(microseconds=value * (1_000_000 // per_second))
            return moment.isoformat() if zone is None else moment.replace(tzinfo=dt.UTC).astimezone(zone).isoformat()
        except OverflowError:
            pass
    seconds, fraction = divmod(value, per_second)
    offset = 0
    if zone is not None:
        try:
            delta = dt.datetime.fromtimestamp(seconds, zone).utcoffset()
            offset = int(delta.total_seconds()) if delta else 0
        except (OverflowError, ValueError, OSError):  # beyond Python's years 1-9999: shown in UTC
            offset = 0
    days, clock = divmod(seconds + offset, 86_400)
    text = f"{_date_text(days)}T{_clock_text(clock, fraction, per_second)}"
    return text if zone is None else text + _offset_text(offset)


def _date_text(days: int) -> str:
    """Days since 1970-01-01 as a proleptic Gregorian date (H. Hinnant's civil_from_days), any year."""
    if abs(days) == _INFINITE_32:
        return "infinity" if days > 0 else "-infinity"
    if -719_162 <= days <= 2_932_896:  # years 1-9999: Python's date writes the same text, faster
        return (_EPOCH + dt.timedelta(days=days)).date().isoformat()
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    year_text = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):04d}"
    return f"{year_text}-{month:02d}-{day:02d}"


def _clock_text(seconds: int, fraction: int, per_second: int) -> str:
    """hh:mm:ss with 6 fraction digits (9 for nanoseconds), none when the fraction is zero; 24:00:00 stays."""
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    if not fraction:
        return text
    if per_second == 1_000_000_000:
        return f"{text}.{fraction:09d}"
    return f"{text}.{fraction * (1_000_000 // per_second):06d}"


def _offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def _interval_text(months: int, days: int, nanoseconds: int) -> str:
    """ISO 8601 duration, each part with its own sign as DuckDB keeps them apart: P1Y2M3DT4H5M6.5S, P-1M."""
    years, months = _toward_zero(months, 12)
    hours, rest = _toward_zero(nanoseconds, 3600 * 10**9)
    minutes, rest = _toward_zero(rest, 60 * 10**9)
    seconds, fraction = _toward_zero(rest, 10**9)
    date = "".join(f"{n}{unit}" for n, unit in ((years, "Y"), (months, "M"), (days, "D")) if n)
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or fraction:
        sign = "-" if seconds < 0 or fraction < 0 else ""
        clock += f"{sign}{abs(seconds)}" + (f".{abs(fraction):09d}".rstrip("0") if fraction else "") + "S"
    if not date and not clock:
        return "PT0S"
    return f"P{date}" + (f"T{clock}" if clock else "")


def _toward_zero(n: int, unit: int) -> tuple[int, int]:
    whole, rest = divmod(abs(n), unit)
    return (-whole, -rest) if n < 0 else (whole, rest)


# --- results: columns and rows ------------------------------------------------------------------------
def columns_of(schema: pa.Schema) -> list[admin_pb2.Column]:
    return [admin_pb2.Column(name=f.name, type=type_name(f.type)) for f in schema]


def type_name(t: pa.DataType) -> str:
    """Arrow's name, or DuckDB's for its types Arrow has no name for ("hugeint", "uuid")."""
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.opaque":
            return str(t.type_name)
        return "bool" if t.extension_name == "arrow.bool8" else str(t.extension_name).removeprefix("arrow.")
    if pa.types.is_struct(t):
        return f"struct<{', '.join(f'{f.name}: {type_name(f.type)}' for f in t)}>"
    if pa.types.is_map(t):
        return f"map<{type_name(t.key_type)}, {type_name(t.item_type)}>"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{t.value_field.name}: {type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        kind = "list" if pa.types.is_list(t) else "large_list"
        return f"{kind}<{t.value_field.name}: {type_name(t.value_type)}>"
    return str(t)


def rows_of(table: pa.Table, chunk_rows: int = 1000, *, typed: bool = False) -> Iterator[list[admin_pb2.Row]]:
    """Rows in chunks, so a large result streams as several messages instead of one huge one."""
    for batch in table.to_batches(max_chunksize=chunk_rows):
        columns = [typed_values(col) for col in batch.columns]
        if typed:
            yield [admin_pb2.Row(typed_values=[col[i] for col in columns]) for i in range(batch.num_rows)]
        else:
            yield [admin_pb2.Row(values=[to_value(from_typed(col[i])) for col in columns])
                   for i in range(batch.num_rows)]


# --- TypedValue to Python -----------------------------------------------------------------------------
def from_typed(v: admin_pb2.TypedValue) -> Any:
    """int for every integer, float, Decimal, str (dates, times and intervals as their ISO 8601 text), bytes,
    bool, None, list, and dict for a struct (in field order) or a map."""
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "big_int_value":
        return int(v.big_int_value)
    if kind == "float_value":
        return _shortest_float32(v.float_value)
    if kind == "decimal_value":
        return decimal.Decimal(v.decimal_value)
    if kind == "list_value":
        return [from_typed(item) for item in v.list_value.values]
    if kind == "struct_value":
        return {f.name: from_typed(f.value) for f in v.struct_value.fields}
    if kind == "map_value":
        return {_hashable(from_typed(e.key)): from_typed(e.value) for e in v.map_value.entries}
    return getattr(v, kind)


def _shortest_float32(x: float) -> float:
    """The shortest decimal that is the same 32-bit float: FLOAT 1.1 reads 1.1, not 1.100000023841858."""
    if not math.isfinite(x):
        return x
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        if struct.unpack("f", struct.pack("f", candidate))[0] == x:
            return candidate
    return x


def _hashable(key: Any) -> Any:
    return cell_text(key) if isinstance(key, (list, dict)) else key


# --- decoded values as JSON and as text ---------------------------------------------------------------
def json_ready(x: Any) -> Any:
    """A decoded value in JSON's types: integers stay integers (any size), NaN and infinities are the strings
    "NaN", "Infinity", "-Infinity" (protobuf's JSON mapping), decimals strings with their exact digits,
    bytes base64, map keys their text."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, decimal.Decimal):
        return format(x, "f")
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    if isinstance(x, (list, tuple)):
        return [json_ready(item) for item in x]
    if isinstance(x, dict):
        return {k if isinstance(k, str) else cell_text(k): json_ready(item) for k, item in x.items()}
    return x


def cell_text(x: Any) -> str:
    """A decoded value as one table cell: NULL, true/false, lists and structs as their JSON."""
    if x is None:
        return "NULL"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, str):
        return x
    ready = json_ready(x)
    return ready if isinstance(ready, str) else json.dumps(ready, ensure_ascii=False)


# --- the legacy google.protobuf.Value -----------------------------------------------------------------
def to_value(x: Any) -> struct_pb2.Value:
    if isinstance(x, (dict, list, tuple)):
        return _nested_value(x)
    v = struct_pb2.Value()
    if x is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(x, bool):
        v.bool_value = x
    elif (isinstance(x, int) and abs(x) <= _MAX_SAFE_INT) or (isinstance(x, float) and math.isfinite(x)):
        v.number_value = x
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, (dt.datetime, dt.date, dt.time)):
        v.string_value = x.isoformat()
    else:  # big ints, NaN, decimals, bytes: their JSON text
        v.string_value = cell_text(x)
    return v


def _nested_value(x: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if isinstance(x, dict):
        for k, item in x.items():
            v.struct_value.fields[k if isinstance(k, str) else cell_text(k)].CopyFrom(to_value(item))
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


# --- online features ----------------------------------------------------------------------------------
def feature_value(name: str, kind: str, value: Any) -> features_pb2.FeatureValue:
    """An online value as its feature's declared type; a value of another type is a clear error, not a guess."""
    if value is None:
        return features_pb2.FeatureValue()
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return features_pb2.FeatureValue(int64_value=value)
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return features_pb2.FeatureValue(double_value=value)
    if kind == "bool" and isinstance(value, bool):
        return features_pb2.FeatureValue(bool_value=value)
    if kind == "string" and isinstance(value, str):
        return features_pb2.FeatureValue(string_value=value)
    if kind == "timestamp" and isinstance(value, (str, dt.datetime)):
        moment = value if isinstance(value, dt.datetime) else _iso_datetime(value)
        if moment is not None:
            out = features_pb2.FeatureValue()
            out.timestamp_value.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC))
            return out
    raise TypeError(f"feature {name!r} is declared {kind} but the online store holds {value!r}")


def _iso_datetime(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def feature_values(
    features: Sequence[tuple[str, str]], values: dict[str, Any]
) -> dict[str, features_pb2.FeatureValue]:
    """Every (name, type) feature of a set, typed; a feature the stored document lacks is null."""
    return {name: feature_value(name, kind, values.get(name)) for name, kind in features}


def from_feature_value(v: features_pb2.FeatureValue) -> Any:
    """int, float, str, bool, bytes, a UTC datetime, or None."""
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return v.timestamp_value.ToDatetime(tzinfo=dt.UTC)
    return getattr(v, kind)
