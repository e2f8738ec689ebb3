"""Service D: the scheduler that keeps declared models trained, current and tidy.

Per declared model (models file `[models.<name>]`, or DeclareModel over gRPC), every tick:
- bootstrap: no version yet and min_rows labelled rows -> train one, once;
- schedule: the cron schedule fired -> retrain;
- drift: every drift_check_s, trigger a drift run (Service C) and apply the model's policy (monitoring/policy.py:
  statistics, thresholds, minimum samples) to what the run returned; drift -> retrain on data that arrives
  after the detection. A cool-down makes one drift episode one retraining, not a storm.
Training jobs (trainer.py) decide promotion; lifecycle rules run after each. Every decision is in the
audit table with its reason, in the log, and counted in mlplat_automation_decisions_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlplat.automation.dataset import count_labels, model_inputs
from mlplat.automation.jobs import JobBook, TrainingJob
from mlplat.automation.lifecycle import clean_up
from mlplat.automation.specs import ModelSpec, next_run
from mlplat.automation.trainer import Trainer
from mlplat.compute.balancer import Balancer
from mlplat.config import AutomationSettings, MonitoringSettings
from mlplat.errors import ConfigError, MlplatError, NotFound
from mlplat.features.registry import FeatureRegistry
from mlplat.monitoring.drift import DriftMonitor
from mlplat.monitoring.policy import DriftPolicy
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.registry import ModelRegistry
from mlplat.serving.service import ModelServing
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import SqlWrite

log = get_logger("automation")
BOOTSTRAP_POLL_S = 2.0


@dataclass
class _Schedule:
    """What the scheduler remembers per model (in memory: a restart re-checks everything at once)."""

    next_drift_check: float = 0.0  # monotonic
    next_bootstrap_check: float = 0.0
    bootstrapped: bool = False
    next_scheduled: dt.datetime | None = None
    cooldown_until: float = 0.0
    ignoring_episode: bool = False  # the cool-down skip of this drift episode is recorded already


def model_policy(monitoring: DriftPolicy, spec: ModelSpec) -> DriftPolicy:
    return monitoring.narrowed(spec.drift_statistics, spec.drift_thresholds, spec.drift_min_samples)


class Automation:
    name = "automation"

    def __init__(self, settings: AutomationSettings, monitoring_settings: MonitoringSettings,
                 file_specs: dict[str, ModelSpec], specs_origin: str, warehouse: Warehouse,
                 features: FeatureRegistry, registry: ModelRegistry, serving: ModelServing, monitoring: DriftMonitor,
                 balancer: Balancer, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._policy = DriftPolicy.of(monitoring_settings)
        self.clock = clock  # monotonic seconds: when checks are due and cool-downs end (tests drive it)
        self._file_specs = file_specs
        self._origin = specs_origin
        self._warehouse = warehouse
        self._features = features
        self._registry = registry
        self._serving = serving
        self._monitoring = monitoring
        self._metrics = metrics
        self._specs: dict[str, ModelSpec] = {}
        self._schedules: dict[str, _Schedule] = {}
        self._jobs = JobBook(settings.jobs_kept)
        self._tasks: set[asyncio.Task[None]] = set()  # running jobs: cancelled and awaited by stop()
        self.trainer = Trainer(settings, warehouse, features, registry, serving, balancer, metrics)

    # -- service --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Stored declarations, then the models file's (which win for their names); a file spec that does not
        fit the feature sets stops the daemon with the reason."""
        for spec in self._file_specs.values():
            model_inputs(spec, self._features)
        for spec in await self._stored():
            self._adopt(spec)
        for spec in self._file_specs.values():
            await self._store(spec, self._origin)
            self._adopt(spec)
        log.info("automation_ready", models=sorted(self._specs), scheduler=self._settings.enabled)

    async def run(self) -> None:
        if not self._settings.enabled:
            await asyncio.Event().wait()
        while True:
            await self.tick()
            await asyncio.sleep(self._settings.tick_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- what clients call ----------------------------------------------------------------------------------

    def specs(self) -> dict[str, ModelSpec]:
        return dict(self._specs)

    async def declare(self, spec: ModelSpec) -> ModelSpec:
        """Add or replace a model spec (checked against the feature sets now); kept across restarts."""
        try:
            model_inputs(spec, self._features)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        await self._store(spec, "grpc")
        self._adopt(spec)
        log.info("model_declared", model=spec.name, estimator=spec.estimator, feature_set=spec.feature_set)
        return spec

    def job(self, job_id: str) -> TrainingJob:
        return self._jobs.get(job_id)

    async def train(self, model: str, *, trigger: str = "request", reason: str = "",
                    since: dt.datetime | None = None) -> TrainingJob:
        """Start a training job and return at once; a model already training returns its running job."""
        spec = self._specs.get(model)
        if spec is None:
            raise NotFound(f"model {model!r} is not declared: add [models.{model}] to the models file "
                           f"({', '.join(sorted(self._specs)) or 'none declared'})")
        running = self._jobs.running(model)
        if running is not None:
            return running
        job = TrainingJob(model, trigger, reason)
        self._jobs.add(job)
        await job.emit("queued", 0.0, reason or trigger)
        task = asyncio.create_task(self._run_job(job, spec, since), name=f"train-{model}-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run_job(self, job: TrainingJob, spec: ModelSpec, since: dt.datetime | None) -> None:
        try:
            await self.trainer.run(job, spec, since)
        except asyncio.CancelledError:
            await job.emit("failed", 1.0, "the daemon stopped before the job finished; nothing was changed "
                                          "after the last stage reported")
            raise
        try:
            for cleaned in await clean_up(self._registry, self._registry.artifacts, spec.name,
                                          keep=self._settings.keep_versions):
                self._metrics.artifacts_deleted.labels(spec.name).inc(len(cleaned.keys))
                self._metrics.automation_decisions.labels(spec.name, "delete_artifacts").inc()
        except MlplatError as e:  # the next job's clean-up tries again
            log.warning("lifecycle_failed", model=spec.name, error=str(e))

    # -- the scheduler --------------------------------------------------------------------------------------

    async def tick(self, now: dt.datetime | None = None) -> None:
        """Look at every model once; a failing backend is logged and the model is looked at next tick."""
        for name, spec in list(self._specs.items()):
            try:
                await self._tick_model(spec, self._schedules[name], now or dt.datetime.now(dt.UTC))
            except MlplatError as e:
                log.warning("automation_tick_failed", model=name, error=str(e))

    async def _tick_model(self, spec: ModelSpec, schedule: _Schedule, now: dt.datetime) -> None:
        clock = self.clock()
        if spec.bootstrap and not schedule.bootstrapped and clock >= schedule.next_bootstrap_check:
            schedule.next_bootstrap_check = clock + max(self._settings.tick_s, BOOTSTRAP_POLL_S)
            await self._bootstrap(spec, schedule)
        if spec.retrain_schedule:
            if schedule.next_scheduled is None:
                schedule.next_scheduled = next_run(spec.retrain_schedule, now)
            elif now >= schedule.next_scheduled:
                schedule.next_scheduled = next_run(spec.retrain_schedule, now)
                await self._decide(spec, "retrain", f"retraining schedule {spec.retrain_schedule!r} fired")
                await self.train(spec.name, trigger="schedule", reason=f"{spec.retrain_schedule!r} fired")
        if spec.drift_check_s and clock >= schedule.next_drift_check and spec.name in self._serving.served_models():
            schedule.next_drift_check = clock + spec.drift_check_s
            await self._check_drift(spec, schedule, now)

    async def _bootstrap(self, spec: ModelSpec, schedule: _Schedule) -> None:
        try:
            await self._registry.versions(spec.name)
        except NotFound:
            pass
        else:
            schedule.bootstrapped = True  # it has versions: nothing to bootstrap
            return
        rows = await count_labels(self._warehouse, self._features, spec)
        if rows < spec.min_rows:
            return
        schedule.bootstrapped = True
        reason = f"no version yet and {rows} labelled rows (min_rows {spec.min_rows})"
        await self._decide(spec, "bootstrap", reason)
        await self.train(spec.name, trigger="bootstrap", reason=reason)

    async def _check_drift(self, spec: ModelSpec, schedule: _Schedule, now: dt.datetime) -> None:
        [drift] = await self._monitoring.run_drift([spec.name], at=now)
        if drift.reason:  # no verdict (not enough data ...): nothing to act on
            return
        policy = model_policy(self._policy, spec)
        crossed = [policy.reason(v) for v in policy.drift(drift.values)]
        if not crossed:
            schedule.ignoring_episode = False
            return
        detail = "; ".join(crossed[:5]) + (f" (+{len(crossed) - 5} more)" if len(crossed) > 5 else "")
        why = f"drift: {detail}"
        log.info("drift_detected", model=spec.name, version=drift.version, crossed=crossed[:5])
        if self._jobs.running(spec.name) is not None:
            return  # the running job is the reaction
        if self.clock() < schedule.cooldown_until:
            if not schedule.ignoring_episode:
                schedule.ignoring_episode = True
                left = schedule.cooldown_until - self.clock()
                await self._decide(spec, "drift_ignored", f"{why}; cooling down for {left:.0f} s more after the "
                                                          "last drift-triggered retraining")
            return
        schedule.cooldown_until = self.clock() + spec.cooldown_s
        schedule.ignoring_episode = False
        await self._decide(spec, "retrain", why)
        await self.train(spec.name, trigger="drift", reason=detail, since=now)

    async def _decide(self, spec: ModelSpec, decision: str, reason: str) -> None:
        self._metrics.automation_decisions.labels(spec.name, decision).inc()
        log.info("automation_decision", model=spec.name, decision=decision, reason=reason)
        await self._registry.audit("automation", decision, spec.name, reason, {})

    # -- declarations ---------------------------------------------------------------------------------------

    def _adopt(self, spec: ModelSpec) -> None:
        self._specs[spec.name] = spec
        self._schedules[spec.name] = _Schedule()

    async def _store(self, spec: ModelSpec, origin: str) -> None:
        await self._warehouse.write(SqlWrite(
            "INSERT OR REPLACE INTO model_specs (model, spec, origin, declared_at) VALUES (?, ?, ?, now())",
            [spec.name, spec.model_dump_json(), origin], tables=("model_specs",)))

    async def _stored(self) -> list[ModelSpec]:
        table = await self._warehouse.read("SELECT model, spec FROM model_specs ORDER BY model")
        out = []
        for row in table.to_pylist():
            try:
                spec = ModelSpec.model_validate(json.loads(row["spec"]))
                model_inputs(spec, self._features)
            except (ValueError, ConfigError) as e:  # e.g. its feature set was dropped since
                log.warning("stored_model_spec_skipped", model=row["model"], error=str(e))
                continue
            out.append(spec)
        return out
