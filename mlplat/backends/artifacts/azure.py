"""The production artifact store on Azure Blob Storage (azure-storage-blob, async client).

azure://CONTAINER[/prefix]: the account comes from the connection string (env or secret file, never the
URL or a config file). The sha256 of every blob travels in its metadata. The SDK's own retries are capped
so an unreachable endpoint fails within seconds, and no error text ever carries the account key.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, ExponentialRetry

from mlplat.backends.artifacts import ArtifactInfo
from mlplat.backends.artifacts.file import validate_key
from mlplat.errors import BackendError, BackendUnavailable, NotFound

T = TypeVar("T")
SHA_KEY = "mlplat_sha256"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_container(url: str) -> tuple[str, str]:
    rest = url.split("://", 1)[1]
    container, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", container):
        raise ValueError(
            f"artifacts.url = {url!r}: container {container!r} must be 3-63 lower-case letters, digits and dashes"
        )
    return container, prefix.strip("/")


class AzureArtifactStore:
    def __init__(self, url: str, *, connection_string: str) -> None:
        self._url = url
        self._container_name, self._prefix = parse_container(url)
        self._secret_parts = [p for p in connection_string.split(";") if p.lower().startswith("accountkey=")]
        self._service = BlobServiceClient.from_connection_string(
            connection_string,
            # the storage SDK's default backoff starts at 15 s: an outage would hang calls for minutes
            retry_policy=ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2),
            connection_timeout=3, read_timeout=30,
            # 1 MiB requests: aiohttp writes each body in one go, and large single writes stall the loop
            max_single_put_size=1 << 20, max_block_size=1 << 20,
        )
        self._container: ContainerClient = self._service.get_container_client(self._container_name)

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

    def _clean(self, error: BaseException) -> str:
        text = " ".join(str(error).split()) or type(error).__name__
        for part in self._secret_parts:
            text = text.replace(part, "AccountKey=***").replace(part.split("=", 1)[1], "***")
        return text[:300]

    async def _call(self, awaitable: Awaitable[T], key: str | None = None) -> T:
        try:
            return await awaitable
        except ResourceNotFoundError:
            raise NotFound(f"artifact {key!r} not found in {self._url}") from None
        except (ServiceRequestError, ServiceResponseError, OSError) as e:
            raise BackendUnavailable(f"artifact store {self._url} unreachable: {self._clean(e)}") from None
        except AzureError as e:
            raise BackendError(f"artifact store {self._url}: {self._clean(e)}") from None

    async def connect(self) -> None:
        try:
            await self._call(self._container.create_container())
        except BackendError as e:
            if isinstance(e, BackendUnavailable):
                raise
            if "ContainerAlreadyExists" not in str(e):
                raise
        except ResourceExistsError:
            pass

    async def ping(self) -> None:
        await self._call(self._container.get_container_properties())

    async def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> ArtifactInfo:
        name = self._name(key)
        user = dict(metadata or {})
        for field in user:
            if not _IDENTIFIER.match(field) or field.lower() == SHA_KEY:
                raise ValueError(
                    f"artifact metadata key {field!r}: Azure needs identifiers (letters, digits, _), not {SHA_KEY}"
                )
        sha = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())  # large models: off the loop
        blob = self._container.get_blob_client(name)
        body = io.BytesIO(data)  # streamed in chunks rather than one large write on the loop
        await self._call(blob.upload_blob(
            body, length=len(data), overwrite=True, metadata={**user, SHA_KEY: sha}, max_concurrency=4), key)
        return ArtifactInfo(key, len(data), sha, user)

    async def get(self, key: str) -> bytes:
        blob = self._container.get_blob_client(self._name(key))

        async def download() -> bytes:
            stream = await blob.download_blob()
            return bytes(await stream.readall())

        return await self._call(download(), key)

    def _info(self, key: str, size: int, metadata: Mapping[str, str] | None) -> ArtifactInfo:
        meta = dict(metadata or {})
        sha = next((meta.pop(k) for k in list(meta) if k.lower() == SHA_KEY), "")
        return ArtifactInfo(key, size, sha, meta)

    async def head(self, key: str) -> ArtifactInfo:
        blob = self._container.get_blob_client(self._name(key))
        props: Any = await self._call(blob.get_blob_properties(), key)
        return self._info(key, int(props.size), props.metadata)

    async def list(self, prefix: str = "") -> list[ArtifactInfo]:
        start = f"{self._prefix}/{prefix}" if self._prefix else prefix

        async def collect() -> list[ArtifactInfo]:
            found = []
            async for props in self._container.list_blobs(name_starts_with=start or None, include=["metadata"]):
                found.append(self._info(self._key(props.name), int(props.size), props.metadata))
            return found

        return sorted(await self._call(collect()), key=lambda i: i.key)

    async def delete(self, key: str) -> None:
        blob = self._container.get_blob_client(self._name(key))
        await self._call(blob.delete_blob(), key)

    async def aclose(self) -> None:
        await self._container.close()
        await self._service.close()
