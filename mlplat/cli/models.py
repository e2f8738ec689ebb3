"""`mlplat models`: register model files, list and show versions, promote and archive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplat.api.v1 import models_pb2, models_pb2_grpc
from mlplat.cli.client import JsonOption, TargetOption, channel

models_app = typer.Typer(help="The model registry: register, list, show, promote, archive.", no_args_is_help=True)
CHUNK = 1 << 20
FLAVOUR_OF = {".skops": "sklearn", ".onnx": "onnx"}
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="Model name.")]
VersionArg = Annotated[int, typer.Argument(metavar="VERSION", min=1, help="Version number.")]
ReasonOption = Annotated[str, typer.Option(help="Why: recorded in the audit log.")]


def info_dict(v: models_pb2.ModelVersionInfo) -> dict[str, Any]:
    return {"model": v.model, "version": v.version, "stage": v.stage, "flavour": v.flavour, "sha256": v.sha256,
            "features": [{"name": f.name, "type": f.type} for f in v.features], "feature_set": v.feature_set or None,
            "metrics": dict(v.metrics), "created_by": v.created_by, "reason": v.reason, "created_at": v.created_at,
            "training_window": {"start": v.training_start, "end": v.training_end} if v.training_start else None}


def _print_versions(versions: list[models_pb2.ModelVersionInfo], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps([info_dict(v) for v in versions], indent=2))
        return
    if not versions:
        typer.echo("no models registered (mlplat models register FILE --name NAME ...)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "stage", "flavour", "inputs", "created", "reason")
    for v in versions:
        table.add_row(v.model, str(v.version), v.stage, v.flavour, str(len(v.features)), v.created_at, v.reason)
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
def show(model: ModelArg, target: TargetOption = "127.0.0.1:50051", json_out: JsonOption = False) -> None:
    """One model's versions (newest first), inputs and metrics."""
    with channel(target) as ch:
        versions = list(models_pb2_grpc.ModelServiceStub(ch).ListVersions(
            models_pb2.ListVersionsRequest(model=model)).versions)
    if json_out or not versions:
        _print_versions(versions, json_out)
        return
    newest = versions[0]
    typer.echo(f"{model}: inputs " + ", ".join(f"{f.name} ({f.type})" for f in newest.features)
               + (f"; entity features from {newest.feature_set}" if newest.feature_set else ""))
    _print_versions(versions, False)


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
