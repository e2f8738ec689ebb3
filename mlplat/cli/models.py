"""`mlplat models`: register model files, train declared models, list and show versions and history,
promote and archive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplat.api.v1 import models_pb2, models_pb2_grpc, training_pb2, training_pb2_grpc
from mlplat.cli.client import ClientError, JsonOption, TargetOption, channel

models_app = typer.Typer(help="The model registry and training: register, train, declare, list, show, promote, "
                                "archive.", no_args_is_help=True)
CHUNK = 1 << 20
FLAVOUR_OF = {".skops": "sklearn", ".onnx": "onnx"}
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="Model name.")]
VersionArg = Annotated[int, typer.Argument(metavar="VERSION", min=1, help="Version number.")]
ReasonOption = Annotated[str, typer.Option(help="Why: recorded in the audit log.")]


def info_dict(v: models_pb2.ModelVersionInfo) -> dict[str, Any]:
    return {"model": v.model, "version": v.version, "stage": v.stage, "flavour": v.flavour, "sha256": v.sha256,
            "features": [{"name": f.name, "type": f.type} for f in v.features], "feature_set": v.feature_set or None,
            "metrics": dict(v.metrics), "created_by": v.created_by, "reason": v.reason, "created_at": v.created_at,
            "training_window": {"start": v.training_start, "end": v.training_end} if v.training_start else None,
            "exports": dict(v.exports), "artifacts_deleted_at": v.artifacts_deleted_at or None}


def by_model(versions: list[models_pb2.ModelVersionInfo]) -> list[dict[str, Any]]:
    """[{model, production, versions: [...]}]: every model with its versions, newest first."""
    models: dict[str, dict[str, Any]] = {}
    for v in versions:
        entry = models.setdefault(v.model, {"model": v.model, "production": None, "versions": []})
        if v.stage == "production":
            entry["production"] = v.version
        entry["versions"].append(info_dict(v))
    return list(models.values())


def _print_versions(versions: list[models_pb2.ModelVersionInfo], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(by_model(versions), indent=2))
        return
    if not versions:
        typer.echo("no models registered (mlplat models register FILE --name NAME ...)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "stage", "flavour", "inputs", "created", "by", "reason")
    for v in versions:
        stage = v.stage + (" (artifacts deleted)" if v.artifacts_deleted_at else "")
        table.add_row(v.model, str(v.version), stage, v.flavour + "".join(f" +{f}" for f in v.exports),
                      str(len(v.features)), v.created_at, v.created_by, v.reason)
    Console().print(table)


@models_app.command("register")
def register(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .skops (scikit-learn) or .onnx model file.",
                                         exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name (lower-case, digits, _).")],
    inputs: Annotated[str, typer.Option(
        help="Input features in the order the model takes them: name:type,... (type float, int or bool).")],
    feature_set: Annotated[str | None, typer.Option(
        "--feature-set", "-f", help="Feature set an entity's missing inputs are read from at prediction time.")]
    = None,
    flavour: Annotated[str | None, typer.Option(help="sklearn or onnx (default: from the file extension).")] = None,
    train_start: Annotated[str | None, typer.Option(
        help="Start of the training data's time range in --feature-set (ISO 8601): drift is measured against "
             "the rows from here ...")] = None,
    train_end: Annotated[str | None, typer.Option(help="... to here (exclusive).")] = None,
    reason: ReasonOption = "registered",
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Register a model file as a new staging version (it must load and take exactly --inputs).

    Example: mlplat models register churn.skops --name churn -f user_activity
             --inputs clicks_1h:int,spend_1h,session_minutes,is_premium:bool
    """
    from mlplat.serving.registry import RegistryError, parse_inputs

    chosen = flavour or FLAVOUR_OF.get(file.suffix.lower())
    if chosen is None:
        raise typer.BadParameter(f"cannot tell the flavour of {file.name}: pass --flavour sklearn|onnx")
    try:
        features = [models_pb2.InputFeature(name=f.name, type=f.type) for f in parse_inputs(inputs)]
    except RegistryError as e:
        raise typer.BadParameter(str(e), param_hint="--inputs") from None

    def messages() -> Iterator[models_pb2.RegisterModelRequest]:
        with file.open("rb") as f:
            first = True
            while (block := f.read(CHUNK)) or first:
                if first:
                    yield models_pb2.RegisterModelRequest(name=name, flavour=chosen, features=features,
                                                          feature_set=feature_set or "", reason=reason,
                                                          training_start=train_start or "",
                                                          training_end=train_end or "", chunk=block)
                    first = False
                else:
                    yield models_pb2.RegisterModelRequest(chunk=block)

    with channel(target) as ch:
        info = models_pb2_grpc.ModelServiceStub(ch).RegisterModel(messages())
    if json_out:
        typer.echo(json.dumps(info_dict(info)))
    else:
        typer.echo(f"registered {info.model} version {info.version} (staging, sha256 {info.sha256[:12]}); "
                   f"promote it with: mlplat models promote {info.model} {info.version}")


