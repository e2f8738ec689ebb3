"""Service B: serves each model's production version (swap.py keeps it current), logs every prediction.

Every way into a model goes through here: Predict (one row, micro-batched), PredictBatch, and `score`,
the `Scorer` (scoring.py) that streaming inference and drift monitoring use. Each counts and logs its
predictions the same way.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mlplat.backends.artifacts import ArtifactStore
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.config import ServingSettings
from mlplat.errors import MlplatError
from mlplat.features.online import read_online
from mlplat.features.registry import FeatureRegistry
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.inputs import InvalidInput, build_row
from mlplat.serving.prediction_log import PredictionLog, batch_ids
from mlplat.serving.registry import ModelRegistry, ModelVersion
from mlplat.serving.scoring import Deliver, Logged, Scored
from mlplat.serving.swap import ServedVersion, Swaps
from mlplat.warehouse.store import Warehouse

__all__ = ["InvalidInput", "ModelServing", "PredictionResult", "ServedVersion", "build_row"]
log = get_logger("serving")


@dataclass(frozen=True)
class PredictionResult:
    score: float
    model: str
    version: int
    latency_ms: float
    request_id: str


class ModelServing:
    name = "serving"

    def __init__(
        self, settings: ServingSettings, hot_store: HotStore, artifacts: ArtifactStore, balancer: Balancer,
        metrics: Metrics, *, warehouse: Warehouse, features: FeatureRegistry, registry: ModelRegistry | None,
        prediction_log: PredictionLog | None,
    ) -> None:
        self._hot_store = hot_store
        self._warehouse = warehouse
        self._features = features
        self._registry = registry
        self._log = prediction_log
        self._swaps = Swaps(settings, hot_store, artifacts, balancer, metrics, registry)
        self._served = self._swaps.served  # the same dict: what is served here, by model

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve every production version before the daemon reports ready."""
        if self._registry is not None:  # the warehouse owner makes the hot store agree with it
            await self._registry.sync_hot_store()
        await self.reconcile()
        log.info("serving_ready", models={m: s.mv.version for m, s in self._served.items()})

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._swaps.listen())
            group.create_task(self._swaps.reconcile_forever())
            if self._log is not None:
                group.create_task(self._log.run())

    async def stop(self) -> None:
        await self._swaps.close()
        if self._log is not None:
            await self._log.flush()

    # -- versions -------------------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        await self._swaps.reconcile()

    async def swap_to(self, mv: ModelVersion) -> bool:
        """Load, verify and switch to mv; returns False (old version kept) if it cannot be served."""
        return await self._swaps.swap_to(mv)

    def served(self) -> list[ModelVersion]:
        return [s.mv for _, s in sorted(self._served.items())]

    def served_models(self) -> dict[str, ModelVersion]:
        """The production version each model is served at here."""
        return {model: served.mv for model, served in self._served.items()}

    async def version_for(self, model: str, version: int = 0) -> ServedVersion:
        return await self._swaps.version_for(model, version)

    async def model_version(self, model: str, version: int = 0) -> ModelVersion:
        return (await self._swaps.version_for(model, version)).mv

    # -- predictions ----------------------------------------------------------------------------------------

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
        request_id = uuid.uuid4().hex
        scored = await self._score(served, ordered, Logged(batch_ids(request_id, len(ordered)),
                                                           pa.nulls(len(ordered), pa.string()), started=started))
        return scored.scores, PredictionResult(math.nan, model, mv.version, scored.latency_ms, request_id)

    async def score(self, model: str, matrix: np.ndarray, *, version: int = 0, logged: Logged | None = None,
                    deliver: Deliver | None = None) -> Scored:
        """The model's scores for every row of matrix (columns in the version's feature order). With `logged`
        they are predictions: counted, and written to the prediction log with the ids it gives, once
        `deliver` (if any: streaming's publish) succeeded; without, the platform's own scores (drift's
        reference) at monitor priority, neither counted nor logged."""
        return await self._score(await self.version_for(model, version), matrix, logged, deliver)

    async def _score(self, served: ServedVersion, matrix: np.ndarray, logged: Logged | None,
                     deliver: Deliver | None = None) -> Scored:
        started = time.perf_counter() if logged is None or logged.started is None else logged.started
        mv = served.mv
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        if logged is None:
            scores = await served.run(matrix, background=True)
            return Scored(scores, mv, (time.perf_counter() - started) * 1000)
        served.batch_size.observe(len(matrix))
        scores = await served.run(matrix)
        scored = Scored(scores, mv, (time.perf_counter() - started) * 1000)
        if deliver is not None:
            await deliver(scored)
        served.ok.inc(len(matrix))
        if self._log is not None:
            self._log.add_rows(logged.ids, mv.model, mv.version, logged.entities, matrix, scores,
                               scored.latency_ms, logged.event_ids)
        return scored
