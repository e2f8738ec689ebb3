"""Drift runs: each production model's recent predictions compared with its reference.

The reference is the training data of the production version: the rows of its feature set inside the
`training_window` recorded at registration (at most `monitoring.reference_max_rows`, newest first), and the
model's own scores on them, read and scored once per served version. The current sample is the bucket
of the prediction log (`monitoring.bucket_s` wide) that holds the run's time: the inputs as the model
received them and its scores; also the rows ingested in that bucket, and labels. Reads use reader
cursors; the statistics run on the balancer in the monitor class, so a run never holds up ingest or
serving. Results go to `drift_results` (history), the hot store (`mlplat:drift:<model>`, the latest run,
for GetDrift) and the `mlplat_*drift*` gauges; the run returns them too (automation acts on that). Which
crossings are drift is policy.py's to say.

Numeric inputs get the numeric statistics and `monitoring.thresholds`; the string and bool features of the
model's feature set get the categorical ones and `monitoring.categorical_thresholds`. A bool input is
compared as the model received it (0/1) and as ingested; a string feature (never a model input) and a bool
the model does not take only as ingested, as the prediction log holds inputs alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import TypeAlias

import numpy as np
import pyarrow as pa

from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Cost, Priority
from mlplat.config import MonitoringSettings
from mlplat.errors import MlplatError, NotFound
from mlplat.features.registry import FeatureRegistry
from mlplat.monitoring.performance import label_source, paired, performance
from mlplat.monitoring.policy import PERFORMANCE as PERFORMANCE  # where results are read
from mlplat.monitoring.policy import PREDICTION as PREDICTION
from mlplat.monitoring.policy import DriftPolicy, performance_bound, worse
from mlplat.monitoring.statistics import NotEnoughData, categorical_drift, numeric_drift
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.inputs import table_matrix
from mlplat.serving.registry import ModelVersion
from mlplat.serving.scoring import Scorer
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

log = get_logger("monitoring")
DRIFT_KEY = "mlplat:drift:{model}"
CATEGORICAL_TYPES = ("string", "bool")
Column: TypeAlias = np.ndarray | pa.ChunkedArray
Compared: TypeAlias = tuple[str, dict[str, float] | str, int, int]
_TS = pa.timestamp("us", tz="UTC")
RESULT_SCHEMA = pa.schema([
    ("model", pa.string()), ("version", pa.int32()), ("bucket_start", _TS), ("bucket_end", _TS),
    ("source", pa.string()), ("feature", pa.string()), ("statistic", pa.string()), ("value", pa.float64()),
    ("threshold", pa.float64()),
    ("crossed", pa.bool_()), ("reference_n", pa.int64()), ("current_n", pa.int64()), ("computed_at", _TS),
])


@dataclass(frozen=True)
class DriftValue:
    feature: str
    statistic: str
    value: float
    threshold: float | None
    crossed: bool
    reference_n: int
    current_n: int
    source: str = "predictions"  # predictions (inputs as served), ingest (the bucket's feature rows), labels
    categorical: bool = False  # a string or bool feature: the categorical statistics and thresholds


@dataclass
class ModelDrift:
    model: str
    version: int
    bucket_start: str
    bucket_end: str
    computed_at: str
    detected: bool = False
    reason: str = ""  # why there is no verdict (no reference, not enough data)
    values: list[DriftValue] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ModelDrift:
        raw = json.loads(data)
        raw["values"] = [DriftValue(**v) for v in raw.get("values", [])]
        return cls(**raw)


@dataclass(frozen=True)
class _Rows:
    """Rows of a model's feature set: its inputs as a float matrix (NaN for null, bools 0/1) and the set's
    other string and bool features by name, as read."""

    inputs: np.ndarray
    others: dict[str, Column] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def paired(self, current: _Rows, names: list[str]) -> list[tuple[str, Column, Column]]:
        """(name, reference column, current column) for every input and every other feature both have."""
        return [*((n, self.inputs[:, j], current.inputs[:, j]) for j, n in enumerate(names)),
                *((n, ref, current.others[n]) for n, ref in self.others.items() if n in current.others)]


def compare(columns: list[tuple[str, Column, Column]], categorical: Collection[str], bins: int) -> list[Compared]:
    """Per (name, reference, current) column: its statistics (the categorical ones for the names in
    `categorical`), or why there are none. Runs on a balancer worker."""
    out: list[Compared] = []
    for name, reference, current in columns:
        result = (categorical_drift(reference, current) if name in categorical
                  else numeric_drift(np.asarray(reference, np.float64), np.asarray(current, np.float64), bins=bins))
        if isinstance(result, NotEnoughData):
            out.append((name, result.reason, 0, 0))
        else:
            out.append((name, result.values(), result.reference_n, result.current_n))
    return out


def _cost(rows: int, columns: int) -> Cost:
    """numpy sorts and merges, mostly without the GIL: a thread, never a copy of the samples to a process."""
    return Cost(expected_ms=max(1.0, rows * columns / 30_000), releases_gil=True)


class DriftMonitor:
    """The service: idle until a run is asked for (by automation's schedule, the API or the CLI)."""

    name = "monitoring"

    def __init__(self, settings: MonitoringSettings, warehouse: Warehouse, hot_store: HotStore,
                 serving: Scorer, features: FeatureRegistry, balancer: Balancer,
                 metrics: Metrics) -> None:
        self._settings = settings
        self._policy = DriftPolicy.of(settings)
        self._warehouse = warehouse
        self._hot_store = hot_store
        self._serving = serving
        self._features = features
        self._balancer = balancer
        self._metrics = metrics
        self._lock = asyncio.Lock()  # one run at a time; a second request waits for it
        # per served (model, version): its training rows and its scores on them. The window is in the past,
        # so they are read and scored once, not on every run; versions no longer served are dropped.
        self._references: dict[tuple[str, int], tuple[_Rows, np.ndarray]] = {}

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None

    async def latest(self, model: str | None = None) -> list[ModelDrift]:
        """The latest run's results per model, from the hot store."""
        names = [model] if model else sorted(self._serving.served_models())
        out = []
        for name in names:
            raw = await self._hot_store.get(DRIFT_KEY.format(model=name))
            if raw is not None:
                out.append(ModelDrift.from_json(raw))
        if model and not out:
            raise NotFound(f"no drift results for {model!r} yet (run `mlplat drift --run`)")
        return out

    async def run_drift(self, models: list[str] | None = None, at: dt.datetime | None = None) -> list[ModelDrift]:
        """Compare every production model (or the ones named) now; returns the results it stored."""
        async with self._lock:
            started = time.perf_counter()
            now = at or dt.datetime.now(dt.UTC)
            served = self._serving.served_models()
            names = models or sorted(served)
            unknown = [m for m in names if m not in served]
            if unknown:
                raise NotFound(f"model {unknown[0]!r} has no production version served here "
                               f"({', '.join(sorted(served)) or 'none'})")
            served_keys = {(mv.model, mv.version) for mv in served.values()}
            self._references = {k: v for k, v in self._references.items() if k in served_keys}
            results = []
            for name in names:
                results.append(await self._one(served[name], now))
            self._metrics.drift_run_seconds.observe(time.perf_counter() - started)
            return results

    async def _one(self, mv: ModelVersion, now: dt.datetime) -> ModelDrift:
        width = dt.timedelta(seconds=self._settings.bucket_s)
        start = dt.datetime.fromtimestamp(now.timestamp() // self._settings.bucket_s * self._settings.bucket_s,
                                          dt.UTC)
        drift = ModelDrift(mv.model, mv.version, start.isoformat(), (start + width).isoformat(), now.isoformat())
        try:
            reference, reference_scores = await self._reference(mv)
            current, scores = await self._current(mv, start, start + width)
        except _NoVerdict as e:
            drift.reason = str(e)
        else:
            await self._judge(drift, mv, reference, reference_scores, current, scores, start, start + width, now)
        await self._store(drift, start, start + width, now, inputs=mv.feature_names)
        crossed = [f"{v.feature}:{v.statistic}" + (" (ingested)" if v.source == "ingest" else "")
                   for v in drift.values if v.crossed]
        log.info("drift_run", model=mv.model, version=mv.version, detected=drift.detected,
                 reason=drift.reason or None, crossed=crossed)
        return drift

    async def _reference(self, mv: ModelVersion) -> tuple[_Rows, np.ndarray]:
        key = (mv.model, mv.version)
        if key in self._references:
            return self._references[key]
        window = mv.training_window
        if not mv.feature_set or not window.get("start") or not window.get("end"):
            raise _NoVerdict(f"{mv.model} v{mv.version} has no reference: register it with a feature set and a "
                             "training window (--train-start/--train-end)")
        fs = self._features.get(mv.feature_set)
        known = {f.name for f in fs.features}
        missing = [n for n in mv.feature_names if n not in known]
        if missing:
            raise _NoVerdict(f"input {missing[0]!r} of {mv.model} is not in feature set {fs.name!r}")
        rows = await self._rows(mv, "event_time >= ?::TIMESTAMPTZ AND event_time < ?::TIMESTAMPTZ "
                                    "ORDER BY event_time DESC", [window["start"], window["end"]])
        if not len(rows):
            raise _NoVerdict(f"no rows of {fs.name!r} in the training window {window['start']} .. {window['end']}")
        # the platform's own scores: serving neither counts nor logs them, and runs them at monitor priority
        scores = (await self._serving.score(mv.model, rows.inputs, version=mv.version)).scores
        self._references[key] = (rows, scores)
        return rows, scores

    async def _rows(self, mv: ModelVersion, where: str, params: list[object]) -> _Rows:
        """The model's inputs from its feature set's rows matching `where`, as a float matrix, and the set's
        other string and bool features."""
        assert mv.feature_set is not None
        fs = self._features.get(mv.feature_set)
        others = [f.name for f in fs.features if f.type in CATEGORICAL_TYPES and f.name not in mv.feature_names]
        columns = ", ".join([*(f'"{n}"::DOUBLE AS "{n}"' for n in mv.feature_names), *(f'"{n}"' for n in others)])
        table = await self._warehouse.read(f'SELECT {columns} FROM "{fs.table}" WHERE {where} LIMIT ?',
                                           [*params, self._settings.reference_max_rows])
        if not table.num_rows:
            return _Rows(np.empty((0, len(mv.features))))
        return _Rows(table_matrix(table, mv.feature_names), {n: table[n] for n in others})

    async def _current(self, mv: ModelVersion, start: dt.datetime, end: dt.datetime) -> tuple[_Rows, np.ndarray]:
        table = await self._warehouse.read(
            "SELECT features, score FROM predictions WHERE model = ? AND version = ? AND predicted_at >= ? "
            "AND predicted_at < ?", [mv.model, mv.version, start, end])
        if table.num_rows < self._settings.min_rows:
            raise _NoVerdict(f"not enough data: {table.num_rows} predictions of v{mv.version} in the bucket from "
                             f"{start.isoformat()} (monitoring.min_rows = {self._settings.min_rows})")
        flat = table["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return _Rows(flat.reshape(table.num_rows, len(mv.features))), table["score"].to_numpy()

    async def _judge(self, drift: ModelDrift, mv: ModelVersion, reference: _Rows, reference_scores: np.ndarray,
                     current: _Rows, scores: np.ndarray, start: dt.datetime, end: dt.datetime,
                     now: dt.datetime) -> None:
        bins, names = self._settings.bins, mv.feature_names
        assert mv.feature_set is not None  # a reference exists
        categorical = {f.name for f in self._features.get(mv.feature_set).features if f.type in CATEGORICAL_TYPES}
        cost = _cost(len(reference) + len(current), len(names) + len(reference.others))
        per_feature = await self._balancer.run(compare, reference.paired(current, names), categorical, bins,
                                               priority=Priority.MONITOR, cost=cost)
        [prediction] = await self._balancer.run(compare, [(PREDICTION, reference_scores, scores)], (), bins,
                                                priority=Priority.MONITOR, cost=cost)
        self._add(drift, [*per_feature, prediction], "predictions", categorical)
        ingested = await self._ingested(mv, start, end)
        if ingested is not None:
            self._add(drift, await self._balancer.run(compare, reference.paired(ingested, names), categorical, bins,
                                                      priority=Priority.MONITOR, cost=cost), "ingest", categorical)
        # labels arrive up to label_delay_s after their predictions: newer predictions are not judged yet, or
        # the labels that come early would stand for all of them
        judged_until = min(end, now - dt.timedelta(seconds=self._settings.label_delay_s))
        await self._performance(drift, mv, start, judged_until)

    def _add(self, drift: ModelDrift, results: list[Compared], source: str, categorical: Collection[str]) -> None:
        for feature, values, ref_n, cur_n in results:
            if isinstance(values, str):
                continue
            for statistic, value in values.items():
                threshold, crossed = self._policy.judge(statistic, value, feature in categorical)
                v = DriftValue(feature, statistic, value, threshold, crossed, ref_n, cur_n, source,
                               feature in categorical)
                drift.values.append(v)
                drift.detected = drift.detected or self._policy.is_drift(v)

    async def _ingested(self, mv: ModelVersion, start: dt.datetime, end: dt.datetime) -> _Rows | None:
        """The rows ingested in the bucket (by event time), when there are enough of them."""
        rows = await self._rows(mv, "event_time >= ? AND event_time < ?", [start, end])
        return rows if len(rows) >= self._settings.min_rows else None

    async def _performance(self, drift: ModelDrift, mv: ModelVersion, start: dt.datetime, end: dt.datetime) -> None:
        """The bucket's predictions (up to `end`), each paired with its label (performance.py says how), scored,
        and compared with the metrics registered."""
        source = label_source(self._settings, self._features)
        if source is None:
            return
        scores, labels = await paired(self._warehouse, source, mv.model, mv.version, start, end)
        if len(scores) < self._settings.min_rows:
            return
        results = await self._balancer.run(performance, scores, labels, priority=Priority.MONITOR,
                                           cost=Cost(expected_ms=1.0 + len(scores) / 50_000, releases_gil=True))
        tolerance = self._settings.performance_tolerance
        for metric, value in results.items():
            registered = mv.metrics.get(metric)
            bound = None if registered is None else performance_bound(metric, registered, tolerance)
            v = DriftValue(PERFORMANCE, metric, value, bound, bound is not None and worse(metric, value, bound), 0,
                           len(scores), "labels")
            drift.values.append(v)
            drift.detected = drift.detected or self._policy.is_drift(v)

    async def _store(self, drift: ModelDrift, start: dt.datetime, end: dt.datetime, now: dt.datetime, *,
                     inputs: Collection[str]) -> None:
        model = drift.model
        for v in drift.values:
            if v.feature == PREDICTION:
                self._metrics.prediction_drift.labels(model, v.statistic).set(v.value)
            elif v.feature == PERFORMANCE:
                self._metrics.model_performance.labels(model, v.statistic).set(v.value)
                if v.threshold is not None:
                    self._metrics.model_performance.labels(model, f"{v.statistic}_bound").set(v.threshold)
            elif v.source == ("predictions" if v.feature in inputs else "ingest"):
                # the inputs as the model saw them (their ingest side is in the table), the others as ingested
                self._metrics.feature_drift.labels(model, v.feature, v.statistic).set(v.value)
        self._metrics.drift_detected.labels(model).set(1.0 if drift.detected else 0.0)
        try:
            await self._hot_store.set(DRIFT_KEY.format(model=model), drift.to_json())
        except MlplatError as e:  # the history below still has it
            log.warning("drift_latest_not_stored", model=model, error=str(e))
        if drift.values:
            n = len(drift.values)
            await self._warehouse.write(ArrowWrite("drift_results", pa.table({
                "model": [model] * n, "version": [drift.version] * n, "bucket_start": [start] * n,
                "bucket_end": [end] * n, "source": [v.source for v in drift.values],
                "feature": [v.feature for v in drift.values],
                "statistic": [v.statistic for v in drift.values], "value": [v.value for v in drift.values],
                "threshold": [v.threshold for v in drift.values], "crossed": [v.crossed for v in drift.values],
                "reference_n": [v.reference_n for v in drift.values], "current_n": [v.current_n for v in drift.values],
                "computed_at": [now] * n}, schema=RESULT_SCHEMA), mode="upsert",
                key=("model", "version", "bucket_start", "source", "feature", "statistic")))


class _NoVerdict(Exception):
    """The run cannot judge this model now; the message says why."""
