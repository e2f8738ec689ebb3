"""The training set of a model spec: its labels as the spine, its inputs joined point-in-time correctly.

Each label row (entity, time, label) gets the entity's latest input values at or before that time
(features.offline.training_set), so nothing recorded after the label's moment leaks into training.
The time range of the labels used is the version's training window: drift runs read the feature set's
rows in that range as the reference.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.automation.specs import ModelSpec
from mlplat.errors import ConfigError, NotFound
from mlplat.features.offline import training_set
from mlplat.features.registry import FeatureRegistry
from mlplat.serving.registry import InputFeature
from mlplat.warehouse.store import Warehouse

NUMERIC = {"int": "int", "float": "float", "bool": "bool"}


@dataclass(frozen=True)
class TrainingData:
    x: np.ndarray  # rows x inputs, float64, NaN for a missing value
    y: np.ndarray
    inputs: tuple[InputFeature, ...]
    window: dict[str, str]  # {"start", "end"} of the labels' times (end exclusive), ISO 8601


def model_inputs(spec: ModelSpec, features: FeatureRegistry) -> tuple[InputFeature, ...]:
    """The spec's inputs with their types; ConfigError names a set, feature or label that cannot be used."""
    where = f"models.{spec.name}"
    try:
        fs = features.get(spec.feature_set)
        labels = features.get(spec.label_set)
    except NotFound as e:
        raise ConfigError(f"{where}: {e}") from None
    types = {f.name: f.type for f in fs.features}
    names = spec.features or tuple(name for name, kind in types.items() if kind in NUMERIC)
    inputs = []
    for name in names:
        if name not in types:
            raise ConfigError(f"{where}.features: {fs.name!r} has no feature {name!r} (it has {', '.join(types)})")
        if types[name] not in NUMERIC:
            raise ConfigError(f"{where}.features: {name!r} is {types[name]}; models take int, float or bool")
        inputs.append(InputFeature(name, NUMERIC[types[name]]))
    if not inputs:
        raise ConfigError(f"{where}: feature set {fs.name!r} has no numeric feature to train on")
    label_type = next((f.type for f in labels.features if f.name == spec.label_feature), None)
    if label_type not in NUMERIC:
        raise ConfigError(f"{where}.label: {spec.label!r} is " + (f"{label_type}; a label must be numeric"
                                                                  if label_type else "not a feature"))
    return tuple(inputs)


def _label_filter(spec: ModelSpec, since: dt.datetime | None, now: dt.datetime) -> tuple[str, list[object]]:
    bounds = [t for t in (since, now - dt.timedelta(seconds=spec.lookback_s) if spec.lookback_s else None) if t]
    where = f'"{spec.label_feature}" IS NOT NULL'
    if not bounds:
        return where, []
    return where + " AND event_time >= ?", [max(bounds)]


async def count_labels(warehouse: Warehouse, features: FeatureRegistry, spec: ModelSpec, *,
                       since: dt.datetime | None = None, now: dt.datetime | None = None) -> int:
    """Labelled rows a training would read now (before cleaning)."""
    where, params = _label_filter(spec, since, now or dt.datetime.now(dt.UTC))
    table = await warehouse.read(f'SELECT count(*) FROM "{features.get(spec.label_set).table}" WHERE {where}',
                                 params)
    return int(table.column(0)[0].as_py())


async def load_training_data(warehouse: Warehouse, features: FeatureRegistry, spec: ModelSpec, *,
                             max_rows: int, since: dt.datetime | None = None,
                             now: dt.datetime | None = None) -> TrainingData:
    """The newest max_rows labels (after `since` and inside the lookback) with their inputs as of then."""
    inputs = model_inputs(spec, features)
    where, params = _label_filter(spec, since, now or dt.datetime.now(dt.UTC))
    spine = await warehouse.read(
        f'SELECT entity_id, event_time, "{spec.label_feature}"::DOUBLE AS __label '
        f'FROM "{features.get(spec.label_set).table}" WHERE {where} '
        "ORDER BY event_time DESC, entity_id, __label LIMIT ?",
        [*params, max_rows])
    if not spine.num_rows:
        return TrainingData(np.empty((0, len(inputs))), np.empty(0), inputs, {})
    spine = spine.sort_by([("event_time", "ascending"), ("entity_id", "ascending"), ("__label", "ascending")])
    joined = await training_set(warehouse, features, spine, [f"{spec.feature_set}.{f.name}" for f in inputs],
                                timestamp_column="event_time")
    x = np.column_stack([_floats(joined[f"{spec.feature_set}__{f.name}"]) for f in inputs])
    times = spine["event_time"]
    start, end = pc.min(times).as_py(), pc.max(times).as_py() + dt.timedelta(microseconds=1)
    return TrainingData(x, _floats(joined["__label"]), inputs, {"start": start.isoformat(), "end": end.isoformat()})


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """float64 with NaN for nulls (cleaning drops those rows)."""
    return np.asarray(pc.fill_null(pc.cast(column, pa.float64()), float("nan")).to_numpy(), dtype=np.float64)
