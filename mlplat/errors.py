"""The mlplat exception tree, factored out so every module can raise without import loops.

    MlplatError
    ├── ConfigError              invalid settings; the CLI exits 2
    ├── BackendError             an external system misbehaved
    │   ├── BackendUnavailable   cannot reach it (start-up: fatal; running: retried)
    │   └── NotFound             the key/blob/topic does not exist
    ├── WarehouseError           a write or read against DuckDB failed
    │   └── QueryRejected        a user query is not allowed (see warehouse/query_guard.py)
    │       └── QueryForbidden   ... because it reaches outside the warehouse
    ├── IncompatibleChange       a definition change that would break stored data
    └── Overloaded               a bounded queue is full; retry later
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MlplatError(Exception):
    """Base of every error mlplat raises on purpose."""


class ConfigError(MlplatError):
    """Settings are invalid. The message names the key, the value and what was expected."""


class BackendError(MlplatError):
    """An external system (hot store, bus, artifact store) failed."""


class BackendUnavailable(BackendError):
    """The backend at a URL cannot be reached. The message carries the URL without secrets."""


class NotFound(BackendError):
    """The requested key, blob or topic does not exist."""


class WarehouseError(MlplatError):
    """A warehouse operation failed."""


class QueryRejected(WarehouseError):
    """A read-only query was refused before it ran (not a single SELECT)."""


class QueryForbidden(QueryRejected):
    """A read-only query tried to reach files, other databases or settings."""


class IncompatibleChange(MlplatError):
    """A definition change that would break stored data or consumers (e.g. a feature removed or retyped)."""


class Overloaded(MlplatError):
    """A bounded queue is full: the caller should back off and retry."""


def describe_invalid(error: ValidationError, prefix: str = "") -> str:
    """A pydantic error on one line: `<prefix><key>: <message> (got <value>)` per problem, joined by `; `.

    For definitions files (features, models); settings have their own, which also masks secrets."""
    parts = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = f" (got {e['input']!r})" if e["type"] not in ("value_error", "missing") else ""
        parts.append(f"{prefix}{key}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)
