"""The daemon in-process on real servers: readiness follows its backends, and gRPC health mirrors it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlplat.config import load_settings
from mlplat.daemon import Daemon
from tests.daemons import wait_ready
from tests.servers import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def daemon(tmp_path: Path, redis_url: str, kafka_url: str, azure_connection_string: str,
                 unique_name: str) -> AsyncIterator[Daemon]:
    settings = load_settings(
        hot_store={"url": redis_url},
        bus={"url": kafka_url},
        artifacts={"url": f"azure://d{unique_name}", "connection_string": azure_connection_string},
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"},
        api={"grpc_port": 0, "http_port": 0},
        supervisor={"health_interval_s": 0.2},
    )
    d = Daemon(settings)
    await d.start()
    yield d
    await d.stop()


async def grpc_health(d: Daemon) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{d.api.port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


async def test_lost_redis_turns_readiness_false_and_recovers_by_itself(daemon: Daemon,
                                                                      redis_server: ServerProcess) -> None:
    """Redis stops: /readyz 503 naming the hot store, health NOT_SERVING; Redis returns: ready again."""
    await wait_ready(daemon, True)
    assert await grpc_health(daemon) == health_pb2.HealthCheckResponse.SERVING
    redis_server.stop()
    try:
        body = await wait_ready(daemon, False)
        checks = body["checks"]
        assert isinstance(checks, dict) and checks["backend:hot_store"]["ok"] is False
        assert "unreachable" in checks["backend:hot_store"]["reason"]
        assert await grpc_health(daemon) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert 'mlplat_backend_up{backend="hot_store"} 0.0' in daemon.metrics.render().decode()
    finally:
        redis_server.start()
    await wait_ready(daemon, True)
    assert await grpc_health(daemon) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_public_services(daemon: Daemon) -> None:
    """Server reflection is on, so grpcurl can discover mlplat.v1 services and health."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: set[str] = set()
        async for resp in stub.ServerReflectionInfo(iter([request])):
            names.update(s.name for s in resp.list_services_response.service)
    assert {"mlplat.v1.AdminService", "grpc.health.v1.Health"} <= names


async def test_query_cache_is_shared_through_redis(daemon: Daemon) -> None:
    """A repeated query on the daemon is answered from Redis, and a write invalidates it."""
    import pyarrow as pa

    await daemon.warehouse.execute("CREATE TABLE t (x INT)", tables=("t",))
    await daemon.warehouse.append("t", pa.table({"x": pa.array([1], pa.int32())}))
    assert not (await daemon.warehouse.query("SELECT sum(x) AS s FROM t")).cached
    assert (await daemon.warehouse.query("SELECT sum(x) AS s FROM t")).cached
    await daemon.warehouse.append("t", pa.table({"x": pa.array([2], pa.int32())}))
    fresh = await daemon.warehouse.query("SELECT sum(x) AS s FROM t")
    assert not fresh.cached and fresh.table.to_pylist() == [{"s": 3}]
