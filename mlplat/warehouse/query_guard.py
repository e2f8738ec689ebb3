"""Checks a user's SQL before it runs: one SELECT, reading only the warehouse's own tables.

The guard works on DuckDB's own parse tree (json_serialize_sql), not on the text, so quoting, comments
and nesting cannot hide a table function or a file path. Defence in depth: the query then runs in a
READ ONLY transaction, so even a missed case cannot write.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from mlplat.errors import QueryForbidden, QueryRejected

# table functions that read nothing but the database itself or generate values
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "duckdb_tables", "duckdb_columns", "duckdb_views",
     "duckdb_schemas", "duckdb_types"}
)
# scalar functions that reach outside the query (settings, environment, files, extensions)
FORBIDDEN_FUNCTIONS = frozenset(
    {"getenv", "current_setting", "getvariable", "read_text", "read_blob", "load_extension",
     "install_extension", "query", "query_table"}
)
ALLOWED_SCHEMAS = frozenset({"", "main"})


@dataclass(frozen=True)
class CheckedQuery:
    sql: str
    tables: frozenset[str]  # base tables read, for cache invalidation


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _cte_names(tree: Any) -> set[str]:
    names: set[str] = set()
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                key = entry.get("key")
                if isinstance(key, str):
                    names.add(key.lower())
    return names


def check_query(con: duckdb.DuckDBPyConnection, sql: str, known_tables: set[str]) -> CheckedQuery:
    """Raise QueryRejected/QueryForbidden, or return the tables the query reads.

    known_tables are lower-cased names of tables and views in the warehouse's main schema.
    """
    text = sql.strip()
    if not text:
        raise QueryRejected("empty query: give one SELECT statement")
    try:
        statements = con.extract_statements(text)
    except duckdb.Error as e:
        raise QueryRejected(f"query does not parse: {' '.join(str(e).split())}") from None
    if len(statements) != 1:
        raise QueryRejected(f"give exactly one statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        verb = statements[0].query.split(maxsplit=1)[0].upper() if statements[0].query.strip() else kind.name
        raise QueryForbidden(f"only read-only SELECT queries are allowed, not {verb}")

    # fetchall, never fetchone: a result left unfinished makes the pooled cursor refuse its next query
    serialized = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [text]).fetchall()
    tree = json.loads(serialized[0][0]) if serialized else {"error": True}
    if tree.get("error"):
        raise QueryRejected(f"query cannot be checked: {tree.get('error_message', 'unknown parse error')}")

    ctes = _cte_names(tree)
    tables: set[str] = set()
    for node in _walk(tree):
        kind_name = node.get("type")
        if kind_name == "TABLE_FUNCTION":
            fn = node.get("function", {})
            name = str(fn.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryForbidden(
                    f"table function {name}() is not allowed: queries may read only warehouse tables"
                )
        elif kind_name == "BASE_TABLE":
            tables.add(_checked_table(node, ctes, known_tables))
        elif node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in FORBIDDEN_FUNCTIONS:
                raise QueryForbidden(f"function {name}() is not allowed in queries")
    return CheckedQuery(text, frozenset(tables - ctes))


def _checked_table(node: dict[str, Any], ctes: set[str], known_tables: set[str]) -> str:
    catalog = str(node.get("catalog_name", ""))
    schema = str(node.get("schema_name", "")).lower()
    name = str(node.get("table_name", ""))
    if catalog:
        raise QueryForbidden(f"other databases cannot be read ({catalog}.{name})")
    if schema not in ALLOWED_SCHEMAS:
        raise QueryForbidden(f"schema {schema!r} cannot be read; use the warehouse's main tables")
    lowered = name.lower()
    if not schema and lowered in ctes:
        return lowered
    if lowered not in known_tables:
        if any(ch in name for ch in "/\\.:") or "://" in name:
            raise QueryForbidden(f"reading files or URLs is not allowed ({name!r})")
        raise QueryRejected(f"no table named {name!r} in the warehouse")
    return lowered
