"""The drift policy: when a statistic has crossed its threshold, and which crossings are drift.

Pure (no I/O), so that the drift run (which records `crossed` and `detected`) and automation (which acts on
a run's result) decide with one rule. A model's policy is the monitoring one narrowed by its spec: its
`drift_statistics` and `drift_thresholds` choose among the numeric statistics, the categorical ones stay
`monitoring.categorical_thresholds`/`categorical_detect_on`, and a value over fewer than `drift_min_samples`
current rows is not acted on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mlplat.config import MonitoringSettings

PREDICTION = "__prediction__"
PERFORMANCE = "__performance__"
HIGHER_IS_BETTER = ("accuracy", "f1", "auc")


class Judged(Protocol):
    """What a drift run records per statistic (monitoring.drift.DriftValue)."""

    @property
    def feature(self) -> str: ...
    @property
    def statistic(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def crossed(self) -> bool: ...
    @property
    def current_n(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def categorical(self) -> bool: ...


@dataclass(frozen=True)
class DriftPolicy:
    thresholds: Mapping[str, float]
    detect_on: frozenset[str]
    categorical_thresholds: Mapping[str, float] = field(default_factory=dict)
    categorical_detect_on: frozenset[str] = frozenset()
    performance: bool = True  # a performance worse than its bound is drift
    min_samples: int = 0  # fewer current rows: the value is not acted on

    @classmethod
    def of(cls, settings: MonitoringSettings) -> DriftPolicy:
        return cls(dict(settings.thresholds), frozenset(settings.detect_on), dict(settings.categorical_thresholds),
                   frozenset(settings.categorical_detect_on))

    def narrowed(self, statistics: Collection[str], thresholds: Mapping[str, float], min_samples: int) -> DriftPolicy:
        """A model's policy: its statistics (and `performance`), its thresholds over these, its minimum rows."""
        return DriftPolicy({**self.thresholds, **thresholds}, frozenset(statistics) - {"performance"},
                           self.categorical_thresholds, self.categorical_detect_on, "performance" in statistics,
                           min_samples)

    def threshold(self, statistic: str, categorical: bool) -> float | None:
        return (self.categorical_thresholds if categorical else self.thresholds).get(statistic)

    def judge(self, statistic: str, value: float, categorical: bool) -> tuple[float | None, bool]:
        """(threshold, crossed): at or above its threshold, a statistic has crossed it."""
        threshold = self.threshold(statistic, categorical)
        return threshold, threshold is not None and value >= threshold

    def is_drift(self, v: Judged) -> bool:
        """A crossing that counts: performance worse than its bound, or a detect_on statistic of a feature (not
        of the scores, which move with a better model too) crossed under this policy."""
        if v.feature == PERFORMANCE:
            return self.performance and v.crossed and v.current_n >= self.min_samples
        if v.feature == PREDICTION or v.current_n < self.min_samples:
            return False
        _, crossed = self.judge(v.statistic, v.value, v.categorical)
        return crossed and v.statistic in (self.categorical_detect_on if v.categorical else self.detect_on)

    def drift(self, values: Iterable[Judged]) -> list[Judged]:
        """The values that are drift, each feature on the side that stands for it: a model input as served
        (its ingested side is the same feature seen by no model), any other feature as ingested."""
        values = list(values)
        served = {v.feature for v in values if v.source == "predictions"}
        return [v for v in values if self.is_drift(v) and not (v.source == "ingest" and v.feature in served)]

    def reason(self, v: Judged) -> str:
        """`ks of session_minutes 0.526 >= 0.15`, `auc 0.6000 worse than its bound 0.8500`."""
        if v.feature == PERFORMANCE:
            return f"{v.statistic} {v.value:.4f} worse than its bound {v.threshold:.4f}"
        return f"{v.statistic} of {v.feature} {v.value:.3f} >= {self.threshold(v.statistic, v.categorical):g}"


def performance_bound(metric: str, registered: float, tolerance: float) -> float:
    """The worst value still accepted: `tolerance` below (absolute) or above (relative) the registered one."""
    return registered - tolerance if metric in HIGHER_IS_BETTER else registered * (1 + tolerance)


def worse(metric: str, value: float, bound: float) -> bool:
    return value < bound if metric in HIGHER_IS_BETTER else value > bound
