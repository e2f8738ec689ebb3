"""Latest value per entity: the newest event time wins; a tie goes to the later arrival, never at random."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from mlplat.features.online import latest_per_entity
from mlplat.ingest.batch import NewestPerEntity

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def rows(items: list[tuple[str, int, float]]) -> pa.Table:
    """(entity, seconds after T0, value) rows."""
    return pa.table({
        "entity_id": [e for e, _, _ in items],
        "event_time": pa.array([T0 + dt.timedelta(seconds=s) for _, s, _ in items], pa.timestamp("us", tz="UTC")),
        "v": [v for _, _, v in items],
    })


def latest(table: pa.Table) -> dict[str, float]:
    return dict(zip(table["entity_id"].to_pylist(), table["v"].to_pylist(), strict=True))


def test_newest_event_time_wins_whatever_the_row_order() -> None:
    table = rows([("a", 5, 1.0), ("b", 1, 2.0), ("a", 9, 3.0), ("a", 7, 4.0), ("b", 0, 5.0)])
    assert latest(latest_per_entity(table)) == {"a": 3.0, "b": 2.0}


def test_equal_times_go_to_the_later_row_or_the_later_arrival() -> None:
    table = rows([("a", 5, 1.0), ("a", 5, 2.0)])
    assert latest(latest_per_entity(table)) == {"a": 2.0}
    assert latest(latest_per_entity(table, arrival=np.array([1, 0]))) == {"a": 1.0}


def test_an_uploads_partitions_merge_by_time_then_by_file_order() -> None:
    """Partitions finish in any order; the result is as if the file had been read front to back."""
    newest = NewestPerEntity()
    newest.add(rows([("a", 5, 20.0), ("b", 3, 21.0)]), partition=2)  # finished first
    newest.add(rows([("a", 5, 10.0), ("b", 4, 11.0), ("c", 1, 12.0)]), partition=1)
    assert newest.rows is not None
    assert latest(newest.rows) == {"a": 20.0, "b": 11.0, "c": 12.0}
