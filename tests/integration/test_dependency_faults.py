"""Dependencies failing under load, with counts in the assertions: the artifact store unreachable (Azurite
stopped) while clients predict and a promotion is asked for; Redis stopped under prediction load; the broker
stopped under ingest load."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplat.backends.bus.kafka import KafkaBus
from mlplat.daemon import Daemon
from mlplat.errors import BackendUnavailable
from tests.daemons import daemon_settings, readyz, wait_ready
from tests.models import FEATURES, logistic_bytes, tree_bytes
from tests.servers import (
    ServerProcess,
    azurite_connection_string,
    start_azurite,
    start_redis,
    start_s3,
    start_tansu,
)
from tests.waiting import until

pytestmark = pytest.mark.integration
OUTAGE_S = 15.0
ROW = {"clicks_1h": 3, "spend_1h": 10.0, "session_minutes": 5.0, "is_premium": False}


@pytest.fixture
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An Azurite of this test's own: it is stopped and started again."""
    server = start_azurite(tmp_path_factory.mktemp("azurite-faults"))
    yield server
    server.stop()


async def test_an_unreachable_artifact_store_stops_no_prediction_and_a_promotion_lands_when_it_returns(
        tmp_path: Path, own_azurite: ServerProcess, unique_name: str) -> None:
    settings = daemon_settings(tmp_path, artifacts={"url": f"azure://faults{unique_name}",
                                                    "connection_string": azurite_connection_string(
                                                        own_azurite.port)})
    daemon = Daemon(settings)
    await daemon.start()
    try:
        v1 = await daemon.registry.register("churn", tree_bytes(), "sklearn", FEATURES)
        await daemon.serving.swap_to(await daemon.registry.promote("churn", v1.version))
        v2 = await daemon.registry.register("churn", logistic_bytes(), "sklearn", FEATURES)
        answered: list[int] = []
        failed: list[Exception] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    answered.append((await daemon.serving.predict("churn", ROW)).version)
                except Exception as e:  # every failure is counted, whatever it is
                    failed.append(e)
                await asyncio.sleep(0.002)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.to_thread(own_azurite.stop)
        promoted = await daemon.registry.promote("churn", v2.version)  # recorded; serving must wait for it
        assert await daemon.serving.swap_to(promoted) is False
        await asyncio.sleep(2.0)
        assert daemon.serving.served_models()["churn"].version == 1  # the loaded version goes on serving
        waits = daemon.metrics.model_load_failures.labels("churn")._value.get()
        assert 1 <= waits <= 4  # retried with backoff, not hammered every reconcile (0.5 s here)

        await asyncio.to_thread(own_azurite.start)
        await until(lambda: daemon.serving.served_models()["churn"].version == 2, "v2 served once the store is back",
                    limit_s=90)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        assert failed == [] and len(answered) > 200
        assert answered[0] == 1 and answered[-1] == 2
    finally:
        await daemon.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path_factory.mktemp("redis-faults"))
    yield server
    server.stop()


async def test_redis_stopped_under_load_fails_no_prediction_and_the_daemon_reconnects(
        tmp_path: Path, own_redis: ServerProcess) -> None:
    """Requests carrying their features and requests naming an entity (online features from the hot store,
    else the warehouse) keep succeeding while Redis is down; readiness reports it, and comes back by itself."""
    daemon = Daemon(daemon_settings(tmp_path, hot_store={"url": f"redis://127.0.0.1:{own_redis.port}/0"},
                                    supervisor={"health_interval_s": 0.2}))
    await daemon.start()
    try:
        events = tmp_path / "users.ndjson"
        events.write_text("\n".join(
            f'{{"event_id": "u{i}", "user_id": "user_{i}", "event_time": "2026-06-01T00:00:00Z", "clicks_1h": {i}, '
            f'"spend_1h": 1.5, "session_minutes": 3.0, "country": "de", "is_premium": false}}' for i in range(20)))
        await daemon.batch.ingest_file(events, "user_activity", upload_id="users")
        v1 = await daemon.registry.register("churn", tree_bytes(), "sklearn", FEATURES, feature_set="user_activity")
        await daemon.serving.swap_to(await daemon.registry.promote("churn", v1.version))
        answered = {"features": 0, "entity": 0}
        failed: list[Exception] = []
        stop = asyncio.Event()

        async def client(by_entity: bool) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if by_entity:
                        await daemon.serving.predict("churn", {}, entity_id=f"user_{i % 20}")
                    else:
                        await daemon.serving.predict("churn", ROW)
                    answered["entity" if by_entity else "features"] += 1
                except Exception as e:  # every failure is counted, whatever it is
                    failed.append(e)
                await asyncio.sleep(0.002)

        clients = [asyncio.create_task(client(by_entity)) for by_entity in (False, True, False, True)]
        await asyncio.sleep(0.5)
        before = dict(answered)
        await asyncio.to_thread(own_redis.stop)
        await until(lambda: not daemon.readiness.ready, "readiness reports the lost hot store", limit_s=20)
        await asyncio.sleep(2.0)
        during = {k: answered[k] - before[k] for k in answered}
        await asyncio.to_thread(own_redis.start)
        await until(lambda: daemon.readiness.ready, "readiness back by itself", limit_s=60)
        after = dict(answered)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        assert failed == [], failed[:3]
        assert during["features"] > 50 and during["entity"] > 50  # both kinds kept being answered
        assert answered["entity"] > after["entity"]
    finally:
        await daemon.stop()


