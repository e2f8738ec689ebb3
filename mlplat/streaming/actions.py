"""The action executor: a consumer of the predictions topic, separate from inference, that applies the action
rules to each prediction.

- Idempotency: every (action, prediction) has the key `<action>:<prediction id>`. Keys already finished are
  in `action_log` and skipped when a prediction is delivered again (at-least-once bus, replays).
- Retries: transient failures are retried with exponential backoff and full jitter (tenacity), up to
  `actions.max_attempts`; then, or at once for a permanent failure, the action goes to
  `action_dead_letters` and the dead-letter topic with its error. Either way the batch moves on.
- Order: one entity's actions run one after another, in prediction order; entities run in parallel up to
  `actions.concurrency`. Offsets are committed after the whole batch finished and was logged.
- Back-pressure: a slow target holds this consumer only; `mlplat_actions_pending` and the consumer lag of
  the predictions topic show it, and inference goes on publishing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass

import orjson
import pyarrow as pa
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from mlplat.backends.bus import BusConsumer, EventBus, Message, TopicPartition, poll_batch, rewind
from mlplat.config import ActionSettings, StreamingSettings
from mlplat.errors import ConfigError, MlplatError
from mlplat.ingest.sink import gather_all
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics
from mlplat.streaming.definitions import ActionRule, Condition, StreamingConfig
from mlplat.streaming.effects import (
    SYSTEM_TABLES,
    Effect,
    PermanentActionError,
    TransientActionError,
    close_all,
    effect_for,
)
from mlplat.streaming.records import PredictionRecord
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

log = get_logger("actions")
_TS = pa.timestamp("us", tz="UTC")
LOG_SCHEMA = pa.schema([("idempotency_key", pa.string()), ("action", pa.string()), ("prediction_id", pa.string()),
                        ("outcome", pa.string()), ("attempts", pa.int32()), ("done_at", _TS)])
DEAD_SCHEMA = pa.schema([("idempotency_key", pa.string()), ("action", pa.string()), ("model", pa.string()),
                         ("entity_id", pa.string()), ("prediction", pa.string()), ("error", pa.string()),
                         ("attempts", pa.int32()), ("failed_at", _TS)])


@dataclass
class _Job:
    rule: ActionRule
    record: PredictionRecord
    key: str
    outcome: str = ""
    attempts: int = 0
    error: str = ""


class ActionExecutor:
    name = "actions"

    def __init__(self, settings: ActionSettings, streaming: StreamingSettings, config: StreamingConfig,
                 bus: EventBus, warehouse: Warehouse, metrics: Metrics) -> None:
        self._settings = settings
        self._streaming = streaming
        self._bus = bus
        self._warehouse = warehouse
        self._metrics = metrics
        self._rules: dict[str, list[tuple[ActionRule, Condition]]] = defaultdict(list)
        for rule in config.actions:
            if rule.kind == "table" and rule.target in SYSTEM_TABLES:
                raise ConfigError(f"action {rule.name!r}: table {rule.target!r} is one of mlplat's own")
            self._rules[rule.model].append((rule, rule.condition))
        self._effects: dict[str, Effect] = {
            rule.name: effect_for(rule, bus, warehouse, partitions=streaming.partitions, timeout_s=settings.timeout_s)
            for rule in config.actions}
        self._consumer: BusConsumer | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def start(self) -> None:
        if not self._effects:
            return
        await self._bus.create_topic(self._streaming.predictions_topic, partitions=self._streaming.partitions)
        await self._bus.create_topic(self._settings.dead_letter_topic, partitions=1)
        for effect in self._effects.values():
            await effect.start()
        self._consumer = self._bus.consumer([self._streaming.predictions_topic], group=self._settings.consumer_group)
        await self._consumer.start()
        log.info("actions_started", actions=sorted(self._effects), group=self._settings.consumer_group)

    async def run(self) -> None:
        if self._consumer is None:
            await asyncio.Event().wait()
        assert self._consumer is not None
        backoff = 0.2
        while True:
            try:
                batch = await poll_batch(self._consumer, max_records=self._settings.batch_size, wait_s=0.05)
                if not batch:
                    continue
                await self.process(batch)
            except (MlplatError, OSError) as e:  # the poll, the log or the commit failed: take the same batch again
                log.error("actions_batch_failed", error=str(e), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                await rewind(self._consumer, self.name)
            else:
                backoff = 0.2

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        await close_all(list(self._effects.values()))

    async def process(self, batch: dict[TopicPartition, list[Message]]) -> None:
        assert self._consumer is not None
        jobs = self._jobs([m for msgs in batch.values() for m in msgs])
        done = await self._finished([j.key for j in jobs])
        for job in jobs:
            if job.key in done:
                self._metrics.actions.labels(job.rule.name, "duplicate").inc()
        todo = [j for j in jobs if j.key not in done]
        by_entity: dict[str, list[_Job]] = defaultdict(list)
        for job in todo:
            by_entity[job.record.entity_id].append(job)
        self._metrics.actions_pending.inc(len(todo))
        try:
            await asyncio.gather(*(self._in_order(entity_jobs) for entity_jobs in by_entity.values()))
        finally:
            self._metrics.actions_pending.dec(len(todo))
        await self._record(todo)
        await self._consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})

    def _jobs(self, messages: list[Message]) -> list[_Job]:
        jobs: list[_Job] = []
        seen: set[str] = set()
        for message in messages:
            try:
                record = PredictionRecord.from_json(message.value)
            except ValueError as e:
                log.warning("action_input_skipped", topic=message.topic, partition=message.partition,
                            offset=message.offset, error=str(e))
                continue
            for rule, condition in self._rules.get(record.model, ()):
                key = f"{rule.name}:{record.id}"
                if condition(record.score) and key not in seen:
                    seen.add(key)
                    jobs.append(_Job(rule, record, key))
        return jobs

    async def _finished(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        table = await self._warehouse.read(
            "SELECT idempotency_key FROM action_log WHERE idempotency_key IN (SELECT unnest(?::VARCHAR[]))", [keys])
        return set(table["idempotency_key"].to_pylist())

    async def _in_order(self, jobs: list[_Job]) -> None:
        for job in jobs:
            async with self._slots:
                await self._apply(job)

    async def _apply(self, job: _Job) -> None:
        effect = self._effects[job.rule.name]
        retries = self._metrics.action_retries.labels(job.rule.name)

        def count_retry(state: RetryCallState) -> None:
            retries.inc()
            outcome = state.outcome
            log.info("action_retry", action=job.rule.name, key=job.key, attempt=state.attempt_number,
                     error=str(outcome.exception()) if outcome else "")

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._settings.max_attempts),
                wait=wait_random_exponential(multiplier=self._settings.backoff_s, max=self._settings.backoff_max_s),
                retry=retry_if_exception_type(TransientActionError), before_sleep=count_retry, reraise=True,
            ):
                with attempt:
                    job.attempts += 1
                    await effect.apply(job.record, job.key)
        except (TransientActionError, PermanentActionError) as e:
            job.outcome, job.error = "dead_letter", str(e)
            log.warning("action_dead_letter", action=job.rule.name, key=job.key, attempts=job.attempts, error=str(e))
        else:
            job.outcome = "ok"
        self._metrics.actions.labels(job.rule.name, job.outcome).inc()

    async def _record(self, jobs: list[_Job]) -> None:
        """Finished keys (so a replay skips them) and dead letters, then the dead-letter topic."""
        if not jobs:
            return
        now = dt.datetime.now(dt.UTC)
        logged = pa.table({
            "idempotency_key": [j.key for j in jobs], "action": [j.rule.name for j in jobs],
            "prediction_id": [j.record.id for j in jobs], "outcome": [j.outcome for j in jobs],
            "attempts": [j.attempts for j in jobs], "done_at": [now] * len(jobs)}, schema=LOG_SCHEMA)
        writes = [self._warehouse.write(ArrowWrite("action_log", logged, mode="insert_ignore",
                                                   key=("idempotency_key",)))]
        dead = [j for j in jobs if j.outcome == "dead_letter"]
        if dead:
            letters = pa.table({
                "idempotency_key": [j.key for j in dead], "action": [j.rule.name for j in dead],
                "model": [j.record.model for j in dead], "entity_id": [j.record.entity_id for j in dead],
                "prediction": [orjson.dumps(asdict(j.record)).decode() for j in dead],
                "error": [j.error for j in dead], "attempts": [j.attempts for j in dead],
                "failed_at": [now] * len(dead)}, schema=DEAD_SCHEMA)
            writes.append(self._warehouse.write(ArrowWrite("action_dead_letters", letters, mode="insert_ignore",
                                                           key=("idempotency_key",))))
        await gather_all(*writes)
        if dead:
            await self._bus.publish_many(self._settings.dead_letter_topic, [
                (j.record.entity_id.encode(), orjson.dumps({
                    "idempotency_key": j.key, "action": j.rule.name, "error": j.error, "attempts": j.attempts,
                    "prediction": asdict(j.record)})) for j in dead])
