"""Service B: serves each model's production version, swaps versions by itself, logs every prediction.

Start-up loads every production version named in the hot store (metadata there, artifact from the
store, sha256 checked) before the daemon reports ready. A promotion anywhere is announced on the hot
store's swap channel; every daemon sharing the hot store loads the new version, checks it answers, and
only then switches. Requests already queued finish on the version they started on; a version that fails
to load is never switched to and the old one keeps serving. A periodic re-read of the pointers catches
any notice that was missed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplat.backends.artifacts import ArtifactStore
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.jobs import Cost, Lane, Priority
from mlplat.config import ServingSettings
from mlplat.errors import BackendError, BackendUnavailable, MlplatError, NotFound
from mlplat.features.online import read_online
from mlplat.features.registry import FeatureRegistry
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.batching import MicroBatcher
from mlplat.serving.flavours import Predictor, load_model
from mlplat.serving.prediction_log import PredictionLog
from mlplat.serving.registry import (
    PRODUCTION_KEY,
    SWAP_CHANNEL,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    fetch_verified,
    production_from_hot_store,
)
from mlplat.warehouse import Warehouse

log = get_logger("serving")


class InvalidInput(MlplatError, ValueError):
    """A request whose features do not fit the model; the message names the feature."""


@dataclass(frozen=True)
class PredictionResult:
    score: float
    model: str
    version: int
    latency_ms: float
    request_id: str


def _timed(predictor: Predictor, matrix: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    scores = predictor.predict(matrix)
    return scores, (time.perf_counter() - started) * 1000


class ServedVersion:
    """One loaded version: its model, its micro-batcher, and what one call to it costs."""

    def __init__(self, mv: ModelVersion, predictor: Predictor, probe_ms: float, balancer: Balancer,
                 settings: ServingSettings, metrics: Metrics) -> None:
        self.mv = mv
        self.predictor = predictor
        self._balancer = balancer
        self.cost_ms = probe_ms  # the model's own time per call, so the balancer can choose inline or thread
        # metric children looked up once: labels() costs more than the increment on this path
        self.ok = metrics.predictions.labels(mv.model, str(mv.version), "ok")
        self.errors = metrics.predictions.labels(mv.model, str(mv.version), "error")
        self.latency = metrics.predict_latency_seconds.labels(mv.model)
        self.batch_size = metrics.batch_size.labels(mv.model)
        self.arriving = 0  # requests inside predict() that have not reached the batcher yet
        self.batcher = MicroBatcher(self.run, window_ms=settings.batch_window_ms, max_batch=settings.max_batch,
                                    max_queue=settings.max_queue, on_batch=self.batch_size.observe,
                                    coming=lambda: self.arriving)

    async def run(self, matrix: np.ndarray) -> np.ndarray:
        """The model on a matrix; the balancer runs it inline when cheap, on a thread when not."""
        scores, took_ms = await self._balancer.run(_timed, self.predictor, matrix, priority=Priority.SERVE,
                                                   cost=Cost(expected_ms=self.cost_ms, releases_gil=True))
        self.cost_ms = 0.8 * self.cost_ms + 0.2 * took_ms
        return scores


def _loaded(mv: ModelVersion, data: bytes) -> tuple[Predictor, float]:
    """Runs on a balancer thread: build the model, check it answers for a row of zeros, time one call."""
    predictor = load_model(mv.flavour, data)
    if predictor.n_features != len(mv.features):
        raise InvalidInput(f"{mv.model} v{mv.version} takes {predictor.n_features} features, "
                           f"{len(mv.features)} are registered")
    probe = np.zeros((1, len(mv.features)))
    scores = predictor.predict(probe)
    if scores.shape != (1,):
        raise InvalidInput(f"{mv.model} v{mv.version} answered shape {scores.shape} for one row")
    _, took_ms = _timed(predictor, probe)  # the second call: the first may pay one-off set-up
    return predictor, took_ms


def _number(name: str, kind: str, value: Any) -> float:
    if kind == "bool":
        if isinstance(value, bool):
            return float(value)
        raise InvalidInput(f"feature {name!r} must be a bool (true/false), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"feature {name!r} must be a number ({kind}), got {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"feature {name!r} must be finite, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise InvalidInput(f"feature {name!r} must be an integer, got {value!r}")
    return float(value)


def build_row(mv: ModelVersion, given: Mapping[str, Any], online: Mapping[str, Any] | None) -> np.ndarray:
    """The model's input row: request values first, then the entity's online values; one check per value
    on the common path, and the slow path only to say exactly what is wrong."""
    names = mv.feature_names
    if len(given) and not given.keys() <= set(names):
        unknown = sorted(set(given) - set(names))
        raise InvalidInput(f"{mv.model} has no feature {unknown[0]!r} (it takes {', '.join(names)})")
    values = [given.get(n) for n in names]
    if online is not None:
        values = [online.get(n) if v is None else v for v, n in zip(values, names, strict=True)]
    fine = all(type(v) is (bool if f.type == "bool" else float) or (type(v) is int and f.type != "bool")
               for v, f in zip(values, mv.features, strict=True))
    row = np.array(values, dtype=np.float64) if fine else None
    if row is None or not np.isfinite(row).all() or any(
            f.type == "int" and not row[i].is_integer() for i, f in enumerate(mv.features)):
        for value, feature in zip(values, mv.features, strict=True):
            if value is None:
                where = " (not in the request nor the online store)" if online is not None else ""
                raise InvalidInput(f"feature {feature.name!r} ({feature.type}) is missing{where}")
            _number(feature.name, feature.type, value)
        row = np.array(values, dtype=np.float64)  # every value passed: e.g. numpy scalars from a caller
    return row


RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0


class ModelServing:
    name = "serving"

    def __init__(
        self, settings: ServingSettings, hot_store: HotStore, artifacts: ArtifactStore, balancer: Balancer,
        metrics: Metrics, *, warehouse: Warehouse, features: FeatureRegistry, registry: ModelRegistry | None,
        prediction_log: PredictionLog | None,
    ) -> None:
        self._settings = settings
        self._hot_store = hot_store
        self._artifacts = artifacts
        self._balancer = balancer
        self._metrics = metrics
        self._warehouse = warehouse
        self._features = features
        self._registry = registry
        self._log = prediction_log
        self._served: dict[str, ServedVersion] = {}
        self._pinned: OrderedDict[tuple[str, int], ServedVersion] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        # versions whose artifact store was unreachable: (next attempt, delay), doubled per failure
        self._retry_at: dict[tuple[str, int], tuple[float, float]] = {}

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve every production version before the daemon reports ready."""
        if self._registry is not None:  # the warehouse owner makes the hot store agree with it
            await self._registry.sync_hot_store()
        await self.reconcile()
        log.info("serving_ready", models={m: s.mv.version for m, s in self._served.items()})

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen_for_swaps())
            group.create_task(self._reconcile_forever())
            if self._log is not None:
                group.create_task(self._log.run())

    async def stop(self) -> None:
        for served in [*self._served.values(), *self._pinned.values()]:
            await served.batcher.close()
        if self._log is not None:
            await self._log.flush()

    # -- swaps ----------------------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Load whatever production version the hot store names that this daemon does not serve yet; a version
        waiting for an unreachable artifact store is tried again when its backoff says so."""
        pointers = production_from_hot_store(await self._hot_store.hgetall(PRODUCTION_KEY))
        now = time.monotonic()
        for mv in pointers.values():
            retry = self._retry_at.get((mv.model, mv.version))
            if retry is None or now >= retry[0]:
                await self.swap_to(mv)

    def _next_reconcile_s(self) -> float:
        due = [at for at, _ in self._retry_at.values()]
        return max(0.05, min([self._settings.reconcile_s, *(at - time.monotonic() for at in due)]))

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._next_reconcile_s())
            try:
                await self.reconcile()
            except BackendError as e:
                log.warning("reconcile_failed", error=str(e))

    async def _listen_for_swaps(self) -> None:
        while True:
            try:
                async with self._hot_store.subscribe(SWAP_CHANNEL) as notices:
                    async for raw in notices:
                        await self._on_notice(raw)
            except BackendError as e:  # the periodic re-read covers the gap
                log.warning("swap_notices_interrupted", error=str(e))
                await asyncio.sleep(1.0)

    async def _on_notice(self, raw: bytes) -> None:
        try:
            model = str(json.loads(raw)["model"])
        except (ValueError, KeyError, TypeError):
            log.warning("bad_swap_notice", notice=raw[:200])
            return
        pointer = await self._hot_store.hget(PRODUCTION_KEY, model)
        if pointer is not None:
            for mv in production_from_hot_store({model: pointer}).values():
                await self.swap_to(mv)

    async def swap_to(self, mv: ModelVersion) -> bool:
        """Load, verify and switch to mv; returns False (old version kept) if it cannot be served."""
        async with self._locks.setdefault(mv.model, asyncio.Lock()):
            current = self._served.get(mv.model)
            if current is not None and current.mv.version == mv.version:
                return True
            try:
                fresh = await self._load(mv)
            except BackendUnavailable as e:  # the artifact store is unreachable: keep serving, retry later
                self._metrics.model_load_failures.labels(mv.model).inc()
                _, delay = self._retry_at.get((mv.model, mv.version), (0.0, RETRY_INITIAL_S / 2))
                delay = min(delay * 2, RETRY_MAX_S)
                self._retry_at[(mv.model, mv.version)] = (time.monotonic() + delay, delay)
                log.warning("model_swap_waiting", model=mv.model, version=mv.version, error=str(e),
                            retry_in_s=round(delay, 1), serving=current.mv.version if current else None)
                return False
            except (MlplatError, ValueError) as e:
                self._metrics.model_load_failures.labels(mv.model).inc()
                log.error("model_load_failed", model=mv.model, version=mv.version, error=str(e),
                          serving=current.mv.version if current else None)
                return False
            self._retry_at = {k: v for k, v in self._retry_at.items() if k[0] != mv.model}
            self._served[mv.model] = fresh  # from here new requests go to the new version
            self._metrics.model_swaps.labels(mv.model).inc()
            self._metrics.model_version_info.labels(mv.model, str(mv.version), "production").set(1)
            log.info("model_swapped", model=mv.model, version=mv.version,
                     previous=current.mv.version if current else None)
            if current is not None:
                self._metrics.model_version_info.labels(mv.model, str(current.mv.version), "production").set(0)
                await current.batcher.close()  # what it already queued is answered by the old version
            return True

    async def _check_pointer(self, mv: ModelVersion) -> None:
        """Where this daemon's registry holds the model, the pointer must match what it recorded. A model this
        registry does not know belongs to another daemon sharing the hot store: its owner checked it."""
        if self._registry is None:
            return
        try:
            known = await self._registry.versions(mv.model)
        except NotFound:
            return
        recorded = next((v for v in known if v.version == mv.version), None)
        if recorded is None:
            raise RegistryError(f"{mv.model} version {mv.version}: the production pointer in the hot store names "
                                "a version the registry does not have; not loaded")
        if (recorded.sha256, recorded.artifact_key, recorded.flavour) != (mv.sha256, mv.artifact_key, mv.flavour):
            raise RegistryError(f"{mv.model} version {mv.version}: the production pointer in the hot store names "
                                f"artifact {mv.artifact_key} (sha256 {mv.sha256[:12]}) but the registry recorded "
                                f"{recorded.artifact_key} (sha256 {recorded.sha256[:12]}); not loaded")

    async def _load(self, mv: ModelVersion) -> ServedVersion:
        await self._check_pointer(mv)
        data = await fetch_verified(self._artifacts, mv)
        predictor, probe_ms = await self._balancer.run(_loaded, mv, data, priority=Priority.SERVE, lane=Lane.THREAD)
        served = ServedVersion(mv, predictor, probe_ms, self._balancer, self._settings, self._metrics)
        served.batcher.start()
        return served

    # -- predictions ----------------------------------------------------------------------------------------

    def served(self) -> list[ModelVersion]:
        return [s.mv for _, s in sorted(self._served.items())]

    def served_models(self) -> dict[str, ModelVersion]:
        """The production version each model is served at here."""
        return {model: served.mv for model, served in self._served.items()}

    async def version_for(self, model: str, version: int = 0) -> ServedVersion:
        current = self._served.get(model)
        if version in (0, None) or (current is not None and current.mv.version == version):
            if current is None:
                raise NotFound(f"model {model!r} is not served (no production version)"
                               + (f"; served: {', '.join(sorted(self._served))}" if self._served else ""))
            return current
        return await self._pinned_version(model, version)

    async def _pinned_version(self, model: str, version: int) -> ServedVersion:
        key = (model, version)
        if key in self._pinned:
            self._pinned.move_to_end(key)
            return self._pinned[key]
        if self._registry is None or self._settings.pinned_versions == 0:
            raise NotFound(f"{model} version {version} is not served here (only production versions are)")
        served = await self._load(await self._registry.get(model, version))
        self._pinned[key] = served
        while len(self._pinned) > self._settings.pinned_versions:
            _, evicted = self._pinned.popitem(last=False)
            await evicted.batcher.close()
        return served

    async def predict(self, model: str, features: Mapping[str, Any], *, entity_id: str | None = None,
                      version: int = 0, request_id: str = "") -> PredictionResult:
        started = time.perf_counter()
        served = await self.version_for(model, version)
        mv = served.mv
        served.arriving += 1
        try:
            try:
                online = await self._online(mv, features, entity_id)
                row = build_row(mv, features, online)
            finally:
                served.arriving -= 1
            score = await served.batcher.predict(row)
        except MlplatError:
            served.errors.inc()
            raise
        latency = time.perf_counter() - started
        served.ok.inc()
        served.latency.observe(latency)
        request_id = request_id or uuid.uuid4().hex
        if self._log is not None:
            self._log.add_one(request_id, model, mv.version, entity_id, row.tolist(), score, latency * 1000)
        return PredictionResult(score, model, mv.version, latency * 1000, request_id)

    async def _online(self, mv: ModelVersion, given: Mapping[str, Any], entity_id: str | None
                      ) -> Mapping[str, Any] | None:
        if not entity_id or all(given.get(n) is not None for n in mv.feature_names):
            return None
        if not mv.feature_set:
            raise InvalidInput(f"{mv.model} has no feature set to look entity {entity_id!r} up in; send every "
                               f"feature ({', '.join(mv.feature_names)})")
        fs = self._features.get(mv.feature_set)
        found = await read_online(self._hot_store, self._warehouse, fs, [entity_id])
        return found.get(entity_id) or {}

    async def predict_batch(self, model: str, names: list[str], matrix: np.ndarray, *, version: int = 0
                            ) -> tuple[np.ndarray, PredictionResult]:
        """Scores for every row of matrix (columns named by names, in any order)."""
        started = time.perf_counter()
        served = await self.version_for(model, version)
        mv = served.mv
        missing = [n for n in mv.feature_names if n not in names]
        unknown = [n for n in names if n not in mv.feature_names]
        if missing or unknown or len(set(names)) != len(names):
            raise InvalidInput(f"{model} takes columns {', '.join(mv.feature_names)}; got {', '.join(names)}"
                               + (f" (missing {missing[0]!r})" if missing else "")
                               + (f" (unknown {unknown[0]!r})" if unknown else ""))
        if not np.all(np.isfinite(matrix)):
            bad_row, bad_col = map(int, np.argwhere(~np.isfinite(matrix))[0])
            raise InvalidInput(f"row {bad_row}, feature {names[bad_col]!r}: not a finite number")
        ordered = matrix[:, [names.index(n) for n in mv.feature_names]]
        served.batch_size.observe(len(ordered))
        scores = await served.run(np.ascontiguousarray(ordered))
        latency = time.perf_counter() - started
        served.ok.inc(len(ordered))
        result = PredictionResult(math.nan, model, mv.version, latency * 1000, uuid.uuid4().hex)
        if self._log is not None:
            self._log.add_batch(result.request_id, model, mv.version, ordered, scores, latency * 1000)
        return scores, result