@pytest.fixture
def lasting_tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Tansu of this test's own that keeps its log in S3 (moto): stopped and started again, it still has
    its topics, records and committed offsets, as a Kafka broker with its disk does."""
    workdir = tmp_path_factory.mktemp("tansu-s3")
    s3 = start_s3(workdir)
    try:
        broker = start_tansu(workdir, s3=s3)
        yield broker
        broker.stop()
    finally:
        s3.stop()


def activity(i: int) -> tuple[bytes, bytes]:
    user = f"user_{i % 50}"
    event = {"event_id": f"b{i}", "user_id": user, "event_time": f"2026-06-01T00:00:{i % 60:02d}Z",
             "clicks_1h": i, "spend_1h": 1.5, "session_minutes": 3.0, "country": "de", "is_premium": False}
    return user.encode(), json.dumps(event).encode()


@pytest.mark.timeout(300)
async def test_a_broker_stopped_under_ingest_load_pauses_ingest_reports_it_and_loses_nothing(
        tmp_path: Path, lasting_tansu: ServerProcess, redis_url: str, unique_name: str) -> None:
    """Events keep coming (the producer retries what the broker did not acknowledge) while the broker stops
    for a while and starts again: ingest pauses, /readyz says why, ingest resumes by itself, and every
    acknowledged event is in the warehouse exactly once."""
    url = f"kafka://127.0.0.1:{lasting_tansu.port}"
    daemon = Daemon(daemon_settings(
        tmp_path, bus={"url": url}, hot_store={"url": redis_url}, supervisor={"health_interval_s": 0.5},
        ingest={"consumer_group": f"faults-{unique_name}", "dead_letter_topic": f"dlq-{unique_name}",
                "batch_size": 200, "batch_wait_ms": 50}))
    await daemon.start()
    producer = KafkaBus(url)
    await producer.connect()
    acked: set[str] = set()
    attempted: set[str] = set()
    refused = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal refused
        i = 0
        while not stop.is_set():
            chunk = [activity(j) for j in range(i, i + 40)]
            ids = {f"b{j}" for j in range(i, i + 40)}
            attempted.update(ids)
            try:
                await producer.publish_many("mlplat.events.user_activity", chunk)
            except BackendUnavailable:
                refused += 1  # not acknowledged: the same events again (a copy may have landed: ids dedupe)
                await asyncio.sleep(0.5)
                continue
            acked.update(ids)
            i += 40
            await asyncio.sleep(0.05)

    async def stored() -> set[str]:  # a second copy of an id cannot be stored: the table is keyed by event_id
        return set((await daemon.warehouse.read("SELECT event_id FROM fs_user_activity")).column(0).to_pylist())

    async def all_acknowledged_stored() -> bool:
        return acked <= await stored()

    producing = asyncio.create_task(produce())
    try:
        await until(lambda: len(acked) >= 400, "events produced", limit_s=30)
        assert (await readyz(daemon))[0] == 200
        await asyncio.to_thread(lasting_tansu.stop)
        report: Any = await wait_ready(daemon, False, limit_s=10)
        assert not report["checks"]["backend:bus"]["ok"] and url in report["checks"]["backend:bus"]["reason"]
        await asyncio.sleep(4.0)
        paused_at = await stored()
        await asyncio.sleep(OUTAGE_S - 4.0)  # longer than a publish's deadline: the producer is refused too
        assert await stored() == paused_at  # ingest paused: nothing can be read
        await asyncio.to_thread(lasting_tansu.start)
        await until(lambda: len(acked) >= len(paused_at) + 800, "producing again", limit_s=60)
        stop.set()
        await producing
        await until(all_acknowledged_stored, "every acknowledged event stored", limit_s=120, every_s=0.5)
        assert await stored() <= attempted  # nothing invented
        assert refused > 0  # the outage was real for the producer too
        assert (await readyz(daemon))[0] == 200
        assert daemon.supervisor.gave_up == set()
        dead = await daemon.warehouse.read("SELECT source_key, reason, payload FROM dead_letters LIMIT 5")
        assert dead.num_rows == 0, dead.to_pylist()
    finally:
        stop.set()
        await producing
        await producer.aclose()
        await daemon.stop()
