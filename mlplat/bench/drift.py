"""`mlplat bench drift`: KS (with p-value), PSI and KL for 20 numeric features, 1M reference rows x 1M
current rows, next to the plain per-column scipy/numpy computation of the same statistics in the same run.

`seconds` is mlplat's time (monitoring.statistics.numeric_drift per column, which also yields the
Jensen-Shannon and Wasserstein distances); `reference_seconds` is scipy.stats.ks_2samp plus numpy's
unique/quantile/digitize/bincount for PSI (the same bins) and scipy.stats.entropy for KL; `max_abs_diff` is the largest
difference between the two over every statistic of every feature. Half of the features are shifted, so
both the no-drift and the drift regime of the KS p-value are timed. Both sides run on one core, after one
unmeasured column of ours (a daemon is warm).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import numpy as np

from mlplat.bench import BenchResult
from mlplat.monitoring.statistics import KL_ALPHA, PSI_EPSILON, NumericDrift, numeric_drift


def _plain(a: np.ndarray, b: np.ndarray, bins: int) -> dict[str, float]:
    from scipy import stats

    ks = stats.ks_2samp(a, b)
    distinct = np.unique(a)
    if len(distinct) <= bins:  # a bin per reference value and per gap (statistics' module docstring)
        edges, single = distinct, np.ones(len(distinct), dtype=bool)
    else:  # reference deciles; an edge the reference holds more than once is a bin [e, e] of its own
        edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]))
        single = np.array([np.count_nonzero(a == e) > 1 for e in edges], dtype=bool)
    boundaries = np.sort(np.concatenate([edges, np.nextafter(edges[single], np.inf)]))
    ref = np.bincount(np.digitize(a, boundaries), minlength=len(boundaries) + 1)
    cur = np.bincount(np.digitize(b, boundaries), minlength=len(boundaries) + 1)
    r, c = np.maximum(ref / ref.sum(), PSI_EPSILON), np.maximum(cur / cur.sum(), PSI_EPSILON)
    k = len(ref)
    kl = stats.entropy((cur + KL_ALPHA) / (cur.sum() + KL_ALPHA * k), (ref + KL_ALPHA) / (ref.sum() + KL_ALPHA * k))
    return {"ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "psi": float(np.sum((c - r) * np.log(c / r))), "kl": float(kl)}


def run(rows: int = 1_000_000, features: int = 20, bins: int = 10,
        progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    progress(f"generating {rows:,} reference and {rows:,} current rows of {features} features")
    rng = np.random.default_rng(0)
    reference = [rng.normal(0, 1, rows) for _ in range(features)]
    current = [rng.normal(0.02 * (j % 2) * (1 + j % 5), 1, rows) for j in range(features)]
    # a running daemon is warm: imports done, and the allocator has grown its heap for arrays this size
    # (the first million-row column otherwise pays ~0.25 s of page faults once per process)
    numeric_drift(reference[0], current[0], bins=bins)
    progress("ours: every statistic per feature, one core")
    started = time.perf_counter()
    ours = [numeric_drift(a, b, bins=bins) for a, b in zip(reference, current, strict=True)]
    seconds = time.perf_counter() - started
    progress("reference: scipy.stats.ks_2samp, numpy unique/quantile/digitize/bincount, scipy.stats.entropy")
    started = time.perf_counter()
    plain = [_plain(a, b, bins) for a, b in zip(reference, current, strict=True)]
    reference_seconds = time.perf_counter() - started
    diff = 0.0
    for got, want in zip(ours, plain, strict=True):
        assert isinstance(got, NumericDrift)
        values = got.values()
        diff = max(diff, *(abs(values[k] - v) for k, v in want.items()))
    return BenchResult("drift", {"rows": rows, "features": features, "bins": bins,
                                 "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                       {"seconds": round(seconds, 4), "reference_seconds": round(reference_seconds, 4),
                        "speedup": round(reference_seconds / seconds, 3), "max_abs_diff": diff})
