"""Every drift statistic equals a straightforward scipy/numpy computation to 1e-9, and edge cases give a
defined result or NotEnoughData, never NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlplat.monitoring.statistics import (
    KL_ALPHA,
    PSI_EPSILON,
    CategoricalDrift,
    NotEnoughData,
    NumericDrift,
    categorical_drift,
    numeric_drift,
)


def reference_numeric(a: np.ndarray, b: np.ndarray, bins: int = 10) -> dict[str, float]:
    """The plain per-column computation, written from the definitions."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    ks = stats.ks_2samp(a, b)
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
    ra = np.bincount(np.digitize(a, edges), minlength=len(edges) + 1)
    cb = np.bincount(np.digitize(b, edges), minlength=len(edges) + 1)
    r, c = np.maximum(ra / ra.sum(), PSI_EPSILON), np.maximum(cb / cb.sum(), PSI_EPSILON)
    k = len(ra)
    smoothed_r, smoothed_c = (ra + KL_ALPHA) / (ra.sum() + KL_ALPHA * k), (cb + KL_ALPHA) / (cb.sum() + KL_ALPHA * k)
    return {
        "ks": ks.statistic, "ks_pvalue": ks.pvalue, "psi": float(np.sum((c - r) * np.log(c / r))),
        "kl": float(stats.entropy(smoothed_c, smoothed_r)),
        "js": float(jensenshannon(ra / ra.sum(), cb / cb.sum())), "wasserstein": stats.wasserstein_distance(a, b),
    }


def assert_matches(ours: NumericDrift | NotEnoughData, want: dict[str, float]) -> None:
    assert isinstance(ours, NumericDrift), ours
    got = ours.values()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9, rel=1e-9), key
        assert math.isfinite(got[key]), key


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n", "m"), [(5000, 7000), (30_000, 20_000), (1, 50), (40, 1)])
def test_numeric_statistics_equal_the_reference(seed: int, n: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, n)
    b = rng.normal(0.2 * seed, 1 + 0.1 * seed, m)
    if seed % 2:  # ties, and nulls in the samples large enough to keep values
        a, b = np.round(a, 1), np.round(b, 1)
        for x in (a, b):
            if len(x) > 10:
                x[rng.random(len(x)) < 0.05] = np.nan
    assert_matches(numeric_drift(a, b, bins=10 + seed), reference_numeric(a, b, bins=10 + seed))


@pytest.mark.parametrize(("a", "b"), [
    (np.full(1000, 3.0), np.full(800, 3.0)),  # constant, equal
    (np.full(1000, 3.0), np.linspace(0, 6, 500)),  # constant reference
    (np.linspace(0, 1, 100), np.full(10, 7.0)),  # constant current
    (np.array([1.0]), np.array([2.0])),  # one row each
    (np.array([0, 0, 0, 1.0]), np.array([0, 1, 1, 1.0])),  # heavy ties
])
def test_edge_cases_are_defined_and_equal_the_reference(a: np.ndarray, b: np.ndarray) -> None:
    assert_matches(numeric_drift(a, b), reference_numeric(a, b))


@pytest.mark.parametrize(("a", "b", "which"), [
    (np.array([]), np.array([1.0, 2.0]), "reference"),
    (np.array([1.0]), np.array([]), "current"),
    (np.full(10, np.nan), np.array([1.0]), "reference"),  # an all-null column
    (np.array([1.0]), np.full(5, np.nan), "current"),
])
def test_an_empty_side_is_not_enough_data(a: np.ndarray, b: np.ndarray, which: str) -> None:
    result = numeric_drift(a, b)
    assert isinstance(result, NotEnoughData) and which in result.reason


def test_categorical_statistics_equal_the_reference_and_count_unseen_categories() -> None:
    rng = np.random.default_rng(3)
    ref = list(rng.choice(["de", "fr", "gb", "us"], 4000, p=[0.4, 0.3, 0.2, 0.1]))
    cur = list(rng.choice(["de", "fr", "gb", "us", "nl"], 3000, p=[0.3, 0.3, 0.2, 0.1, 0.1])) + [None] * 50
    result = categorical_drift(ref, cur)
    assert isinstance(result, CategoricalDrift)
    categories = ["de", "fr", "gb", "nl", "us"]
    r = np.array([ref.count(c) for c in categories], dtype=float)
    c = np.array([cur.count(c) for c in categories], dtype=float)
    table = np.vstack([r, c])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    rp, cp = np.maximum(r / r.sum(), PSI_EPSILON), np.maximum(c / c.sum(), PSI_EPSILON)
    assert result.chi2 == pytest.approx(chi2, rel=1e-9)
    assert result.chi2_pvalue == pytest.approx(stats.chi2.sf(chi2, 4), rel=1e-9, abs=1e-12)
    assert result.psi == pytest.approx(float(np.sum((cp - rp) * np.log(cp / rp))), rel=1e-9)
    assert result.unseen_share == pytest.approx(c[3] / c.sum())
    assert (result.reference_n, result.current_n) == (4000, 3000)


def test_categorical_edge_cases() -> None:
    same = categorical_drift(["a"] * 5, ["a"] * 3)
    assert isinstance(same, CategoricalDrift) and (same.psi, same.chi2, same.chi2_pvalue) == (0.0, 0.0, 1.0)
    assert isinstance(categorical_drift([None, None], ["a"]), NotEnoughData)
    assert isinstance(categorical_drift(["a"], []), NotEnoughData)
    flipped = categorical_drift([True] * 10, [False] * 10)
    assert isinstance(flipped, CategoricalDrift) and flipped.unseen_share == 1.0
    assert all(math.isfinite(v) for v in flipped.values().values())


@pytest.mark.parametrize("shift", [0.0, 0.003, 0.006, 0.01, 0.05])
def test_large_samples_ks_pvalue_equals_scipy_including_the_far_tail(shift: float) -> None:
    rng = np.random.default_rng(11)
    a, b = rng.normal(0, 1, 200_000), rng.normal(shift, 1, 150_000)
    ours = numeric_drift(a, b)
    want = stats.ks_2samp(a, b)
    assert isinstance(ours, NumericDrift)
    assert ours.ks == pytest.approx(want.statistic, abs=1e-12)
    assert abs(ours.ks_pvalue - want.pvalue) < 1e-9


@pytest.mark.parametrize(("n", "d"), [(500_000, 0.0023), (500_000, 0.005), (100_000, 0.006), (20_000, 0.02),
                                      (1_000_000, 0.0016), (141, 0.2)])
def test_the_vectorised_smirnov_tail_equals_scipy(n: int, d: float) -> None:
    from scipy.special import smirnov

    from mlplat.monitoring.statistics import _smirnov

    assert _smirnov(n, d) == pytest.approx(float(smirnov(n, d)), abs=1e-10, rel=1e-8)
