"""Fitting one model version: clean, split, fit, evaluate, serialise. Runs in a worker process (train class).

Deterministic: the same rows, estimator, hyper-parameters and seed give the same split, the same fitted
model and the same metrics (the seed is also the estimator's random_state unless the parameters set one).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplat.errors import MlplatError
from mlplat.monitoring.performance import Task, performance, task_of

# estimator name -> (module, classifier class, regressor class); None: not for that task
ESTIMATORS: dict[str, tuple[str, str | None, str | None]] = {
    "decision_tree": ("sklearn.tree", "DecisionTreeClassifier", "DecisionTreeRegressor"),
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier", "RandomForestRegressor"),
    "gradient_boosting": ("sklearn.ensemble", "GradientBoostingClassifier", "GradientBoostingRegressor"),
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression", None),
    "linear_regression": ("sklearn.linear_model", None, "LinearRegression"),
}


class TrainingError(MlplatError):
    """Training cannot produce a version; the message says why (it is recorded, production is untouched)."""


@dataclass(frozen=True)
class Incumbent:
    """The production version, scored on the new holdout so the two are compared on the same rows."""

    flavour: str
    artifact: bytes
    columns: tuple[int, ...]  # its inputs, in its order, as columns of the training matrix


@dataclass(frozen=True)
class FitResult:
    artifact: bytes  # skops
    metrics: dict[str, float]  # on the holdout
    rows_train: int
    rows_holdout: int
    rows_dropped: int  # duplicates and rows with a null
    incumbent_metrics: dict[str, float] = field(default_factory=dict)  # production's, on the same holdout
    onnx: bytes | None = None  # the same model as ONNX, when skl2onnx can convert it
    onnx_note: str = ""  # why there is no ONNX export


def build_estimator(estimator: str, task: Task, params: dict[str, Any], seed: int) -> Any:
    if estimator not in ESTIMATORS:
        raise TrainingError(f"unknown estimator {estimator!r} (expected {', '.join(ESTIMATORS)})")
    module, classifier, regressor = ESTIMATORS[estimator]
    name = classifier if task == "classification" else regressor
    if name is None:
        raise TrainingError(f"{estimator} does not do {task} (the labels are "
                            f"{'0/1' if task == 'classification' else 'not 0/1'})")
    cls = getattr(importlib.import_module(module), name)
    chosen = dict(params)
    if "random_state" in cls().get_params() and "random_state" not in chosen:
        chosen["random_state"] = seed
    try:
        return cls(**chosen)
    except TypeError as e:
        raise TrainingError(f"{estimator}: {e}") from None


def clean(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows with a null (NaN) anywhere, then exact duplicate rows, removed (first kept, order kept)."""
    keep = ~np.isnan(x).any(axis=1) & ~np.isnan(y)
    x, y = x[keep], y[keep]
    if len(x):
        _, first = np.unique(np.column_stack([x, y]), axis=0, return_index=True)
        order = np.sort(first)
        dropped = int((~keep).sum()) + len(x) - len(order)
        return x[order], y[order], dropped
    return x, y, int((~keep).sum())


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (train, holdout): a seeded permutation, holdout at least one row when n > 1."""
    order = np.random.default_rng(seed).permutation(n)
    size = min(max(round(n * holdout), 1), n - 1) if n > 1 else 0
    return np.sort(order[size:]), np.sort(order[:size])


def evaluate(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Holdout metrics of a fitted estimator, scored exactly as serving scores it."""
    from mlplat.serving.flavours import SklearnModel

    if not len(y):
        return {}
    return performance(SklearnModel(model, x.shape[1]).predict(x), y)


def evaluate_incumbent(incumbent: Incumbent, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from mlplat.serving.flavours import ModelFormatError, load_model

    if not len(y):
        return {}
    try:
        predictor = load_model(incumbent.flavour, incumbent.artifact)
        return performance(predictor.predict(x[:, list(incumbent.columns)]), y)
    except (ModelFormatError, ValueError) as e:
        raise TrainingError(f"the production version cannot be scored on the new holdout: {e}") from None


def to_onnx(model: Any, n_features: int) -> tuple[bytes | None, str]:
    """(ONNX bytes, "") or (None, why not). Classifiers export probabilities as a plain tensor."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, n_features]))],
                              options=options, target_opset=17)
        return onx.SerializeToString(), ""
    except Exception as e:  # the converter raises many kinds for what it does not support
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def fit_and_evaluate(estimator: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, *, holdout: float,
                     seed: int, min_rows: int, incumbent: Incumbent | None = None,
                     export_onnx: bool = True) -> FitResult:
    """The whole job, in a worker process: raises TrainingError naming what is wrong."""
    from mlplat.serving.flavours import save_sklearn

    x, y, dropped = clean(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if len(x) < min_rows:
        raise TrainingError(f"not enough data: {len(x)} clean rows ({dropped} dropped as null or duplicate), "
                            f"at least {min_rows} needed")
    task = task_of(y)
    model = build_estimator(estimator, task, params, seed)
    train, held = split(len(x), holdout, seed)
    if task == "classification" and len(np.unique(y[train])) < 2:
        raise TrainingError("the training rows have one class only: nothing to learn")
    try:
        model.fit(x[train], y[train])
    except (ValueError, TypeError) as e:  # scikit-learn's InvalidParameterError is a ValueError
        raise TrainingError(f"{estimator}: {e}") from None
    incumbent_metrics = evaluate_incumbent(incumbent, x[held], y[held]) if incumbent is not None else {}
    onnx, note = to_onnx(model, x.shape[1]) if export_onnx else (None, "not asked for")
    return FitResult(save_sklearn(model), evaluate(model, x[held], y[held]), len(train), len(held), dropped,
                     incumbent_metrics, onnx, note)
