"""FeatureService over gRPC: registration and evolution, online lookups, point-in-time training sets."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from mlplat.api.convert import from_feature_value, from_typed, from_value
from mlplat.api.v1 import admin_pb2, admin_pb2_grpc, features_pb2, features_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from mlplat.config import load_settings
from mlplat.daemon import Daemon
from mlplat.features.online import online_key, read_online

ENTITY = json.dumps({"name": "card", "key": "card_id"})


def definition(*features: dict[str, object]) -> str:
    return json.dumps({"name": "payments", "entity": "card", "features": list(features)})


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 1, "spare_workers": 0},
        ingest={"spool_dir": str(tmp_path / "spool")},
    ))
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def channel(daemon: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.api.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> features_pb2_grpc.FeatureServiceStub:
    return features_pb2_grpc.FeatureServiceStub(channel)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def catalog_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon with config/features.toml, on the memory hot store and on a real Redis."""
    hot = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    d = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 1, "spare_workers": 0},
        ingest={"spool_dir": str(tmp_path / "spool"), "features_file": "config/features.toml"},
        hot_store={"url": hot},
    ))
    await d.start()
    yield d
    await d.stop()


async def upload(channel: grpc.aio.Channel, feature_set: str, events: list[dict[str, Any]], name: str) -> None:
    header = ingest_pb2.UploadHeader(feature_set=feature_set, upload_id=name, filename=f"{name}.ndjson")
    data = "\n".join(json.dumps(e) for e in events).encode()
    await ingest_pb2_grpc.IngestServiceStub(channel).Upload(iter([
        ingest_pb2.UploadRequest(header=header), ingest_pb2.UploadRequest(chunk=data)]))


async def test_register_evolve_and_refuse(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    """A new set is v1, adding a feature makes v2, and a breaking change is FAILED_PRECONDITION."""
    v1 = await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
        feature_set_json=definition({"name": "amount", "type": "float"}), entity_json=ENTITY))
    assert (v1.name, v1.version) == ("payments", 1)
    v2 = await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
        feature_set_json=definition({"name": "amount", "type": "float"}, {"name": "country", "type": "string"}),
        entity_json=ENTITY))
    assert v2.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
            feature_set_json=definition({"name": "amount", "type": "int"}), entity_json=ENTITY))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "changes type from float to int" in (err.value.details() or "")
    listed = await stub.ListFeatureSets(features_pb2.ListFeatureSetsRequest())
    (only,) = [json.loads(x) for x in listed.feature_sets_json]
    assert only["version"] == 2 and only["entity_key"] == "card_id"


async def test_bad_definitions_are_invalid_argument(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    """Malformed JSON or names that are not identifiers are INVALID_ARGUMENT, never stored."""
    for fs_json in ["{not json", definition({"name": "DROP TABLE x; --", "type": "int"})]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(feature_set_json=fs_json,
                                                                                 entity_json=ENTITY))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_online_and_historical_features(
    stub: features_pb2_grpc.FeatureServiceStub, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    """Uploaded events answer online lookups, and training sets take values as of each spine row."""
    await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(
        feature_set_json=definition({"name": "amount", "type": "float"}), entity_json=ENTITY))
    events = [{"event_id": "1", "card_id": "c1", "event_time": "2026-01-01T10:00:00Z", "amount": 5.0},
              {"event_id": "2", "card_id": "c1", "event_time": "2026-01-01T12:00:00Z", "amount": 7.0}]
    path = tmp_path / "e.ndjson"
    path.write_text("\n".join(json.dumps(e) for e in events))
    upload = ingest_pb2_grpc.IngestServiceStub(channel)
    header = ingest_pb2.UploadHeader(feature_set="payments", upload_id="u1", filename="e.ndjson")
    await upload.Upload(iter([ingest_pb2.UploadRequest(header=header),
                              ingest_pb2.UploadRequest(chunk=path.read_bytes())]))

    online = await stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(
        feature_set="payments", entity_ids=["c1", "nobody"]))
    found = {e.entity_id: (e.found, dict(e.features)) for e in online.entities}
    assert found == {"c1": (True, {"amount": 7.0}), "nobody": (False, {})}

    spine = []
    for ts, label in [("2026-01-01T09:00:00", 0), ("2026-01-01T11:00:00Z", 1), ("2026-01-01T12:00:00Z", 1)]:
        extra = struct_pb2.Struct()
        extra.update({"label": label})
        spine.append(features_pb2.SpineRow(entity_id="c1", timestamp=ts, extra=extra))
    columns: list[str] = []
    rows: list[list[object]] = []
    async for msg in stub.GetHistoricalFeatures(features_pb2.GetHistoricalFeaturesRequest(
            features=["payments.amount"], spine=spine)):
        columns += [c.name for c in msg.columns]
        rows += [[from_value(v) for v in r.values] for r in msg.rows]
    assert columns == ["entity_id", "timestamp", "label", "payments__amount"]
    assert [r[3] for r in rows] == [None, 5.0, 7.0]
    assert [r[2] for r in rows] == [0, 1, 1]


