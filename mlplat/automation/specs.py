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

    # the automation policy (every key optional)
    drift_check_s = 3600                 # run drift for this model this often (0: never)
    drift_statistics = ["psi", "ks"]     # which statistics count (also kl, js, wasserstein, performance)
    drift_thresholds = { psi = 0.2 }     # overrides of monitoring.thresholds for this model
    drift_min_samples = 100              # a statistic over fewer current rows is not acted on
    retrain_schedule = "@weekly"         # cron ("0 3 * * 1") or @hourly/@daily/@weekly/@monthly; unset: none
    promote = "auto"                     # auto: promote a version that beats production on the same holdout
                                         # by promote_margin; manual: leave it in staging
    promote_metric = "auc"               # default: auc for classifiers, rmse for regressors
    promote_margin = 0.01                # absolute; for rmse/mae the new value must be lower by this much
    cooldown_s = 3600                    # after a drift-triggered retraining, drift is not acted on for this long
    bootstrap = true                     # no version yet and min_rows labelled rows: train one, once
    export_onnx = true                   # also store an ONNX export of each trained version
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlplat.automation.fitting import ESTIMATORS
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
    # policy
    drift_check_s: float = Field(3600.0, ge=0)
    drift_statistics: tuple[str, ...] = ("psi", "ks")
    drift_thresholds: dict[str, float] = Field(default_factory=dict)
    drift_min_samples: int = Field(100, ge=1)
    retrain_schedule: str | None = None
    promote: Literal["auto", "manual"] = "auto"
    promote_metric: str | None = None
    promote_margin: float = Field(0.0, ge=0)
    cooldown_s: float = Field(3600.0, ge=0)
    bootstrap: bool = True
    export_onnx: bool = True

    @field_validator("drift_statistics")
    @classmethod
    def _known_statistics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(v) - set(DRIFT_STATISTICS))
        if unknown:
            raise ValueError(f"unknown statistic {unknown[0]!r} (expected {', '.join(DRIFT_STATISTICS)})")
        return v

    @field_validator("promote_metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRICS:
            raise ValueError(f"unknown metric {v!r} (expected {', '.join(METRICS)})")
        return v

    @field_validator("retrain_schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            next_run(v, dt.datetime.now(dt.UTC))
        return v

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


DRIFT_STATISTICS = ("ks", "psi", "kl", "js", "wasserstein", "performance")
METRICS = ("accuracy", "f1", "auc", "mae", "rmse", "r2")
CRON_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}


def next_run(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first time after `after` (UTC) the cron schedule fires; ValueError names a bad schedule."""
    expression = CRON_ALIASES.get(schedule.strip(), schedule)
    try:
        return next(CronSim(expression, after.astimezone(dt.UTC).replace(tzinfo=None))).replace(tzinfo=dt.UTC)
    except (CronSimError, StopIteration) as e:
        raise ValueError(f"retrain_schedule {schedule!r}: {e or 'never fires'} (expected 5 cron fields such as "
                         "'0 3 * * 1', or @hourly, @daily, @weekly, @monthly)") from None


def load_specs(path: Path) -> dict[str, ModelSpec]:
    from mlplat.streaming.definitions import read_models_file

    return specs_from_dict(read_models_file(path), str(path))


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
