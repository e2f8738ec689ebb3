"""Model files load without running code from them: pickles and untrusted types are refused by name."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from mlplat.serving.flavours import ModelFormatError, load_model, save_sklearn
from tests.models import logistic_bytes, onnx_bytes, training_data, tree_bytes


def test_sklearn_and_onnx_models_score_one_value_per_row() -> None:
    x, _ = training_data(n=5)
    for flavour, data in (("sklearn", tree_bytes()), ("sklearn", logistic_bytes()), ("onnx", onnx_bytes())):
        model = load_model(flavour, data)
        scores = model.predict(x)
        assert model.n_features == 4 and scores.shape == (5,) and np.all((scores >= 0) & (scores <= 1))


def test_a_bare_pickle_is_never_loaded() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = training_data()
    with pytest.raises(ModelFormatError, match="not a skops file"):
        load_model("sklearn", pickle.dumps(LogisticRegression().fit(x, y)))


def test_a_skops_file_that_would_call_a_function_is_refused_naming_it() -> None:
    from sklearn.preprocessing import FunctionTransformer

    dangerous = save_sklearn(FunctionTransformer(func=os.system).fit(np.zeros((2, 1))))
    with pytest.raises(ModelFormatError, match=r"does not trust: .*system"):
        load_model("sklearn", dangerous)
