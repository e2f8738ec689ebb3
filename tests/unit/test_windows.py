"""Tumbling windows: aggregates equal a reference computation, late events are not counted, and the
offsets committed never cut through a window."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from mlplat.backends.bus import TopicPartition
from mlplat.streaming.definitions import Aggregate, StreamSpec
from mlplat.streaming.windows import TumblingWindows

TP0, TP1 = TopicPartition("events", 0), TopicPartition("events", 1)
AGGREGATES = (Aggregate(name="n", fn="count"), Aggregate(name="clicks_sum", fn="sum", feature="clicks"),
              Aggregate(name="spend_mean", fn="mean", feature="spend"), Aggregate(name="spend_min", fn="min",
              feature="spend"), Aggregate(name="clicks_max", fn="max", feature="clicks"),
              Aggregate(name="spend_last", fn="last", feature="spend"))
BASE_US = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1e6)


def spec(window_s: float = 60, lateness_s: float = 0) -> StreamSpec:
    return StreamSpec(model="m", feature_set="fs", window_s=window_s, lateness_s=lateness_s, aggregates=AGGREGATES)


def events(times_s: list[float], entities: list[str], clicks: list[int | None], spend: list[float | None]
           ) -> pa.Table:
    return pa.table({
        "entity_id": entities,
        "event_time": pa.array([BASE_US + int(t * 1e6) for t in times_s], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "clicks": pa.array(clicks, pa.int64()), "spend": pa.array(spend, pa.float64()),
    })


def test_aggregates_equal_a_reference_computation() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    times = np.sort(rng.uniform(0, 600, n)).tolist()  # ten one-minute windows
    entities = [f"e{i}" for i in rng.integers(0, 25, n)]
    clicks = [None if rng.random() < 0.1 else int(c) for c in rng.integers(0, 50, n)]
    spend = [None if rng.random() < 0.1 else round(float(s), 2) for s in rng.uniform(0, 100, n)]
    table = arrived = events(times, entities, clicks, spend)
    windows = TumblingWindows(spec(lateness_s=30))
    closed = []
    for start in range(0, n, 400):  # arriving in batches, windows closing as the watermark passes them
        chunk = table.slice(start, 400)
        assert windows.add(chunk, [(TP0, start + i) for i in range(chunk.num_rows)]) == 0
        closed += windows.close_ready()
    assert len(windows) > 0  # the newest windows wait for the watermark ...
    closed += windows.close_idle(BASE_US + 10**12)  # ... or for the stream to go quiet
    assert len(windows) == 0
    assert arrived.num_rows == n  # the reference below reads it by name

    reference = duckdb.execute("""
        SELECT entity_id, epoch_us(time_bucket(INTERVAL 60 SECOND, event_time)) AS start_us, count(*) AS n,
               sum(clicks)::DOUBLE AS clicks_sum, avg(spend) AS spend_mean, min(spend) AS spend_min,
               max(clicks)::DOUBLE AS clicks_max, arg_max(spend, event_time) FILTER (spend IS NOT NULL) AS spend_last
        FROM arrived GROUP BY ALL ORDER BY start_us, entity_id""").fetchall()
    ours = [(w.entity_id, w.start_us, w.count, *(w.values[a.name] for a in AGGREGATES[1:])) for w in closed]
    assert len(ours) == len(reference) == len({(w.entity_id, w.start_us) for w in closed})
    for got, want in zip(sorted(ours, key=lambda r: (r[1], r[0])), reference, strict=True):
        assert got[:3] == want[:3]
        assert got[3:] == pytest.approx(want[3:], nan_ok=True)


def test_an_event_for_a_closed_window_is_late_and_not_counted() -> None:
    windows = TumblingWindows(spec(lateness_s=5))
    assert windows.add(events([10, 70], ["a", "a"], [1, 2], [1.0, 2.0]), [(TP0, 0), (TP0, 1)]) == 0
    [first] = windows.close_ready()  # 70 - 5 passed the end of [0, 60)
    assert (first.start_us - BASE_US, first.count) == (0, 1)
    assert windows.add(events([30, 66], ["a", "a"], [5, 3], [5.0, 3.0]), [(TP0, 2), (TP0, 3)]) == 1
    [second] = windows.close_idle(BASE_US + 10**9)
    assert (second.count, second.values["clicks_sum"], second.values["spend_last"]) == (2, 5.0, 2.0)


def test_commits_stop_at_open_windows_and_never_cut_through_a_closed_one() -> None:
    windows = TumblingWindows(spec(lateness_s=0))
    # partition 0: offsets 0..2 window [0,60) of a, offset 1 is b's window [60,120); partition 1: c
    windows.add(events([5, 61, 50], ["a", "b", "a"], [1, 1, 1], [1.0, 1.0, 1.0]), [(TP0, 0), (TP0, 1), (TP0, 2)])
    windows.add(events([62], ["c"], [1], [1.0]), [(TP1, 0)])
    closed = windows.close_ready()  # the watermark (62 s) closes a's window, whose events are offsets 0 and 2
    assert [(w.entity_id, w.count) for w in closed] == [("a", 2)]
    # b's open window (offset 1) would hold partition 0 at 1, but a replay from 1 would rebuild a's window
    # from its offset 2 alone: the point moves back to a's start; c's open window holds partition 1 at 0
    assert windows.safe_offsets({TP0: 3, TP1: 1}) == {TP0: 0, TP1: 0}
    windows.add(events([130], ["d"], [1], [1.0]), [(TP0, 3)])
    assert sorted(w.entity_id for w in windows.close_ready()) == ["b", "c"]
    # nothing open before offset 3 any more, and no closed window straddles it
    assert windows.safe_offsets({TP0: 4, TP1: 1}) == {TP0: 3, TP1: 1}


def test_a_commit_point_inside_a_closed_window_moves_back_to_its_start() -> None:
    windows = TumblingWindows(spec(lateness_s=0))
    windows.add(events([1, 2], ["a", "b"], [1, 1], [1.0, 1.0]), [(TP0, 0), (TP0, 1)])
    windows.add(events([3], ["a"], [1], [1.0]), [(TP0, 5)])  # a's window spans offsets 0..5
    windows.add(events([61], ["z"], [1], [1.0]), [(TP0, 6)])
    assert sorted(w.entity_id for w in windows.close_ready()) == ["a", "b"]
    # z (offset 6) is open; nothing before it is open, and a's closed window ends at 5: 6 is safe
    assert windows.safe_offsets({TP0: 7}) == {TP0: 6}
    windows2 = TumblingWindows(spec(lateness_s=0))
    windows2.add(events([1], ["a"], [1], [1.0]), [(TP0, 0)])
    windows2.add(events([2], ["b"], [1], [1.0]), [(TP0, 1)])
    windows2.add(events([3], ["a"], [1], [1.0]), [(TP0, 4)])
    windows2.add(events([61], ["z"], [1], [1.0]), [(TP0, 2)])  # z open at offset 2, inside a's span 0..4
    assert sorted(w.entity_id for w in windows2.close_ready()) == ["a", "b"]
    assert windows2.safe_offsets({TP0: 5}) == {TP0: 0}  # 2 would replay a's offset 4 without its offset 0
