"""`mlplat drift`: the latest drift results per model and feature, or a run now (--run)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from mlplat.api.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlplat.cli.client import JsonOption, TargetOption, channel


def _as_dict(d: monitoring_pb2.ModelDrift) -> dict[str, Any]:
    return {"model": d.model, "version": d.version, "bucket_start": d.bucket_start, "bucket_end": d.bucket_end,
            "computed_at": d.computed_at, "detected": d.detected, "reason": d.reason or None,
            "values": [{"source": v.source, "feature": v.feature, "statistic": v.statistic, "value": v.value,
                        "threshold": v.threshold if v.has_threshold else None, "crossed": v.crossed,
                        "reference_n": v.reference_n, "current_n": v.current_n} for v in d.values]}


def drift_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    run: Annotated[bool, typer.Option("--run", help="Compare now (instead of showing the latest run).")] = False,
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Drift of each production model's inputs and scores against its training data: per feature the
    statistic, its threshold and whether it crossed it.

    Example: mlplat drift --run -m churn
    """
    request = monitoring_pb2.DriftRequest(models=[model] if model else [])
    with channel(target) as ch:
        stub = monitoring_pb2_grpc.MonitoringServiceStub(ch)
        report = stub.RunDrift(request) if run else stub.GetDrift(request)
    if json_out:
        typer.echo(json.dumps([_as_dict(d) for d in report.models], indent=2))
        return
    if not report.models:
        typer.echo("no drift results yet: run `mlplat drift --run`")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for d in report.models:
        verdict = "[red]DRIFT[/red]" if d.detected else ("no verdict" if d.reason else "[green]ok[/green]")
        table = Table(title=f"{d.model} v{d.version}  bucket {d.bucket_start} .. {d.bucket_end}  {verdict}",
                      caption=d.reason or f"computed {d.computed_at}")
        for column in ("source", "feature", "statistic", "value", "threshold", "crossed", "current n"):
            table.add_column(column, justify="right" if column in ("value", "threshold", "current n") else "left")
        for v in d.values:
            threshold = f"{v.threshold:g}" if v.has_threshold else "-"
            table.add_row(v.source, v.feature, v.statistic, f"{v.value:.4g}", threshold,
                          "[red]yes[/red]" if v.crossed else "no", str(v.current_n))
        console.print(table)
