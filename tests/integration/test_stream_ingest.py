"""Streaming ingest end to end, on the embedded backends and on a real broker and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlplat.backends.bus import EventBus, TopicPartition, open_bus
from mlplat.backends.hotstore import HotStore, open_hot_store
from mlplat.compute.balancer import Balancer
from mlplat.config import BalancerSettings, IngestSettings, WarehouseSettings
from mlplat.errors import BackendUnavailable
from mlplat.features.definitions import FeatureCatalog, catalog_from_dict
from mlplat.features.online import read_online
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.stream import StreamIngest
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse

CATALOG: dict[str, Any] = {
    "entities": {"user": {"key": "user_id"}},
    "feature_sets": {"activity": {"entity": "user", "features": [
        {"name": "clicks", "type": "int", "min": 0},
        {"name": "spend", "type": "float", "nullable": False},
        {"name": "country", "type": "string", "allowed": ["de", "fr"]},
    ]}},
}


@dataclass
class Harness:
    bus: EventBus
    hot: HotStore
    warehouse: Warehouse
    registry: FeatureRegistry
    balancer: Balancer
    metrics: Metrics
    settings: IngestSettings

    def ingest(self) -> StreamIngest:
        return StreamIngest(self.settings, self.bus, self.hot, self.warehouse, self.registry, self.balancer,
                            self.metrics)

    async def count(self, sql: str) -> int:
        return int((await self.warehouse.read(sql)).column(0)[0].as_py())


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> AsyncIterator[Harness]:
    if request.param == "memory":
        bus, hot = open_bus("memory://"), open_hot_store("memory://")
    else:
        bus = open_bus(request.getfixturevalue("kafka_url"))
        hot = open_hot_store(request.getfixturevalue("redis_url"))
    await bus.connect()
    await hot.connect()
    metrics = Metrics()
    warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{tmp_path / 'w.duckdb'}", cache_enabled=False), metrics)
    await warehouse.start()
    balancer = Balancer(BalancerSettings(max_python_workers=1, spare_workers=0), metrics)
    await balancer.start()
    catalog: FeatureCatalog = catalog_from_dict(
        {**CATALOG, "feature_sets": {f"activity_{unique_name}": CATALOG["feature_sets"]["activity"]}}
    )
    registry = FeatureRegistry(warehouse, hot)
    await registry.load(catalog)
    settings = IngestSettings(consumer_group=f"ingest-{unique_name}", partitions=2, batch_size=500,
                              batch_wait_ms=100, dead_letter_topic=f"dlq-{unique_name}")
    yield Harness(bus, hot, warehouse, registry, balancer, metrics, settings)
    await balancer.stop(drain_s=2)
    await warehouse.stop()
    await bus.aclose()
    await hot.aclose()


def event(i: int, user: str, **features: object) -> bytes:
    return json.dumps({"event_id": f"e{i}", "user_id": user, "event_time": 1_700_000_000 + i, **features}).encode()


GOOD = [event(i, f"u{i % 5}", clicks=i, spend=float(i), country="de") for i in range(40)]
BAD = [
    b"{not json", event(100, "u1", spend=None), event(101, "u1", spend=1.0, clicks=-1),
    event(102, "u1", spend=1.0, country="xx"), event(103, "u1", spend="lots"), json.dumps([1, 2]).encode(),
    json.dumps({"user_id": "u1", "event_time": 1, "spend": 1.0}).encode(),
]


async def caught_up(h: Harness, ingest: StreamIngest, topic: str, limit_s: float = 60) -> None:
    """Wait until every partition's committed offset reaches the end of the log (ingest runs elsewhere)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    tps = [TopicPartition(topic, p) for p in range(h.settings.partitions)]
    while True:
        ends = await h.bus.end_offsets(tps)
        assert ingest._consumer is not None
        committed = [await ingest._consumer.committed(tp) or 0 for tp in tps]
        if all(c >= ends[tp] for c, tp in zip(committed, tps, strict=True)):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"ingest did not catch up: committed {committed}, ends {ends}")
        await asyncio.sleep(0.1)


async def run_until_caught_up(h: Harness, ingest: StreamIngest, topic: str, limit_s: float = 60) -> None:
    """Run the ingest loop until every partition's committed offset reaches the end of the log."""
    task = asyncio.create_task(ingest.run())
    try:
        await caught_up(h, ingest, topic, limit_s)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def good_events_stored_once(h: Harness) -> None:
    """Exactly the valid events, each once (the table is keyed by event_id): none lost, none extra."""
    fs = next(iter(h.registry.feature_sets.values()))
    stored = (await h.warehouse.read(f'SELECT event_id FROM "{fs.table}"')).column(0).to_pylist()
    assert sorted(stored) == sorted(json.loads(e)["event_id"] for e in GOOD)


