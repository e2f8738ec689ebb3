"""`mlplat bench NAME`: speed next to a floor measured in the same run. --json prints one JSON object."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from mlplat.bench import BenchResult

bench_app = typer.Typer(
    help="Benchmarks that compare mlplat with a floor measured in the same run (ratio = ours / floor).",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help='Print {"name", "params", "metrics"} as JSON.')]


def _report(result: BenchResult, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(f"bench {result.name} {json.dumps(result.params)}")
    for key, value in result.metrics.items():
        typer.echo(f"  {key:<24} {value:,}")


def _progress(json_out: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not json_out or sys.stderr.isatty():
            print(f"  … {message}", file=sys.stderr, flush=True)

    return say


@bench_app.command("warehouse")
def bench_warehouse(
    rows: Annotated[int, typer.Option(min=1_000, help="Rows to write.")] = 1_000_000,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per write command (as ingest would send).")] = 10_000,
    repeat: Annotated[int, typer.Option(min=1, help="Runs; the best of each side is reported.")] = 3,
    json_out: JsonOption = False,
) -> None:
    """Rows/s through the warehouse writer actor vs DuckDB's own Arrow insert of the same data."""
    from mlplat.bench import warehouse

    _report(warehouse.run(rows, batch_rows, repeat, _progress(json_out)), json_out)


@bench_app.command("balancer")
def bench_balancer(
    jobs: Annotated[int, typer.Option(min=100, help="No-op jobs per lane (a tenth of them for processes).")] = 5000,
    samples: Annotated[int, typer.Option(min=10, help="Ingest jobs timed, idle and under training.")] = 200,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPU count).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Per-lane overhead and jobs/s, and ingest wait p99 idle vs while training fills every worker."""
    from mlplat.bench import balancer

    _report(balancer.run(jobs, samples, workers, _progress(json_out)), json_out)


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(min=1000, help="Events for the streaming part.")] = 200_000,
    rows: Annotated[int, typer.Option(min=1000, help="Rows in each file of the file part.")] = 500_000,
    bus: Annotated[str, typer.Option(help="memory:// or kafka://host:port for the streaming part.")] = "memory://",
    workers: Annotated[int | None, typer.Option(help="Worker processes parsing files (default: as the daemon, "
                                                "CPU count - 1, at least 1).")]
    = None,
    big: Annotated[bool, typer.Option("--big", help="Instead: upload one NDJSON file larger than memory should "
                                      "hold to a real daemon; report its RSS growth and that every row landed once.")]
    = False,
    big_mb: Annotated[int, typer.Option(min=1, help="With --big: the file's size in MiB.")] = 1024,
    partition_mb: Annotated[float, typer.Option(min=0.01, help="With --big: the daemon's ingest.partition_bytes, "
                                                "in MiB.")] = 4.0,
    json_out: JsonOption = False,
) -> None:
    """Streaming events/s vs raw consume, and file rows/s vs DuckDB's own read_* insert, per format.

    With --big: peak daemon RSS while a 1 GiB upload is ingested (promise: grows < 300 MB), and rows landed.
    """
    import os

    if big:
        from mlplat.bench import bigupload

        _report(bigupload.run(big_mb, partition_mb, _progress(json_out)), json_out)
        return
    from mlplat.bench import ingest

    _report(ingest.run(events, rows, bus, workers or max(1, (os.cpu_count() or 2) - 1), _progress(json_out)),
            json_out)


@bench_app.command("serve")
def bench_serve(
    seconds: Annotated[float, typer.Option(min=0.5, help="How long each load level runs.")] = 3.0,
    json_out: JsonOption = False,
) -> None:
    """gRPC Predict latency and throughput (1, 8, 32 clients) and PredictBatch vs the in-process model call."""
    from mlplat.bench import serve

    _report(serve.run(seconds, _progress(json_out)), json_out)


@bench_app.command("swap")
def bench_swap(
    daemons: Annotated[int, typer.Option(min=2, help="Daemons sharing the hot store and the artifact store.")] = 2,
    swaps: Annotated[int, typer.Option(min=1, help="Promotions measured (each of a newly registered version).")]
    = 20,
    clients: Annotated[int, typer.Option(min=1, help="Predict clients per daemon, sending without pause.")] = 4,
    settle_s: Annotated[float, typer.Option(min=0.2, help="Seconds between promotions.")] = 1.5,
    hot_store: Annotated[str | None, typer.Option(help="redis://… shared by the daemons (default: a redis-server "
                                                  "this bench starts).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Promotion to every daemon serving the new version (p50/p99 ms), under Predict load on every daemon.

    Also counts the requests that failed on each daemon while versions swapped (the promise: 0).
    """
    from mlplat.bench import swap

    _report(swap.run(daemons, swaps, clients, settle_s, hot_store, _progress(json_out)), json_out)


@bench_app.command("stream")
def bench_stream(
    events: Annotated[int, typer.Option(min=1000, help="Backlog of events predicted for events/s.")] = 100_000,
    rate: Annotated[float, typer.Option(min=100, help="Events per second published in the lag phase.")] = 10_000,
    seconds: Annotated[float, typer.Option(min=1, help="How long the lag phase publishes.")] = 5.0,
    bus: Annotated[str, typer.Option(help="memory:// or kafka://host:port.")] = "memory://",
    models: Annotated[int, typer.Option(min=1, max=16, help="Streaming models on the one feature set.")] = 1,
    json_out: JsonOption = False,
) -> None:
    """Streaming inference: events/s through a decision tree vs a raw consume, and event-to-prediction lag."""
    from mlplat.bench import stream

    _report(stream.run(events, rate, seconds, bus, _progress(json_out), models=models), json_out)


@bench_app.command("drift")
def bench_drift(
    rows: Annotated[int, typer.Option(min=100, help="Rows in the reference and in the current sample.")] = 1_000_000,
    features: Annotated[int, typer.Option(min=1, help="Numeric features compared.")] = 20,
    bins: Annotated[int, typer.Option(min=2, help="Bins for PSI and KL (reference quantiles).")] = 10,
    json_out: JsonOption = False,
) -> None:
    """KS, PSI and KL per feature vs the plain scipy/numpy computation; time and largest difference."""
    from mlplat.bench import drift

    _report(drift.run(rows, features, bins, _progress(json_out)), json_out)
