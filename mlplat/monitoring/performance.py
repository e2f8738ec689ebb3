"""How good a model's scores are against the truth: one definition for training's holdout and drift runs."""

from __future__ import annotations

from typing import Literal

import numpy as np

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
