"""Tumbling event-time windows per entity, and the bus offsets that are safe to commit while they are open.

A window [start, start + width) closes when the watermark (the newest event time seen, minus the allowed
lateness) passes its end, or when the stream has been idle long enough (`close_idle`). An event for a window
that already closed is late: counted, not aggregated.

Offsets: a window's events must be replayed all together or not at all after a crash, or a replay would
emit a window built from part of its events. So the commit point of a partition is held at the first offset
of every open window, and pulled back to the start of any closed window it would fall inside; a window
replayed whole is emitted again with the same id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mlplat.backends.bus import TopicPartition
from mlplat.streaming.definitions import StreamSpec


@dataclass
class _Window:
    tp: TopicPartition
    first_offset: int
    last_offset: int
    count: int = 0
    sums: list[float] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)  # values counted, per aggregate (nulls are skipped)
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)
    last: list[tuple[int, float] | None] = field(default_factory=list)  # (event time, value)


@dataclass(frozen=True)
class ClosedWindow:
    entity_id: str
    start_us: int
    end_us: int
    count: int
    values: dict[str, float | None]  # aggregate name -> value (None: no value in the window)


class TumblingWindows:
    def __init__(self, spec: StreamSpec) -> None:
        self._spec = spec
        self._width_us = int(spec.window_s * 1_000_000)
        self._lateness_us = int(spec.lateness_s * 1_000_000)
        self._open: dict[tuple[str, int], _Window] = {}
        self._closed: dict[TopicPartition, list[tuple[int, int]]] = {}  # (first, last) offsets of closed windows
        self._newest_us = -math.inf
        self.watermark_us: float = -math.inf
        self._features = [a.feature for a in spec.aggregates]

    def __len__(self) -> int:
        return len(self._open)

    def add(self, rows: pa.Table, positions: list[tuple[TopicPartition, int]]) -> int:
        """Fold validated events (positions: where each row came from) into their windows; returns how many
        were late (their window had closed)."""
        entities = rows["entity_id"].to_pylist()
        times = rows["event_time"].cast(pa.int64()).to_numpy()
        columns = [rows[f].to_pylist() if f else None for f in self._features]
        starts = times - np.mod(times, self._width_us)
        late = 0
        n_aggregates = len(self._features)
        for i, (entity, start, t) in enumerate(zip(entities, starts.tolist(), times.tolist(), strict=True)):
            if start + self._width_us <= self.watermark_us:
                late += 1
                continue
            tp, offset = positions[i]
            window = self._open.get((entity, start))
            if window is None:
                window = self._open[(entity, start)] = _Window(
                    tp, offset, offset, sums=[0.0] * n_aggregates, seen=[0] * n_aggregates,
                    mins=[math.inf] * n_aggregates, maxs=[-math.inf] * n_aggregates, last=[None] * n_aggregates)
            window.last_offset = max(window.last_offset, offset)
            window.first_offset = min(window.first_offset, offset)
            window.count += 1
            for a, column in enumerate(columns):
                if column is None or column[i] is None:
                    continue
                v = float(column[i])
                window.sums[a] += v
                window.seen[a] += 1
                window.mins[a] = min(window.mins[a], v)
                window.maxs[a] = max(window.maxs[a], v)
                previous = window.last[a]
                if previous is None or t >= previous[0]:
                    window.last[a] = (t, v)
            if t > self._newest_us:
                self._newest_us = t
        self.watermark_us = max(self.watermark_us, self._newest_us - self._lateness_us)
        return late

    def close_ready(self) -> list[ClosedWindow]:
        """Windows whose end the watermark has passed, oldest first."""
        return self._close(lambda start: start + self._width_us <= self.watermark_us)

    def close_idle(self, now_us: int) -> list[ClosedWindow]:
        """The stream is idle: the wall clock (minus lateness) moves the watermark on, so the last windows
        close without waiting for a newer event."""
        self.watermark_us = max(self.watermark_us, now_us - self._lateness_us)
        return self.close_ready()

    def _close(self, ready: Callable[[int], bool]) -> list[ClosedWindow]:
        done = sorted((k for k in self._open if ready(k[1])), key=lambda k: (k[1], k[0]))
        closed = []
        for key in done:
            window = self._open.pop(key)
            self._closed.setdefault(window.tp, []).append((window.first_offset, window.last_offset))
            closed.append(ClosedWindow(key[0], key[1], key[1] + self._width_us, window.count,
                                       self._values(window)))
        return closed

    def _values(self, w: _Window) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for a, agg in enumerate(self._spec.aggregates):
            if agg.fn == "count":
                values[agg.name] = float(w.count)
            elif not w.seen[a]:
                values[agg.name] = None
            elif agg.fn == "sum":
                values[agg.name] = w.sums[a]
            elif agg.fn == "mean":
                values[agg.name] = w.sums[a] / w.seen[a]
            elif agg.fn == "min":
                values[agg.name] = w.mins[a]
            elif agg.fn == "max":
                values[agg.name] = w.maxs[a]
            else:
                last = w.last[a]
                values[agg.name] = last[1] if last else None
        return values

    def safe_offsets(self, read_up_to: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit: everything before it is in windows already emitted."""
        firsts: dict[TopicPartition, int] = {}
        for w in self._open.values():
            firsts[w.tp] = min(firsts.get(w.tp, w.first_offset), w.first_offset)
        safe = {}
        for tp, next_offset in read_up_to.items():
            point = min(next_offset, firsts.get(tp, next_offset))
            ranges = self._closed.get(tp, [])
            moved = True
            while moved:  # never inside a closed window: it would be replayed in part
                moved = False
                for first, last in ranges:
                    if first < point <= last:
                        point, moved = first, True
            self._closed[tp] = [(f, last) for f, last in ranges if last >= point]
            safe[tp] = point
        return safe

    def forget(self, keep: set[TopicPartition]) -> None:
        """Drop the state of partitions this member no longer owns (their new owner replays them)."""
        self._open = {k: w for k, w in self._open.items() if w.tp in keep}
        self._closed = {tp: r for tp, r in self._closed.items() if tp in keep}
