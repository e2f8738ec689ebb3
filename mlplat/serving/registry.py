"""The model registry: versions and stages in the warehouse, production pointers in the hot store.

The warehouse (table model_versions) is the source of truth. Each model's production version, with all
the metadata a serving daemon needs, is also kept in the hot-store hash `mlplat:models:production`, so
serving replicas that share the hot store never need the warehouse; a promotion is announced on the
`mlplat:models:swaps` channel. Artifacts are content-addressed (`models/sha256/<hash>.<ext>`): the same
file registered twice is stored once, and its hash is checked before any load.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from mlplat.backends.artifacts import ArtifactStore
from mlplat.backends.hotstore import HotStore
from mlplat.compute.balancer import Balancer
from mlplat.compute.job_types import Lane, Priority
from mlplat.errors import BackendError, MlplatError, NotFound
from mlplat.observability.logging import get_logger
from mlplat.serving.flavours import EXTENSIONS, FLAVOURS, ModelFormatError, load_model, sha256_of
from mlplat.warehouse.store import Warehouse
from mlplat.warehouse.writer import SqlWrite

log = get_logger("registry")
PRODUCTION_KEY = "mlplat:models:production"
SWAP_CHANNEL = "mlplat:models:swaps"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
INPUT_TYPES = ("float", "int", "bool")
Stage = Literal["staging", "production", "archived"]


class RegistryError(MlplatError, ValueError):
    """A registration or stage change that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class AuditEntry:
    recorded_at: str
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class InputFeature:
    name: str
    type: str = "float"


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    stage: str
    flavour: str
    sha256: str
    artifact_key: str
    features: tuple[InputFeature, ...]
    feature_set: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    training_window: dict[str, str] = field(default_factory=dict)
    created_by: str = "user"
    reason: str = ""
    created_at: str = ""
    exports: dict[str, dict[str, str]] = field(default_factory=dict)  # e.g. {"onnx": {"key", "sha256"}}
    artifacts_deleted_at: str = ""  # set by lifecycle rules: the version can no longer be loaded

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelVersion:
        """Fields this mlplat does not know are ignored: daemons of different versions share one hot store."""
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        raw["features"] = tuple(InputFeature(name=f["name"], type=f.get("type", "float")) for f in raw["features"])
        return cls(**raw)


def parse_inputs(spec: str) -> tuple[InputFeature, ...]:
    """'a:float,b:int,c' (type defaults to float) -> input features; raises RegistryError naming the bad one."""
    features = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, kind = item.partition(":")
        features.append(InputFeature(name.strip(), (kind or "float").strip()))
    return _checked_inputs(features)


def _checked_inputs(features: Sequence[InputFeature]) -> tuple[InputFeature, ...]:
    if not features:
        raise RegistryError("a model needs at least one input feature")
    seen: set[str] = set()
    for f in features:
        if not f.name or f.name in seen:
            raise RegistryError(f"input feature {f.name!r} is empty or named twice")
        if f.type not in INPUT_TYPES:
            raise RegistryError(f"input feature {f.name!r}: type {f.type!r} is not one of {', '.join(INPUT_TYPES)}")
        seen.add(f.name)
    return tuple(features)


def _check_model(data: bytes, flavour: str, n_inputs: int) -> None:
    """Runs on a balancer thread: the file must load as its flavour and take exactly n_inputs features."""
    try:
        model = load_model(flavour, data)
    except ModelFormatError as e:
        raise RegistryError(f"{flavour} model: {e}") from None
    if model.n_features != n_inputs:
        raise RegistryError(f"the model takes {model.n_features} features but {n_inputs} were declared")


