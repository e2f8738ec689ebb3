"""`mlplat predict`: ask a served model, interactively (seed 000 Service B) or once, for scripts.

Interactive: pick a production model, then answer one prompt per input feature (name and type shown,
checked before anything is sent); with an entity id, the REPL shows the entity's values in the online store
and a feature left empty takes its stored value. Each answer shows the score, the version that answered and
the latency. Tab completes model names and commands, arrows walk the history (kept in ~/.mlplat_history
across runs), Ctrl-D or :quit leaves.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format, struct_pb2

from mlplat.api.v1 import features_pb2, features_pb2_grpc, models_pb2, models_pb2_grpc
from mlplat.cli.client import ClientError, JsonOption, TargetOption, channel

HISTORY = Path.home() / ".mlplat_history"
HISTORY_LINES = 1000
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
        Repl(models_pb2_grpc.PredictionServiceStub(ch), model, features_pb2_grpc.FeatureServiceStub(ch)).loop()


def _predict(stub: models_pb2_grpc.PredictionServiceStub, model: str, given: dict[str, Any], entity: str | None,
             version: int = 0) -> models_pb2.PredictResponse:
    values = struct_pb2.Struct()
    values.update(given)
    response: models_pb2.PredictResponse = stub.Predict(models_pb2.PredictRequest(
        model=model, features=values, entity_id=entity or "", version=version))
    return response


def show_value(kind: str, value: Any) -> str:
    """A stored value as the user would type it (the online store answers numbers as floats)."""
    if kind == "bool" and isinstance(value, bool):
        return "true" if value else "false"
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Repl:
    def __init__(self, stub: models_pb2_grpc.PredictionServiceStub, model: str | None,
                 features: features_pb2_grpc.FeatureServiceStub | None = None) -> None:
        self._stub = stub
        self._features = features
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
        readline.set_history_length(HISTORY_LINES)
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

    def _stored(self, feature_set: str, entity: str) -> dict[str, Any] | None:
        """The entity's values in the online store ({} if it cannot be read: the server fills in); None if it has
        none."""
        if self._features is None:
            return {}
        try:
            response = self._features.GetOnlineFeatures(
                features_pb2.GetOnlineFeaturesRequest(feature_set=feature_set, entity_ids=[entity]))
        except grpc.RpcError as e:
            print(f"  the online store could not be read ({e.details()}): Enter leaves a feature to the server")
            return {}
        found = [e for e in response.entities if e.entity_id == entity and e.found]
        if not found:
            return None
        values: dict[str, Any] = json_format.MessageToDict(found[0].features)
        return {name: value for name, value in values.items() if value is not None}

    def _entity(self, info: models_pb2.ModelVersionInfo) -> tuple[str, dict[str, Any]]:
        """An entity id with its stored values, shown; ("", {}) to type every feature."""
        while True:
            entity = self.ask(f"entity id in {info.feature_set} (Enter: type every feature)> ")
            if not entity:
                return "", {}
            stored = self._stored(info.feature_set, entity)
            if stored is None:
                print(f"  {entity!r} has nothing in the online store: type another id, or Enter to type every "
                      "feature")
                continue
            if stored:
                print(f"  {entity} in the online store: " + ", ".join(
                    f"{f.name}={show_value(f.type, stored[f.name])}" for f in info.features if f.name in stored))
            return entity, stored

    def _one(self, info: models_pb2.ModelVersionInfo) -> None:
        entity, stored = self._entity(info) if info.feature_set else ("", {})
        given: dict[str, Any] = {}
        for f in info.features:
            # Enter takes the stored value; with no answer from the store ({}) the server looks it up all the same
            from_store = bool(entity) and (f.name in stored or not stored)
            while True:
                hint = ""
                if from_store:
                    shown = f"{show_value(f.type, stored[f.name])} " if f.name in stored else ""
                    hint = f" [Enter: {shown}from the store]"
                text = self.ask(f"{f.name} ({f.type}){hint}> ")
                if not text and from_store:
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

