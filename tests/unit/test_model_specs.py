"""Model specs in models.toml: read with defaults, refused with the model and key named."""

from __future__ import annotations

import re

import pytest

from mlplat.automation.specs import specs_from_dict
from mlplat.errors import ConfigError
from mlplat.streaming.definitions import config_from_dict

CHURN = {"feature_set": "user_activity", "label": "user_labels.label", "estimator": "gradient_boosting",
         "params": {"n_estimators": 50}}


def test_a_spec_reads_with_defaults_beside_streams() -> None:
    data = {"models": {"churn": CHURN}, "streams": {"churn": {"feature_set": "user_activity"}}}
    [spec] = specs_from_dict(data).values()
    assert (spec.name, spec.label_set, spec.label_feature, spec.holdout, spec.seed, spec.min_rows) == (
        "churn", "user_labels", "label", 0.2, 0, 200)
    assert spec.params == {"n_estimators": 50} and spec.features == () and spec.lookback_s is None
    assert [s.model for s in config_from_dict(data).streams] == ["churn"]  # streaming ignores [models]


@pytest.mark.parametrize(("change", "message"), [
    ({"estimator": "svm"}, "models.churn.estimator: unknown estimator 'svm'"),
    ({"label": "label"}, "models.churn.label: 'label': expected <feature set>.<feature>"),
    ({"holdout": 1.5}, "models.churn.holdout"),
    ({"min_rows": 1}, "models.churn.min_rows"),
    ({"colour": "red"}, "models.churn.colour"),
    ({"drift_statistics": ["ks", "chi"]}, "models.churn.drift_statistics: unknown statistic 'chi'"),
    ({"promote": "sometimes"}, "models.churn.promote"),
    ({"promote_metric": "precision"}, "models.churn.promote_metric: unknown metric 'precision'"),
    ({"retrain_schedule": "61 * * * *"}, "models.churn.retrain_schedule: retrain_schedule '61 * * * *': Bad minute"),
    ({"retrain_schedule": "weekly"}, "expected 5 cron fields"),
    ({"cooldown_s": -1}, "models.churn.cooldown_s"),
])
def test_a_bad_spec_names_the_model_and_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        specs_from_dict({"models": {"churn": {**CHURN, **change}}})


def test_a_spec_without_its_required_keys_says_which() -> None:
    with pytest.raises(ConfigError, match=re.escape("models.churn.label: Field required")):
        specs_from_dict({"models": {"churn": {"feature_set": "a", "estimator": "decision_tree"}}})


def test_retraining_schedules_are_cron_with_the_usual_aliases() -> None:
    import datetime as dt

    from mlplat.automation.specs import next_run

    monday = dt.datetime(2026, 11, 23, 16, 7, tzinfo=dt.UTC)
    assert next_run("@weekly", monday) == dt.datetime(2026, 11, 29, tzinfo=dt.UTC)  # Sunday 00:00
    assert next_run("@daily", monday) == dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
    assert next_run("0 3 * * 1", monday) == dt.datetime(2026, 11, 30, 3, tzinfo=dt.UTC)
    assert next_run("*/5 * * * *", monday) == dt.datetime(2026, 11, 23, 16, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize("path", ["config/models.toml", "mlplat/demo/models.toml", "mlplat/demo/models-fast.toml"])
def test_the_shipped_models_files_declare_specs_that_fit_the_demo_feature_sets(path: str) -> None:
    from pathlib import Path
    from typing import cast

    from mlplat.automation.dataset import model_inputs
    from mlplat.automation.specs import load_specs
    from mlplat.demo import DEMO_FEATURES
    from mlplat.features.definitions import FeatureSet, load_catalog
    from mlplat.features.registry import FeatureRegistry

    class Catalog:  # what model_inputs needs of the feature registry: get(name)
        def __init__(self) -> None:
            self.sets = load_catalog(DEMO_FEATURES).feature_sets

        def get(self, name: str) -> FeatureSet:
            return self.sets[name]

    [spec] = load_specs(Path(path)).values()
    inputs = model_inputs(spec, cast(FeatureRegistry, Catalog()))
    assert [f.name for f in inputs] == ["clicks_1h", "spend_1h", "session_minutes", "is_premium"]
