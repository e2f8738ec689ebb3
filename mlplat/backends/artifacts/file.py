"""The embedded artifact store: files under a directory, written atomically, sha256 kept in a sidecar.

Blobs live at ROOT/KEY; metadata at ROOT/.meta/KEY.json, outside the key namespace (keys may not start
with a dot segment). A write goes to a temporary file, is fsynced and renamed into place, and the sidecar
is written the same way afterwards, so a crash never leaves a half-written artifact that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlplat.backends.artifacts import ArtifactInfo
from mlplat.errors import BackendUnavailable, NotFound

META_DIR = ".meta"


def validate_key(key: str) -> str:
    """Keys are '/'-separated relative paths that can never escape the store's root."""
    problem = None
    if not key:
        problem = "is empty"
    elif "\x00" in key or "\\" in key:
        problem = "contains NUL or a backslash"
    elif key.startswith("/"):
        problem = "is absolute"
    elif any(part in ("", ".", "..") for part in key.split("/")):
        problem = "has an empty, '.' or '..' segment"
    elif key.split("/")[0].startswith("."):
        problem = "starts with a dot (reserved)"
    if problem:
        raise ValueError(f"invalid artifact key {key!r}: it {problem}")
    return key


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileArtifactStore:
    def __init__(self, url: str) -> None:
        self._url = url
        rest = url.split("://", 1)[1]
        self._root = Path(rest or ".").resolve()

    @property
    def url(self) -> str:
        return self._url

    def _blob(self, key: str) -> Path:
        return self._root / validate_key(key)

    def _meta(self, key: str) -> Path:
        return self._root / META_DIR / (validate_key(key) + ".json")

    async def connect(self) -> None:
        def make() -> None:
            try:
                (self._root / META_DIR).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BackendUnavailable(f"artifact store {self._url}: cannot use {self._root}: {e.strerror}") from None

        await asyncio.to_thread(make)

    async def ping(self) -> None:
        def check() -> None:
            if not os.access(self._root, os.W_OK):
                raise BackendUnavailable(f"artifact store {self._url}: {self._root} is not writable")

        await asyncio.to_thread(check)

    async def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> ArtifactInfo:
        blob, meta = self._blob(key), self._meta(key)
        def write() -> ArtifactInfo:
            info = ArtifactInfo(key, len(data), hashlib.sha256(data).hexdigest(), dict(metadata or {}))
            _atomic_write(blob, data)
            record = {"size": info.size, "sha256": info.sha256, "metadata": dict(info.metadata)}
            _atomic_write(meta, json.dumps(record).encode())
            return info

        return await asyncio.to_thread(write)

    async def get(self, key: str) -> bytes:
        blob = self._blob(key)
        try:
            return await asyncio.to_thread(blob.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"artifact {key!r} not found in {self._url}") from None

    def _read_info(self, key: str) -> ArtifactInfo:
        blob, meta = self._blob(key), self._meta(key)
        if not blob.is_file():
            raise NotFound(f"artifact {key!r} not found in {self._url}")
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            # a blob whose sidecar never got written (crash between the two): describe it from its bytes
            data = blob.read_bytes()
            return ArtifactInfo(key, len(data), hashlib.sha256(data).hexdigest(), {})
        return ArtifactInfo(key, int(record["size"]), str(record["sha256"]), dict(record.get("metadata", {})))

    async def head(self, key: str) -> ArtifactInfo:
        return await asyncio.to_thread(self._read_info, key)

    async def list(self, prefix: str = "") -> list[ArtifactInfo]:
        def scan() -> list[ArtifactInfo]:
            found = []
            for dirpath, dirnames, filenames in os.walk(self._root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if name.startswith("."):
                        continue  # temp files of an interrupted write
                    key = Path(dirpath, name).relative_to(self._root).as_posix()
                    if key.startswith(prefix):
                        found.append(self._read_info(key))
            return sorted(found, key=lambda i: i.key)

        return await asyncio.to_thread(scan)

    async def delete(self, key: str) -> None:
        blob, meta = self._blob(key), self._meta(key)

        def remove() -> None:
            try:
                blob.unlink()
            except (FileNotFoundError, IsADirectoryError):
                raise NotFound(f"artifact {key!r} not found in {self._url}") from None
            with contextlib.suppress(FileNotFoundError):
                meta.unlink()
            for start in (blob.parent, meta.parent):
                self._prune(start)

        await asyncio.to_thread(remove)

    def _prune(self, directory: Path) -> None:
        stop = {self._root, self._root / META_DIR}
        while directory not in stop and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    async def aclose(self) -> None:
        return None
