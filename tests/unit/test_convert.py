"""Query results and online features keep their types: warehouse → Arrow → protobuf → client → JSON and table."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from mlplat.api.convert import (
    cell_text,
    columns_of,
    feature_value,
    from_feature_value,
    from_typed,
    from_value,
    json_ready,
    rows_of,
)
from mlplat.api.v1 import admin_pb2, features_pb2
from mlplat.cli.client import _print_table, _query_json
from mlplat.config import WarehouseSettings
from mlplat.errors import QueryRejected
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse

# (SQL expression, the column's JSON in `mlplat query --json`, its table cell, the column type)
TYPES: list[tuple[str, str, str, str]] = [
    ("42::INT", "42", "42", "int32"),
    ("(2**60)::BIGINT", "1152921504606846976", "1152921504606846976", "int64"),
    ("(-9223372036854775808)::BIGINT", "-9223372036854775808", "-9223372036854775808", "int64"),
    ("255::UTINYINT", "255", "255", "uint8"),
    ("18446744073709551615::UBIGINT", "18446744073709551615", "18446744073709551615", "uint64"),
    ("170141183460469231731687303715884105727::HUGEINT", "170141183460469231731687303715884105727",
     "170141183460469231731687303715884105727", "hugeint"),
    ("(-170141183460469231731687303715884105728)::HUGEINT", "-170141183460469231731687303715884105728",
     "-170141183460469231731687303715884105728", "hugeint"),
    ("340282366920938463463374607431768211455::UHUGEINT", "340282366920938463463374607431768211455",
     "340282366920938463463374607431768211455", "uhugeint"),
    ("(-(2::BIGNUM ** 200))::BIGNUM", "-1606938044258990275541962092341162602522202993782792835301376",
     "-1606938044258990275541962092341162602522202993782792835301376", "bignum"),
    ("1.50::DECIMAL(10,2)", '"1.50"', "1.50", "decimal128(10, 2)"),
    ("12345678901234567890.123456789::DECIMAL(38,9)", '"12345678901234567890.123456789"',
     "12345678901234567890.123456789", "decimal128(38, 9)"),
    ("0::DECIMAL(18,10)", '"0.0000000000"', "0.0000000000", "decimal128(18, 10)"),
    ("42::DOUBLE", "42.0", "42.0", "double"),
    ("0.1::DOUBLE", "0.1", "0.1", "double"),
    ("1.1::FLOAT", "1.1", "1.1", "float"),
    ("'nan'::DOUBLE", '"NaN"', "NaN", "double"),
    ("'inf'::DOUBLE", '"Infinity"', "Infinity", "double"),
    ("'-inf'::FLOAT", '"-Infinity"', "-Infinity", "float"),
    ("TIMESTAMPTZ '2024-01-02 03:04:05.123456+02'", '"2024-01-02T01:04:05.123456+00:00"',
     "2024-01-02T01:04:05.123456+00:00", "timestamp[us, tz=Etc/UTC]"),
    ("TIMESTAMP '2024-01-02 03:04:05'", '"2024-01-02T03:04:05"', "2024-01-02T03:04:05", "timestamp[us]"),
    ("TIMESTAMP_NS '2024-01-01 00:00:00.123456789'", '"2024-01-01T00:00:00.123456789"',
     "2024-01-01T00:00:00.123456789", "timestamp[ns]"),
    ("'infinity'::TIMESTAMP", '"infinity"', "infinity", "timestamp[us]"),
    ("'294247-01-10 04:00:54.775806'::TIMESTAMP", '"+294247-01-10T04:00:54.775806"',
     "+294247-01-10T04:00:54.775806", "timestamp[us]"),
    ("DATE '2024-01-02'", '"2024-01-02"', "2024-01-02", "date32[day]"),
    ("'0044-03-15 (BC)'::DATE", '"-0043-03-15"', "-0043-03-15", "date32[day]"),
    ("'-infinity'::DATE", '"-infinity"', "-infinity", "date32[day]"),
    ("TIME '12:34:56.5'", '"12:34:56.500000"', "12:34:56.500000", "time64[us]"),
    ("TIMETZ '12:00:00-05:30'", '"12:00:00-05:30"', "12:00:00-05:30", "time_tz"),
    ("INTERVAL '14 months 2 days 3.5 seconds'", '"P1Y2M2DT3.5S"', "P1Y2M2DT3.5S", "month_day_nano_interval"),
    ("INTERVAL '-1 hour'", '"PT-1H"', "PT-1H", "month_day_nano_interval"),
    ("[1, 2]::INT[]", "[1, 2]", "[1, 2]", "list<l: int32>"),
    ("[1, NULL, 3]::BIGINT[3]", "[1, null, 3]", "[1, null, 3]", "fixed_size_list<: int64>[3]"),
    ("[[1.5::DOUBLE, 'nan'::DOUBLE], []]", '[[1.5, "NaN"], []]', '[[1.5, "NaN"], []]',
     "list<l: list<l: double>>"),
    ("{'a': 1, 'b': 'x'}", '{"a": 1, "b": "x"}', '{"a": 1, "b": "x"}', "struct<a: int32, b: string>"),
    ("{'z': (2**62)::BIGINT, 'a': [DATE '2024-01-02']}", '{"z": 4611686018427387904, "a": ["2024-01-02"]}',
     '{"z": 4611686018427387904, "a": ["2024-01-02"]}', "struct<z: int64, a: list<l: date32[day]>>"),
    ("MAP {'k': 1, 'j': NULL}", '{"k": 1, "j": null}', '{"k": 1, "j": null}', "map<string, int32>"),
    ("MAP {7: 2.5::DECIMAL(3,1)}", '{"7": "2.5"}', '{"7": "2.5"}', "map<int32, decimal128(3, 1)>"),
    ("NULL", "null", "NULL", "null"),
    ("NULL::INT", "null", "NULL", "int32"),
    ("true", "true", "true", "bool"),
    ("'héllo [red]x'", '"h\\u00e9llo [red]x"', "héllo [red]x", "string"),
    ("'ab'::BLOB", '"YWI="', "YWI=", "binary"),
    ("'0101'::BIT", '"0101"', "0101", "bit"),
    ("'6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID", '"6ba7b810-9dad-11d1-80b4-00c04fd430c8"',
     "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "uuid"),
    ("'b'::ENUM('a', 'b')", '"b"', "b", "dictionary<values=string, indices=uint8, ordered=0>"),
    ("'{\"a\": 1}'::JSON", '"{\\"a\\": 1}"', '{"a": 1}', "json"),
]


@pytest.fixture
async def warehouse() -> AsyncIterator[Warehouse]:
    wh = Warehouse(WarehouseSettings(url="duckdb://:memory:", cache_enabled=False), Metrics())
    await wh.start()
    yield wh
    await wh.stop()


def over_the_wire(table: pa.Table, *, typed: bool = True, chunk_rows: int = 1000) -> list[admin_pb2.Row]:
    """Rows as a client receives them: serialized by the server, parsed on the other side."""
    return [admin_pb2.Row.FromString(r.SerializeToString()) for rows in rows_of(table, chunk_rows, typed=typed)
            for r in rows]


def decoded(table: pa.Table, **kwargs: Any) -> list[list[Any]]:
    return [[from_typed(v) for v in row.typed_values] for row in over_the_wire(table, **kwargs)]


@pytest.mark.parametrize(("expr", "as_json", "as_text", "type_name"), TYPES, ids=[t[0] for t in TYPES])
async def test_every_duckdb_type_reaches_json_and_the_table_exactly(
    warehouse: Warehouse, expr: str, as_json: str, as_text: str, type_name: str
) -> None:
    """A user query's value keeps its type through the wire: 42 stays 42 (not 42.0), a decimal keeps its digits,
    a time zone its offset, NaN is "NaN", NULL null; nested values keep their inner types."""
    result = await warehouse.query(f"SELECT {expr} AS v", lossless=True)
    assert [c.type for c in columns_of(result.table.schema)] == [type_name]
    (value,) = decoded(result.table)[0]
    assert json.dumps(json_ready(value), allow_nan=False) == as_json
    assert cell_text(value) == as_text


async def test_the_cli_prints_faithful_json_and_table(warehouse: Warehouse, capsys: pytest.CaptureFixture[str]) -> None:
    """`mlplat query --json` and the table: integers without a fraction, doubles with one, NULL, NaN."""
    result = await warehouse.query("SELECT 42 AS answer, 42::DOUBLE AS d, NULL AS n, 'nan'::DOUBLE AS f, "
                                   "[1, 2] AS l, '[bold]b' AS s", lossless=True)
    columns = [{"name": c.name, "type": c.type} for c in columns_of(result.table.schema)]
    rows = decoded(result.table)
    assert json.loads(_query_json(columns, rows, truncated=False, cached=False))["rows"] == [
        [42, 42.0, None, "NaN", [1, 2], "[bold]b"]]
    assert '"rows": [[42, 42.0, null, "NaN", [1, 2], "[bold]b"]]' in _query_json(columns, rows, False, False)
    _print_table(columns, rows)
    out = capsys.readouterr().out
    cells = [c.strip() for c in out.splitlines()[3].strip("│┃ ").split("│")]
    assert cells == ["42", "42.0", "NULL", "NaN", "[1, 2]", "[bold]b"]


async def test_a_huge_sum_is_an_integer(warehouse: Warehouse) -> None:
    """sum() of BIGINT is a HUGEINT in DuckDB: it comes back an integer, not the decimal string "6"."""
    await warehouse.execute("CREATE TABLE t (x BIGINT)", tables=("t",))
    await warehouse.execute("INSERT INTO t VALUES (1), (5)", tables=("t",))
    result = await warehouse.query("SELECT sum(x) AS s FROM t", lossless=True)
    assert decoded(result.table) == [[6]] and isinstance(decoded(result.table)[0][0], int)


@pytest.mark.parametrize("lossless", [True, False])
def test_every_column_of_duckdb_test_all_types_converts(lossless: bool) -> None:
    """DuckDB's own table of every type, minimum, maximum and NULL, converts without error; integers, decimals,
    strings, UUIDs and bits read exactly as DuckDB prints them. Without lossless conversion (internal reads)
    only the types Arrow cannot name differ."""
    con = duckdb.connect()
    if lossless:
        con.execute("SET SESSION arrow_lossless_conversion = true")
    table = con.sql("SELECT * FROM test_all_types()").to_arrow_table()
    texts = con.sql("SELECT " + ", ".join(f'"{c}"::VARCHAR' for c in table.column_names)
                    + " FROM test_all_types()").fetchall()
    rows = decoded(table)
    exact = {"tinyint", "smallint", "int", "bigint", "utinyint", "usmallint", "uint", "ubigint", "bignum",
             "dec_4_1", "dec_9_4", "dec_18_6", "dec38_10", "varchar", "uuid", "small_enum", "large_enum"}
    exact |= {"hugeint", "uhugeint", "bit", "time_tz", "bool"} if lossless else set()
    for i, name in enumerate(table.column_names):
        for row, text in zip(rows, texts, strict=True):
            if name in exact:
                assert (None if row[i] is None else cell_text(row[i])) == text[i], name
    maximum = dict(zip(table.column_names, rows[1], strict=True))
    assert json.dumps(json_ready(maximum["double_array"])) == '[42.0, "NaN", "Infinity", "-Infinity", null, -42.0]'
    assert maximum["timestamp_tz"] == "+294247-01-10T04:00:54.775806+00:00"
    assert maximum["interval"] == "P83Y3M999DT16M39.999999S"


def test_nested_values_are_right_in_every_chunk() -> None:
    """A large result streams in chunks, which are slices: lists, maps, fixed-size lists, structs and unions
    with nulls must take their own elements in every chunk, not the first chunk's."""
    con = duckdb.connect()
    sql = ("SELECT CASE WHEN i % 3 = 0 THEN NULL ELSE range(i % 4) END AS l, "
           "CASE WHEN i % 5 = 0 THEN NULL ELSE MAP {i: [i]} END AS m, "
           "CASE WHEN i % 7 = 0 THEN NULL ELSE [i, i + 1]::BIGINT[2] END AS f, "
           "CASE WHEN i % 2 = 0 THEN NULL ELSE {'i': i, 'l': [i]} END AS s, "
           "CASE WHEN i % 2 = 0 THEN union_value(n := i)::UNION(n BIGINT, s VARCHAR) WHEN i % 3 = 0 THEN NULL "
           "ELSE union_value(s := i::VARCHAR)::UNION(n BIGINT, s VARCHAR) END AS u FROM range(50) t(i) ORDER BY i")
    table = con.sql(sql).to_arrow_table()
    expected = [list(row.values()) for row in table.to_pylist()]
    for row in expected:
        row[1] = None if row[1] is None else dict(row[1])
    assert decoded(table, chunk_rows=7) == expected
    dense = pa.UnionArray.from_dense(pa.array([0, 1, 0, 1, 1], pa.int8()), pa.array([0, 0, 1, 1, 2], pa.int32()),
                                     [pa.array([10, None]), pa.array(["a", "b", "c"])])
    assert decoded(pa.table({"u": dense}), chunk_rows=2) == [[10], ["a"], [None], ["b"], ["c"]]