async def publish(h: Harness, payloads: list[bytes]) -> str:
    fs = next(iter(h.registry.feature_sets.values()))
    await h.bus.create_topic(fs.topic, partitions=h.settings.partitions)
    for p in payloads:  # one by one: keyed by user so each user's events keep their order
        try:
            user = json.loads(p).get("user_id", "x")
        except (ValueError, AttributeError):
            user = "x"
        await h.bus.publish(fs.topic, p, key=str(user).encode())
    return fs.topic


async def test_good_events_land_and_bad_ones_become_dead_letters(harness: Harness) -> None:
    """Every valid event is in the warehouse once; every invalid one is a dead letter with its reason."""
    h = harness
    topic = await publish(h, GOOD + BAD)
    ingest = h.ingest()
    await ingest.start()
    try:
        await run_until_caught_up(h, ingest, topic)
    finally:
        await ingest.stop()
    await good_events_stored_once(h)
    fs = next(iter(h.registry.feature_sets.values()))
    reasons = (await h.warehouse.read("SELECT reason_code FROM dead_letters ORDER BY reason_code")).column(0)
    assert sorted(reasons.to_pylist()) == sorted(
        ["invalid_json", "null_not_allowed", "out_of_range", "not_allowed", "wrong_type", "not_an_object",
         "missing_field"])
    online = await read_online(h.hot, h.warehouse, fs, ["u0", "u4", "nobody"])
    assert online["u0"] == {"clicks": 35, "spend": 35.0, "country": "de"}  # the newest of u0's events
    assert online["u4"] == {"clicks": 39, "spend": 39.0, "country": "de"}
    assert online["nobody"] is None
    dlq = h.bus.consumer([h.settings.dead_letter_topic], group="dlq-reader")
    await dlq.start()
    seen = 0
    deadline = asyncio.get_running_loop().time() + 30
    while seen < len(BAD) and asyncio.get_running_loop().time() < deadline:
        for msgs in (await dlq.poll(max_records=100, timeout_s=0.5)).values():
            seen += len(msgs)
    await dlq.stop()
    assert seen == len(BAD)


