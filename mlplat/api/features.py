"""FeatureService: definitions, online lookups and training sets over gRPC (thin: proto in, one call, proto out)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator

import grpc
import pyarrow as pa
from google.protobuf import json_format

from mlplat.api.convert import columns_of, feature_values, rows_of
from mlplat.api.errors import rpc_errors
from mlplat.api.v1 import admin_pb2, features_pb2, features_pb2_grpc
from mlplat.backends.hotstore import HotStore
from mlplat.features.definitions import Entity, FeatureSet
from mlplat.features.offline import training_set
from mlplat.features.online import read_online
from mlplat.features.registry import FeatureRegistry
from mlplat.observability.metrics import Metrics
from mlplat.warehouse.store import Warehouse

MAX_ENTITIES = 10_000
MAX_SPINE = 1_000_000


def _definition(registry: FeatureRegistry, fs: FeatureSet) -> str:
    return json.dumps({**fs.model_dump(mode="json"), "entity_key": registry.key_of(fs)})


def _timestamp(text: str, row: int) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"spine row {row}: timestamp {text!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self, registry: FeatureRegistry, hot_store: HotStore, warehouse: Warehouse, metrics: Metrics) -> None:
        self._registry = registry
        self._hot_store = hot_store
        self._warehouse = warehouse
        self._metrics = metrics

    async def RegisterFeatureSet(
        self, request: features_pb2.RegisterFeatureSetRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.RegisterFeatureSetResponse:
        async with rpc_errors(context, "RegisterFeatureSet", self._metrics):
            fs = FeatureSet.model_validate_json(request.feature_set_json)
            entity = Entity.model_validate_json(request.entity_json)
            if fs.entity != entity.name:
                raise ValueError(f"feature set uses entity {fs.entity!r} but entity_json defines {entity.name!r}")
            registered = await self._registry.register(fs, entity)
        return features_pb2.RegisterFeatureSetResponse(
            name=registered.name, version=registered.version,
            feature_set_json=_definition(self._registry, registered),
        )

    async def ListFeatureSets(
        self, request: features_pb2.ListFeatureSetsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.ListFeatureSetsResponse:
        async with rpc_errors(context, "ListFeatureSets", self._metrics):
            definitions = [_definition(self._registry, fs) for _, fs in sorted(self._registry.feature_sets.items())]
        return features_pb2.ListFeatureSetsResponse(feature_sets_json=definitions)

    async def GetOnlineFeatures(
        self, request: features_pb2.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetOnlineFeaturesResponse:
        async with rpc_errors(context, "GetOnlineFeatures", self._metrics):
            if not request.entity_ids:
                raise ValueError("entity_ids is empty: ask for at least one entity")
            if len(request.entity_ids) > MAX_ENTITIES:
                raise ValueError(f"at most {MAX_ENTITIES} entity_ids per call, not {len(request.entity_ids)}")
            fs = self._registry.get(request.feature_set)
            found = await read_online(self._hot_store, self._warehouse, fs, list(request.entity_ids))
            features = [(f.name, f.type) for f in fs.features]
            entities = []
            for entity_id in request.entity_ids:
                values = found.get(entity_id)
                if values is not None and request.typed:
                    entity = features_pb2.EntityFeatures(entity_id=entity_id, found=True,
                                                         values=feature_values(features, values))
                else:
                    entity = features_pb2.EntityFeatures(entity_id=entity_id, found=values is not None)
                    if values is not None:  # the legacy Struct: every number a double
                        entity.features.update(values)
                entities.append(entity)
        return features_pb2.GetOnlineFeaturesResponse(entities=entities)

    async def GetHistoricalFeatures(
        self, request: features_pb2.GetHistoricalFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.QueryResponse]:
        async with rpc_errors(context, "GetHistoricalFeatures", self._metrics):
            if not request.features:
                raise ValueError("features is empty: name 'set.feature' or 'set'")
            if len(request.spine) > MAX_SPINE:
                raise ValueError(f"at most {MAX_SPINE} spine rows per call")
            extras = [json_format.MessageToDict(r.extra) for r in request.spine]
            extra_names = sorted({k for e in extras for k in e} - {"entity_id", "timestamp"})
            spine = pa.table({
                "entity_id": [r.entity_id for r in request.spine],
                "timestamp": pa.array([_timestamp(r.timestamp, i) for i, r in enumerate(request.spine)],
                                      pa.timestamp("us", tz="UTC")),
                **{name: [e.get(name) for e in extras] for name in extra_names},
            })
            result = await training_set(self._warehouse, self._registry, spine, list(request.features))
            yield admin_pb2.QueryResponse(columns=columns_of(result.schema))
            for rows in rows_of(result, typed=request.typed):
                yield admin_pb2.QueryResponse(rows=rows)
                await asyncio.sleep(0)
        yield admin_pb2.QueryResponse(truncated=False)
