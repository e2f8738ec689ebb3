"""Lifecycle rules (seed 004: "lifecycle rules automatically clean up deprecated artifacts").

Per model, the newest `keep` versions stay as they are. Older ones are archived and their artifacts
(and exports) deleted, except the production version and the rollback target (the version production
replaced, from the audit trail), and except bytes a kept version of any model still uses: artifacts are
content-addressed, so two versions can share one file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mlplat.backends.artifacts import ArtifactStore
from mlplat.errors import NotFound
from mlplat.observability.logging import get_logger
from mlplat.serving.registry import ModelRegistry, ModelVersion

log = get_logger("lifecycle")


@dataclass(frozen=True)
class Cleaned:
    version: int
    keys: tuple[str, ...]  # artifact keys deleted


def _keys(mv: ModelVersion) -> set[str]:
    return {mv.artifact_key, *(export["key"] for export in mv.exports.values())}


async def clean_up(registry: ModelRegistry, artifacts: ArtifactStore, model: str, *, keep: int,
                   actor: str = "automation") -> list[Cleaned]:
    """Apply the rules to one model; every deletion is audited with its reason."""
    everything = await registry.versions()
    versions = [mv for mv in everything if mv.model == model]  # newest first
    rollback = await registry.rollback_target(model)
    kept = [mv for i, mv in enumerate(versions)
            if i < keep or mv.stage == "production" or mv.version == rollback]
    # other models' live versions may hold the same bytes
    others = [mv for mv in everything if mv.model != model and not mv.artifacts_deleted_at]
    in_use: set[str] = set().union(*(_keys(mv) for mv in [*kept, *others]))
    cleaned = []
    for mv in versions:
        if mv in kept or mv.artifacts_deleted_at:
            continue
        keys = tuple(sorted(_keys(mv) - in_use))
        for key in keys:
            with contextlib.suppress(NotFound):  # already gone: the end state is the same
                await artifacts.delete(key)
        reason = (f"older than the newest {keep} versions; not production"
                  + (f", not the rollback target (v{rollback})" if rollback is not None else ""))
        await registry.mark_artifacts_deleted(model, mv.version, actor=actor, reason=reason)
        log.info("model_artifacts_deleted", model=model, version=mv.version, keys=len(keys), reason=reason)
        cleaned.append(Cleaned(mv.version, keys))
    return cleaned
