"""Model files mlplat can load without running code from them, and one `predict` for all of them.

- `sklearn`: scikit-learn estimators saved with skops. Loading rebuilds objects only from an explicit
  list of trusted types (skops' own defaults plus the scikit-learn internals named below); a file that
  needs anything else is refused, naming the type. A bare pickle is never loaded.
- `onnx`: any ONNX model, run by onnxruntime (a graph interpreter: no Python from the file runs).

Every model answers `predict(matrix)` with one score per row: the probability of the positive class for
a binary classifier, the predicted value otherwise.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

FLAVOURS = ("sklearn", "onnx")
EXTENSIONS = {"sklearn": "skops", "onnx": "onnx"}

# scikit-learn internals that carry only data (the node arrays of every tree model) and that skops does
# not trust by default; reviewed by hand, kept short on purpose
EXTRA_TRUSTED = ("sklearn.tree._tree.Tree",)


class ModelFormatError(ValueError):
    """The file is not a model of the flavour it claims, or needs something mlplat will not load."""


class Predictor(Protocol):
    n_features: int

    def predict(self, matrix: np.ndarray) -> np.ndarray: ...


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SklearnModel:
    estimator: Any
    n_features: int

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        import sklearn

        # serving checked every value is finite already; skip scikit-learn repeating it on each call
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return self._predict(matrix)

    def _predict(self, matrix: np.ndarray) -> np.ndarray:
        if hasattr(self.estimator, "predict_proba"):
            proba = self.estimator.predict_proba(matrix)
            if proba.shape[1] == 2:
                return np.asarray(proba[:, 1], dtype=np.float64)
        return np.asarray(self.estimator.predict(matrix), dtype=np.float64).reshape(len(matrix))


@dataclass
class OnnxModel:
    session: Any
    input_name: str
    n_features: int
    output_index: int

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        outputs = self.session.run(None, {self.input_name: matrix.astype(np.float32, copy=False)})
        result = outputs[self.output_index]
        if isinstance(result, list):  # skl2onnx classifiers: a list of {class: probability} maps
            return np.array([row.get(1, row.get("1", 0.0)) for row in result], dtype=np.float64)
        result = np.asarray(result, dtype=np.float64)
        if result.ndim == 2 and result.shape[1] == 2:
            return result[:, 1].copy()
        return result.reshape(len(matrix))


def load_model(flavour: str, data: bytes) -> Predictor:
    """Build a model from its file's bytes; raises ModelFormatError with what is wrong."""
    if flavour == "sklearn":
        return _load_sklearn(data)
    if flavour == "onnx":
        return _load_onnx(data)
    raise ModelFormatError(f"unknown flavour {flavour!r} (expected {', '.join(FLAVOURS)})")


def _load_sklearn(data: bytes) -> SklearnModel:
    import skops.io as sio

    try:
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in EXTRA_TRUSTED]
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ModelFormatError(f"not a skops file: {e}") from None
    if untrusted:
        raise ModelFormatError(f"refusing to load types mlplat does not trust: {', '.join(sorted(untrusted))}")
    try:
        estimator = sio.loads(data, trusted=list(EXTRA_TRUSTED))
    except Exception as e:  # skops raises many kinds for a damaged file
        raise ModelFormatError(f"cannot load the skops file: {type(e).__name__}: {e}") from None
    n = getattr(estimator, "n_features_in_", None)
    if not isinstance(n, int) or not hasattr(estimator, "predict"):
        raise ModelFormatError(f"{type(estimator).__name__} is not a fitted scikit-learn estimator")
    return SklearnModel(estimator, n)


def _load_onnx(data: bytes) -> OnnxModel:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the balancer decides parallelism, not each model
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise ModelFormatError(f"not a loadable ONNX model: {e}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or not isinstance(inputs[0].shape[1], int):
        raise ModelFormatError("an ONNX model must take one 2-D float input [rows, features]")
    names = [o.name for o in session.get_outputs()]
    # classifiers from skl2onnx output (label, probabilities): serve the probabilities
    index = names.index("probabilities") if "probabilities" in names else (
        names.index("output_probability") if "output_probability" in names else 0)
    return OnnxModel(session, inputs[0].name, inputs[0].shape[1], index)


def save_sklearn(estimator: Any) -> bytes:
    """The bytes `mlplat models register` expects for a scikit-learn model."""
    import skops.io as sio

    return bytes(sio.dumps(estimator))
