"""One training job from data to decision: load, fit (worker process, train class), evaluate against
production on the same holdout, register, then promote or keep in staging as the policy says.

A failure at any stage is recorded (audit `train_failed`, the job's `failed` event) and touches nothing
else: production keeps serving what it served.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from mlplat.automation.dataset import TrainingData, count_labels, load_training_data
from mlplat.automation.fitting import FitResult, Incumbent, TrainingError, fit_and_evaluate
from mlplat.automation.jobs import TrainingJob
from mlplat.automation.specs import ModelSpec
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import JobFailed, Lane, Priority
from mlplat.config import AutomationSettings
from mlplat.errors import MlplatError, NotFound
from mlplat.features.registry import FeatureRegistry
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.registry import ModelRegistry, ModelVersion, fetch_verified
from mlplat.serving.service import ModelServing
from mlplat.warehouse.store import Warehouse

log = get_logger("automation")
LOWER_IS_BETTER = ("mae", "rmse")
DATA_POLL_S = 1.0


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(spec: ModelSpec, result: FitResult, production: ModelVersion | None) -> Decision:
    """The promotion policy: auto promotes a version that beats production on the same holdout by the margin."""
    metrics, holdout_rows = result.metrics, result.rows_holdout
    default = "auc" if "auc" in metrics else ("accuracy" if "accuracy" in metrics else "rmse")
    metric = spec.promote_metric or default
    new = metrics.get(metric)
    if new is None:
        return Decision(False, f"the holdout gives no {metric} (it gives {', '.join(metrics) or 'nothing'})")
    manual = spec.promote == "manual"
    if production is None:
        return Decision(not manual, f"{metric} {new:.4f} on {holdout_rows} holdout rows; no production version"
                        + ("; the promotion policy is manual" if manual else ""))
    old = result.incumbent_metrics.get(metric)
    if old is None:
        return Decision(False, f"{metric} {new:.4f}; production v{production.version} could not be scored on the "
                               "same holdout (other inputs): compare and promote by hand")
    lower = metric in LOWER_IS_BETTER
    beats = new <= old - spec.promote_margin if lower else new >= old + spec.promote_margin
    comparison = (f"{metric} {new:.4f} vs production v{production.version} {old:.4f} on the same "
                  f"{holdout_rows} holdout rows (margin {spec.promote_margin:g})")
    if not beats:
        return Decision(False, comparison + ": does not beat production")
    if manual:
        return Decision(False, comparison + ": beats production; the promotion policy is manual")
    return Decision(True, comparison + ": beats production")


class Trainer:
    def __init__(self, settings: AutomationSettings, warehouse: Warehouse, features: FeatureRegistry,
                 registry: ModelRegistry, serving: ModelServing, balancer: Balancer, metrics: Metrics) -> None:
        self._settings = settings
        self._warehouse = warehouse
        self._features = features
        self._registry = registry
        self._serving = serving
        self._balancer = balancer
        self._metrics = metrics

    async def run(self, job: TrainingJob, spec: ModelSpec, since: dt.datetime | None = None) -> None:
        """The whole job; never raises but for cancellation (its outcome is in the job's events)."""
        started = time.monotonic()
        self._metrics.training_running.labels(spec.name).set(1)
        log.info("training_started", model=spec.name, job=job.id, trigger=job.trigger, reason=job.reason)
        outcome = "failed"
        try:
            outcome = await self._train(job, spec, since)
        except JobFailed as e:  # the worker died, or the balancer is stopping
            await self._failed(job, spec, f"the training worker failed: {e}")
        except (MlplatError, ValueError) as e:  # TrainingError and ConfigError name what is wrong
            await self._failed(job, spec, str(e))
        finally:
            self._metrics.training_running.labels(spec.name).set(0)
            self._metrics.training_jobs.labels(spec.name, job.trigger, outcome).inc()
            self._metrics.training_seconds.labels(spec.name).observe(time.monotonic() - started)

    async def _train(self, job: TrainingJob, spec: ModelSpec, since: dt.datetime | None) -> str:
        if since is not None:
            await self._wait_for_data(job, spec, since)
        await job.emit("loading_data", 0.1, f"labels from {spec.label}, inputs from {spec.feature_set}")
        data = await load_training_data(self._warehouse, self._features, spec,
                                        max_rows=self._settings.max_training_rows, since=since)
        production = await self._production(spec.name)
        incumbent = await self._incumbent(production, data)
        await job.emit("fitting", 0.3, f"{spec.estimator} on {len(data.y)} labelled rows")
        result = await self._balancer.run(
            fit_and_evaluate, spec.estimator, dict(spec.params), data.x, data.y, holdout=spec.holdout,
            seed=spec.seed, min_rows=spec.min_rows, incumbent=incumbent, export_onnx=spec.export_onnx,
            priority=Priority.TRAIN, lane=Lane.PROCESS)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        await job.emit("evaluating", 0.7, f"holdout ({result.rows_holdout} rows): {shown}; {result.rows_dropped} "
                                          "rows dropped as null or duplicate")
        await job.emit("uploading", 0.8, "skops" + (" + onnx" if result.onnx else f" (no onnx: {result.onnx_note})"))
        mv = await self._registry.register(
            spec.name, result.artifact, "sklearn", data.inputs, feature_set=spec.feature_set,
            metrics=result.metrics, training_window=data.window,
            created_by="user" if job.trigger == "request" else "automation",
            reason=f"{job.trigger}: {job.reason}" if job.reason else job.trigger,
            exports={"onnx": result.onnx} if result.onnx else None)
        await job.emit("registered", 0.9, f"{spec.name} v{mv.version} in staging", version=mv.version)
        decision = decide(spec, result, production)
        details = {"job": job.id, "metrics": result.metrics, "production_metrics": result.incumbent_metrics}
        if decision.promote:
            promoted = await self._registry.promote(spec.name, mv.version, actor="automation", reason=decision.reason)
            await self._serving.swap_to(promoted)
            self._metrics.automation_decisions.labels(spec.name, "promote").inc()
            await job.emit("promoted", 1.0, decision.reason, version=mv.version)
            return "promoted"
        await self._registry.audit("automation", "keep_staging", f"{spec.name}:{mv.version}", decision.reason, details)
        self._metrics.automation_decisions.labels(spec.name, "keep_staging").inc()
        log.info("model_kept_in_staging", model=spec.name, version=mv.version, reason=decision.reason)
        await job.emit("staging", 1.0, decision.reason, version=mv.version)
        return "staging"

    async def _wait_for_data(self, job: TrainingJob, spec: ModelSpec, since: dt.datetime) -> None:
        """A drift-triggered retraining learns from what arrived after the drift: wait for min_rows of it."""
        deadline = time.monotonic() + self._settings.data_wait_s
        shown = -1
        while (have := await count_labels(self._warehouse, self._features, spec, since=since)) < spec.min_rows:
            if time.monotonic() > deadline:
                raise TrainingError(f"not enough data since {since.isoformat(timespec='seconds')}: {have} labelled "
                                    f"rows after {self._settings.data_wait_s:g} s, {spec.min_rows} needed")
            if have != shown:
                await job.emit("waiting_for_data", 0.05 * have / spec.min_rows,
                               f"{have}/{spec.min_rows} labelled rows since {since.isoformat(timespec='seconds')}")
                shown = have
            await asyncio.sleep(DATA_POLL_S)

    async def _production(self, model: str) -> ModelVersion | None:
        try:
            return await self._registry.get(model)
        except NotFound:
            return None

    async def _incumbent(self, production: ModelVersion | None, data: TrainingData) -> Incumbent | None:
        """Production, to be scored on the new holdout: only when its inputs are among the new ones."""
        columns = [f.name for f in data.inputs]
        if production is None or not set(production.feature_names) <= set(columns) or not len(data.y):
            return None
        artifact = await fetch_verified(self._registry.artifacts, production)
        return Incumbent(production.flavour, artifact, tuple(columns.index(n) for n in production.feature_names))

    async def _failed(self, job: TrainingJob, spec: ModelSpec, why: str) -> None:
        log.warning("training_failed", model=spec.name, job=job.id, trigger=job.trigger, error=why)
        self._metrics.automation_decisions.labels(spec.name, "train_failed").inc()
        try:
            await self._registry.audit("automation" if job.trigger != "request" else "user", "train_failed",
                                       spec.name, why, {"job": job.id, "trigger": job.trigger})
        except MlplatError as e:  # the log line above still has it
            log.error("training_failure_not_audited", model=spec.name, job=job.id, error=str(e))
        await job.emit("failed", 1.0, why)
