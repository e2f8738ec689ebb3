"""Model specs in `models.toml`: what automation trains, from which features and label, and with what.

    [models.churn]
    feature_set = "user_activity"        # the inputs (every numeric feature unless `features` lists some)
    features = ["clicks_1h", "spend_1h", "session_minutes", "is_premium"]
    label = "user_labels.label"          # <feature set>.<feature>: ground truth, joined as of its time
    estimator = "gradient_boosting"      # decision_tree | random_forest | gradient_boosting |
                                         # logistic_regression | linear_regression
    params = { n_estimators = 50, max_depth = 3 }
    holdout = 0.2                        # share of clean rows kept out of fitting, for evaluation
    seed = 0                             # split and estimator seed: the same data gives the same model
    min_rows = 200                       # fewer clean rows: training fails with that reason
    lookback_s = 86400                   # train on labels of the last day (unset: all of them)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlplat.automation.training import ESTIMATORS
from mlplat.errors import ConfigError, describe_invalid


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    feature_set: str
    features: tuple[str, ...] = ()
    label: str = Field(description="<feature set>.<feature>")
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    holdout: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    min_rows: int = Field(200, ge=2)
    lookback_s: float | None = Field(None, gt=0)

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"unknown estimator {v!r} (expected {', '.join(ESTIMATORS)})")
        return v

    @field_validator("label")
    @classmethod
    def _qualified(cls, v: str) -> str:
        set_name, _, feature = v.partition(".")
        if not set_name or not feature:
            raise ValueError(f"{v!r}: expected <feature set>.<feature>, e.g. user_labels.label")
        return v

    @property
    def label_set(self) -> str:
        return self.label.partition(".")[0]

    @property
    def label_feature(self) -> str:
        return self.label.partition(".")[2]


def specs_from_dict(data: dict[str, Any], origin: str = "models") -> dict[str, ModelSpec]:
    """The `[models.*]` tables of models.toml; ConfigError names the model, the key and what was wrong."""
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{origin}: [models] must be a table of models")
    specs = {}
    for name, body in models.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: models.{name} must be a table")
        try:
            specs[name] = ModelSpec(name=name, **body)
        except ValidationError as e:
            raise ConfigError(f"{origin}: {describe_invalid(e, prefix=f'models.{name}.')}") from None
    return specs