class ModelRegistry:
    def __init__(self, warehouse: Warehouse, hot_store: HotStore, artifacts: ArtifactStore,
                 balancer: Balancer) -> None:
        self._warehouse = warehouse
        self._hot_store = hot_store
        self._artifacts = artifacts
        self._balancer = balancer
        self._lock = asyncio.Lock()  # version numbers and stage changes, one at a time

    @property
    def artifacts(self) -> ArtifactStore:
        return self._artifacts

    async def register(
        self, name: str, data: bytes, flavour: str, features: Sequence[InputFeature], *,
        feature_set: str | None = None, metrics: dict[str, float] | None = None,
        training_window: dict[str, str] | None = None, created_by: str = "user", reason: str = "registered",
        exports: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store the artifact and add a `staging` version; the file must load and match its inputs.

        exports: the same model in other formats (flavour -> bytes), stored beside it and recorded."""
        if not NAME.match(name):
            raise RegistryError(f"model name {name!r}: use lower-case letters, digits and _ (start with a letter)")
        if flavour not in FLAVOURS:
            raise RegistryError(f"flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
        inputs = _checked_inputs(features)
        window = _checked_window(training_window or {}, feature_set)
        await self._balancer.run(_check_model, data, flavour, len(inputs), priority=Priority.SERVE,
                                 lane=Lane.THREAD)
        digest, key = await self._store_artifact(name, flavour, data)
        stored_exports = {}
        for export_flavour, export in (exports or {}).items():
            export_digest, export_key = await self._store_artifact(name, export_flavour, export)
            stored_exports[export_flavour] = {"key": export_key, "sha256": export_digest}
        async with self._lock:
            version = await self._next_version(name)
            mv = ModelVersion(name, version, "staging", flavour, digest, key, inputs, feature_set,
                              dict(metrics or {}), window, created_by, reason,
                              dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), stored_exports)
            await self._warehouse.write(SqlWrite(
                "INSERT INTO model_versions (model, version, stage, flavour, sha256, artifact_key, features, "
                "feature_set, metrics, training_window, created_by, reason, exports) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, version, "staging", flavour, digest, key, json.dumps([asdict(f) for f in inputs]),
                 feature_set, json.dumps(mv.metrics), json.dumps(mv.training_window), created_by, reason,
                 json.dumps(stored_exports)],
                tables=("model_versions",)))
        await self.audit(created_by, "register", f"{name}:{version}", reason, {"sha256": digest})
        log.info("model_registered", model=name, version=version, flavour=flavour, sha256=digest[:12])
        return mv

    async def _store_artifact(self, model: str, flavour: str, data: bytes) -> tuple[str, str]:
        """Content-addressed: the same bytes are stored once. Returns (sha256, key)."""
        digest = sha256_of(data)
        key = f"models/sha256/{digest}.{EXTENSIONS[flavour]}"
        try:
            await self._artifacts.head(key)
        except NotFound:
            await self._artifacts.put(key, data, metadata={"flavour": flavour, "model": model})
        return digest, key

    async def _next_version(self, name: str) -> int:
        table = await self._warehouse.read("SELECT coalesce(max(version), 0) FROM model_versions WHERE model = ?",
                                           [name])
        return int(table.column(0)[0].as_py()) + 1

    async def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of one model, or all), newest first per model."""
        where, params = ("WHERE model = ?", [name]) if name else ("", [])
        table = await self._warehouse.read(
            "SELECT model, version, stage, flavour, sha256, artifact_key, features, feature_set, metrics, "
            "training_window, created_by, reason, created_at, exports, artifacts_deleted_at "
            f"FROM model_versions {where} "
            "ORDER BY model, version DESC", params)
        out = []
        for row in table.to_pylist():
            row["features"] = tuple(InputFeature(**f) for f in json.loads(row["features"]))
            row["metrics"] = json.loads(row["metrics"] or "{}")
            row["training_window"] = json.loads(row["training_window"] or "{}")
            row["created_at"] = row["created_at"].isoformat(timespec="seconds")
            row["exports"] = json.loads(row["exports"] or "{}")
            deleted = row["artifacts_deleted_at"]
            row["artifacts_deleted_at"] = deleted.isoformat(timespec="seconds") if deleted else ""
            out.append(ModelVersion(**row))
        if name and not out:
            raise NotFound(f"model {name!r} is not registered")
        return out

    async def get(self, name: str, version: int | None = None) -> ModelVersion:
        """One version; without a version, the production one."""
        for mv in await self.versions(name):
            if (version is None and mv.stage == "production") or mv.version == version:
                return mv
        if version is None:
            raise NotFound(f"model {name!r} has no production version (promote one first)")
        raise NotFound(f"model {name!r} has no version {version}")

    async def promote(self, name: str, version: int, *, actor: str = "user", reason: str = "promoted") -> ModelVersion:
        """Make version the production one (the previous production version is archived), then announce it."""
        async with self._lock:
            versions = await self.versions(name)
            target = next((v for v in versions if v.version == version), None)
            if target is None:
                raise NotFound(f"model {name!r} has no version {version}")
            if target.stage == "production":
                return target
            if target.artifacts_deleted_at:
                raise RegistryError(f"{name} version {version} cannot be promoted: lifecycle rules deleted its "
                                    f"artifact at {target.artifacts_deleted_at}")
            previous = next((v.version for v in versions if v.stage == "production"), None)
            await self._warehouse.write(SqlWrite(
                "UPDATE model_versions SET stage = CASE WHEN version = ? THEN 'production' ELSE 'archived' END, "
                "stage_changed_at = now() WHERE model = ? AND (version = ? OR stage = 'production')",
                [version, name, version], tables=("model_versions",)))
            promoted = await self.get(name, version)
        # `previous` is the rollback target: lifecycle rules never delete it
        await self.audit(actor, "promote", f"{name}:{version}", reason,
                         {"from_stage": target.stage, "previous": previous})
        await self.publish_production(promoted)
        log.info("model_promoted", model=name, version=version, actor=actor, reason=reason)
        return promoted

    async def archive(self, name: str, version: int, *, actor: str = "user", reason: str = "archived") -> ModelVersion:
        async with self._lock:
            target = await self.get(name, version)
            if target.stage == "production":
                raise RegistryError(f"{name} version {version} is in production: promote another version first")
            await self._warehouse.write(SqlWrite(
                "UPDATE model_versions SET stage = 'archived', stage_changed_at = now() "
                "WHERE model = ? AND version = ?",
                [name, version], tables=("model_versions",)))
        await self.audit(actor, "archive", f"{name}:{version}", reason, {"from_stage": target.stage})
        return await self.get(name, version)

    async def publish_production(self, mv: ModelVersion) -> None:
        """Pointer and metadata to the hot store, then the swap notice; a hot store that is down is retried
        by the reconciliation at start-up and by serving's periodic check of the warehouse owner."""
        try:
            await self._hot_store.hset(PRODUCTION_KEY, {mv.model: mv.to_json()})
            await self._hot_store.publish(SWAP_CHANNEL, json.dumps({"model": mv.model, "version": mv.version}).encode())
        except BackendError as e:
            log.warning("production_pointer_not_published", model=mv.model, version=mv.version, error=str(e))

    async def sync_hot_store(self) -> int:
        """Start-up: publish this warehouse's production versions (a hot store that was flushed or replaced
        learns them again). Pointers of models this warehouse does not know are left alone: other daemons
        may share the hot store."""
        production = [mv for mv in await self.versions() if mv.stage == "production"]
        for mv in production:
            await self.publish_production(mv)
        return len(production)

    async def mark_artifacts_deleted(self, name: str, version: int, *, actor: str, reason: str) -> None:
        """Lifecycle rules: the version is archived and can no longer be loaded or promoted."""
        async with self._lock:
            await self._warehouse.write(SqlWrite(
                "UPDATE model_versions SET stage = 'archived', artifacts_deleted_at = now(), "
                "stage_changed_at = CASE WHEN stage = 'archived' THEN stage_changed_at ELSE now() END "
                "WHERE model = ? AND version = ? AND stage <> 'production'",
                [name, version], tables=("model_versions",)))
        await self.audit(actor, "delete_artifacts", f"{name}:{version}", reason, {})

    async def rollback_target(self, name: str) -> int | None:
        """The version that was production before the current one (from the audit trail), if any."""
        table = await self._warehouse.read(
            "SELECT details FROM audit_log WHERE action = 'promote' AND split_part(subject, ':', 1) = ? "
            "ORDER BY recorded_at DESC LIMIT 1", [name])
        if not table.num_rows:
            return None
        previous = json.loads(table.column(0)[0].as_py() or "{}").get("previous")
        return int(previous) if previous is not None else None

    async def history(self, name: str, limit: int = 200) -> list[AuditEntry]:
        """What happened to a model and why, newest first: registrations, stage changes, automation."""
        table = await self._warehouse.read(
            "SELECT recorded_at, actor, action, subject, reason, details FROM audit_log "
            "WHERE split_part(subject, ':', 1) = ? ORDER BY recorded_at DESC LIMIT ?", [name, limit])
        return [AuditEntry(row["recorded_at"].isoformat(timespec="milliseconds"), row["actor"], row["action"],
                           row["subject"], row["reason"], json.loads(row["details"] or "{}"))
                for row in table.to_pylist()]

    async def audit(self, actor: str, action: str, subject: str, reason: str, details: dict[str, Any]) -> None:
        """One decision and its reason in the audit table (subject: `model` or `model:version`)."""
        # the time is taken here, not by now(): one group commit shares one transaction time, and the
        # history must keep the order decisions were taken in
        await self._warehouse.write(SqlWrite(
            "INSERT INTO audit_log (recorded_at, actor, action, subject, reason, details) VALUES (?, ?, ?, ?, ?, ?)",
            [dt.datetime.now(dt.UTC), actor, action, subject, reason, json.dumps(details)], tables=("audit_log",)))


async def fetch_verified(artifacts: ArtifactStore, mv: ModelVersion) -> bytes:
    """The artifact's bytes, refused unless their sha256 is the one registered."""
    data = await artifacts.get(mv.artifact_key)
    if sha256_of(data) != mv.sha256:
        raise RegistryError(f"{mv.model} version {mv.version}: artifact {mv.artifact_key} fails its sha256 check "
                            "(changed or damaged in the store); not loaded")
    return data


def _checked_window(window: dict[str, str], feature_set: str | None) -> dict[str, str]:
    """Both ends or neither, ISO 8601, start before end, and a feature set to read the rows from."""
    if not window:
        return {}
    if set(window) != {"start", "end"}:
        raise RegistryError("a training window needs both start and end (ISO 8601)")
    try:
        start, end = (dt.datetime.fromisoformat(window[k]) for k in ("start", "end"))
    except ValueError as e:
        raise RegistryError(f"training window: {e}") from None
    start, end = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (start, end))
    if start >= end:
        raise RegistryError(f"training window: start {window['start']} is not before end {window['end']}")
    if not feature_set:
        raise RegistryError("a training window needs the feature set its rows are in (--feature-set)")
    return {"start": start.isoformat(), "end": end.isoformat()}


def production_from_hot_store(raw: dict[str, bytes]) -> dict[str, ModelVersion]:
    """Pointers that cannot be read are skipped with a warning; the others are served."""
    pointers = {}
    for name, data in raw.items():
        try:
            pointers[name] = ModelVersion.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("bad_production_pointer", model=name, error=f"{type(e).__name__}: {e}")
    return pointers
