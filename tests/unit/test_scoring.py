"""ModelServing.score, the one way into a model that streaming and drift use (the Scorer): predictions are
counted and logged there, once delivered; the platform's own scores (drift's reference) are neither."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mlplat.daemon import Daemon
from mlplat.errors import BackendUnavailable
from mlplat.serving.scoring import Logged, Scored, Scorer
from tests.daemons import daemon_settings
from tests.models import FEATURES, tree_bytes

ROWS = np.array([[10.0, 20.0, 5.0, 1.0], [90.0, 80.0, 30.0, 0.0]])


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(daemon_settings(tmp_path, bus={"url": "memory://"}, hot_store={"url": "memory://"}))
    await d.start()
    mv = await d.registry.register("churn", tree_bytes(), "sklearn", FEATURES, feature_set="user_activity")
    assert await d.serving.swap_to(await d.registry.promote("churn", mv.version))
    yield d
    await d.stop()


async def logged_rows(d: Daemon) -> list[dict[str, Any]]:
    await d.prediction_log.flush()
    rows: list[dict[str, Any]] = (await d.warehouse.read(
        "SELECT request_id, entity_id, event_id, features, score FROM predictions ORDER BY request_id")).to_pylist()
    return rows


def ok_count(d: Daemon) -> float:
    return float(d.metrics.predictions.labels("churn", "1", "ok")._value.get())


async def test_scores_with_ids_are_predictions_counted_and_logged_once_delivered(daemon: Daemon) -> None:
    scorer: Scorer = daemon.serving
    delivered: list[Scored] = []

    async def deliver(scored: Scored) -> None:
        assert await logged_rows(daemon) == [] and ok_count(daemon) == 0  # not before the delivery
        delivered.append(scored)

    logged = Logged(pa.array(["churn:e1", "churn:e2"]), pa.array(["u1", "u2"]), pa.array(["e1", "e2"]))
    scored = await scorer.score("churn", ROWS, logged=logged, deliver=deliver)
    assert delivered == [scored] and scored.mv.version == 1
    assert np.allclose(scored.scores, (await daemon.serving.version_for("churn")).predictor.predict(ROWS))
    assert ok_count(daemon) == 2
    assert await logged_rows(daemon) == [
        {"request_id": f"churn:e{i + 1}", "entity_id": f"u{i + 1}", "event_id": f"e{i + 1}",
         "features": ROWS[i].tolist(), "score": float(scored.scores[i])} for i in range(2)]


async def test_a_failed_delivery_counts_and_logs_nothing(daemon: Daemon) -> None:
    async def deliver(scored: Scored) -> None:
        raise BackendUnavailable("bus down")

    with pytest.raises(BackendUnavailable):
        await daemon.serving.score("churn", ROWS, logged=Logged(pa.array(["a", "b"]), pa.nulls(2, pa.string())),
                                   deliver=deliver)
    assert ok_count(daemon) == 0 and await logged_rows(daemon) == []


async def test_the_platforms_own_scores_are_neither_counted_nor_logged(daemon: Daemon) -> None:
    scored = await daemon.serving.score("churn", ROWS, version=1)
    assert len(scored.scores) == 2 and ok_count(daemon) == 0 and await logged_rows(daemon) == []
