"""Which version of each model this daemon serves, and the swap from one to the next.

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
import time
from collections import OrderedDict

import numpy as np

from mlplat.backends.artifacts import ArtifactStore
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Cost, Lane, Priority
from mlplat.config import ServingSettings
from mlplat.errors import BackendError, BackendUnavailable, MlplatError, NotFound
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.batching import MicroBatcher
from mlplat.serving.flavours import Predictor, load_model
from mlplat.serving.inputs import InvalidInput
from mlplat.serving.registry import (
    PRODUCTION_KEY,
    SWAP_CHANNEL,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    fetch_verified,
    production_from_hot_store,
)

log = get_logger("serving")
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0


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

    async def run(self, matrix: np.ndarray, *, background: bool = False) -> np.ndarray:
        """The model on a matrix; the balancer runs it inline when cheap, on a thread when not. A background
        call (drift's reference: one large matrix now and then) runs at monitor priority, costed by its size,
        and leaves the learned cost of a serving call alone."""
        if background:
            cost = Cost(expected_ms=max(1.0, matrix.size / 30_000), releases_gil=True)
            scores, _ = await self._balancer.run(_timed, self.predictor, matrix, priority=Priority.MONITOR, cost=cost)
            return scores
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


class Swaps:
    """The versions served here: production ones (swapped on notice or re-read) and a few pinned ones."""

    def __init__(self, settings: ServingSettings, hot_store: HotStore, artifacts: ArtifactStore, balancer: Balancer,
                 metrics: Metrics, registry: ModelRegistry | None) -> None:
        self._settings = settings
        self._hot_store = hot_store
        self._artifacts = artifacts
        self._balancer = balancer
        self._metrics = metrics
        self._registry = registry
        self.served: dict[str, ServedVersion] = {}
        self._pinned: OrderedDict[tuple[str, int], ServedVersion] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        # versions whose artifact store was unreachable: (next attempt, delay), doubled per failure
        self._retry_at: dict[tuple[str, int], tuple[float, float]] = {}

    async def close(self) -> None:
        for served in [*self.served.values(), *self._pinned.values()]:
            await served.batcher.close()

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

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._next_reconcile_s())
            try:
                await self.reconcile()
            except BackendError as e:
                log.warning("reconcile_failed", error=str(e))

    async def listen(self) -> None:
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
            current = self.served.get(mv.model)
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
            self.served[mv.model] = fresh  # from here new requests go to the new version
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

    async def version_for(self, model: str, version: int = 0) -> ServedVersion:
        current = self.served.get(model)
        if version in (0, None) or (current is not None and current.mv.version == version):
            if current is None:
                raise NotFound(f"model {model!r} is not served (no production version)"
                               + (f"; served: {', '.join(sorted(self.served))}" if self.served else ""))
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
