"""`mlplat bench serve`, `stream` and `drift` run end to end (tiny sizes) and print every documented key.
Their numbers are read by people, never asserted against a speed: machines here are noisy."""

from __future__ import annotations

import json

from tests.daemons import run

SERVE_KEYS = ("p50_ms_c1", "p99_ms_c1", "rps_c1", "rps_c8", "rps_c32", "batch_rows_per_s", "floor_batch_rows_per_s",
              "batch_ratio")


def test_bench_serve_reports_every_key_for_both_models() -> None:
    result = run("bench", "serve", "--seconds", "0.5", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["name"] == "serve"
    for key in (*SERVE_KEYS, *(f"tree_{k}" for k in SERVE_KEYS), "stream_rps_c32", "grpc_noop_rps_c32"):
        assert out["metrics"][key] > 0, key


def test_bench_stream_reports_throughput_and_lag() -> None:
    result = run("bench", "stream", "--events", "2000", "--rate", "500", "--seconds", "1", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["name"] == "stream" and out["params"]["bus"] == "memory://"
    metrics = out["metrics"]
    for key in ("events_per_s", "floor_events_per_s", "ratio", "raw_consume_events_per_s", "lag_p50_ms",
                "lag_p99_ms"):
        assert metrics[key] > 0, key
    assert metrics["lag_events"] >= 400  # one second at 500/s, most of it read back
    assert metrics["lag_p50_ms"] <= metrics["lag_p99_ms"]


def test_bench_drift_reports_time_speedup_and_the_largest_difference() -> None:
    result = run("bench", "drift", "--rows", "20000", "--features", "4", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["seconds"] > 0 and metrics["reference_seconds"] > 0 and metrics["speedup"] > 0
    assert 0 <= metrics["max_abs_diff"] < 1e-9


def test_bench_swap_sees_every_daemon_swap_with_no_failed_request() -> None:
    result = run("bench", "swap", "--swaps", "2", "--settle-s", "1", "--clients", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["swaps"] == 2 and metrics["daemons"] == 2
    assert metrics["swaps_missed"] == 0  # both daemons served every promoted version
    assert metrics["failed_requests_during_swap"] == 0
    assert metrics["daemon0_requests"] > 0 and metrics["daemon1_requests"] > 0
    assert 0 <= metrics["swap_p50_ms"] <= metrics["swap_p99_ms"] <= metrics["swap_max_ms"]


def test_bench_ingest_big_lands_every_row_once_and_reports_the_daemons_rss() -> None:
    result = run("bench", "ingest", "--big", "--big-mb", "6", "--partition-mb", "0.5", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["rows_accepted"] == metrics["rows"] > 0 and metrics["rows_rejected"] == 0
    assert metrics["rows_lost"] == 0 and metrics["rows_duplicated"] == 0
    assert metrics["partitions"] >= 12  # 6 MiB in 0.5 MiB partitions: the small-partition path is exercised
    assert metrics["rss_peak_mb"] >= metrics["rss_baseline_mb"] > 0 and metrics["workers_rss_peak_mb"] > 0
