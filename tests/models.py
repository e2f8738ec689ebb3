"""Small fitted models for serving tests, deterministic and a few milliseconds to train, and generated rows of
the demo's user_activity features they take."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

import numpy as np

from mlplat.ingest.generator import GeneratorSpec, generate_records
from mlplat.serving.flavours import save_sklearn
from mlplat.serving.registry import InputFeature

FEATURES = (InputFeature("clicks_1h", "int"), InputFeature("spend_1h", "float"),
            InputFeature("session_minutes", "float"), InputFeature("is_premium", "bool"))
NAMES = [f.name for f in FEATURES]
T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def training_data(n: int = 400, seed: int = 0, n_features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features)) * 100
    y = (x[:, 0] + x[:, 1] > 100).astype(int)
    return x, y


@functools.cache
def tree_bytes(depth: int = 3, seed: int = 0, n_features: int = 4) -> bytes:
    from sklearn.tree import DecisionTreeClassifier

    x, y = training_data(seed=seed, n_features=n_features)
    return save_sklearn(DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(x, y))


@functools.cache
def logistic_bytes(seed: int = 0, n_features: int = 4) -> bytes:
    from sklearn.linear_model import LogisticRegression

    x, y = training_data(seed=seed, n_features=n_features)
    return save_sklearn(LogisticRegression(max_iter=500).fit(x, y))


@functools.cache
def onnx_bytes(n_features: int = 4) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = training_data(n_features=n_features)
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(x.astype(np.float32), y)
    return bytes(to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}}).SerializeToString())


def rows(seed: int, n: int, shift: dict[str, float] | None = None, start: dt.datetime = T0,
         step_ms: float = 1000) -> list[dict[str, Any]]:
    """n user_activity events of 300 users from the generator, one per step_ms from start; shift moves features."""
    from mlplat.features.definitions import load_catalog

    fs = load_catalog(Path("config/features.toml")).feature_sets["user_activity"]
    return generate_records(GeneratorSpec(fs, "user_id", entities=300, seed=seed, shift=shift or {}, start=start,
                                          step_ms=step_ms), n)


def matrix(records: list[dict[str, Any]]) -> np.ndarray:
    """The model input of these events: FEATURES' columns in order."""
    return np.array([[float(r[n]) for n in NAMES] for r in records])
