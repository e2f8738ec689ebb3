"""The production artifact store on Azure Blob Storage (azure-storage-blob, async client).

azure://CONTAINER[/prefix]: the account comes from the connection string (env or secret file, never the
URL or a config file). The sha256 of every blob travels in its metadata beside the user's entries, whose
values are percent-encoded where an HTTP header could not carry them. The SDK's retries are capped so an
unreachable endpoint fails within seconds, and no error, repr or log line ever carries the connection
string or its secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import aiohttp
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from mlplat.backends.artifacts import (
    ArtifactInfo,
    encode_metadata_value,
    is_valid_key,
    validate_key,
    validate_metadata,
)
from mlplat.errors import BackendError, BackendUnavailable, ConfigError, NotFound

T = TypeVar("T")

SHA_KEY = "mlplat_sha256"
CONNECT_DEADLINE_S = 15.0  # hard bound on connect(), whatever the SDK's timeouts and retries add up to
CONNECTION_TIMEOUT_S = 2  # per TCP connect; the SDK default is 20 s
READ_TIMEOUT_S = 20  # per socket read; generous for a busy service, short of the SDK's 60 s
# aiohttp warns (an error under our tests) on request bodies over 1 MiB: larger blobs go up in 1 MiB blocks
BLOCK_BYTES = 1024 * 1024
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
# statuses that mean "the service cannot serve us now", as opposed to a request it refuses
_UNAVAILABLE_STATUSES = {401, 403, 408, 429}
_SECRET_FIELDS = {"accountkey", "sharedaccesssignature"}


def parse_url(url: str) -> tuple[str, str]:
    """azure://CONTAINER[/prefix] -> (container, prefix without slashes at either end)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    container, _, prefix = rest.partition("/")
    if not _CONTAINER.fullmatch(container):
        raise ConfigError(
            f"artifacts.url = {url!r}: container {container!r} must be 3-63 lower-case letters, digits and "
            "single dashes, starting and ending with a letter or digit"
        )
    prefix = prefix.strip("/")
    if prefix and not is_valid_key(prefix):
        raise ConfigError(f"artifacts.url = {url!r}: the prefix {prefix!r} is not a valid '/'-separated path")
    return container, prefix


def _secrets_of(connection_string: str) -> list[str]:
    """Every substring of the connection string that must not be shown, longest first."""
    secrets = [connection_string]
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in _SECRET_FIELDS and value:
            secrets.append(value)
            secrets += [p.partition("=")[2] for p in value.split("&") if p.lower().startswith("sig=")]
    secrets += [quote(s, safe="") for s in list(secrets)]
    return sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)


