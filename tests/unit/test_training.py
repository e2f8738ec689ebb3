"""Fitting a version: deterministic for a seed, cleaned, split, evaluated; failures name their cause."""

from __future__ import annotations

import numpy as np
import pytest

from mlplat.automation.fitting import ESTIMATORS, TrainingError, clean, fit_and_evaluate, split
from mlplat.monitoring.performance import task_of
from mlplat.serving.flavours import load_model


def data(n: int = 600, seed: int = 0, regression: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)) * 100
    signal = x[:, 0] + x[:, 1] + rng.normal(0, 10, n)
    return x, (signal if regression else (signal > 100).astype(float))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_trains_and_the_same_seed_gives_the_same_model(estimator: str) -> None:
    regression = estimator == "linear_regression"
    x, y = data(regression=regression)
    params = {"n_estimators": 10} if estimator in ("random_forest", "gradient_boosting") else {}
    first = fit_and_evaluate(estimator, params, x, y, holdout=0.25, seed=7, min_rows=50)
    again = fit_and_evaluate(estimator, params, x, y, holdout=0.25, seed=7, min_rows=50)
    assert first.metrics == again.metrics and (first.rows_train, first.rows_holdout) == (450, 150)
    probe = np.random.default_rng(1).random((20, 4)) * 100
    assert np.array_equal(load_model("sklearn", first.artifact).predict(probe),
                          load_model("sklearn", again.artifact).predict(probe))
    if regression:
        assert set(first.metrics) == {"mae", "rmse", "r2"} and first.metrics["r2"] > 0.5
    else:
        assert set(first.metrics) == {"accuracy", "f1", "auc"} and first.metrics["auc"] > 0.8
    # every one of these estimators converts: the ONNX export answers as the skops file does
    assert first.onnx is not None and first.onnx_note == ""
    assert np.allclose(load_model("onnx", first.onnx).predict(probe),
                       load_model("sklearn", first.artifact).predict(probe), atol=1e-4)


def test_production_is_scored_on_the_same_holdout_through_its_own_inputs() -> None:
    """The incumbent may take its inputs in another order: it is scored through its own column mapping."""
    from mlplat.automation.fitting import Incumbent, evaluate_incumbent

    x, y = data()
    old = fit_and_evaluate("decision_tree", {"max_depth": 2}, x[:, [1, 0, 2, 3]], y, holdout=0.25, seed=7,
                           min_rows=50, export_onnx=False)
    new = fit_and_evaluate("decision_tree", {"max_depth": 2}, x, y, holdout=0.25, seed=7, min_rows=50,
                           incumbent=Incumbent("sklearn", old.artifact, (1, 0, 2, 3)), export_onnx=False)
    assert new.onnx is None and new.onnx_note == "not asked for"
    assert new.incumbent_metrics == pytest.approx(new.metrics)  # the same tree, fed the same rows
    with pytest.raises(TrainingError, match="cannot be scored"):
        evaluate_incumbent(Incumbent("sklearn", b"not a model", (0, 1, 2, 3)), x[:10], y[:10])


def test_a_different_seed_splits_differently() -> None:
    assert not np.array_equal(split(100, 0.2, 1)[1], split(100, 0.2, 2)[1])
    train, held = split(100, 0.2, 1)
    assert len(held) == 20 and sorted({*train, *held}) == list(range(100))


def test_nulls_and_duplicates_are_dropped_first_kept() -> None:
    x = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = np.array([0.0, 1.0, 0.0, 1.0, np.nan])
    cx, cy, dropped = clean(x, y)
    assert cx.tolist() == [[1.0, 2.0], [3.0, 4.0]] and cy.tolist() == [0.0, 1.0] and dropped == 3


def test_labels_decide_the_task() -> None:
    assert task_of(np.array([0.0, 1.0, 1.0])) == "classification"
    assert task_of(np.array([0.5, 2.0])) == "regression"


@pytest.mark.parametrize(("estimator", "params", "message"), [
    ("gradient_boosting", {"n_estimators": -3}, "n_estimators"),
    ("decision_tree", {"colour": "red"}, "colour"),
    ("svm", {}, "unknown estimator 'svm'"),
    ("linear_regression", {}, "does not do classification"),
])
def test_a_bad_estimator_or_hyper_parameter_is_a_training_error(estimator: str, params: dict[str, object],
                                                                  message: str) -> None:
    x, y = data()
    with pytest.raises(TrainingError, match=message):
        fit_and_evaluate(estimator, params, x, y, holdout=0.2, seed=0, min_rows=10)


def test_too_little_data_or_one_class_is_a_training_error() -> None:
    x, y = data(n=30)
    with pytest.raises(TrainingError, match="not enough data: 30 clean rows"):
        fit_and_evaluate("decision_tree", {}, x, y, holdout=0.2, seed=0, min_rows=100)
    with pytest.raises(TrainingError, match="not enough data: 0 clean rows"):
        fit_and_evaluate("decision_tree", {}, np.empty((0, 4)), np.empty(0), holdout=0.2, seed=0, min_rows=1)
    with pytest.raises(TrainingError, match="one class only"):
        fit_and_evaluate("decision_tree", {}, x, np.zeros(30), holdout=0.2, seed=0, min_rows=10)
