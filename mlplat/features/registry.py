"""The feature registry: versioned feature set definitions in the warehouse, cached in the hot store.

The warehouse is the source of truth (table feature_sets, one row per version); each feature set has
its own table fs_<name> keyed by event_id, which is what makes ingest idempotent. Registering a changed
definition goes through FeatureSet.evolve: additive changes become a new version and new nullable
columns; breaking changes are refused.
"""

from __future__ import annotations

import asyncio
import json

from mlplat.backends.hotstore import HotStore
from mlplat.errors import BackendError, NotFound
from mlplat.features.definitions import Entity, FeatureCatalog, FeatureSet
from mlplat.observability.logging import get_logger
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import SqlWrite

log = get_logger("features")
CACHE_PREFIX = "mlplat:featureset:"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


SQL_TYPES = {"float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "string": "VARCHAR", "timestamp": "TIMESTAMPTZ"}


def create_table_sql(fs: FeatureSet) -> str:
    columns = [
        "event_id VARCHAR PRIMARY KEY", "entity_id VARCHAR NOT NULL", "event_time TIMESTAMPTZ NOT NULL",
        "ingest_time TIMESTAMPTZ NOT NULL",
    ] + [f"{_ident(f.name)} {SQL_TYPES[f.type]}" for f in fs.features]
    return f"CREATE TABLE IF NOT EXISTS {_ident(fs.table)} ({', '.join(columns)})"


class FeatureRegistry:
    """Current definitions in memory for the hot path; every change is written through the warehouse."""

    def __init__(self, warehouse: Warehouse, hot_store: HotStore) -> None:
        self._warehouse = warehouse
        self._hot_store = hot_store
        self.entities: dict[str, Entity] = {}
        self.feature_sets: dict[str, FeatureSet] = {}

    async def load(self, catalog: FeatureCatalog | None = None) -> None:
        """Read what the warehouse knows, then register the configured catalog on top of it."""
        rows = await self._warehouse.read(
            "SELECT definition FROM feature_sets "
            "QUALIFY row_number() OVER (PARTITION BY name ORDER BY version DESC) = 1"
        )
        for text in rows.column("definition").to_pylist():
            data = json.loads(text)
            self.entities[data["entity_def"]["name"]] = Entity.model_validate(data["entity_def"])
            fs = FeatureSet.model_validate(data["feature_set"])
            self.feature_sets[fs.name] = fs
        if catalog is not None:
            self.entities.update(catalog.entities)
            for fs in catalog.feature_sets.values():
                await self.register(fs, catalog.entities[fs.entity])

    def get(self, name: str) -> FeatureSet:
        try:
            return self.feature_sets[name]
        except KeyError:
            known = ", ".join(sorted(self.feature_sets)) or "none registered"
            raise NotFound(f"feature set {name!r} does not exist ({known})") from None

    def key_of(self, fs: FeatureSet) -> str:
        return self.entities[fs.entity].key

    async def register(self, fs: FeatureSet, entity: Entity) -> FeatureSet:
        """Add a feature set or evolve it; returns the definition now in force (raises IncompatibleChange)."""
        known = self.entities.get(entity.name)
        if known is not None and known.key != entity.key:
            raise ValueError(f"entity {entity.name!r} already has key {known.key!r}, not {entity.key!r}")
        current = self.feature_sets.get(fs.name)
        target = fs.model_copy(update={"version": 1}) if current is None else current.evolve(fs)
        if current is not None and target is current:
            return current
        statements = [SqlWrite(create_table_sql(target), (), (target.table,))]
        if current is not None:
            existing = {f.name for f in current.features}
            statements += [
                SqlWrite(f"ALTER TABLE {_ident(target.table)} ADD COLUMN {_ident(f.name)} {SQL_TYPES[f.type]}",
                         (), (target.table,))
                for f in target.features if f.name not in existing
            ]
        definition = json.dumps({"feature_set": target.model_dump(mode="json"), "entity_def": entity.model_dump()})
        statements.append(SqlWrite(
            "INSERT INTO feature_sets (name, version, definition) VALUES (?, ?, ?)",
            (target.name, target.version, definition), ("feature_sets",),
        ))
        for statement in statements:
            await self._warehouse.write(statement)
        self.entities[entity.name] = entity
        self.feature_sets[target.name] = target
        try:
            await self._hot_store.set(CACHE_PREFIX + target.name, definition.encode())
        except BackendError as e:  # the warehouse has it; the cache catches up on the next registration
            log.warning("feature_set_cache_failed", feature_set=target.name, error=str(e))
        log.info("feature_set_registered", feature_set=target.name, version=target.version,
                 features=[f.name for f in target.features])
        return target


class FeatureRegistryService:
    """Loads the registry (and the configured catalog) once the warehouse is open."""

    name = "features"

    def __init__(self, registry: FeatureRegistry, catalog: FeatureCatalog | None) -> None:
        self.registry = registry
        self._catalog = catalog

    async def start(self) -> None:
        await self.registry.load(self._catalog)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None
