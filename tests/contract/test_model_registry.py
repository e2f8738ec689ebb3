"""The model registry on every hot store × artifact store: versions, stages, pointers, integrity."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlplat.backends.artifacts import ArtifactStore
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.config import BalancerSettings, WarehouseSettings
from mlplat.errors import NotFound
from mlplat.observability.metrics import Metrics
from mlplat.serving.registry import (
    PRODUCTION_KEY,
    SWAP_CHANNEL,
    InputFeature,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    fetch_verified,
    parse_inputs,
    production_from_hot_store,
)
from mlplat.warehouse.store import Warehouse
from tests.models import FEATURES, logistic_bytes, onnx_bytes, tree_bytes


@pytest.fixture
async def registry(tmp_path: Path, hot_store: HotStore, artifact_store: ArtifactStore) -> AsyncIterator[ModelRegistry]:
    metrics = Metrics()
    warehouse = Warehouse(WarehouseSettings(url=f"duckdb://{tmp_path / 'w.duckdb'}", cache_enabled=False), metrics)
    await warehouse.start()
    balancer = Balancer(BalancerSettings(max_python_workers=1, spare_workers=0), metrics)
    await balancer.start()
    await hot_store.delete(PRODUCTION_KEY)
    yield ModelRegistry(warehouse, hot_store, artifact_store, balancer)
    await balancer.stop(drain_s=1)
    await warehouse.stop()


async def test_lifecycle_register_promote_swap_archive(registry: ModelRegistry, hot_store: HotStore) -> None:
    """Versions count up from 1 as staging; promoting one archives the old production version, updates the
    hot-store pointer and announces the swap; every change is in the audit log."""
    v1 = await registry.register("churn", tree_bytes(), "sklearn", FEATURES, feature_set="user_activity")
    v2 = await registry.register("churn", onnx_bytes(), "onnx", FEATURES, reason="retrained")
    assert (v1.version, v1.stage, v2.version, v2.stage) == (1, "staging", 2, "staging")
    with pytest.raises(NotFound, match="no production version"):
        await registry.get("churn")

    async with hot_store.subscribe(SWAP_CHANNEL) as notices:
        await registry.promote("churn", 1)
        first = await anext(notices)
        await registry.promote("churn", 2, actor="automation", reason="beats v1")
        second = await anext(notices)
    assert [json.loads(first), json.loads(second)] == [{"model": "churn", "version": v} for v in (1, 2)]
    stages = {mv.version: mv.stage for mv in await registry.versions("churn")}
    assert stages == {1: "archived", 2: "production"}
    pointer = ModelVersion.from_json((await hot_store.hgetall(PRODUCTION_KEY))["churn"])
    assert (pointer.version, pointer.flavour, pointer.features) == (2, "onnx", FEATURES)

    with pytest.raises(RegistryError, match="in production"):
        await registry.archive("churn", 2)
    audit = await registry._warehouse.read("SELECT actor, action, subject FROM audit_log ORDER BY recorded_at")
    assert ("automation", "promote", "churn:2") in [tuple(r.values()) for r in audit.to_pylist()]


async def test_the_same_file_is_stored_once_and_verified_before_loading(
    registry: ModelRegistry, artifact_store: ArtifactStore
) -> None:
    """Content addressing: one artifact for two registrations; a changed artifact fails its sha256 check."""
    a = await registry.register("a", logistic_bytes(), "sklearn", FEATURES)
    b = await registry.register("b", logistic_bytes(), "sklearn", FEATURES)
    assert a.artifact_key == b.artifact_key and len(await artifact_store.list("models/")) == 1
    assert await fetch_verified(artifact_store, a) == logistic_bytes()
    await artifact_store.put(a.artifact_key, logistic_bytes()[:-10] + b"tampered!!")
    with pytest.raises(RegistryError, match="sha256"):
        await fetch_verified(artifact_store, a)


@pytest.mark.parametrize(("data", "flavour", "features", "named"), [
    (b"PK not a zip", "sklearn", FEATURES, "not a skops file"),
    (b"\x08\x01garbage", "onnx", FEATURES, "ONNX"),
    (tree_bytes(), "sklearn", FEATURES[:3], "takes 4 features but 3"),
    (tree_bytes(), "pickle", FEATURES, "flavour 'pickle'"),
    (tree_bytes(), "sklearn", (InputFeature("country", "string"),), "type 'string'"),
])
async def test_bad_registrations_are_refused_with_the_reason(
    registry: ModelRegistry, data: bytes, flavour: str, features: tuple[InputFeature, ...], named: str
) -> None:
    with pytest.raises(RegistryError, match=named):
        await registry.register("m", data, flavour, features)
    assert (await registry._warehouse.read("SELECT count(*) FROM model_versions")).column(0)[0].as_py() == 0


def test_inputs_parse_from_the_command_line_form() -> None:
    assert parse_inputs("a:int, b ,c:bool") == (InputFeature("a", "int"), InputFeature("b"), InputFeature("c", "bool"))
    with pytest.raises(RegistryError, match="named twice"):
        parse_inputs("a,a")


def test_pointers_from_newer_or_broken_writers_do_not_stop_serving() -> None:
    """A pointer with fields this version does not know still reads; one that cannot be read is skipped."""
    good = ModelVersion("a", 1, "production", "sklearn", "0" * 64, "k", FEATURES)
    newer = json.dumps({**json.loads(good.to_json()), "added_later": 1}).encode()
    pointers = production_from_hot_store({"a": newer, "b": b"{not json", "c": b'{"model": "c"}'})
    assert list(pointers) == ["a"] and pointers["a"] == good
