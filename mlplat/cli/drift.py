"""`mlplat drift`: the latest drift results per model and feature, or a run now (--run)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlplat.api.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlplat.cli.client import JsonOption, TargetOption, channel

if TYPE_CHECKING:
    from rich.text import Text


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
    """Drift of each production model's inputs and scores against its training data: a row per source and
    feature with its statistics (numbers: ks, psi, kl, js, wasserstein; strings and bools: psi, chi2,
    unseen_share), a crossed threshold in red next to its value. --json has every value and threshold.

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
    from rich.table import Column, Table

    console = Console()
    for d in report.models:
        verdict = "[red]DRIFT[/red]" if d.detected else ("no verdict" if d.reason else "[green]ok[/green]")
        table = Table("source", Column("feature", overflow="fold"), Column("statistics", overflow="fold"),
                      Column("current n", justify="right"),
                      title=f"{d.model} v{d.version}  bucket {d.bucket_start} .. {d.bucket_end}  {verdict}",
                      caption=d.reason or f"computed {d.computed_at}; crossed thresholds in red")
        for (source, feature), values in _by_feature(d.values).items():
            table.add_row(source, "performance" if feature == "__performance__" else feature, _statistics(values),
                          str(max(v.current_n for v in values)))
        console.print(table)


def _by_feature(values: Sequence[monitoring_pb2.DriftValue]) -> dict[tuple[str, str], list[monitoring_pb2.DriftValue]]:
    """One row per source and feature, in the order the run produced them."""
    out: dict[tuple[str, str], list[monitoring_pb2.DriftValue]] = {}
    for v in values:
        out.setdefault((v.source, v.feature), []).append(v)
    return out


def _statistics(values: list[monitoring_pb2.DriftValue]) -> Text:
    """A line per statistic, `ks 0.04 (p 0.31)`: a p-value next to its statistic, a crossing in red with its
    bound (`psi 0.31 >= 0.2`)."""
    from rich.text import Text

    names = {v.statistic for v in values}
    text = Text()
    for v in values:
        if v.statistic.endswith("_pvalue") and v.statistic.removesuffix("_pvalue") in names:
            continue
        pvalue = next((p.value for p in values if p.statistic == f"{v.statistic}_pvalue"), None)
        part = f"{v.statistic} {v.value:.4g}" + (f" (p {pvalue:.3g})" if pvalue is not None else "")
        if v.crossed:  # above a drift threshold, or below a performance bound
            part += f" {'<' if v.value < v.threshold else '>='} {v.threshold:g}"
        text.append(("\n" if text else "") + part, style="red" if v.crossed else "")
    return text
