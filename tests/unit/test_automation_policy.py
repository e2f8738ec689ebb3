"""Automation's pure decisions: the promotion policy, the drift policy (monitoring/policy.py, also the drift
run's), and job event streams."""

from __future__ import annotations

import asyncio

import pytest

from mlplat.automation.fitting import FitResult
from mlplat.automation.jobs import JobBook, TrainingJob
from mlplat.automation.service import model_policy
from mlplat.automation.specs import ModelSpec
from mlplat.automation.trainer import decide
from mlplat.config import MonitoringSettings
from mlplat.errors import NotFound
from mlplat.monitoring.drift import DriftValue
from mlplat.monitoring.policy import PERFORMANCE, PREDICTION, DriftPolicy, performance_bound, worse
from mlplat.serving.registry import ModelVersion
from tests.models import FEATURES


def spec(**policy: object) -> ModelSpec:
    return ModelSpec(name="churn", feature_set="user_activity", label="user_labels.label",
                     estimator="decision_tree", **policy)


def result(metrics: dict[str, float], incumbent: dict[str, float] | None = None) -> FitResult:
    return FitResult(b"", metrics, 80, 20, 0, incumbent or {})


PRODUCTION = ModelVersion("churn", 3, "production", "sklearn", "0" * 64, "k", FEATURES)


@pytest.mark.parametrize(("policy", "fit", "production", "promote", "says"), [
    ({}, result({"auc": 0.8}), None, True, "auc 0.8000 on 20 holdout rows; no production version"),
    ({"promote": "manual"}, result({"auc": 0.8}), None, False, "the promotion policy is manual"),
    ({"promote_margin": 0.02}, result({"auc": 0.81}, {"auc": 0.8}), PRODUCTION, False,
     "auc 0.8100 vs production v3 0.8000 on the same 20 holdout rows (margin 0.02): does not beat production"),
    ({"promote_margin": 0.02}, result({"auc": 0.83}, {"auc": 0.8}), PRODUCTION, True, "beats production"),
    ({"promote": "manual"}, result({"auc": 0.9}, {"auc": 0.8}), PRODUCTION, False,
     "beats production; the promotion policy is manual"),
    ({"promote_metric": "rmse", "promote_margin": 0.5}, result({"rmse": 9.4}, {"rmse": 10.0}), PRODUCTION, True,
     "rmse 9.4000 vs production v3 10.0000"),  # lower is better
    ({"promote_metric": "rmse", "promote_margin": 0.5}, result({"rmse": 9.6}, {"rmse": 10.0}), PRODUCTION, False,
     "does not beat"),
    ({}, result({"auc": 0.9}), PRODUCTION, False, "could not be scored on the same holdout"),
    ({"promote_metric": "r2"}, result({"auc": 0.9}), None, False, "the holdout gives no r2 (it gives auc)"),
    ({}, result({"accuracy": 0.7, "f1": 0.0}), None, True, "accuracy 0.7000"),  # one-class holdout: no auc
])
def test_the_promotion_policy_compares_on_the_same_holdout(policy: dict[str, object], fit: FitResult,
                                                          production: ModelVersion | None, promote: bool,
                                                          says: str) -> None:
    decision = decide(spec(**policy), fit, production)
    assert decision.promote is promote and says in decision.reason


MONITORING = DriftPolicy.of(MonitoringSettings())  # ks 0.1, psi 0.2 on ["psi", "ks"]; categorical psi 0.2, unseen 0.05


def reasons(policy: DriftPolicy, values: list[DriftValue]) -> list[str]:
    return [policy.reason(v) for v in policy.drift(values)]


def test_a_statistic_at_or_above_its_threshold_has_crossed_it_with_the_thresholds_of_its_kind() -> None:
    assert MONITORING.judge("ks", 0.1, categorical=False) == (0.1, True)
    assert MONITORING.judge("ks", 0.099, categorical=False) == (0.1, False)
    assert MONITORING.judge("unseen_share", 0.05, categorical=True) == (0.05, True)
    assert MONITORING.judge("unseen_share", 0.9, categorical=False) == (None, False)  # not a numeric statistic
    assert MONITORING.judge("wasserstein", 50.0, categorical=False) == (None, False)  # no threshold: never crossed
    assert performance_bound("auc", 0.9, 0.05) == pytest.approx(0.85) and worse("auc", 0.84, 0.85)
    assert performance_bound("rmse", 10.0, 0.05) == pytest.approx(10.5) and not worse("rmse", 10.4, 10.5)