class AzureArtifactStore:
    """Blobs in one container, optionally under a fixed name prefix shared by several deployments."""

    def __init__(self, url: str, *, connection_string: str) -> None:
        self._url = url
        self._container_name, self._prefix = parse_url(url)
        self._secrets = _secrets_of(connection_string)
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string,
                # the storage SDK's default backoff starts at 15 s: an outage would hang calls for minutes;
                # here 3 attempts, 1-3 s then 3-5 s apart (the SDK sleeps initial + base**retry, +-jitter)
                retry_policy=ExponentialRetry(initial_backoff=0, increment_base=2, retry_total=2,
                                              random_jitter_range=1),
                connection_timeout=CONNECTION_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                max_single_put_size=BLOCK_BYTES, max_block_size=BLOCK_BYTES,
            )
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"artifacts.url = {url!r}: the Azure connection string is malformed ({self._redact(e)}); "
                "expected 'DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...' or a BlobEndpoint "
                "with a SharedAccessSignature"
            ) from None
        self._container = self._service.get_container_client(self._container_name)
        self._closed = False

    def __repr__(self) -> str:
        return f"AzureArtifactStore({self._url!r})"

    @property
    def url(self) -> str:
        return self._url

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _key(self, name: str) -> str:
        return name[len(self._prefix) + 1 :] if self._prefix else name

    def _redact(self, error: BaseException | str) -> str:
        text = " ".join(str(error).split()) or type(error).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def _reason(self, error: BaseException) -> str:
        """One short line: the SDK's messages run to XML bodies and request ids."""
        if isinstance(error, HttpResponseError):
            code = getattr(error, "error_code", None) or ""
            status = error.status_code if error.status_code is not None else "?"
            return self._redact(f"HTTP {status} {code}: {error.reason or type(error).__name__}")
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return self._redact(first_line)

    async def _call(self, operation: Awaitable[T], *, key: str | None = None) -> T:
        """Await an SDK call, mapping its errors to mlplat's.

        A missing blob is NotFound (when the call is about a key); a service that cannot serve us (no answer,
        5xx, throttled, credentials refused, container gone) is BackendUnavailable; a refused request is
        BackendError.

        `from None` everywhere: the SDK's exceptions carry requests and headers that must not reach a log.
        """
        try:
            return await operation
        except ResourceNotFoundError as e:
            if key is not None and getattr(e, "error_code", None) != "ContainerNotFound":
                raise NotFound(f"artifact {key!r} not found in {self._url}") from None
            raise BackendUnavailable(
                f"artifact store {self._url} unreachable: container {self._container_name!r} does not exist "
                "(deleted after connect?)"
            ) from None
        except HttpResponseError as e:
            status = e.status_code or 0
            if status >= 500 or status in _UNAVAILABLE_STATUSES:
                raise self._unavailable(e) from None
            raise BackendError(f"artifact store {self._url}: {self._reason(e)}") from None
        except (AzureError, aiohttp.ClientError, OSError, TimeoutError) as e:
            raise self._unavailable(e) from None

    def _unavailable(self, error: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"artifact store {self._url} unreachable: {self._reason(error)}")

    async def connect(self) -> None:
        """Create the container if missing; fail within CONNECT_DEADLINE_S when nobody answers."""

        async def ensure_container() -> None:
            try:
                await self._container.get_container_properties()
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # another process created it meanwhile
                    await self._container.create_container()

        try:
            async with asyncio.timeout(CONNECT_DEADLINE_S):
                await self._call(ensure_container())
        except TimeoutError:
            raise BackendUnavailable(
                f"artifact store {self._url} unreachable: no answer within {CONNECT_DEADLINE_S:g} s"
            ) from None

    async def ping(self) -> None:
        """One attempt, no retries: the monitor calls again on its own schedule."""
        await self._call(self._container.get_container_properties(retry_total=0))

    async def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> ArtifactInfo:
        name = self._name(key)
        user = validate_metadata(metadata)
        sha = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())  # large models: off the loop
        wire = {n: encode_metadata_value(v) for n, v in user.items()}
        wire[SHA_KEY] = sha
        blob = self._container.get_blob_client(name)
        upload = blob.upload_blob(data, length=len(data), overwrite=True, metadata=wire, max_concurrency=4)
        await self._call(upload, key=key)
        return ArtifactInfo(key, len(data), sha, user)

    async def get(self, key: str) -> bytes:
        blob = self._container.get_blob_client(self._name(key))

        async def download() -> bytes:
            stream = await blob.download_blob(max_concurrency=4)
            return await stream.readall()

        return await self._call(download(), key=key)

    def _info(self, key: str, size: int, metadata: Mapping[str, str | None] | None) -> ArtifactInfo:
        # a listing returns an empty value as None (an empty XML element), head as ""
        meta = {n: v or "" for n, v in (metadata or {}).items()}
        sha = next((meta.pop(k) for k in list(meta) if k.lower() == SHA_KEY), None)
        if sha is None:
            return ArtifactInfo(key, size, "", meta)  # not written by mlplat: values are as someone set them
        return ArtifactInfo(key, size, sha, {n: unquote(v) for n, v in meta.items()})

    async def head(self, key: str) -> ArtifactInfo:
        blob = self._container.get_blob_client(self._name(key))
        props: Any = await self._call(blob.get_blob_properties(), key=key)
        return self._info(key, int(props.size), props.metadata)

    async def list(self, prefix: str = "") -> list[ArtifactInfo]:
        start = f"{self._prefix}/{prefix}" if self._prefix else prefix

        async def collect() -> list[ArtifactInfo]:
            found = []
            blobs = self._container.list_blobs(name_starts_with=start or None, include=["metadata"])
            async for props in blobs:
                key = self._key(props.name)
                if is_valid_key(key):  # blobs put there by other tools that no key could address are skipped
                    found.append(self._info(key, int(props.size), props.metadata))
            return found

        return sorted(await self._call(collect()), key=lambda i: i.key)

    async def delete(self, key: str) -> None:
        blob = self._container.get_blob_client(self._name(key))
        await self._call(blob.delete_blob(), key=key)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._container.close()
        await self._service.close()
