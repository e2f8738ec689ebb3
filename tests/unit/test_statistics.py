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


def reference_bins(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The bins the statistics module documents, counted by np.histogram: [e, e] is [e, nextafter(e))."""
    distinct = np.unique(a)
    if len(distinct) <= bins:  # one bin per reference value, one per gap
        edges, single = distinct, [True] * len(distinct)
    else:  # reference deciles; an edge the reference holds more than once is a bin of its own
        edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
        single = [int(np.count_nonzero(a == e)) > 1 for e in edges]
    boundaries = [-np.inf]
    for e, alone in zip(edges, single, strict=True):
        boundaries += [e, np.nextafter(e, np.inf)] if alone else [e]
    boundaries.append(np.inf)
    return np.histogram(a, boundaries)[0], np.histogram(b, boundaries)[0]


def reference_numeric(a: np.ndarray, b: np.ndarray, bins: int = 10) -> dict[str, float]:
    """The plain per-column computation, written from the definitions."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    ks = stats.ks_2samp(a, b)
    ra, cb = reference_bins(a, b, bins)
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
    (np.full(1000, 7.0), np.full(800, 8.0)),  # the current sample entirely outside the reference's values
    (np.full(1000, 8.0), np.full(800, 7.0)),
    (np.repeat([1.0, 2.0, 3.0], [500, 450, 50]), np.repeat([1.0, 2.0, 3.0], [500, 50, 450])),  # 3 values
    (np.repeat([1.0, 2.0, 3.0], [500, 450, 50]), np.full(300, 2.5)),  # between the reference's values
    (np.concatenate([np.full(950, 7.0), np.linspace(7.1, 10, 50)]), np.full(500, 8.0)),  # next to a heavy value
    (np.repeat(np.arange(10.0), 30), np.repeat(np.arange(10.0), np.arange(10) * 6)),  # as many values as bins
    (np.repeat(np.arange(11.0), 30), np.repeat(np.arange(11.0), np.arange(11) * 6)),  # one more: deciles
])
def test_edge_cases_are_defined_and_equal_the_reference(a: np.ndarray, b: np.ndarray) -> None:
    assert_matches(numeric_drift(a, b), reference_numeric(a, b))


@pytest.mark.parametrize(("a", "b"), [
    (np.full(1000, 7.0), np.full(800, 8.0)),
    (np.full(1000, 8.0), np.full(800, 7.0)),
    (np.repeat([1.0, 2.0, 3.0], [500, 450, 50]), np.full(300, 2.5)),
    (np.repeat([1.0, 2.0, 3.0], [500, 450, 50]), np.full(300, 4.0)),
    (np.concatenate([np.full(950, 7.0), np.linspace(7.1, 10, 50)]), np.full(500, 8.0)),
])
def test_a_sample_moved_off_the_reference_values_is_seen_by_the_binned_statistics(a: np.ndarray,
                                                                                     b: np.ndarray) -> None:
    """KS says the samples share nothing (or almost); PSI, KL and JS must say so too."""
    result = numeric_drift(a, b)
    assert isinstance(result, NumericDrift) and result.ks > 0.9
    assert result.psi > 10 and result.kl > 2 and result.js > 0.75  # JS's maximum is sqrt(ln 2) = 0.83


@pytest.mark.parametrize("a", [
    np.random.default_rng(1).normal(0, 1, 5000),
    np.round(np.random.default_rng(2).normal(0, 1, 5000), 1),
    np.repeat([1.0, 2.0, 3.0], [500, 450, 50]),
    np.full(100, 7.0),
    np.concatenate([np.full(950, 7.0), np.linspace(7.1, 10, 50)]),
])
def test_identical_samples_give_zero(a: np.ndarray) -> None:
    result = numeric_drift(a, np.random.default_rng(3).permutation(a))
    assert isinstance(result, NumericDrift)
    assert (result.psi, result.kl, result.js) == (0.0, 0.0, 0.0)
    assert result.ks < 1e-12 and result.wasserstein < 1e-12 and result.ks_pvalue == 1.0


def test_a_reference_of_few_values_gets_a_bin_per_value() -> None:
    """Mass moving between two of three values is all PSI sees; quantile bins would have merged them."""
    a = np.repeat([1.0, 2.0, 3.0], [500, 450, 50])
    b = np.repeat([1.0, 2.0, 3.0], [500, 350, 150])
    r, c = np.array([0.5, 0.45, 0.05]), np.array([0.5, 0.35, 0.15])
    result = numeric_drift(a, b)
    assert isinstance(result, NumericDrift)
    assert result.psi == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-12)
    assert result.psi > 0.1


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


def test_categories_count_the_same_from_lists_arrow_and_float_arrays() -> None:
    """The monitor passes strings as Arrow columns and bools as 0/1 floats (NaN for null)."""
    import pyarrow as pa

    ref, cur = ["de", "fr", None, "de", "gb"] * 40, ["de", "nl", "nl", None, "fr"] * 30
    from_lists = categorical_drift(ref, cur)
    from_arrow = categorical_drift(pa.chunked_array([pa.array(ref[:77]), pa.array(ref[77:])]), pa.array(cur))
    assert from_lists == from_arrow and isinstance(from_arrow, CategoricalDrift) and from_arrow.reference_n == 160
    flags = categorical_drift(np.array([1.0, 0.0, 0.0, np.nan] * 50), np.array([1.0, 1.0, 0.0, np.nan] * 50))
    as_bools = categorical_drift([True, False, False, None] * 50, [True, True, False, None] * 50)
    assert flags == as_bools and isinstance(flags, CategoricalDrift) and flags.current_n == 150


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