def test_drift_is_a_detect_on_crossing_of_a_feature_or_performance_worse_than_its_bound() -> None:
    assert MONITORING.is_drift(DriftValue("spend_1h", "ks", 0.25, 0.1, True, 500, 500))
    assert MONITORING.is_drift(DriftValue("country", "unseen_share", 0.1, 0.05, True, 500, 500, "ingest", True))
    assert not MONITORING.is_drift(DriftValue("spend_1h", "js", 0.5, 0.1, True, 500, 500))  # not in detect_on
    assert not MONITORING.is_drift(DriftValue(PREDICTION, "ks", 0.9, 0.1, True, 500, 500))
    assert MONITORING.is_drift(DriftValue(PERFORMANCE, "auc", 0.6, 0.85, True, 0, 500, "labels"))


def test_a_model_policy_reads_its_statistics_thresholds_and_minimum_samples() -> None:
    values = [
        DriftValue("spend_1h", "ks", 0.25, 0.1, True, 500, 500),
        DriftValue("spend_1h", "psi", 0.5, 0.2, True, 500, 500),
        DriftValue("clicks_1h", "ks", 0.4, 0.1, True, 500, 50),  # too few current rows
        DriftValue("clicks_1h", "ks", 0.9, 0.1, True, 500, 500, source="ingest"),  # not what the model saw
        DriftValue(PREDICTION, "ks", 0.9, 0.1, True, 500, 500),  # scores move with a better model too
        DriftValue(PERFORMANCE, "auc", 0.6, 0.85, True, 0, 500, source="labels"),
    ]
    assert reasons(model_policy(MONITORING, spec()), values) == ["ks of spend_1h 0.250 >= 0.1",
                                                                "psi of spend_1h 0.500 >= 0.2"]
    assert reasons(model_policy(MONITORING, spec(drift_statistics=["ks"], drift_thresholds={"ks": 0.3})),
                   values) == []
    assert reasons(model_policy(MONITORING, spec(drift_statistics=["performance"])), values) == [
        "auc 0.6000 worse than its bound 0.8500"]
    assert "ks of clicks_1h 0.400 >= 0.1" in reasons(model_policy(MONITORING, spec(drift_min_samples=10)), values)


def test_a_shift_of_the_country_mix_is_drift_a_model_acts_on() -> None:
    """country is no input: compared as ingested, with the categorical thresholds, whatever numeric statistics
    the spec names; a bool input counts as served, its ingested side does not count twice."""
    values = [
        DriftValue("is_premium", "psi", 0.3, 0.2, True, 500, 500, categorical=True),
        DriftValue("is_premium", "psi", 0.3, 0.2, True, 500, 500, "ingest", categorical=True),
        DriftValue("country", "chi2", 900.0, None, False, 500, 500, "ingest", categorical=True),
        DriftValue("country", "psi", 0.612, 0.2, True, 500, 500, "ingest", categorical=True),
        DriftValue("country", "unseen_share", 0.01, 0.05, False, 500, 500, "ingest", categorical=True),
    ]
    churn = model_policy(MONITORING, spec(drift_statistics=["ks"], drift_thresholds={"ks": 0.15}))
    assert reasons(churn, values) == ["psi of is_premium 0.300 >= 0.2", "psi of country 0.612 >= 0.2"]
    assert reasons(churn, values[2:3] + values[4:]) == []


async def test_a_job_stream_replays_then_follows_and_ends_with_the_final_stage() -> None:
    job = TrainingJob("churn", "request", "test")
    await job.emit("queued", 0.0)
    await job.emit("loading_data", 0.1)

    async def read() -> list[str]:
        return [e.stage async for e in job.follow()]

    early, late = asyncio.ensure_future(read()), None
    await asyncio.sleep(0.01)
    await job.emit("fitting", 0.3)
    await job.emit("failed", 1.0, "boom")
    late = await read()  # attached after the end: everything is replayed
    assert await early == late == ["queued", "loading_data", "fitting", "failed"]
    assert job.done and job.last is not None and job.last.message == "boom"


async def test_the_job_book_keeps_one_running_job_per_model_and_forgets_old_finished_ones() -> None:
    book = JobBook(keep_finished=2)
    jobs = []
    for _ in range(4):
        job = TrainingJob("churn", "request", "")
        book.add(job)
        assert book.running("churn") is job
        await job.emit("staging", 1.0)
        assert book.running("churn") is None
        jobs.append(job)
    book.add(TrainingJob("other", "request", ""))
    with pytest.raises(NotFound, match="no training job"):
        book.get(jobs[0].id)
    assert book.get(jobs[3].id) is jobs[3]
