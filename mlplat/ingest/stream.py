"""Service A, streaming: events on the bus become warehouse rows, latest values and dead letters.

One loop per daemon, in a consumer group so several daemons split the partitions. A batch closes when
it holds `batch_size` events or `batch_wait_ms` passed; the next batch is read while the current one is
written, and no further (back-pressure: a lagging warehouse stops consumption). Validation runs on a
balancer thread (ingest class). Then warehouse (rows and dead letters, idempotent by event id / bus
position) and hot store (latest value per entity, newer events only) at once, then the dead-letter
topic, and only then the offset commit. Beside the stores, the accepted rows go to the validated topic of
each feature set a streaming model reads (ingest/validated.py: the models take them there and parse
nothing again). A crash anywhere before the commit replays the batch, and the replay changes nothing in
the warehouse and hot store: the effect is exactly-once (the validated topic gets the rows again, and
streaming predicts them again under the same ids). A failed warehouse write rewinds to the last commit
and retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections import Counter, defaultdict
from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.backends.bus import BusConsumer, EventBus, Message, TopicPartition, poll_batch, rewind
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Lane, Priority
from mlplat.config import IngestSettings
from mlplat.errors import MlplatError
from mlplat.features.definitions import FeatureSet
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.sink import IngestSink, gather_all
from mlplat.ingest.validated import OFFSET, chunks, key_for_partition, validated_topic
from mlplat.ingest.validation import DeadLetter, ValidatedBatch, validate_events
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse

log = get_logger("ingest")
LAG_REPORT_S = 5.0

class StreamIngest:
    name = "ingest"

    def __init__(
        self, settings: IngestSettings, bus: EventBus, hot_store: HotStore, warehouse: Warehouse,
        registry: FeatureRegistry, balancer: Balancer, metrics: Metrics, *, streamed: Collection[str] = (),
    ) -> None:
        """streamed: the feature sets streaming models read; their accepted rows go to the validated topic."""
        self._settings = settings
        self._bus = bus
        self._registry = registry
        self._streamed = frozenset(streamed)
        self._balancer = balancer
        self._metrics = metrics
        self._sink = IngestSink(warehouse, hot_store, metrics)
        self._consumer: BusConsumer | None = None
        self._topics: dict[str, FeatureSet] = {}
        self._validated: dict[str, int] = {}  # events' topic -> partitions of its validated topic

    async def start(self) -> None:
        self._topics = {fs.topic: fs for fs in self._registry.feature_sets.values()}
        if not self._topics:
            log.info("ingest_idle", reason="no feature sets registered")
            return
        for topic in self._topics:
            await self._bus.create_topic(topic, partitions=self._settings.partitions)
            if self._topics[topic].name in self._streamed:
                partitions = await self._bus.partitions_for(topic)
                await self._bus.create_topic(validated_topic(topic), partitions=partitions)
                self._validated[topic] = await self._bus.partitions_for(validated_topic(topic))
        await self._bus.create_topic(self._settings.dead_letter_topic, partitions=1)
        self._consumer = self._bus.consumer(sorted(self._topics), group=self._settings.consumer_group)
        await self._consumer.start()
        log.info("ingest_consuming", topics=sorted(self._topics), group=self._settings.consumer_group)

    async def run(self) -> None:
        """Collect the next batch while the current one is written (one batch ahead, never more)."""
        if self._consumer is None:
            await asyncio.Event().wait()
        backoff = 0.2
        next_lag_report = 0.0
        ahead = asyncio.create_task(self._collect())
        try:
            while True:
                if time.monotonic() >= next_lag_report:
                    await self._report_lag()
                    next_lag_report = time.monotonic() + LAG_REPORT_S
                try:
                    batch = await ahead
                    ahead = asyncio.create_task(self._collect())
                    if not batch:
                        continue
                    await self.process(batch)
                except (MlplatError, OSError) as e:
                    # nothing was committed (or the poll failed): drop what was read ahead, rewind, and take the
                    # same events again; a broker outage ends up here too, and ingest waits it out
                    log.error("ingest_batch_failed", error=str(e), retry_in_s=backoff)
                    await _cancel(ahead)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    assert self._consumer is not None
                    await rewind(self._consumer, self.name)
                    ahead = asyncio.create_task(self._collect())
                else:
                    backoff = 0.2
        finally:
            await _cancel(ahead)

    async def _collect(self) -> dict[TopicPartition, list[Message]]:
        assert self._consumer is not None
        return await poll_batch(self._consumer, max_records=self._settings.batch_size,
                                wait_s=self._settings.batch_wait_ms / 1000)

    async def process(self, batch: dict[TopicPartition, list[Message]]) -> None:
        started = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        by_set: dict[str, list[Message]] = defaultdict(list)
        for tp, messages in batch.items():
            by_set[tp.topic].extend(messages)
        latest: list[tuple[FeatureSet, pa.Table]] = []
        dead_out: list[tuple[str, DeadLetter]] = []
        stores = []
        for topic, messages in by_set.items():
            fs = self._registry.get(self._topics[topic].name)
            payloads = [m.value for m in messages]
            validated = await self._balancer.run(
                validate_events, fs, self._registry.key_of(fs), payloads, now, priority=Priority.INGEST,
                lane=Lane.THREAD,
            )
            letters = [(_position(messages[d.index]), d) for d in validated.dead]
            stores.append(self._sink.store(fs, validated, letters, source="stream", at=now))
            latest.append((fs, validated.rows))
            dead_out.extend(letters)
            if topic in self._validated:  # beside the stores: streaming need not wait for the warehouse
                stores.append(self._bus.publish_many(
                    validated_topic(topic), _validated_items(messages, validated, self._validated[topic])))
        await gather_all(*stores)
        await self._publish_dead_letters(dead_out)
        assert self._consumer is not None
        await self._consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        self._observe(batch, latest, started)

    async def _report_lag(self) -> None:
        """Events on the bus not yet committed by this group, per partition this member owns."""
        if self._consumer is None:
            return
        tps = sorted(self._consumer.assignment())
        if not tps:
            return
        try:
            ends = await self._bus.end_offsets(tps)
            for tp in tps:
                committed = await self._consumer.committed(tp) or 0
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(ends[tp] - committed, 0))
        except MlplatError as e:  # lag is for dashboards; never let it stop ingest
            log.debug("lag_unavailable", error=str(e))

    async def _publish_dead_letters(self, letters: list[tuple[str, DeadLetter]]) -> None:
        if not letters:
            return
        items = [
            (key.encode(), json.dumps({"source_key": key, "reason": d.reason, "event_id": d.event_id,
                                       "payload": d.payload.decode("utf-8", "replace")}).encode())
            for key, d in letters
        ]
        await self._bus.publish_many(self._settings.dead_letter_topic, items)

    def _observe(self, batch: dict[TopicPartition, list[Message]], latest: list[tuple[FeatureSet, pa.Table]],
                 started: float) -> None:
        self._metrics.ingest_batch_seconds.observe(time.monotonic() - started)
        now_us = time.time() * 1e6
        for _, rows in latest:
            if rows.num_rows:
                oldest = pc.min(rows["event_time"]).cast(pa.int64()).as_py()
                self._metrics.ingest_lag_seconds.observe(max(now_us - oldest, 0) / 1e6)
        for tp, messages in batch.items():
            self._metrics.consumer_position.labels(tp.topic, str(tp.partition)).set(messages[-1].offset + 1)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, MlplatError, OSError):
        await task


def _validated_items(messages: list[Message], validated: ValidatedBatch, partitions: int
                     ) -> list[tuple[bytes | None, bytes]]:
    """The accepted rows by source partition, with their offsets there, as validated-topic messages keyed to
    the partition of the same number."""
    left_out = {d.index for d in validated.dead} | set(validated.redelivered)
    kept = [i for i in range(len(messages)) if i not in left_out]
    rows = validated.rows.append_column(OFFSET, pa.array([messages[i].offset for i in kept], pa.int64()))
    row_partitions = np.array([messages[i].partition for i in kept], np.int64)
    invalid = Counter(messages[d.index].tp for d in validated.dead)
    redelivered = Counter(messages[i].tp for i in validated.redelivered)
    items: list[tuple[bytes | None, bytes]] = []
    for tp in dict.fromkeys(m.tp for m in messages):  # in the order read
        mine = rows.take(np.flatnonzero(row_partitions == tp.partition))
        items += [(key_for_partition(tp.partition, partitions), c.to_bytes())
                  for c in chunks(tp, mine, invalid[tp], redelivered[tp])]
    return items


def _position(message: Message) -> str:
    return f"{message.topic}:{message.partition}:{message.offset}"
