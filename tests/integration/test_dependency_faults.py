"""Dependencies failing under load, with counts in the assertions: the artifact store unreachable (Azurite
stopped) while clients predict and a promotion is asked for; Redis stopped under prediction load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplat.daemon import Daemon
from tests.integration.test_serving import daemon_settings
from tests.models import FEATURES, logistic_bytes, tree_bytes
from tests.servers import ServerProcess, azurite_connection_string, start_azurite, start_redis
from tests.waiting import until

pytestmark = pytest.mark.integration
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
