"""How good a model's scores are against the truth: one definition for training's holdout and drift runs,
and how a drift run pairs each label with the one prediction it is for.

A label names its prediction when it can: its `monitoring.label_for_feature` holds the event id a streaming
prediction was made on, or the request id of a Predict call (`<request id>:<row>` for a PredictBatch row).
A label without it describes its entity at its event_time, and is paired with that entity's first
prediction at or after that time, at most `monitoring.label_match_tolerance_s` later. Either way a
prediction is judged at most once (against the newest label naming it, else the nearest one before it), a
label judges at most one prediction, and a prediction named by some label is never paired by time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # training's worker processes import this module for performance() alone
    from mlplat.config import MonitoringSettings
    from mlplat.features.registry import FeatureRegistry
    from mlplat.warehouse.store import Warehouse

Task = Literal["classification", "regression"]


def task_of(labels: np.ndarray) -> Task:
    """0/1 labels make a classifier; anything else a regressor."""
    return "classification" if len(labels) and np.isin(labels, (0.0, 1.0)).all() else "regression"


def performance(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 and (with both classes present) AUC when the labels are 0/1, the scores being
    probabilities cut at 0.5; else MAE, RMSE and R^2. Runs on a balancer worker."""
    from sklearn import metrics

    if not len(labels):
        return {}
    if task_of(labels) == "classification":
        predicted = (scores >= 0.5).astype(np.float64)
        out = {"accuracy": float(metrics.accuracy_score(labels, predicted)),
               "f1": float(metrics.f1_score(labels, predicted, zero_division=0.0))}
        if len(np.unique(labels)) == 2:
            out["auc"] = float(metrics.roc_auc_score(labels, scores))
        return out
    return {"mae": float(metrics.mean_absolute_error(labels, scores)),
            "rmse": float(np.sqrt(metrics.mean_squared_error(labels, scores))),
            "r2": float(metrics.r2_score(labels, scores)) if len(labels) > 1 else 0.0}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class LabelSource:
    table: str  # the labels feature set's table
    label: str  # its feature holding the truth
    for_id: str | None  # its feature naming the prediction, when it has one
    tolerance_s: float


def label_source(settings: MonitoringSettings, features: FeatureRegistry) -> LabelSource | None:
    """Where a drift run finds labels; None when the configured feature set or label feature is not there."""
    name = settings.labels_feature_set
    if not name or name not in features.feature_sets:
        return None
    fs = features.get(name)
    names = {f.name for f in fs.features}
    if settings.label_feature not in names:
        return None
    for_id = settings.label_for_feature if settings.label_for_feature in names else None
    return LabelSource(fs.table, settings.label_feature, for_id, settings.label_match_tolerance_s)


def pairing_sql(source: LabelSource) -> str:
    """Score and label of each judged prediction. Parameters: model, version, start and end (of predicted_at),
    then start, tolerance, end, tolerance (for the labels without an id)."""
    table, label = _ident(source.table), _ident(source.label)
    # rows with one key (a replayed streaming prediction, a retried call) are one prediction: judged once below
    predictions = ("SELECT coalesce(event_id, request_id) AS key, entity_id, predicted_at, score FROM predictions "
                   "WHERE model = ? AND version = ? AND predicted_at >= ? AND predicted_at < ?")
    labels = f"SELECT entity_id, event_time, ingest_time, {label}::DOUBLE AS label"
    if source.for_id is None:
        named = "SELECT NULL::VARCHAR AS key, NULL::DOUBLE AS score, NULL::DOUBLE AS label WHERE false"
        unnamed = f"{labels} FROM {table} WHERE {label} IS NOT NULL"
    else:
        for_id = _ident(source.for_id)
        # a later label naming the same prediction corrects the earlier one
        named = (f"SELECT p.key, p.score, l.label FROM p JOIN ({labels}, {for_id}::VARCHAR AS key FROM {table} "
                 f"WHERE {label} IS NOT NULL AND {for_id} IS NOT NULL) l ON l.key = p.key "
                 "QUALIFY row_number() OVER (PARTITION BY p.key ORDER BY l.ingest_time DESC, l.event_time DESC) = 1")
        unnamed = f"{labels} FROM {table} WHERE {label} IS NOT NULL AND {for_id} IS NULL"
    nearest = (f"SELECT p.key, p.score, l.label FROM ({unnamed} "
               "AND event_time >= ?::TIMESTAMPTZ - to_seconds(?::DOUBLE) AND event_time < ?) l "
               "ASOF JOIN (SELECT * FROM p WHERE entity_id IS NOT NULL AND key NOT IN (SELECT key FROM named)) p "
               "ON l.entity_id = p.entity_id AND l.event_time <= p.predicted_at "
               "WHERE p.predicted_at - l.event_time <= to_seconds(?::DOUBLE) "
               "QUALIFY row_number() OVER (PARTITION BY p.key ORDER BY l.event_time DESC, l.ingest_time DESC) = 1")
    return (f"WITH p AS ({predictions}), named AS ({named}), nearest AS ({nearest}) "
            "SELECT score, label FROM named UNION ALL SELECT score, label FROM nearest")


async def paired(warehouse: Warehouse, source: LabelSource, model: str, version: int, start: dt.datetime,
                 end: dt.datetime) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of the predictions of one version made in [start, end) that have their label."""
    table = await warehouse.read(pairing_sql(source), [model, version, start, end, start, source.tolerance_s, end,
                                                       source.tolerance_s])
    return table["score"].to_numpy(), table["label"].to_numpy()
