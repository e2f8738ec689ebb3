"""What drift and streaming need of serving: the version a model is served at, and its scores on a matrix.

`ModelServing` is the one implementation; `score` is its one public way to run a model on a matrix. With
`logged` the scores are predictions: counted in `mlplat_predictions_total` and written to the prediction
log. Without, they are the platform's own (drift's reference): neither counted nor logged, and run at
monitor priority so that they never hold up a request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa

from mlplat.serving.registry import ModelVersion


@dataclass(frozen=True)
class Logged:
    """What the prediction log keeps per row of a scored matrix."""

    ids: pa.Array  # request id per row
    entities: pa.Array  # entity per row (null where there is none)
    event_ids: pa.Array | None = None  # of streaming predictions: the event each was made on
    started: float | None = None  # time.perf_counter() when the work for them began (the logged latency)


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray
    mv: ModelVersion  # the version that scored
    latency_ms: float


Deliver = Callable[[Scored], Awaitable[None]]


class Scorer(Protocol):
    def served_models(self) -> dict[str, ModelVersion]:
        """The production version each model is served at here."""
        ...

    async def model_version(self, model: str, version: int = 0) -> ModelVersion:
        """The version `score` uses for (model, version); 0 is production. Raises NotFound if not served."""
        ...

    async def score(self, model: str, matrix: np.ndarray, *, version: int = 0, logged: Logged | None = None,
                    deliver: Deliver | None = None) -> Scored:
        """The model's scores for every row of matrix (columns in the version's feature order); `deliver`
        is awaited before they are counted and logged (a delivery that fails counts and logs nothing)."""
        ...
