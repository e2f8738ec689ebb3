"""Drift runs in a whole daemon: a shift injected with the generator is detected on exactly the shifted
feature; results reach the warehouse, the hot store, the gauges, the API and `mlplat drift`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from mlplat.daemon import Daemon
from mlplat.monitoring.drift import DRIFT_KEY, PREDICTION, ModelDrift
from tests.daemons import daemon_settings
from tests.models import FEATURES, NAMES, T0, logistic_bytes, matrix, rows


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(daemon_settings(tmp_path))
    await d.start()
    yield d
    await d.stop()


async def register(daemon: Daemon, name: str, window: dict[str, str] | None) -> None:
    mv = await daemon.registry.register(name, logistic_bytes(), "sklearn", FEATURES, feature_set="user_activity",
                                       training_window=window)
    await daemon.registry.promote(name, mv.version)
    await daemon.serving.swap_to(mv)


async def test_a_shift_is_detected_on_exactly_the_shifted_feature(daemon: Daemon, tmp_path: Path) -> None:
    reference = rows(1, 5000)
    path = tmp_path / "reference.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in reference))
    summary = await daemon.batch.ingest_file(path, "user_activity", upload_id="reference")
    assert summary.rows_accepted == 5000
    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(seconds=5000)).isoformat()}
    for name in ("control", "shifted"):
        await register(daemon, name, window)
    await register(daemon, "no_reference", None)
    await register(daemon, "idle", window)

    await daemon.serving.predict_batch("control", NAMES, matrix(rows(2, 3000)))
    await daemon.serving.predict_batch("shifted", NAMES, matrix(rows(3, 3000, {"spend_1h": 10.0})))
    await daemon.serving.predict_batch("no_reference", NAMES, matrix(rows(4, 500)))
    await daemon.prediction_log.flush()

    results = {d.model: d for d in await daemon.monitoring.run_drift()}
    again = {d.model: d for d in await daemon.monitoring.run_drift()}  # the references come from memory now
    assert [(v.feature, v.statistic, v.value) for v in again["shifted"].values] == \
        [(v.feature, v.statistic, v.value) for v in results["shifted"].values]
    assert set(daemon.monitoring._references) == {("control", 1), ("shifted", 1), ("idle", 1)}

    def crossed(d: ModelDrift) -> set[str]:
        return {v.feature for v in d.values if v.crossed and v.statistic in ("psi", "ks") and v.feature != PREDICTION}

    assert (results["control"].detected, crossed(results["control"])) == (False, set())
    assert (results["shifted"].detected, crossed(results["shifted"])) == (True, {"spend_1h"})
    shifted = {(v.feature, v.statistic): v for v in results["shifted"].values}
    assert shifted[("spend_1h", "psi")].value > 0.2 and shifted[("spend_1h", "ks")].value > 0.1
    assert shifted[("spend_1h", "ks")].reference_n == 5000 and shifted[("spend_1h", "ks")].current_n == 3000
    assert (PREDICTION, "psi") in shifted  # the scores are compared too
    assert "no reference" in results["no_reference"].reason and not results["no_reference"].values
    assert "not enough data" in results["idle"].reason

    stored = await daemon.warehouse.read(
        "SELECT model, count(*) AS n, bool_or(crossed) AS any_crossed FROM drift_results GROUP BY model ORDER BY model")
    assert [(r["model"], r["any_crossed"]) for r in stored.to_pylist()] == [("control", False), ("shifted", True)]
    latest = ModelDrift.from_json(await daemon.hot_store.get(DRIFT_KEY.format(model="shifted")) or b"{}")
    assert latest.detected and latest.version == 1
    metrics = daemon.metrics.render().decode()
    assert 'mlplat_drift_detected{model="shifted"} 1.0' in metrics
    assert 'mlplat_drift_detected{model="control"} 0.0' in metrics
    assert 'mlplat_feature_drift{feature="spend_1h",model="shifted",statistic="psi"}' in metrics
    assert 'mlplat_prediction_drift{model="shifted",statistic="ks"}' in metrics
    assert "mlplat_drift_run_seconds_count 2.0" in metrics

    target = f"127.0.0.1:{daemon.api.port}"
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mlplat", "drift", "-m", "shifted",
                                                     "--json", "--target", target], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    [report] = json.loads(shown.stdout)
    assert report["detected"] and any(v["feature"] == "spend_1h" and v["crossed"] for v in report["values"])
    table = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mlplat", "drift", "--run", "--target",
                                                     target], capture_output=True, text=True)
    assert table.returncode == 0 and "DRIFT" in table.stdout and "spend_1h" in table.stdout, table.stdout
    await register(daemon, "idle", window)  # v2 replaces v1: v1's reference is dropped at the next run
    await daemon.monitoring.run_drift(["idle"])
    assert ("idle", 1) not in daemon.monitoring._references and ("idle", 2) in daemon.monitoring._references
    unknown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mlplat", "drift", "--run", "-m", "nope",
                                                       "--target", target], capture_output=True, text=True)
    assert unknown.returncode != 0 and "nope" in unknown.stderr


async def test_a_training_window_is_checked_at_registration(daemon: Daemon) -> None:
    from mlplat.serving.registry import RegistryError

    for window, message in (({"start": "2026-01-02"}, "both start and end"),
                            ({"start": "yesterday", "end": "2026-01-01"}, "training window"),
                            ({"start": "2026-01-02", "end": "2026-01-01"}, "not before end")):
        with pytest.raises(RegistryError, match=message):
            await daemon.registry.register("m", logistic_bytes(), "sklearn", FEATURES, feature_set="user_activity",
                                           training_window=window)
    with pytest.raises(RegistryError, match="needs the feature set"):
        await daemon.registry.register("m", logistic_bytes(), "sklearn", FEATURES,
                                       training_window={"start": "2026-01-01", "end": "2026-01-02"})


async def test_labels_give_performance_and_ingested_rows_are_compared_too(daemon: Daemon, tmp_path: Path) -> None:
    from sklearn import metrics

    reference = rows(1, 3000)
    (tmp_path / "reference.ndjson").write_text("\n".join(json.dumps(r) for r in reference))
    await daemon.batch.ingest_file(tmp_path / "reference.ndjson", "user_activity", upload_id="reference")
    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(seconds=3000)).isoformat()}
    mv = await daemon.registry.register("churn", logistic_bytes(), "sklearn", FEATURES, feature_set="user_activity",
                                        training_window=window, metrics={"auc": 0.99, "accuracy": 0.5})
    await daemon.registry.promote("churn", mv.version)
    await daemon.serving.swap_to(mv)

    now = dt.datetime.now(dt.UTC)
    # this bucket's ingested activity, with spend shifted; and a label per entity from a second ago
    recent = rows(8, 400, {"spend_1h": 10.0}, start=now - dt.timedelta(seconds=1))
    (tmp_path / "recent.ndjson").write_text("\n".join(json.dumps(r) for r in recent))
    await daemon.batch.ingest_file(tmp_path / "recent.ndjson", "user_activity", upload_id="recent")
    rng = np.random.default_rng(9)
    labels = {f"user_{i}": int(rng.integers(0, 2)) for i in range(150)}
    (tmp_path / "labels.ndjson").write_text("\n".join(json.dumps({
        "event_id": f"l{i}", "user_id": user, "event_time": (now - dt.timedelta(seconds=1)).isoformat(),
        "label": label}) for i, (user, label) in enumerate(labels.items())))
    await daemon.batch.ingest_file(tmp_path / "labels.ndjson", "user_labels", upload_id="labels")
    scores, truth = [], []
    for user, label in labels.items():
        result = await daemon.serving.predict("churn", {}, entity_id=user)
        scores.append(result.score)
        truth.append(label)
    await daemon.prediction_log.flush()

    [drift] = await daemon.monitoring.run_drift(["churn"])
    performance = {v.statistic: v for v in drift.values if v.source == "labels"}
    assert performance["auc"].value == pytest.approx(metrics.roc_auc_score(truth, scores))
    assert performance["accuracy"].value == pytest.approx(metrics.accuracy_score(truth, np.array(scores) >= 0.5))
    assert performance["f1"].value == pytest.approx(metrics.f1_score(truth, np.array(scores) >= 0.5))
    assert performance["auc"].threshold == pytest.approx(0.94) and performance["auc"].crossed  # random labels
    assert performance["f1"].threshold is None and not performance["f1"].crossed  # no registered f1
    assert drift.detected
    ingest_crossed = {v.feature for v in drift.values if v.source == "ingest" and v.crossed and v.statistic == "psi"}
    assert ingest_crossed == {"spend_1h"}
    metrics_text = daemon.metrics.render().decode()
    assert 'mlplat_model_performance{metric="auc",model="churn"}' in metrics_text
    assert 'mlplat_model_performance{metric="auc_bound",model="churn"} 0.94' in metrics_text


async def test_a_shift_of_the_country_mix_is_detected_on_country_alone(daemon: Daemon, tmp_path: Path) -> None:
    """country is a string: no model input, so it is compared as ingested in the bucket; is_premium, a bool
    input, gets the categorical statistics as served and as ingested."""
    reference = rows(1, 5000)
    (tmp_path / "reference.ndjson").write_text("\n".join(json.dumps(r) for r in reference))
    await daemon.batch.ingest_file(tmp_path / "reference.ndjson", "user_activity", upload_id="reference")
    await register(daemon, "churn", {"start": T0.isoformat(), "end": (T0 + dt.timedelta(seconds=5000)).isoformat()})
    await daemon.serving.predict_batch("churn", NAMES, matrix(rows(2, 3000)))
    await daemon.prediction_log.flush()
    logged = await daemon.warehouse.read("SELECT max(predicted_at) AS t FROM predictions")
    at = logged["t"][0].as_py()  # the run's bucket is the one the predictions are in, even at an hour's turn
    bucket = dt.datetime.fromtimestamp(at.timestamp() // 3600 * 3600, dt.UTC)
    current = rows(3, 3000, start=bucket, step_ms=1)  # the numbers as in the reference; 70% from the US
    for i, record in enumerate(current):
        record["country"] = "us" if i % 10 < 7 else record["country"]
    (tmp_path / "current.ndjson").write_text("\n".join(json.dumps(r) for r in current))
    await daemon.batch.ingest_file(tmp_path / "current.ndjson", "user_activity", upload_id="current")

    [drift] = await daemon.monitoring.run_drift(["churn"], at=at)
    values = {(v.source, v.feature, v.statistic): v for v in drift.values}
    assert drift.detected
    assert {k for k, v in values.items() if v.crossed} == {("ingest", "country", "psi")}
    country = values[("ingest", "country", "psi")]
    assert country.value > 0.5 and country.threshold == 0.2
    assert (country.reference_n, country.current_n) == (5000, 3000)
    assert values[("ingest", "country", "unseen_share")].value == 0.0
    assert values[("ingest", "country", "unseen_share")].threshold == 0.05
    assert values[("ingest", "country", "chi2_pvalue")].value < 1e-12
    assert not any(f == "country" for source, f, _ in values if source == "predictions")  # not an input
    for source in ("predictions", "ingest"):  # the bool input: categorical statistics, the numbers: numeric ones
        assert {s for src, f, s in values if (src, f) == (source, "is_premium")} == \
            {"psi", "chi2", "chi2_pvalue", "unseen_share"}
        assert {s for src, f, s in values if (src, f) == (source, "spend_1h")} == \
            {"ks", "ks_pvalue", "psi", "kl", "js", "wasserstein"}

    stored = await daemon.warehouse.read("SELECT source, statistic, value, threshold, crossed FROM drift_results "
                                         "WHERE model = 'churn' AND feature = 'country' ORDER BY statistic")
    assert [(r["source"], r["statistic"], r["crossed"]) for r in stored.to_pylist()] == [
        ("ingest", "chi2", False), ("ingest", "chi2_pvalue", False), ("ingest", "psi", True),
        ("ingest", "unseen_share", False)]
    metrics = daemon.metrics.render().decode()
    assert f'mlplat_feature_drift{{feature="country",model="churn",statistic="psi"}} {country.value}' in metrics
    assert 'mlplat_feature_drift{feature="is_premium",model="churn",statistic="unseen_share"} 0.0' in metrics
    target = f"127.0.0.1:{daemon.api.port}"
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mlplat", "drift", "-m", "churn",
                                                     "--target", target], capture_output=True, text=True)
    assert shown.returncode == 0 and "DRIFT" in shown.stdout, shown.stdout + shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if "country" in line]  # a row per source and feature
    assert "ingest" in row and f"psi {country.value:.4g} >= 0.2" in row, shown.stdout
