"""Small fitted models for serving tests: deterministic, a few milliseconds to train."""

from __future__ import annotations

import functools

import numpy as np

from mlplat.serving.flavours import save_sklearn
from mlplat.serving.registry import InputFeature

FEATURES = (InputFeature("clicks_1h", "int"), InputFeature("spend_1h", "float"),
            InputFeature("session_minutes", "float"), InputFeature("is_premium", "bool"))


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
