"""Azure endpoints that are absent, silent or go away: bounded, secret-free errors, then recovery."""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections.abc import Iterator

import pytest

from mlplat.backends.artifacts import azure as azure_store
from mlplat.backends.artifacts import open_artifact_store
from mlplat.errors import BackendUnavailable, ConfigError
from tests.secrets import SAS_SIGNATURE
from tests.servers import AZURITE_KEY, ServerProcess, azurite_connection_string, free_port

pytestmark = pytest.mark.integration

SAS_SIG = SAS_SIGNATURE


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked"


def everything_shown(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """All the text an operator could see: message, repr, formatted traceback and every log record."""
    return "\n".join([str(error), repr(error), *traceback.format_exception(error), caplog.text])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and then never answers, like a hung proxy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


async def test_unreachable_endpoint_fails_connect_quickly_without_leaking_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listening: connect fails within seconds naming the URL, and no text shows the key."""
    caplog.set_level(logging.DEBUG)  # the SDK's own request logging must not leak it either
    conn = azurite_connection_string(free_port())
    store = open_artifact_store("azure://models", connection_string=conn)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"^artifact store azure://models unreachable: ") as err:
        await store.connect()
    assert time.monotonic() - started < 12
    assert_no_secret(everything_shown(err.value, caplog) + repr(store) + str(store), AZURITE_KEY, conn)
    await store.aclose()


async def test_a_sas_connection_string_is_not_leaked_either(caplog: pytest.LogCaptureFixture) -> None:
    """With a SAS token instead of an account key, neither the token nor its signature appears anywhere."""
    caplog.set_level(logging.DEBUG)
    sas = f"sv=2022-11-02&ss=b&srt=sco&sp=rwdlc&se=2099-01-01T00:00:00Z&sig={SAS_SIG}"
    conn = f"BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;SharedAccessSignature={sas}"
    store = open_artifact_store("azure://models/team-a", connection_string=conn)
    with pytest.raises(BackendUnavailable) as err:
        await store.connect()
    assert_no_secret(everything_shown(err.value, caplog) + repr(store), SAS_SIG, sas, conn)
    await store.aclose()


async def test_a_silent_endpoint_fails_connect_at_the_deadline(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections but never answers cannot hang start-up past the deadline."""
    monkeypatch.setattr(azure_store, "CONNECT_DEADLINE_S", 1.5)
    store = open_artifact_store("azure://models", connection_string=azurite_connection_string(silent_server))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"no answer within 1\.5 s"):
        await store.connect()
    assert time.monotonic() - started < 5
    await store.aclose()


async def test_the_same_store_fails_while_azure_is_down_and_works_after_it_returns(
    azurite_server: ServerProcess, azure_connection_string: str, unique_name: str
) -> None:
    """Azure stopped: calls raise BackendUnavailable; restarted: the same store object reads and writes."""
    store = open_artifact_store(f"azure://r{unique_name}", connection_string=azure_connection_string)
    await store.connect()
    await store.put("m/1", b"v1")
    azurite_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="unreachable") as err:
            await store.get("m/1")
        assert time.monotonic() - started < 12
        with pytest.raises(BackendUnavailable):
            await store.ping()
        assert_no_secret(str(err.value), AZURITE_KEY, azure_connection_string)
    finally:
        azurite_server.start()  # other tests share this server: leave it running
    await store.ping()
    assert await store.get("m/1") == b"v1"  # Azurite keeps blobs on disk across restarts
    await store.put("m/2", b"v2")
    assert [i.key for i in await store.list("m/")] == ["m/1", "m/2"]
    await store.aclose()


async def test_a_url_prefix_keeps_keys_inside_their_own_namespace(
    azure_connection_string: str, unique_name: str
) -> None:
    """azure://CONTAINER/prefix stores key k as blob prefix/k and lists only its own keys, unprefixed."""
    scoped = open_artifact_store(f"azure://p{unique_name}/team-a/", connection_string=azure_connection_string)
    whole = open_artifact_store(f"azure://p{unique_name}", connection_string=azure_connection_string)
    try:
        await scoped.connect()
        await whole.put("elsewhere", b"other")
        info = await scoped.put("m/1", b"v1")
        assert await scoped.list() == [info]
        assert [i.key for i in await whole.list()] == ["elsewhere", "team-a/m/1"]
        assert (await whole.head("team-a/m/1")).sha256 == info.sha256
    finally:
        await scoped.aclose()
        await whole.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("azure://Models", "lower-case"),
        ("azure://ab", "3-63"),
        ("azure://models/a//b", "prefix"),
        ("azure://models/../x", "prefix"),
    ],
)
def test_bad_container_or_prefix_is_a_config_error(url: str, message: str) -> None:
    """A URL Azure cannot address fails at construction with a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=f"artifacts.url = .*{message}"):
        open_artifact_store(url, connection_string=azurite_connection_string(free_port()))


def test_a_malformed_connection_string_is_a_config_error_without_its_content() -> None:
    """A connection string the SDK cannot parse is a ConfigError that does not repeat the string."""
    conn = "not-a-connection-string-AccountKey-" + AZURITE_KEY
    with pytest.raises(ConfigError, match="connection string is malformed") as err:
        open_artifact_store("azure://models", connection_string=conn)
    assert_no_secret(str(err.value), AZURITE_KEY, conn)
