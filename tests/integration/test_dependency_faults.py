"""Dependencies failing under load, with counts in the assertions: the artifact store unreachable (Azurite
stopped) while clients predict and a promotion is asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplat.daemon import Daemon
from tests.integration.test_serving import daemon_settings
from tests.models import FEATURES, logistic_bytes, tree_bytes
from tests.servers import ServerProcess, azurite_connection_string, start_azurite
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
