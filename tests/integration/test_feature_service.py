"""FeatureService over gRPC: registration and evolution, online lookups, point-in-time training sets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from mlplat.api.convert import from_value
from mlplat.api.v1 import features_pb2, features_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from mlplat.config import load_settings
from mlplat.daemon import Daemon

ENTITY = json.dumps({"name": "card", "key": "card_id"})


def definition(*features: dict[str, object]) -> str:
    return json.dumps({"name": "payments", "entity": "card", "features": list(features)})


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    d = Daemon(load_settings(
        warehouse={"url": f"duckdb://{tmp_path / 'w.duckdb'}"}, artifacts={"url": f"file://{tmp_path / 'a'}"},
        api={"grpc_port": 0, "http_port": 0}, balancer={"max_python_workers": 1, "spare_workers": 0},
        ingest={"spool_dir": str(tmp_path / "spool")},
    ))
    await d.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{d.api.port}") as ch:
        yield ch
    await d.stop()


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> features_pb2_grpc.FeatureServiceStub:
    return features_pb2_grpc.FeatureServiceStub(channel)


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
