"""The embedded artifact store: files under a directory, written atomically, sha256 kept in a sidecar.

Blobs live at ROOT/KEY; their record (size, sha256, metadata) at ROOT/.meta/KEY.json, outside the key
namespace because no key segment may start with a dot. A put writes the blob to a temporary file in the
target directory, fsyncs it, removes the old record, renames the blob into place and then writes the new
record the same way. A crash therefore leaves either the old or the new bytes, never half of them, and no
record describing other bytes (writers of one key also take turns); a blob without a record whose size
matches is described from its own bytes.

The key and metadata rules are the package's (mlplat.backends.artifacts), shared with azure.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlplat.backends.artifacts import (
    ArtifactInfo,
    InvalidArtifactKey,
    is_valid_key,
    validate_key,
    validate_metadata,
)
from mlplat.errors import BackendError, BackendUnavailable, ConfigError, NotFound
from mlplat.observability.logging import get_logger

log = get_logger("artifacts")
T = TypeVar("T")

META_DIR = ".meta"
TMP_PREFIX = ".tmp-"
_DIR_ATTEMPTS = 5


def _root_of(url: str) -> Path:
    rest = url.split("://", 1)[1] if "://" in url else ""
    if not rest:
        raise ConfigError(
            f"artifacts.url = {url!r}: file:// needs a directory, e.g. file://./.mlplat/artifacts"
        )
    # abspath, not resolve(): no file system access at construction, and symlinks stay as configured
    return Path(os.path.abspath(rest))


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in directory durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _mkstemp_in(directory: Path) -> tuple[int, str]:
    for attempt in range(_DIR_ATTEMPTS):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=".part")
        except (FileNotFoundError, FileExistsError):
            # a concurrent delete pruned the directory between mkdir and mkstemp (or, inside mkdir, between
            # "it exists" and "it is a directory"): make it again
            if attempt == _DIR_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _write_temp(directory: Path, data: bytes) -> str:
    """A fsynced temporary file beside the target: same file system, so os.replace is atomic."""
    fd, tmp = _mkstemp_in(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _replace(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _sha256_of_file(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()


class FileArtifactStore:
    """Artifacts as plain files under one directory, for a single machine or a shared mount."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._root = _root_of(url)
        # writers of one key take turns, or the record of one put could land beside the bytes of another
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}

    def __repr__(self) -> str:
        return f"FileArtifactStore({self._url!r})"

    @property
    def url(self) -> str:
        return self._url

    def _blob(self, key: str) -> Path:
        return self._root / validate_key(key)

    def _record(self, key: str) -> Path:
        return self._root / META_DIR / (validate_key(key) + ".json")

    def _not_found(self, key: str) -> NotFound:
        return NotFound(f"artifact {key!r} not found in {self._url}")

    def _failed(self, action: str, key: str, error: OSError) -> BackendError:
        """Runs in the worker thread: it looks at the disk to tell a vanished root from a failing file."""
        reason = error.strerror or type(error).__name__
        if not self._root.is_dir():
            return BackendUnavailable(
                f"artifact store {self._url}: directory {self._root} is gone ({reason})"
            )
        return BackendError(f"artifact store {self._url}: cannot {action} {key!r}: {reason}")

    async def _run(self, action: str, key: str, work: Callable[[], T]) -> T:
        """Run blocking file work in a thread; OS errors become BackendError there, off the event loop."""

        def guarded() -> T:
            try:
                return work()
            except OSError as e:
                raise self._failed(action, key, e) from None

        return await asyncio.to_thread(guarded)

    @contextlib.asynccontextmanager
    async def _writer_turn(self, key: str) -> AsyncIterator[None]:
        lock, users = self._writers.get(key, (asyncio.Lock(), 0))
        self._writers[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._writers[key]
            if users == 1:
                del self._writers[key]
            else:
                self._writers[key] = (lock, users - 1)

    async def _write_exclusively(self, action: str, key: str, work: Callable[[], T]) -> T:
        """Run a write of key in its turn; a cancelled caller keeps the turn until its thread has finished."""
        async with self._writer_turn(key):
            task = asyncio.ensure_future(self._run(action, key, work))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                # a thread cannot be stopped: the next writer must not start beside it
                await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as lost
                raise

    async def connect(self) -> None:
        """Create the directory and prove it writable: a bad mount fails at start-up, not on the first put."""

        def make() -> None:
            try:
                (self._root / META_DIR).mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=self._root, prefix=TMP_PREFIX, suffix=".probe")
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                reason = e.strerror or type(e).__name__
                raise BackendUnavailable(
                    f"artifact store {self._url}: cannot use {self._root}: {reason}"
                ) from None

        await asyncio.to_thread(make)

    async def ping(self) -> None:
        def check() -> None:
            if not self._root.is_dir():
                raise BackendUnavailable(f"artifact store {self._url}: {self._root} is not a directory")
            if not os.access(self._root, os.W_OK | os.X_OK):
                raise BackendUnavailable(f"artifact store {self._url}: {self._root} is not writable")

        await asyncio.to_thread(check)

    async def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> ArtifactInfo:
        blob, record = self._blob(key), self._record(key)
        user = validate_metadata(metadata)

        def write() -> ArtifactInfo:
            info = ArtifactInfo(key, len(data), hashlib.sha256(data).hexdigest(), user)
            self._check_no_conflict(key, blob)
            tmp = _write_temp(blob.parent, data)
            # the old record goes before the new bytes arrive: a record on disk never describes other bytes
            try:
                record.unlink()
                _fsync_dir(record.parent)
            except FileNotFoundError:
                pass
            except BaseException:
                _unlink_quietly(tmp)
                raise
            _replace(tmp, blob)
            body = {"size": info.size, "sha256": info.sha256, "metadata": user}
            _replace(_write_temp(record.parent, json.dumps(body).encode()), record)
            return info

        return await self._write_exclusively("write", key, write)

    def _check_no_conflict(self, key: str, blob: Path) -> None:
        """A key cannot also be a directory of other keys (a beside a/b): say so instead of EISDIR."""
        if blob.is_dir():
            raise InvalidArtifactKey(
                f"artifact key {key!r} conflicts with existing artifacts under {key + '/'!r} "
                "(the file store cannot hold a key that is also a prefix directory)"
            )
        for parent in blob.relative_to(self._root).parents:
            if parent != Path(".") and (self._root / parent).is_file():
                raise InvalidArtifactKey(
                    f"artifact key {key!r} conflicts with the existing artifact {parent.as_posix()!r} "
                    "(the file store cannot hold a key that is also a prefix directory)"
                )

    async def get(self, key: str) -> bytes:
        blob = self._blob(key)

        def read() -> bytes:
            try:
                return blob.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise self._not_found(key) from None

        return await self._run("read", key, read)

    def _read_info(self, key: str) -> ArtifactInfo:
        blob, record = self._blob(key), self._record(key)
        try:
            st = blob.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise self._not_found(key)
        size = st.st_size
        body: Any = None
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(record.read_bytes())
        if isinstance(body, dict) and body.get("size") == size and isinstance(body.get("sha256"), str):
            return ArtifactInfo(key, size, body["sha256"], dict(body.get("metadata") or {}))
        # no usable record: a crash between blob and record, or a file copied in by hand
        log.warning("artifact_record_missing", url=self._url, key=key)
        try:
            size, sha = _sha256_of_file(blob)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None
        return ArtifactInfo(key, size, sha, {})

    async def head(self, key: str) -> ArtifactInfo:
        self._blob(key)  # invalid keys fail here, before a thread is involved
        return await self._run("read", key, lambda: self._read_info(key))

    async def list(self, prefix: str = "") -> list[ArtifactInfo]:
        def scan() -> list[ArtifactInfo]:
            # walk only the deepest directory the prefix names; a prefix no key can have matches nothing
            directory, _, _ = prefix.rpartition("/")
            if directory and not is_valid_key(directory):
                return []
            start = self._root / directory if directory else self._root
            found = []
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .meta and temp leftovers
                for name in filenames:
                    if name.startswith("."):
                        continue  # temporary files of a write in progress or interrupted
                    key = Path(dirpath, name).relative_to(self._root).as_posix()
                    if key.startswith(prefix) and is_valid_key(key):
                        with contextlib.suppress(NotFound):  # deleted while we walked
                            found.append(self._read_info(key))
            return sorted(found, key=lambda i: i.key)

        return await self._run("list", prefix, scan)

    async def delete(self, key: str) -> None:
        blob, record = self._blob(key), self._record(key)

        def remove() -> None:
            if blob.is_dir():
                raise self._not_found(key)
            try:
                blob.unlink()
            except (FileNotFoundError, NotADirectoryError):
                raise self._not_found(key) from None
            with contextlib.suppress(FileNotFoundError):
                record.unlink()
            self._prune(blob.parent)
            self._prune(record.parent)

        await self._write_exclusively("delete", key, remove)

    def _prune(self, directory: Path) -> None:
        """Remove directories emptied by a delete, up to (not including) the root and the record tree."""
        stop = {self._root, self._root / META_DIR}
        while directory not in stop and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    log.warning(
                        "artifact_prune_failed", url=self._url, directory=str(directory), error=e.strerror
                    )
                return
            directory = directory.parent

    async def aclose(self) -> None:
        return None
