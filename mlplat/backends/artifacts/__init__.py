"""Artifact store: model files. `file://DIR` (embedded) and `azure://CONTAINER` (Azure Blob Storage).

Every put records the sha256 of the bytes in the blob's metadata, so readers can verify content before
loading it. tests/contract/test_artifacts.py runs one suite against both.

Keys are '/'-separated relative paths (no empty, '.', '..' or dot-leading segments, no backslash or control
characters); metadata names are identifiers, unique ignoring case (Azure's rules). Both stores call the checks
below, so code developed against file:// does not break on azure://. Anything else raises InvalidArtifactKey or
InvalidArtifactMetadata (ValueErrors naming the key or entry) before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from mlplat.backends.urls import redact_url, scheme_of
from mlplat.errors import ConfigError

SCHEMES = ("file", "azure")

MAX_KEY_CHARS = 1024  # Azure's limit on blob names
MAX_SEGMENT_BYTES = 250  # file systems allow 255 per name; the record adds ".json"
METADATA_MAX_BYTES = 8 * 1024  # Azure's limit on a blob's metadata names + values, applied everywhere
RESERVED_METADATA_PREFIX = "mlplat_"  # the stores' own entries (the sha256 on Azure)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# printable ASCII travels in an HTTP header as is; '%' is the escape character itself
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")


class InvalidArtifactKey(ValueError):
    """A key no store accepts; the message names the key and says why."""


class InvalidArtifactMetadata(ValueError):
    """Metadata no store accepts; the message names the entry and says why."""


def validate_key(key: str) -> str:
    """Keys are '/'-separated relative paths that can never escape the root or reach its bookkeeping."""
    problem = None
    if not isinstance(key, str) or not key:
        problem = "is empty"
    elif "\\" in key:
        problem = "contains a backslash (use '/' between segments)"
    elif _CONTROL.search(key):
        problem = "contains NUL or another control character"
    elif key.startswith("/"):
        problem = "is absolute (keys are relative paths)"
    elif len(key) > MAX_KEY_CHARS:
        problem = f"is longer than {MAX_KEY_CHARS} characters"
    else:
        for segment in key.split("/"):
            if not segment:
                problem = "has an empty segment ('//' or a trailing '/')"
            elif segment in (".", ".."):
                problem = f"has a {segment!r} segment"
            elif segment.startswith("."):
                problem = f"has a segment starting with a dot ({segment!r}), reserved for the store's files"
            elif len(segment.encode()) > MAX_SEGMENT_BYTES:
                problem = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
            if problem:
                break
    if problem:
        raise InvalidArtifactKey(f"invalid artifact key {key!r}: it {problem}")
    return key


def is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidArtifactKey:
        return False
    return True


def encode_metadata_value(value: str) -> str:
    """Percent-encode what an HTTP header cannot carry verbatim: non-ASCII, controls, '%', outer spaces."""
    encoded = quote(value, safe=_HEADER_SAFE)
    core = encoded.strip(" ")
    if not core:
        return "%20" * len(encoded)
    lead = len(encoded) - len(encoded.lstrip(" "))
    trail = len(encoded) - len(encoded.rstrip(" "))
    return "%20" * lead + core + "%20" * trail


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Azure's metadata rules, applied on every backend: C# identifier names, unique ignoring case, 8 KiB."""
    result = dict(metadata or {})
    seen: dict[str, str] = {}
    size = 0
    for name, value in result.items():
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise InvalidArtifactMetadata(
                f"artifact metadata name {name!r}: names must be identifiers (ASCII letters, digits and _, "
                "not starting with a digit), because Azure Blob metadata names are C# identifiers"
            )
        if name.lower().startswith(RESERVED_METADATA_PREFIX):
            raise InvalidArtifactMetadata(
                f"artifact metadata name {name!r}: the prefix {RESERVED_METADATA_PREFIX!r} is reserved "
                "for the store's own entries"
            )
        if name.lower() in seen:
            raise InvalidArtifactMetadata(
                f"artifact metadata names {seen[name.lower()]!r} and {name!r} differ only in case, "
                "and Azure Blob metadata names are case-insensitive"
            )
        if not isinstance(value, str):
            raise InvalidArtifactMetadata(
                f"artifact metadata {name!r}: the value must be a str, not {type(value).__name__}"
            )
        seen[name.lower()] = name
        size += len(name) + len(encode_metadata_value(value))
    if size > METADATA_MAX_BYTES - 128:  # room for the store's own sha256 entry
        raise InvalidArtifactMetadata(
            f"artifact metadata is {size} bytes once encoded; "
            f"at most {METADATA_MAX_BYTES - 128} fit beside the store's own entries"
        )
    return result


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
