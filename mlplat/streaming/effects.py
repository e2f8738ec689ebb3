"""What an action does: publish an event, call a webhook, or write a row. Each says whether a failure is
worth retrying (Transient) or not (Permanent), and carries the idempotency key so that the target can
recognise a repeat (header `Idempotency-Key` for webhooks and published events; the table's primary key)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import asdict
from typing import Protocol

import aiohttp
import orjson
import pyarrow as pa

from mlplat.backends.bus import EventBus
from mlplat.errors import BackendError, MlplatError
from mlplat.streaming.definitions import ActionRule
from mlplat.streaming.records import PredictionRecord
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import ArrowWrite

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
SYSTEM_TABLES = frozenset({"audit_log", "model_specs", "feature_sets", "dead_letters", "model_versions",
                           "predictions", "action_log", "action_dead_letters", "schema_migrations",
                           "warehouse_meta"})
_TS = pa.timestamp("us", tz="UTC")
ROW_SCHEMA = pa.schema([
    ("idempotency_key", pa.string()), ("action", pa.string()), ("prediction_id", pa.string()),
    ("model", pa.string()), ("version", pa.int32()), ("entity_id", pa.string()), ("score", pa.float64()),
    ("event_time", _TS), ("applied_at", _TS),
])


class TransientActionError(MlplatError):
    """Worth another attempt (connection refused, timeout, HTTP 5xx/429, broker unavailable)."""


class PermanentActionError(MlplatError):
    """Another attempt would fail the same way (HTTP 4xx, a table that does not fit)."""


class Effect(Protocol):
    async def start(self) -> None: ...
    async def apply(self, record: PredictionRecord, key: str) -> None: ...
    async def close(self) -> None: ...


def payload(rule: ActionRule, record: PredictionRecord, key: str) -> bytes:
    return orjson.dumps({"action": rule.name, "idempotency_key": key, "prediction": asdict(record)})


class PublishEffect:
    def __init__(self, rule: ActionRule, bus: EventBus, partitions: int) -> None:
        self._rule = rule
        self._bus = bus
        self._partitions = partitions

    async def start(self) -> None:
        await self._bus.create_topic(self._rule.target, partitions=self._partitions)

    async def apply(self, record: PredictionRecord, key: str) -> None:
        try:
            await self._bus.publish(self._rule.target, payload(self._rule, record, key),
                                    key=record.entity_id.encode(), headers=[("idempotency-key", key.encode())])
        except BackendError as e:
            raise TransientActionError(f"publish to {self._rule.target!r}: {e}") from None

    async def close(self) -> None:
        return None


class WebhookEffect:
    def __init__(self, rule: ActionRule, timeout_s: float) -> None:
        self._rule = rule
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def apply(self, record: PredictionRecord, key: str) -> None:
        assert self._session is not None
        try:
            async with self._session.post(self._rule.target, data=payload(self._rule, record, key),
                                          headers={"Content-Type": "application/json", "Idempotency-Key": key}
                                          ) as response:
                if response.status < 300:
                    return
                body = (await response.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError) as e:
            raise TransientActionError(f"POST {self._rule.target}: {type(e).__name__}: {e}") from None
        failure = f"POST {self._rule.target}: HTTP {response.status} {body!r}"
        if response.status in RETRYABLE_STATUS:
            raise TransientActionError(failure)
        raise PermanentActionError(failure)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TableEffect:
    """Rows in a warehouse table of its own, keyed by the idempotency key (a repeat is ignored)."""

    def __init__(self, rule: ActionRule, warehouse: Warehouse) -> None:
        self._rule = rule
        self._warehouse = warehouse

    async def start(self) -> None:
        await self._warehouse.execute(
            f'CREATE TABLE IF NOT EXISTS "{self._rule.target}" (idempotency_key VARCHAR PRIMARY KEY, '
            "action VARCHAR NOT NULL, prediction_id VARCHAR NOT NULL, model VARCHAR NOT NULL, "
            "version INTEGER NOT NULL, entity_id VARCHAR NOT NULL, score DOUBLE NOT NULL, "
            "event_time TIMESTAMPTZ NOT NULL, applied_at TIMESTAMPTZ NOT NULL)", tables=(self._rule.target,))

    async def apply(self, record: PredictionRecord, key: str) -> None:
        now = dt.datetime.now(dt.UTC)
        row = pa.table({
            "idempotency_key": [key], "action": [self._rule.name], "prediction_id": [record.id],
            "model": [record.model], "version": [record.version], "entity_id": [record.entity_id],
            "score": [record.score], "event_time": [dt.datetime.fromtimestamp(record.event_time_us / 1e6, dt.UTC)],
            "applied_at": [now],
        }, schema=ROW_SCHEMA)
        try:
            await self._warehouse.write(ArrowWrite(self._rule.target, row, mode="insert_ignore",
                                                   key=("idempotency_key",)))
        except MlplatError as e:
            raise TransientActionError(f"write to table {self._rule.target!r}: {e}") from None

    async def close(self) -> None:
        return None


def effect_for(rule: ActionRule, bus: EventBus, warehouse: Warehouse, *, partitions: int,
               timeout_s: float) -> Effect:
    if rule.kind == "publish":
        return PublishEffect(rule, bus, partitions)
    if rule.kind == "webhook":
        return WebhookEffect(rule, timeout_s)
    return TableEffect(rule, warehouse)


async def close_all(effects: list[Effect]) -> None:
    await asyncio.gather(*(e.close() for e in effects), return_exceptions=True)
