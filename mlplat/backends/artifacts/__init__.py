"""Artifact store: model files. `file://DIR` (embedded) and `azure://CONTAINER` (Azure Blob Storage).

Every put records the sha256 of the bytes in the blob's metadata, so readers can verify content before
loading it. tests/contract/test_artifacts.py runs one suite against both.

Keys are '/'-separated relative paths (no empty, '.', '..' or dot-leading segments, no backslash or control
characters); metadata names are identifiers, unique ignoring case (Azure's rules, enforced by both stores).
Anything else raises ValueError naming the key or entry, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mlplat.backends.urls import redact_url, scheme_of
from mlplat.errors import ConfigError

SCHEMES = ("file", "azure")


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int
    sha256: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ArtifactStore(Protocol):
    @property
    def url(self) -> str: ...

    async def connect(self) -> None:
        """Check the store is reachable (create the directory/container if missing)."""
        ...

    async def ping(self) -> None: ...
    async def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> ArtifactInfo:
        """Store bytes under key (overwriting), recording their sha256. Keys are '/'-separated paths."""
        ...

    async def get(self, key: str) -> bytes:
        """Raises NotFound if the key does not exist."""
        ...

    async def head(self, key: str) -> ArtifactInfo:
        """Size, recorded sha256 and metadata; raises NotFound."""
        ...

    async def list(self, prefix: str = "") -> list[ArtifactInfo]:
        """Every artifact whose key starts with prefix, sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Raises NotFound if the key does not exist."""
        ...

    async def aclose(self) -> None: ...


def open_artifact_store(url: str, *, connection_string: str | None = None) -> ArtifactStore:
    """Build (not connect) the artifact store for a URL; the scheme picks the implementation.

    azure://CONTAINER takes its account from connection_string (env or secret file, never the URL).
    """
    scheme = scheme_of(url)
    if scheme == "file":
        from mlplat.backends.artifacts.file import FileArtifactStore

        return FileArtifactStore(url)
    if scheme == "azure":
        from mlplat.backends.artifacts.azure import AzureArtifactStore

        if not connection_string:
            raise ConfigError(
                f"artifacts.url = {redact_url(url)!r}: azure:// needs a connection string "
                "(set MLPLAT_ARTIFACTS__CONNECTION_STRING, artifacts.connection_string_file, "
                "or AZURE_STORAGE_CONNECTION_STRING)"
            )
        return AzureArtifactStore(url, connection_string=connection_string)
    raise ConfigError(
        f"artifacts.url = {redact_url(url)!r}: unknown scheme {scheme!r} (expected {', '.join(SCHEMES)})"
    )