async def test_a_crash_before_the_offset_commit_duplicates_nothing(harness: Harness) -> None:
    """Warehouse committed but offsets not: the replay adds no row and no dead letter (exactly-once effect)."""
    h = harness
    topic = await publish(h, GOOD + BAD)
    crashing = h.ingest()
    await crashing.start()
    assert crashing._consumer is not None

    async def crash(_: object) -> None:
        raise RuntimeError("simulated crash between warehouse commit and offset commit")

    crashing._consumer.commit = crash  # type: ignore[method-assign,assignment]
    batch = await crashing._collect()
    while sum(len(v) for v in batch.values()) < len(GOOD) + len(BAD):
        more = await crashing._collect()
        for tp, msgs in more.items():
            batch.setdefault(tp, []).extend(msgs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await crashing.process(batch)
    await crashing.stop()
    fs = next(iter(h.registry.feature_sets.values()))
    assert await h.count(f'SELECT count(*) FROM "{fs.table}"') == len(GOOD)

    recovered = h.ingest()
    await recovered.start()
    try:
        await run_until_caught_up(h, recovered, topic)
    finally:
        await recovered.stop()
    assert await h.count(f'SELECT count(*) FROM "{fs.table}"') == len(GOOD)
    assert await h.count("SELECT count(*) FROM dead_letters") == len(BAD)


async def test_an_older_event_never_replaces_a_newer_online_value(harness: Harness) -> None:
    """Out-of-order arrival: the hot store keeps the value with the latest event time."""
    h = harness
    late = json.dumps({"event_id": "late", "user_id": "u9", "event_time": 1_600_000_000, "spend": 1.0}).encode()
    new = json.dumps({"event_id": "new", "user_id": "u9", "event_time": 1_700_000_000, "spend": 2.0}).encode()
    topic = await publish(h, [new])
    ingest = h.ingest()
    await ingest.start()
    try:
        await run_until_caught_up(h, ingest, topic)
        await publish(h, [late])
        await run_until_caught_up(h, ingest, topic)
    finally:
        await ingest.stop()
    fs = next(iter(h.registry.feature_sets.values()))
    assert (await read_online(h.hot, h.warehouse, fs, ["u9"]))["u9"] == {"clicks": None, "spend": 2.0,
                                                                          "country": None}


async def test_a_lagging_warehouse_pauses_consumption(harness: Harness) -> None:
    """While the writer is stuck, ingest holds the batch it writes and one read ahead, and reads no more;
    when the writer frees, everything lands."""
    h = harness
    fs = next(iter(h.registry.feature_sets.values()))
    many = [event(1000 + i, f"u{i % 7}", spend=1.0) for i in range(h.settings.batch_size * 4)]
    topic = await publish(h, many)
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()
    blocker = asyncio.ensure_future(h.warehouse.writer.on_writer_thread(
        lambda _: asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()))
    ingest = h.ingest()
    await ingest.start()
    assert ingest._consumer is not None
    polled = 0
    original = ingest._consumer.poll

    async def counting_poll(**kwargs: Any) -> Any:
        nonlocal polled
        result = await original(**kwargs)
        polled += sum(len(m) for m in result.values())
        return result

    ingest._consumer.poll = counting_poll  # type: ignore[method-assign]
    task = asyncio.create_task(ingest.run())
    try:
        await asyncio.sleep(3)
        assert h.settings.batch_size < polled <= 2 * h.settings.batch_size  # one in flight, one ahead, no more
    finally:
        gate.set()
        await blocker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ingest.stop()  # cancelled mid-batch, as at shutdown: what it held is redelivered
    restarted = h.ingest()
    await restarted.start()
    try:
        await run_until_caught_up(h, restarted, topic)
    finally:
        await restarted.stop()
    assert await h.count(f'SELECT count(*) FROM "{fs.table}"') == len(many)


async def test_a_failing_disk_is_reported_commits_no_offset_and_loses_nothing(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The warehouse cannot write (injected at the DuckDB connection: disk full): every failed group is
    logged as an error, no offset is committed while it lasts, and once the disk is back every event lands
    exactly once."""
    import duckdb

    from mlplat.warehouse.writer import WriterConnection

    h = harness
    topic = await publish(h, GOOD)
    disk_full = True
    apply = WriterConnection.apply

    def failing_apply(self: WriterConnection, commands: Any) -> list[int]:
        if disk_full:
            raise duckdb.IOException('IO Error: Could not write file "w.duckdb": No space left on device')
        return apply(self, commands)

    monkeypatch.setattr(WriterConnection, "apply", failing_apply)
    ingest = h.ingest()
    await ingest.start()
    try:
        task = asyncio.create_task(ingest.run())
        tps = [TopicPartition(topic, p) for p in range(h.settings.partitions)]
        await asyncio.sleep(3.0)
        assert ingest._consumer is not None
        assert [await ingest._consumer.committed(tp) or 0 for tp in tps] == [0] * len(tps)  # nothing committed
        assert h.metrics.warehouse_commits.labels("failed")._value.get() >= 2
        disk_full = False  # the disk is back: the same loop, backing off, takes the same events again
        try:
            await caught_up(h, ingest, topic)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await ingest.stop()
    await good_events_stored_once(h)
    logged = capsys.readouterr().out
    assert "write_failed" in logged and "No space left on device" in logged and "ingest_batch_failed" in logged


async def test_a_broker_outage_in_the_middle_of_a_batch_is_waited_out(
        harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """The broker goes away between a poll and its commit, and stays away for the polls, commits and the
    rewind after them (injected at the consumer): the ingest loop never ends, and once the broker answers
    again every event lands exactly once. Before, a failed rewind ended run() and a failed restart left
    ingest idle for good."""
    h = harness
    topic = await publish(h, GOOD)
    ingest = h.ingest()
    await ingest.start()
    consumer = ingest._consumer
    assert consumer is not None
    down = {"poll": 3, "commit": 2, "seek_to_committed": 4}  # failures left, per call

    def flaky(name: str) -> Any:
        call = getattr(consumer, name)

        async def maybe_down(*args: Any, **kwargs: Any) -> Any:
            if down[name] and (name != "poll" or not down["commit"]):  # the first failure is a commit
                down[name] -= 1
                raise BackendUnavailable(f"bus {h.bus.url} unreachable: {name} failed (injected)")
            return await call(*args, **kwargs)

        return maybe_down

    for name in down:
        setattr(consumer, name, flaky(name))
    try:
        await run_until_caught_up(h, ingest, topic)  # cancelled at the end: a loop the outage ended raises here
    finally:
        await ingest.stop()
    assert down == {"poll": 0, "commit": 0, "seek_to_committed": 0}
    await good_events_stored_once(h)
    logged = capsys.readouterr().out
    assert "bus_rewind_waiting" in logged and "(injected)" in logged
