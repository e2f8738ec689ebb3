"""Model specs between their proto message (TrainingService) and ModelSpec: one conversion for the
servicer and the CLI."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError

from mlplat.api.v1 import training_pb2
from mlplat.automation.specs import ModelSpec
from mlplat.errors import describe_invalid


def _whole_numbers(params: dict[str, Any]) -> dict[str, Any]:
    """Struct numbers are doubles: 50.0 becomes 50 again, as hyper-parameters such as n_estimators need."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in params.items()}


def spec_from_message(message: training_pb2.ModelSpec) -> ModelSpec:
    try:
        raw = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except json_format.Error as e:  # e.g. Infinity or NaN in params: no hyper-parameter takes them
        raise ValueError(f"model spec {message.name!r}: {e}") from None
    raw["params"] = _whole_numbers(raw.get("params", {}))
    for key in ("seed", "min_rows", "drift_min_samples"):  # int64 travels as a JSON string
        if key in raw:
            raw[key] = int(raw[key])
    try:
        return ModelSpec(**raw)
    except ValidationError as e:
        problem = describe_invalid(e, prefix="")
    # raised outside the handler: the ValidationError (and the frames it holds) is not chained to it
    raise ValueError(problem)


def spec_message(spec: ModelSpec) -> training_pb2.ModelSpec:
    message = training_pb2.ModelSpec()
    json_format.ParseDict(spec.model_dump(mode="json", exclude_none=True), message)
    return message