def test_old_clients_still_get_json_like_values() -> None:
    """Without `typed`, rows come in Row.values as before: safe integers as numbers, big ones and NaN as strings."""
    table = duckdb.connect().sql("SELECT 42 AS a, (2**60)::BIGINT AS b, 'nan'::DOUBLE AS c, "
                                 "TIMESTAMPTZ '2024-01-02 00:00:00+00' AS d, NULL AS e").to_arrow_table()
    (row,) = over_the_wire(table, typed=False)
    assert not row.typed_values
    assert [from_value(v) for v in row.values] == [42.0, "1152921504606846976", "NaN", "2024-01-02T00:00:00+00:00",
                                                   None]


def test_a_type_mlplat_cannot_send_is_a_clear_error() -> None:
    """An Arrow type without a mapping is refused naming the type and what to do, never sent wrong."""
    table = pa.table({"r": pa.RunEndEncodedArray.from_arrays([2], pa.array([1]))})
    with pytest.raises(QueryRejected, match=r"run_end_encoded.*cast the column"):
        over_the_wire(table)


ONLINE = [("clicks_1h", "int", 23, "int64_value"), ("spend_1h", "float", 75.5, "double_value"),
          ("spend_0", "float", 23.0, "double_value"), ("country", "string", "de", "string_value"),
          ("is_premium", "bool", True, "bool_value"), ("missing", "int", None, None)]