@models_app.command("list")
def list_models(target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """Every model with its versions, stages and why each version exists."""
    with channel(target) as ch:
        versions = models_pb2_grpc.ModelServiceStub(ch).ListVersions(models_pb2.ListVersionsRequest()).versions
    _print_versions(list(versions), json_out)


@models_app.command("show")
def show(model: ModelArg, limit: Annotated[int, typer.Option(min=1, max=10_000, help="History entries shown.")] = 30,
         target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """One model's versions (newest first), inputs, metrics, and its history: every registration, stage change
    and automated decision (bootstrap, retrain, drift_ignored, keep_staging, train_failed, delete_artifacts)
    with its reason."""
    with channel(target) as ch:
        stub = models_pb2_grpc.ModelServiceStub(ch)
        versions = list(stub.ListVersions(models_pb2.ListVersionsRequest(model=model)).versions)
        history = list(stub.History(models_pb2.HistoryRequest(model=model, limit=limit)).entries)
    if json_out:
        typer.echo(json.dumps({"model": model, "versions": [info_dict(v) for v in versions],
                               "history": [{"recorded_at": e.recorded_at, "actor": e.actor, "action": e.action,
                                            "subject": e.subject, "reason": e.reason,
                                            "details": json.loads(e.details_json or "{}")} for e in history]},
                              indent=2))
        return
    newest = versions[0]
    typer.echo(f"{model}: inputs " + ", ".join(f"{f.name} ({f.type})" for f in newest.features)
               + (f"; entity features from {newest.feature_set}" if newest.feature_set else ""))
    _print_versions(versions, False)
    if history:
        from rich.console import Console
        from rich.table import Table

        table = Table("when", "who", "what", "subject", "why", title="history (newest first)")
        for e in history:
            table.add_row(e.recorded_at, e.actor, e.action, e.subject, e.reason)
        Console().print(table)


@models_app.command("promote")
def promote(model: ModelArg, version: VersionArg, reason: ReasonOption = "promoted by hand",
            target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """Make VERSION the production version; every daemon sharing the hot store swaps to it."""
    with channel(target) as ch:
        info = models_pb2_grpc.ModelServiceStub(ch).Promote(
            models_pb2.StageRequest(model=model, version=version, reason=reason))
    typer.echo(json.dumps(info_dict(info)) if json_out else f"{model} version {version} is in production")


@models_app.command("archive")
def archive(model: ModelArg, version: VersionArg, reason: ReasonOption = "archived by hand",
            target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """Archive VERSION (the production version cannot be archived: promote another first)."""
    with channel(target) as ch:
        info = models_pb2_grpc.ModelServiceStub(ch).Archive(
            models_pb2.StageRequest(model=model, version=version, reason=reason))
    typer.echo(json.dumps(info_dict(info)) if json_out else f"{model} version {version} is archived")


STAGE_TEXT = {
    "queued": "queued", "waiting_for_data": "waiting for data", "loading_data": "loading data",
    "fitting": "fitting", "evaluating": "evaluating", "uploading": "uploading", "registered": "registered",
    "promoted": "promoted", "staging": "kept in staging", "failed": "failed",
}


def _event_line(event: training_pb2.TrainEvent, json_out: bool) -> str:
    if json_out:
        return json.dumps({"job_id": event.job_id, "model": event.model, "stage": event.stage,
                           "progress": event.progress, "message": event.message, "version": event.version,
                           "at": event.at, "trigger": event.trigger})
    job = f"  [job {event.job_id}]" if event.stage == "queued" else ""
    return f"{event.at[11:19]}  {STAGE_TEXT.get(event.stage, event.stage):<17} {event.message}{job}"


@models_app.command("train")
def train(
    model: ModelArg,
    job: Annotated[str | None, typer.Option(help="Re-attach to this running (or finished) job instead.")] = None,
    reason: ReasonOption = "trained by hand",
    target: TargetOption = "127.0.0.1:50051",
    json_out: Annotated[bool, typer.Option("--json", help="Print each stage as a JSON line.")] = False,
) -> None:
    """Train a declared model ([models.NAME] in the models file) and follow the job to its end.

    The stages show as they happen: queued, loading data, fitting (in a low-priority worker), evaluating
    against production on the same holdout, uploading, registered, then promoted or kept in staging (with
    why). Ctrl-C only stops following: the job goes on, and `--job ID` re-attaches. Exits 1 if it failed.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()  # on a terminal: a progress bar under the stage lines; otherwise the lines alone
    last: training_pb2.TrainEvent | None = None
    with channel(target) as ch:
        stream = training_pb2_grpc.TrainingServiceStub(ch).Train(
            training_pb2.TrainRequest(model=model, job_id=job or "", reason=reason))
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=console, transient=True,
                          disable=json_out or not console.is_terminal) as progress:
                bar = progress.add_task(model, total=1.0)
                for event in stream:
                    last = event
                    progress.update(bar, completed=event.progress,
                                    description=f"{model}: {STAGE_TEXT.get(event.stage, event.stage)}")
                    line = _event_line(event, json_out)
                    if console.is_terminal and not json_out:
                        progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
                    else:
                        typer.echo(line)
        except KeyboardInterrupt:
            stream.cancel()
            job_id = last.job_id if last else "?"
            typer.echo(f"stopped following; the job goes on. Re-attach: mlplat models train {model} --job {job_id}",
                       err=True)
            raise typer.Exit(130) from None
    if last is None:
        raise ClientError("the daemon closed the stream before the job's first stage")
    if last.stage == "failed":
        raise ClientError(f"training {model} failed: {last.message}")
    if not json_out:
        typer.echo(f"{model} version {last.version} is " +
                   ("in production" if last.stage == "promoted" else "in staging") + f": {last.message}")


@models_app.command("declare")
def declare(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A TOML file with [models.<name>] tables.",
                                         exists=True, dir_okay=False, readable=True)],
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Declare (add or replace) the model specs of FILE on a running daemon; they are kept across restarts.

    The tables are those of the models file: feature_set, features, label, estimator, params, holdout,
    seed, min_rows, lookback_s and the automation policy (drift_check_s, drift_statistics, ...).
    """
    from mlplat.api.specs import spec_message
    from mlplat.automation.specs import load_specs

    specs = load_specs(file)
    if not specs:
        raise typer.BadParameter(f"{file} declares no [models.<name>] table", param_hint="FILE")
    declared = []
    with channel(target) as ch:
        stub = training_pb2_grpc.TrainingServiceStub(ch)
        for spec in specs.values():
            declared.append(stub.DeclareModel(spec_message(spec)).name)
    typer.echo(json.dumps(declared) if json_out else f"declared {', '.join(declared)}; train with: "
               f"mlplat models train {declared[0]}")
