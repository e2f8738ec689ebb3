"""`mlplat predict`: ask a served model, interactively (seed 000 Service B) or once, for scripts.

Interactive: pick a production model, then answer one prompt per input feature (name and type shown,
checked before anything is sent); with an entity id, features left empty come from the online store.
Each answer shows the score, the version that answered and the latency. Tab completes model names and
commands, arrows walk the history (kept in ~/.mlplat_history), Ctrl-D or :quit leaves.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import struct_pb2

from mlplat.api.v1 import models_pb2, models_pb2_grpc
from mlplat.cli.client import ClientError, JsonOption, TargetOption, channel

HISTORY = Path.home() / ".mlplat_history"
COMMANDS = (":models", ":quit")
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


class Quit(Exception):
    """The user asked to leave (Ctrl-D or :quit)."""


class ChooseModel(Exception):
    """The user asked to pick another model (:models)."""


def parse_value(kind: str, text: str) -> Any:
    """A typed value from what the user typed; raises ValueError with what was expected."""
    text = text.strip()
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected true or false")
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if kind == 'int' else 'a number'}") from None


def _result_dict(r: models_pb2.PredictResponse) -> dict[str, Any]:
    return {"score": r.score, "model": r.model, "version": r.version, "latency_ms": round(r.latency_ms, 3),
            "request_id": r.request_id}


def predict_command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model to ask (one-shot with --features).")]
    = None,
    features: Annotated[str | None, typer.Option(help="One-shot: the features as a JSON object.")] = None,
    entity: Annotated[str | None, typer.Option(
        "--entity", "-e", help="Entity id: features not given come from the online store.")] = None,
    version: Annotated[int, typer.Option(min=0, help="Pin a version (0: production).")] = 0,
    target: TargetOption = "127.0.0.1:50051",
    json_out: JsonOption = False,
) -> None:
    """Ask a model for a prediction: interactively, or once with --model and --features/--entity.

    Example (one-shot): mlplat predict -m churn --features '{"clicks_1h": 3, "spend_1h": 20.5}' -e user_7
    """
    one_shot = features is not None or (entity is not None and model is not None) or json_out
    if one_shot:
        if model is None:
            raise typer.BadParameter("--model is required with --features/--entity", param_hint="--model")
        try:
            given = json.loads(features) if features else {}
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"not JSON: {e}", param_hint="--features") from None
        if not isinstance(given, dict):
            raise typer.BadParameter("must be a JSON object of feature: value", param_hint="--features")
        with channel(target) as ch:
            result = _predict(models_pb2_grpc.PredictionServiceStub(ch), model, given, entity, version)
        typer.echo(json.dumps(_result_dict(result)) if json_out else
                   f"{result.score:.6g}  ({result.model} v{result.version}, {result.latency_ms:.2f} ms)")
        return
    with channel(target) as ch:
        Repl(models_pb2_grpc.PredictionServiceStub(ch), model).loop()


def _predict(stub: models_pb2_grpc.PredictionServiceStub, model: str, given: dict[str, Any], entity: str | None,
             version: int = 0) -> models_pb2.PredictResponse:
    values = struct_pb2.Struct()
    values.update(given)
    response: models_pb2.PredictResponse = stub.Predict(models_pb2.PredictRequest(
        model=model, features=values, entity_id=entity or "", version=version))
    return response


class Repl:
    def __init__(self, stub: models_pb2_grpc.PredictionServiceStub, model: str | None) -> None:
        self._stub = stub
        self._model = model
        self._names: list[str] = []
        self._readline: Any = None
        try:
            import readline
        except ImportError:  # pragma: no cover - Windows without pyreadline
            return
        self._readline = readline
        readline.set_completer(self._complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        with contextlib.suppress(OSError):
            readline.read_history_file(HISTORY)

    def _complete(self, text: str, state: int) -> str | None:
        options = [c for c in (*self._names, *COMMANDS) if c.startswith(text)]
        return options[state] if state < len(options) else None

    def ask(self, prompt: str) -> str:
        try:
            answer = input(prompt).strip()
        except EOFError:
            raise Quit from None
        if answer == ":quit":
            raise Quit
        if answer == ":models":
            raise ChooseModel
        return answer

    def loop(self) -> None:
        print("mlplat predict — Tab completes, :models picks another model, Ctrl-D or :quit leaves.")
        try:
            while True:
                try:
                    info = self._choose()
                    while True:
                        self._one(info)
                except ChooseModel:
                    self._model = None
        except Quit:
            print()
        finally:
            if self._readline is not None:
                with contextlib.suppress(OSError):
                    self._readline.write_history_file(HISTORY)

    def _choose(self) -> models_pb2.ModelVersionInfo:
        served = list(self._stub.ListModels(models_pb2.ListModelsRequest()).versions)
        if not served:
            raise ClientError("no model is in production yet (mlplat models promote NAME VERSION)")
        self._names = [v.model for v in served]
        while self._model is None:
            print("models in production:")
            for i, v in enumerate(served, 1):
                print(f"  {i}. {v.model} (v{v.version}, {len(v.features)} features)")
            answer = self.ask("model> ")
            if answer.isdigit() and 1 <= int(answer) <= len(served):
                self._model = served[int(answer) - 1].model
            elif answer in self._names:
                self._model = answer
            else:
                print(f"  no model {answer!r}: type its number or name")
        try:
            info: models_pb2.ModelVersionInfo = self._stub.GetModel(models_pb2.GetModelRequest(model=self._model))
        except grpc.RpcError as e:
            print(f"  {e.details()}")
            self._model = None
            return self._choose()
        print(f"{info.model} v{info.version} takes: " + ", ".join(f"{f.name} ({f.type})" for f in info.features))
        return info

    def _one(self, info: models_pb2.ModelVersionInfo) -> None:
        entity = ""
        if info.feature_set:
            entity = self.ask(f"entity id in {info.feature_set} (Enter: type every feature)> ")
        given: dict[str, Any] = {}
        for f in info.features:
            while True:
                hint = " [Enter: from the store]" if entity else ""
                text = self.ask(f"{f.name} ({f.type}){hint}> ")
                if not text and entity:
                    break
                try:
                    given[f.name] = parse_value(f.type, text)
                    break
                except ValueError as e:
                    print(f"  {f.name}: {e}")
        try:
            result = _predict(self._stub, info.model, given, entity or None)
        except grpc.RpcError as e:
            print(f"  {e.code().name}: {e.details()}")
            return
        print(f"score {result.score:.6g}   {result.model} v{result.version}   {result.latency_ms:.2f} ms")

