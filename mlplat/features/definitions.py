"""Entities and feature sets: what the feature store accepts, declared in config/features.toml or over gRPC.

A feature set is a named group of typed features keyed by one entity. It evolves by adding features
(each addition is a new version); anything that would make stored data or existing consumers wrong —
removing a feature, changing its type, tightening nullability, changing the entity — is refused.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from mlplat.errors import ConfigError, IncompatibleChange, describe_invalid

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
FeatureType = Literal["float", "int", "bool", "string", "timestamp"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
RESERVED = frozenset({"event_id", "event_time", "ingest_time", "entity_id"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Model):
    name: Identifier
    key: Identifier = Field(description="name of the id field in events, e.g. user_id")
    description: str = ""


class Feature(_Model):
    name: Identifier
    type: FeatureType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str | int, ...] | None = Field(None, description="the only values accepted")
    description: str = ""

    @model_validator(mode="after")
    def _constraints_fit_type(self) -> Feature:
        if self.name in RESERVED:
            raise ValueError(f"feature name {self.name!r} is reserved ({', '.join(sorted(RESERVED))})")
        if (self.min is not None or self.max is not None) and self.type not in ("float", "int"):
            raise ValueError(f"feature {self.name!r}: min/max apply to float and int features, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} is greater than max {self.max}")
        if self.allowed is not None and self.type not in ("string", "int"):
            raise ValueError(f"feature {self.name!r}: allowed values apply to string and int features")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]


class FeatureSet(_Model):
    name: Identifier
    entity: Identifier
    features: tuple[Feature, ...] = Field(min_length=1)
    online_ttl_s: float | None = Field(None, gt=0, description="latest values expire from the hot store after this")
    version: int = Field(1, ge=1)
    description: str = ""

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSet:
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise ValueError(f"feature set {self.name!r}: feature {f.name!r} is declared twice")
            seen.add(f.name)
        return self

    @property
    def topic(self) -> str:
        return f"mlplat.events.{self.name}"

    @property
    def table(self) -> str:
        return f"fs_{self.name}"

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def evolve(self, new: FeatureSet) -> FeatureSet:
        """The next version if `new` only adds features; self if nothing changed; else IncompatibleChange."""
        problems = []
        if new.entity != self.entity:
            problems.append(f"entity changes from {self.entity!r} to {new.entity!r}")
        new_by_name = {f.name: f for f in new.features}
        for old in self.features:
            now = new_by_name.get(old.name)
            if now is None:
                problems.append(f"feature {old.name!r} is removed")
            elif now.type != old.type:
                problems.append(f"feature {old.name!r} changes type from {old.type} to {now.type}")
            elif old.nullable and not now.nullable:
                problems.append(f"feature {old.name!r} becomes non-nullable")
        for added in (f for f in new.features if f.name not in {o.name for o in self.features}):
            if not added.nullable:
                problems.append(f"new feature {added.name!r} must be nullable (earlier events do not have it)")
        if problems:
            raise IncompatibleChange(
                f"feature set {self.name!r} v{self.version}: breaking change refused: " + "; ".join(problems)
                + " (register it under a new name instead)"
            )
        unchanged = new.model_copy(update={"version": self.version}) == self
        return self if unchanged else new.model_copy(update={"version": self.version + 1})


class FeatureCatalog(_Model):
    entities: dict[str, Entity] = Field(default_factory=dict)
    feature_sets: dict[str, FeatureSet] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _entities_exist(self) -> FeatureCatalog:
        for fs in self.feature_sets.values():
            if fs.entity not in self.entities:
                raise ValueError(f"feature set {fs.name!r} uses unknown entity {fs.entity!r}")
            if any(f.name == self.entities[fs.entity].key for f in fs.features):
                raise ValueError(f"feature set {fs.name!r}: a feature may not be named like its entity key")
        return self

    def key_of(self, fs: FeatureSet) -> str:
        return self.entities[fs.entity].key


def catalog_from_dict(data: dict[str, Any], origin: str = "features") -> FeatureCatalog:
    """Names come from the TOML table keys; errors name the path of the bad value."""
    shaped = {
        "entities": {n: {"name": n, **v} for n, v in data.get("entities", {}).items()},
        "feature_sets": {n: {"name": n, **v} for n, v in data.get("feature_sets", {}).items()},
    }
    unknown = set(data) - {"entities", "feature_sets"}
    if unknown:
        raise ConfigError(
            f"{origin}: unknown section(s) {', '.join(sorted(unknown))} (expected entities, feature_sets)"
        )
    try:
        return FeatureCatalog.model_validate(shaped)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe_invalid(e)}") from None


def load_catalog(path: Path) -> FeatureCatalog:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"features: {str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"features: {str(path)!r} is not valid TOML: {e}") from None
    return catalog_from_dict(data, origin=str(path))