async def test_unknown_feature_set_lookups_are_not_found(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    """Online lookups on a missing set are NOT_FOUND; an empty entity list is INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(feature_set="ghost", entity_ids=["a"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(feature_set="ghost"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


USER_7 = {"event_id": "e7", "user_id": "u7", "event_time": "2026-01-01T10:00:00Z", "clicks_1h": 23,
          "spend_1h": 40.0, "session_minutes": None, "country": "de", "is_premium": True}


async def online(channel: grpc.aio.Channel, typed: bool) -> features_pb2.EntityFeatures:
    stub = features_pb2_grpc.FeatureServiceStub(channel)
    response: features_pb2.GetOnlineFeaturesResponse = await stub.GetOnlineFeatures(
        features_pb2.GetOnlineFeaturesRequest(feature_set="user_activity", entity_ids=["u7"], typed=typed))
    (entity,) = response.entities
    return entity


async def test_online_features_keep_their_types_in_the_hot_store_and_the_warehouse(catalog_daemon: Daemon) -> None:
    """GetOnlineFeatures answers the int feature clicks_1h as the int 23, not 23.0, from the hot store
    (memory and Redis) and from the warehouse when the hot store misses; a float stays a float, null unset."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{catalog_daemon.api.port}") as ch:
        await upload(ch, "user_activity", [USER_7], "u7")
        fs = catalog_daemon.features.get("user_activity")
        for source in ("hot store", "warehouse"):
            if source == "warehouse":
                assert await catalog_daemon.hot_store.delete(online_key(fs, "u7")) == 1
            stored = (await read_online(catalog_daemon.hot_store, catalog_daemon.warehouse, fs, ["u7"]))["u7"]
            assert stored is not None and type(stored["clicks_1h"]) is int, source
            entity = await online(ch, typed=True)
            assert entity.found and entity.values["clicks_1h"].WhichOneof("kind") == "int64_value", source
            values = {name: from_feature_value(v) for name, v in entity.values.items()}
            assert values == {"clicks_1h": 23, "spend_1h": 40.0, "session_minutes": None, "country": "de",
                              "is_premium": True}, source
            assert type(values["clicks_1h"]) is int and type(values["spend_1h"]) is float
            legacy = await online(ch, typed=False)  # clients from before `typed`: the Struct, as before
            assert not legacy.values and legacy.features["clicks_1h"] == 23.0


async def test_typed_historical_features_and_queries_over_grpc(
    stub: features_pb2_grpc.FeatureServiceStub, channel: grpc.aio.Channel, daemon: Daemon
) -> None:
    """Training sets and queries with `typed`: an int feature is an int, a timestamp ISO 8601 with its offset.
    Each streamed call counts once in mlplat_grpc_requests_total."""
    await stub.RegisterFeatureSet(features_pb2.RegisterFeatureSetRequest(feature_set_json=definition(
        {"name": "count", "type": "int"}, {"name": "seen", "type": "timestamp"}), entity_json=ENTITY))
    await upload(channel, "payments", [{"event_id": "1", "card_id": "c1", "event_time": "2026-01-01T10:00:00Z",
                                        "count": 3, "seen": "2026-01-01T09:30:00+01:00"}], "p1")
    for source in ("hot store", "warehouse"):
        if source == "warehouse":
            assert await daemon.hot_store.delete(online_key(daemon.features.get("payments"), "c1")) == 1
        online = await stub.GetOnlineFeatures(features_pb2.GetOnlineFeaturesRequest(
            feature_set="payments", entity_ids=["c1"], typed=True))
        assert {k: from_feature_value(v) for k, v in online.entities[0].values.items()} == {
            "count": 3, "seen": dt.datetime(2026, 1, 1, 8, 30, tzinfo=dt.UTC)}, source
    rows: list[list[object]] = []
    async for msg in stub.GetHistoricalFeatures(features_pb2.GetHistoricalFeaturesRequest(
            features=["payments"], spine=[features_pb2.SpineRow(entity_id="c1", timestamp="2026-01-02T00:00:00Z")],
            typed=True)):
        rows += [[from_typed(v) for v in r.typed_values] for r in msg.rows]
    assert rows == [["c1", "2026-01-02T00:00:00+00:00", 3, "2026-01-01T08:30:00+00:00"]]
    assert type(rows[0][2]) is int
    query = admin_pb2_grpc.AdminServiceStub(channel).Query(admin_pb2.QueryRequest(
        sql="SELECT 42 AS answer, sum(count) AS total, 2.50::DECIMAL(4,2) AS d FROM fs_payments", typed=True))
    answer = [[from_typed(v) for v in r.typed_values] async for msg in query for r in msg.rows]
    assert answer == [[42, 3, 2.5]] and [type(v).__name__ for v in answer[0]] == ["int", "int", "Decimal"]
    metrics = daemon.metrics.render().decode()
    for method in ("Query", "GetHistoricalFeatures"):
        assert f'mlplat_grpc_requests_total{{code="OK",method="{method}"}} 1.0' in metrics
