"""Commands that talk to a running daemon over gRPC: query, status."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from mlplat.api.convert import cell_text, from_typed, from_value, json_ready
from mlplat.api.v1 import admin_pb2, admin_pb2_grpc
from mlplat.errors import MlplatError

TargetOption = Annotated[
    str, typer.Option("--target", "-t", envvar="MLPLAT_TARGET", help="Daemon gRPC address host:port.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class ClientError(MlplatError):
    """The daemon answered with an error, or could not be reached."""


@dataclass
class Connection:
    """How commands reach the daemon: set once by the top-level options (`mlplat --token-file ... CMD`)."""

    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


CONNECTION = Connection()


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call (over TLS or, on loopback, plaintext)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        """grpc hands the call details as a namedtuple: a copy with one more metadata pair."""
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None


def _open_channel(target: str) -> grpc.Channel:
    c = CONNECTION
    options = [("grpc.max_receive_message_length", 1 << 30)]  # the daemon keeps to its own api.max_message_mb
    if c.tls_ca is None and c.tls_cert is None:
        ch = grpc.insecure_channel(target, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=_read(c.tls_ca, "--tls-ca"),
                                                   private_key=_read(c.tls_key, "--tls-key"),
                                                   certificate_chain=_read(c.tls_cert, "--tls-cert"))
        ch = grpc.secure_channel(target, credentials, options=options)
    return grpc.intercept_channel(ch, _BearerToken(c.token)) if c.token else ch


@contextmanager
def channel(target: str) -> Iterator[grpc.Channel]:
    with _open_channel(target) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=5)
        except grpc.FutureTimeoutError:
            raise ClientError(f"cannot reach mlplat at {target} (is `mlplat run` running?)") from None
        try:
            yield ch
        except grpc.RpcError as e:
            code = e.code()
            raise ClientError(f"{code.name if code else 'ERROR'}: {e.details()}") from None


def query_command(
    sql: Annotated[str, typer.Argument(metavar="SQL", help="One read-only SELECT statement.")],
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
    max_rows: Annotated[int, typer.Option(help="Return at most this many rows (0: server limit).")] = 0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the query cache.")] = False,
) -> None:
    """Run a read-only SQL query against the daemon's warehouse.

    Writes, file access (read_csv, 'file.parquet') and other databases are refused.
    Example: mlplat query "SELECT * FROM audit_log ORDER BY recorded_at DESC LIMIT 5"

    Values keep their SQL types: integers print as integers, DECIMAL with its exact digits (a string in
    --json), dates and times as ISO 8601 (with the offset for a time zone), lists and structs as JSON,
    NULL as NULL (null in --json), NaN and infinities as "NaN", "Infinity", "-Infinity".
    """
    columns: list[dict[str, str]] = []
    rows: list[list[Any]] = []
    truncated = cached = untyped = False
    with channel(target) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        for msg in stub.Query(admin_pb2.QueryRequest(sql=sql, max_rows=max_rows, no_cache=no_cache, typed=True)):
            columns.extend({"name": c.name, "type": c.type} for c in msg.columns)
            for r in msg.rows:
                if r.values and not r.typed_values:  # a daemon from before typed values ignores `typed`
                    untyped = True
                    rows.append([from_value(v) for v in r.values])
                else:
                    rows.append([from_typed(v) for v in r.typed_values])
            truncated = truncated or msg.truncated
            cached = cached or msg.cached
    if untyped:
        print(f"mlplat: warning: the daemon at {target} is older than this client and sends every number as a "
              "double (42.0): upgrade it for exact types", file=sys.stderr)
    if json_out:
        typer.echo(_query_json(columns, rows, truncated, cached))
        return
    _print_table(columns, rows)
    if truncated:
        print(f"(truncated at {len(rows)} rows)", file=sys.stderr)


def _query_json(columns: list[dict[str, str]], rows: list[list[Any]], truncated: bool, cached: bool) -> str:
    """Strict JSON (no NaN token): the value mapping is convert.json_ready's."""
    return json.dumps({"columns": columns, "rows": json_ready(rows), "truncated": truncated, "cached": cached},
                      allow_nan=False)


def _print_table(columns: list[dict[str, str]], rows: list[list[Any]]) -> None:
    """Cells as plain text (no rich markup: a value "[red]x" prints as itself), folded rather than cut."""
    from rich.console import Console
    from rich.table import Column, Table
    from rich.text import Text

    table = Table(*(Column(Text(c["name"]), overflow="fold") for c in columns), show_lines=False)
    for row in rows:
        table.add_row(*(Text(cell_text(v)) for v in row))
    Console().print(table)
    print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", file=sys.stderr)


def status_command(target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """Show whether the daemon is ready, each check, and the backends it uses."""
    with channel(target) as ch:
        resp = admin_pb2_grpc.AdminServiceStub(ch).Status(admin_pb2.StatusRequest(), timeout=10)
    checks = [{"name": c.name, "ok": c.ok, "reason": c.reason} for c in resp.checks]
    if json_out:
        typer.echo(json.dumps({"version": resp.version, "ready": resp.ready, "checks": checks,
                               "backends": dict(resp.backends)}))
        return
    typer.echo(f"mlplat {resp.version}: {'ready' if resp.ready else 'NOT READY'}")
    for name, url in sorted(resp.backends.items()):
        typer.echo(f"  {name:<10} {url}")
    for c in checks:
        typer.echo(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}{'  ' + c['reason'] if c['reason'] else ''}")
    if not resp.ready:
        raise typer.Exit(1)