@pytest.mark.parametrize(("name", "kind", "value", "field"), ONLINE, ids=[o[0] for o in ONLINE])
def test_online_values_keep_their_declared_type(name: str, kind: str, value: Any, field: str | None) -> None:
    """An int feature is an int64 on the wire and an int again in the client; a float a double; null is unset."""
    wire = features_pb2.FeatureValue.FromString(feature_value(name, kind, value).SerializeToString())
    assert wire.WhichOneof("kind") == field
    back = from_feature_value(wire)
    assert back == value and type(back) is type(value)


def test_online_timestamps_are_utc_instants() -> None:
    """A timestamp feature, stored as ISO 8601 text or read as a datetime, is a google.protobuf.Timestamp."""
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    for stored in (moment, "2026-01-02T04:04:05.678901+01:00", moment.astimezone(dt.timezone(dt.timedelta(hours=-7)))):
        v = feature_value("seen_at", "timestamp", stored)
        assert v.WhichOneof("kind") == "timestamp_value" and from_feature_value(v) == moment


@pytest.mark.parametrize(("kind", "value"), [("int", 2.5), ("int", True), ("bool", 1), ("timestamp", "yesterday"),
                                             ("string", 3)])
def test_an_online_value_of_the_wrong_type_is_named(kind: str, value: Any) -> None:
    """A stored value that does not fit its declared type is an error naming the feature, never a guess."""
    with pytest.raises(TypeError, match=f"feature 'f' is declared {kind}"):
        feature_value("f", kind, value)
