"""Streaming inference: the production version of each streaming model predicts on every arriving event (or
closed window), and each prediction is published to the predictions topic (key = entity) and logged.

Each model reads the validated topic of its feature set (ingest/validated.py: the rows ingest accepted,
already typed) in its own consumer group, independently of ingest and of the other models: no event is
parsed again here. The model's inputs come from the event or the window's aggregates, and whatever is
missing from the entity's online features (serving/inputs.py builds them as serving does); the scores come
from serving's one entry (`Scorer.score`), which counts and logs them once they are published. The
production version is looked up for every batch, so a promotion applies from the next batch on with
nothing skipped. Offsets are committed after the predictions are acknowledged by the bus: at-least-once,
and a replay publishes the same ids. Side effects are not run here (see actions.py): a slow action target
cannot slow inference.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from mlplat.backends.bus import BusConsumer, EventBus, Message, TopicPartition, poll_batch, rewind
from mlplat.backends.hotstore import HotStore
from mlplat.config import StreamingSettings
from mlplat.errors import ConfigError, MlplatError, NotFound
from mlplat.features.definitions import FeatureSet
from mlplat.features.online import read_online
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.sink import dead_letter_table
from mlplat.ingest.validated import CHUNK_ROWS, OFFSET, ValidatedChunk, validated_topic
from mlplat.ingest.validation import DeadLetter
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.serving.inputs import fill_online, floats, given_matrix, lacking
from mlplat.serving.registry import ModelVersion
from mlplat.serving.scoring import Logged, Scored, Scorer
from mlplat.streaming.definitions import StreamingConfig, StreamSpec
from mlplat.streaming.records import PredictionRecord
from mlplat.streaming.windows import ClosedWindow, TumblingWindows
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

log = get_logger("streaming")
IDLE_CLOSE_S = 1.0
"""A stream with no batch for this long is quiet: open windows close by the wall clock. Ingest hands rows on in
batches (ingest.batch_wait_ms apart), so one empty poll between two of them is not quiet; closing then made
every later event of those windows late (found by the windowed streaming test, which failed 2 runs in 3)."""
NUMERIC = ("int", "float", "bool")


class StreamInference:
    """The supervised service: one loop per streaming model."""

    name = "streaming"

    def __init__(self, settings: StreamingSettings, config: StreamingConfig, bus: EventBus, hot_store: HotStore,
                 warehouse: Warehouse, features: FeatureRegistry, scorer: Scorer, metrics: Metrics) -> None:
        self._settings = settings
        self._bus = bus
        self._streams = [ModelStream(spec, settings, bus, hot_store, warehouse, features, scorer, metrics)
                         for spec in config.streams]

    async def start(self) -> None:
        if not self._streams:
            return
        await self._bus.create_topic(self._settings.predictions_topic, partitions=self._settings.partitions)
        for stream in self._streams:
            await stream.start()

    async def run(self) -> None:
        if not self._streams:
            await asyncio.Event().wait()
        async with asyncio.TaskGroup() as group:
            for stream in self._streams:
                group.create_task(stream.run(), name=f"stream-{stream.spec.model}")

    async def stop(self) -> None:
        for stream in self._streams:
            await stream.stop()


class ModelStream:
    def __init__(self, spec: StreamSpec, settings: StreamingSettings, bus: EventBus, hot_store: HotStore,
                 warehouse: Warehouse, features: FeatureRegistry, scorer: Scorer, metrics: Metrics) -> None:
        self.spec = spec
        self._settings = settings
        self._bus = bus
        self._hot_store = hot_store
        self._warehouse = warehouse
        self._features = features
        self._scorer = scorer
        self._metrics = metrics
        self._published = metrics.stream_predictions.labels(spec.model)
        self._lag = metrics.stream_lag_seconds.labels(spec.model)
        self._consumer: BusConsumer | None = None
        self._windows = TumblingWindows(spec) if spec.window_s else None
        self._read_up_to: dict[TopicPartition, int] = {}
        self._last_batch_at = time.monotonic()  # the last poll that brought messages: quiet is measured from it

    @property
    def group(self) -> str:
        return f"{self._settings.consumer_group}-{self.spec.model}"

    async def start(self) -> None:
        fs = self._feature_set()
        for agg in self.spec.aggregates:
            if agg.feature and fs.feature(agg.feature).type not in NUMERIC:
                raise ConfigError(f"stream {self.spec.model!r}: aggregate {agg.name!r} needs a numeric feature; "
                                  f"{agg.feature!r} is {fs.feature(agg.feature).type}")
        topic = validated_topic(fs.topic)
        try:  # ingest created it before (it starts first); the same partitions as the events' topic
            partitions = await self._bus.partitions_for(fs.topic)
        except NotFound:
            partitions = self._settings.partitions
        await self._bus.create_topic(topic, partitions=partitions)
        self._consumer = self._bus.consumer([topic], group=self.group)
        await self._consumer.start()
        log.info("stream_started", model=self.spec.model, topic=topic, group=self.group,
                 window_s=self.spec.window_s or None)

    def _feature_set(self) -> FeatureSet:
        try:
            return self._features.get(self.spec.feature_set)
        except NotFound:
            raise ConfigError(f"stream {self.spec.model!r}: feature set {self.spec.feature_set!r} is not "
                              f"registered") from None

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        assert self._consumer is not None
        backoff = 0.2
        self._last_batch_at = time.monotonic()
        while True:
            try:
                batch = await poll_batch(self._consumer, max_records=max(1, self._settings.batch_size // CHUNK_ROWS),
                                         wait_s=self._settings.batch_wait_ms / 1000)
                if batch:
                    await self.process(batch)
                    self._last_batch_at = time.monotonic()
                elif (self._windows is not None and len(self._windows)
                      and time.monotonic() - self._last_batch_at >= IDLE_CLOSE_S):  # quiet: the wall clock moves on
                    closed = self._windows.close_idle(int(time.time() * 1e6))
                    if closed:  # nothing closed, nothing new to commit (this runs every idle poll)
                        await self._emit_windows(closed)
                        await self._commit_windows()
            except (MlplatError, OSError) as e:
                # nothing after the last commit counts: rewind and take the same events again
                waiting = isinstance(e, NotFound)  # no production version yet: look again soon, say so once
                if not waiting:
                    log.error("stream_batch_failed", model=self.spec.model, error=str(e), retry_in_s=backoff)
                elif backoff == 0.2:
                    log.warning("stream_waiting_for_model", model=self.spec.model, error=str(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5 if waiting else 30.0)
                await rewind(self._consumer, f"stream-{self.spec.model}")
                self._windows = TumblingWindows(self.spec) if self.spec.window_s else None
                self._read_up_to.clear()
            else:
                backoff = 0.2

    async def process(self, batch: dict[TopicPartition, list[Message]]) -> None:
        """One batch of the validated topic: ingest's rows, each with its position there (for the commit)
        and its key on the events' topic (for a dead letter)."""
        assert self._consumer is not None
        started = time.perf_counter()
        tables: list[pa.Table] = []
        positions: list[tuple[TopicPartition, int]] = []
        source_keys: list[str] = []
        for tp, messages in batch.items():
            self._read_up_to[tp] = messages[-1].offset + 1
            for m in messages:
                try:
                    chunk = ValidatedChunk.from_message(m)
                except ValueError as e:  # not ingest's: nothing to predict on, and never a loop on it
                    self._metrics.stream_skipped.labels(self.spec.model, "invalid_event").inc()
                    log.error("stream_message_skipped", model=self.spec.model, error=str(e))
                    continue
                if chunk.invalid:
                    self._metrics.stream_skipped.labels(self.spec.model, "invalid_event").inc(chunk.invalid)
                if chunk.redelivered:  # predicted once, for the copy kept
                    self._metrics.stream_skipped.labels(self.spec.model, "redelivered").inc(chunk.redelivered)
                if chunk.rows.num_rows:
                    tables.append(chunk.rows)
                    positions += [(tp, m.offset)] * chunk.rows.num_rows
                    prefix = f"stream:{self.spec.model}:{chunk.source.topic}:{chunk.source.partition}:"
                    source_keys += [prefix + str(o) for o in chunk.rows[OFFSET].to_pylist()]
        rows = pa.concat_tables(tables) if tables else None
        if self._windows is None:
            if rows is not None:
                await self._predict_events(rows, source_keys, started)
            await self._consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
            return
        self._windows.forget(self._consumer.assignment())
        if rows is not None:
            late = self._windows.add(rows, positions)
            if late:
                self._metrics.stream_skipped.labels(self.spec.model, "late_event").inc(late)
        await self._emit_windows(self._windows.close_ready())
        await self._commit_windows()

    async def _commit_windows(self) -> None:
        assert self._consumer is not None and self._windows is not None
        safe = self._windows.safe_offsets(self._read_up_to)
        owned = self._consumer.assignment()
        await self._consumer.commit({tp: offset for tp, offset in safe.items() if tp in owned})

    async def _predict_events(self, rows: pa.Table, source_keys: list[str], started: float) -> None:
        if not rows.num_rows:
            return
        mv = await self._scorer.model_version(self.spec.model)
        given = {n: floats(rows[n]) for n in mv.feature_names if n in rows.column_names}
        entities = rows["entity_id"].to_pylist()
        matrix = await self._matrix(mv, given, entities)
        event_ids = rows["event_id"].to_pylist()
        ids = [f"{self.spec.model}:{e}" for e in event_ids]
        times = rows["event_time"].cast(pa.int64()).to_numpy()
        await self._publish(mv, matrix, ids, entities, times, None, np.ones(len(ids), np.int64), source_keys,
                            started, event_ids)

    async def _emit_windows(self, closed: list[ClosedWindow]) -> None:
        if not closed:
            return
        started = time.perf_counter()
        mv = await self._scorer.model_version(self.spec.model)
        given = {a.name: np.array([math.nan if w.values[a.name] is None else w.values[a.name] for w in closed])
                 for a in self.spec.aggregates if a.name in mv.feature_names}
        entities = [w.entity_id for w in closed]
        matrix = await self._matrix(mv, given, entities)
        ids = [f"{self.spec.model}:{w.entity_id}:{w.start_us}" for w in closed]
        await self._publish(mv, matrix, ids, entities, np.array([w.end_us for w in closed]),
                            [w.start_us for w in closed], np.array([w.count for w in closed]), ids, started)

    async def _matrix(self, mv: ModelVersion, given: Mapping[str, np.ndarray], entities: list[str]) -> np.ndarray:
        """The model's input matrix: given columns first, then each entity's online features; NaN where
        neither has a value (the row is skipped)."""
        matrix = given_matrix(mv, given, len(entities))
        rows, wanted = lacking(matrix, entities)
        if len(rows) and mv.feature_set:
            online = await read_online(self._hot_store, self._warehouse, self._features.get(mv.feature_set), wanted)
            fill_online(matrix, mv, rows, entities, online)
        return matrix

    async def _publish(self, mv: ModelVersion, matrix: np.ndarray, ids: list[str], entities: list[str],
                       times_us: np.ndarray, window_starts: list[int] | None, counts: np.ndarray,
                       source_keys: list[str], started: float, event_ids: list[str] | None = None) -> None:
        """event_ids: of per-event predictions, logged so that each label finds the prediction it is for."""
        complete = ~np.isnan(matrix).any(axis=1)
        if not complete.all():
            await self._skip_incomplete(mv, matrix, np.flatnonzero(~complete), entities, source_keys)
        keep = np.flatnonzero(complete).tolist()
        if not keep:
            return

        async def publish(scored: Scored) -> None:
            now_us = int(time.time() * 1e6)
            records = [PredictionRecord(ids[i], scored.mv.model, scored.mv.version, entities[i], float(score),
                                        int(times_us[i]), now_us, None if window_starts is None else window_starts[i],
                                        int(counts[i]))
                       for i, score in zip(keep, scored.scores.tolist(), strict=True)]
            await self._bus.publish_many(self._settings.predictions_topic,
                                         [(r.entity_id.encode(), r.to_json()) for r in records])
            self._published.inc(len(records))
            for r in records:
                self._lag.observe(max(now_us - r.event_time_us, 0) / 1e6)

        logged = Logged(pa.array([ids[i] for i in keep], pa.string()), pa.array([entities[i] for i in keep],
                                                                                 pa.string()),
                        None if event_ids is None else pa.array([event_ids[i] for i in keep], pa.string()), started)
        await self._scorer.score(self.spec.model, matrix[keep], version=mv.version, logged=logged, deliver=publish)

    async def _skip_incomplete(self, mv: ModelVersion, matrix: np.ndarray, rows: np.ndarray, entities: list[str],
                               source_keys: list[str]) -> None:
        """Rows the model cannot take: a dead letter each, naming the first missing input."""
        self._metrics.stream_skipped.labels(self.spec.model, "missing_feature").inc(len(rows))
        letters = []
        for i in rows.tolist():
            missing = mv.feature_names[int(np.flatnonzero(np.isnan(matrix[i]))[0])]
            reason = (f"missing_feature: {mv.model} v{mv.version} needs {missing!r}; neither the "
                      f"{'window' if self._windows is not None else 'event'} nor the online features of "
                      f"{entities[i]!r} have it")
            letters.append((source_keys[i], DeadLetter(i, entities[i].encode(), reason)))
        table = dead_letter_table(letters, f"stream:{self.spec.model}", self.spec.feature_set, dt.datetime.now(dt.UTC))
        await self._warehouse.write(ArrowWrite("dead_letters", table, mode="insert_ignore", key=("source_key",)))
        log.warning("stream_rows_skipped", model=self.spec.model, rows=len(rows), first=letters[0][1].reason)
