"""`mlplat generate`: realistic random events for a feature set, to a file or to a running daemon."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlplat.cli.client import JsonOption, TargetOption, channel

if TYPE_CHECKING:  # the generator pulls in numpy and pyarrow: import it only when a command runs
    from mlplat.ingest.generator import GeneratorSpec

generate_app = typer.Typer(help="Realistic random events: files for `mlplat ingest`, or a live stream.",
                           no_args_is_help=True)

FeaturesOption = Annotated[Path, typer.Option("--features", help="Feature definitions (TOML).")]
FeatureSetOption = Annotated[str, typer.Option("--feature-set", "-f", help="Feature set to generate events for.")]
ShiftOption = Annotated[
    list[str] | None,
    typer.Option("--shift", help="Move a numeric feature's values: feature=amount (repeatable), e.g. spend_1h=25."),
]
BadOption = Annotated[float, typer.Option("--bad-fraction", min=0.0, max=1.0, help="Share of invalid records.")]
SeedOption = Annotated[int, typer.Option(help="Random seed: the same seed gives the same events.")]


def _spec(features: Path, feature_set: str, shift: list[str] | None, bad: float, seed: int,
          entities: int) -> GeneratorSpec:
    from mlplat.features.definitions import load_catalog
    from mlplat.ingest.generator import GeneratorSpec

    catalog = load_catalog(features)
    if feature_set not in catalog.feature_sets:
        known = ", ".join(sorted(catalog.feature_sets)) or "none"
        raise typer.BadParameter(f"no feature set {feature_set!r} in {features} (it has {known})")
    fs = catalog.feature_sets[feature_set]
    shifts: dict[str, float] = {}
    for item in shift or []:
        name, sep, amount = item.partition("=")
        try:
            shifts[name] = float(amount)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"--shift {item!r}: expected feature=amount, e.g. spend_1h=25")
    try:
        return GeneratorSpec(fs, catalog.key_of(fs), entities=entities, seed=seed, shift=shifts, bad_fraction=bad)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@generate_app.command("file")
def generate_file(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="File to write.")],
    feature_set: FeatureSetOption = "user_activity",
    fmt: Annotated[str, typer.Option("--format", help="parquet, csv, ndjson or json.")] = "parquet",
    rows: Annotated[int, typer.Option(min=1, help="Events to write.")] = 100_000,
    features: FeaturesOption = Path("config/features.toml"),
    shift: ShiftOption = None,
    bad_fraction: BadOption = 0.0,
    entities: Annotated[int, typer.Option(min=1, help="Distinct entities.")] = 1000,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """Write a file of events (written in chunks, so any size fits in memory)."""
    from mlplat.ingest.generator import write_file

    if fmt not in ("parquet", "csv", "ndjson", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: expected parquet, csv, ndjson or json")
    spec = _spec(features, feature_set, shift, bad_fraction, seed, entities)
    started = time.monotonic()
    for done in write_file(spec, rows, out, fmt):
        if not json_out and sys.stderr.isatty():
            print(f"\r  {done:,}/{rows:,} rows", end="", file=sys.stderr, flush=True)
    if not json_out and sys.stderr.isatty():
        print(file=sys.stderr)
    summary = {"path": str(out), "format": fmt, "rows": rows, "bytes": out.stat().st_size,
               "seconds": round(time.monotonic() - started, 3)}
    typer.echo(json.dumps(summary) if json_out else f"wrote {rows:,} {feature_set} events to {out} ({fmt}, "
               f"{summary['bytes']:,} bytes)")


@generate_app.command("events")
def generate_events(
    feature_set: FeatureSetOption = "user_activity",
    rate: Annotated[float, typer.Option(min=0.1, help="Events per second.")] = 100.0,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many events (0: until Ctrl-C).")] = 0,
    features: FeaturesOption = Path("config/features.toml"),
    shift: ShiftOption = None,
    bad_fraction: BadOption = 0.0,
    entities: Annotated[int, typer.Option(min=1, help="Distinct entities.")] = 1000,
    seed: SeedOption = 0,
    labels: Annotated[
        str | None, typer.Option(help="Also send ground-truth label events to this feature set (e.g. user_labels).")
    ] = None,
    label_delay_s: Annotated[float, typer.Option(min=0.0, help="How much later each label arrives.")] = 5.0,
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Stream events to the daemon's bus at a steady rate (through its Publish RPC).

    With --labels, each valid event's ground truth follows --label-delay-s later, as labels do in real life.
    """
    from collections import deque

    from mlplat.api.v1 import ingest_pb2, ingest_pb2_grpc
    from mlplat.ingest.generator import generate_labelled

    spec = _spec(features, feature_set, shift, bad_fraction, seed, entities)
    batch = max(1, int(rate / 20))  # twenty sends a second keeps the pace smooth

    pending: deque[tuple[float, ingest_pb2.PublishRequest]] = deque()

    def due_labels(until: float) -> Iterator[ingest_pb2.PublishRequest]:
        while pending and pending[0][0] <= until:
            yield pending.popleft()[1]

    def paced() -> Iterator[ingest_pb2.PublishRequest]:
        sent, started = 0, time.monotonic()
        while not count or sent < count:
            n = batch if not count else min(batch, count - sent)
            now = time.monotonic()
            for key, payload, label in generate_labelled(spec, n, sent):
                yield ingest_pb2.PublishRequest(feature_set=feature_set, key=key, payload=payload)
                if labels and label is not None:
                    pending.append((now + label_delay_s,
                                    ingest_pb2.PublishRequest(feature_set=labels, key=key, payload=label)))
            yield from due_labels(time.monotonic())
            sent += n
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        while pending:  # the last labels are still on their way
            time.sleep(max(pending[0][0] - time.monotonic(), 0))
            yield from due_labels(time.monotonic())

    with channel(target) as ch:
        try:
            resp = ingest_pb2_grpc.IngestServiceStub(ch).Publish(paced())
        except KeyboardInterrupt:
            return
    typer.echo(json.dumps({"published": resp.published}) if json_out else f"published {resp.published:,} events")
