"""The production event bus on Kafka (aiokafka): one shared producer, one consumer per group member.

Offsets are never auto-committed: the caller commits after its warehouse commit (DESIGN.md §5).
aiokafka reconnects by itself after a broker outage, so the same KafkaBus works again once the broker is
back; every call here has a deadline so an outage surfaces as BackendUnavailable instead of a hang.

Caveat: a publish that timed out may still have reached the broker (and a plain, non-idempotent producer
may write a retried batch twice), so delivery is at-least-once end to end, like the consumer side.

Broker quirks handled here (found against the Tansu broker the integration tests use):
- Tansu refuses InitProducerId, so an idempotent producer cannot start there; connect() falls back to
  acks="all" without idempotence (and logs it) when the broker answers but refuses idempotence.
- Tansu reports a partition's high watermark as the last batch's base offset + 1, which is short after a
  multi-record batch; end_offsets() reads the last batch to correct that (a no-op on Kafka).
- Tansu auto-creates an unknown topic with 4 partitions (Kafka's default is 1); create topics explicitly.
- Tansu holds a group join for half the session timeout; `session_timeout_ms` is a constructor argument.
- Tansu keeps a group at generation 0 when its only member rejoins, and answers that member's SyncGroup with
  the previous assignment: after a restart that lost the topics (or a topic recreated with more
  partitions), the member never reads the new partitions, with no error. A consumer stuck like that (or
  out of its group, or without a coordinator) for `consumer_stall_s` while the broker answers is closed and
  created again (KafkaConsumer's watchdog); the new member resumes from the committed offsets.

TLS and SASL (PLAIN, SCRAM-SHA-256/512) go to every client. aiokafka only logs why a TLS or SASL handshake
failed (then raises "Unable to bootstrap", or a bare KeyError for a refused SCRAM login), so connect() first
opens one connection of its own and reports the reason (check_login).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from mlplat.backends.bus import Message, TopicPartition
from mlplat.backends.security import SaslLogin, TlsFiles
from mlplat.errors import BackendError, BackendUnavailable, ConfigError, NotFound
from mlplat.observability.logging import get_logger

if TYPE_CHECKING:
    from mlplat.observability.metrics import Metrics

T = TypeVar("T")
log = get_logger("bus")

CONNECT_TIMEOUT_S = 10.0
"""connect() gives up after this, for all three clients together: start-up must fail fast and clearly."""
CALL_TIMEOUT_S = 10.0
"""Bound on one call (publish, commit, metadata...), retries included."""
REQUEST_TIMEOUT_MS = 8_000
"""aiokafka's own request/batch expiry, below CALL_TIMEOUT_S: a publish that fails was dropped by the client
rather than left queued to go out after the caller was told it failed."""
PING_TIMEOUT_S = 5.0
CONSUMER_START_TIMEOUT_S = 30.0
"""start() returns once the group gave this member its partitions, which waits for the others to rejoin."""
DEFAULT_SESSION_TIMEOUT_MS = 10_000
"""A member silent this long is dropped from its group (Kafka brokers accept 6,000 to 1,800,000)."""
DEFAULT_CONSUMER_STALL_S = 30.0
"""A consumer stuck this long is rebuilt (bus.consumer_stall_s): well above the session timeout, the longest a
healthy rebalance keeps a member out of its group."""
END_OFFSET_READ_S = 2.0
# a fetch the broker holds open returns at the latest after this (see _consumer_options)
FETCH_MAX_WAIT_MS = 50


def bootstrap_servers(url: str) -> str:
    """kafka://h1:9092,h2:9092 -> 'h1:9092,h2:9092' (urlsplit cannot parse several hosts)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        raise ConfigError(
            f"bus.url = {display_url(url)!r}: credentials do not go in kafka:// URLs: set bus.sasl_mechanism, "
            "bus.sasl_username and MLPLAT_BUS__SASL_PASSWORD (or bus.sasl_password_file)"
        )
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    if not hosts:
        raise ConfigError(f"bus.url = {display_url(url)!r}: no broker address (expected kafka://host:9092)")
    out = []
    for h in hosts:
        host, _, port = h.rpartition(":") if ":" in h else (h, "", "9092")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bus.url = {display_url(url)!r}: {h!r} is not host:port")
        out.append(f"{host}:{port}")
    return ",".join(out)


def display_url(url: str) -> str:
    """The URL with any password hidden (redact_url cannot parse a comma-separated host list)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    userinfo, _, hosts = netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hosts}{slash}{tail}"


def _is_outage(e: BaseException) -> bool:
    """Errors meaning 'cannot reach the broker now' (retry later) rather than 'the request is wrong'."""
    return isinstance(e, KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError | RequestTimedOutError
                      | OSError | TimeoutError) or bool(getattr(e, "retriable", False))


class KafkaBus:
    """An EventBus on a Kafka cluster; safe to share between the tasks of one event loop."""

    def __init__(self, url: str, *, session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
                 tls: TlsFiles | None = None, sasl: SaslLogin | None = None,
                 consumer_stall_s: float = DEFAULT_CONSUMER_STALL_S, metrics: Metrics | None = None) -> None:
        """tls: connect over TLS with these files (TlsFiles("bus") for the system's CAs); sasl: log in.
        consumer_stall_s: how long a consumer may stay stuck before it is rebuilt (counted in metrics)."""
        self._url = display_url(url)
        self._servers = bootstrap_servers(url)
        self._session_timeout_ms = session_timeout_ms
        self._consumer_stall_s = consumer_stall_s
        self._metrics = metrics
        self._sasl = sasl
        self._ssl_context = None if tls is None else tls.context()  # files are read now: errors at start-up
        self._client_cert = tls is not None and tls.cert_file is not None
        self._security = _security_options(self._ssl_context, sasl)  # for every aiokafka client
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None  # group-less, for end offsets
        self._reader_lock = asyncio.Lock()
        self._consumers: set[KafkaConsumer] = set()  # started ones, stopped by aclose() if still running
        self.idempotent = False
        """Whether the producer runs with enable_idempotence (False on brokers that refuse it, e.g. Tansu)."""

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"KafkaBus({self._url!r})"

    def _unreachable(self, what: str, e: BaseException) -> BackendError:
        """Translate an aiokafka/socket error into mlplat's, naming the URL (never its credentials)."""
        if isinstance(e, TimeoutError):
            return BackendUnavailable(f"bus {self._url} unreachable: {what} timed out")
        reason = str(e) or type(e).__name__
        if _is_outage(e):
            return BackendUnavailable(f"bus {self._url} unreachable: {what} failed: {reason}")
        return BackendError(f"bus {self._url}: {what} failed: {reason}")

    async def _bounded(self, what: str, awaitable: Awaitable[T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Await with a deadline, raising mlplat errors only."""
        try:
            async with asyncio.timeout(timeout_s):
                return await awaitable
        except (KafkaError, OSError, TimeoutError) as e:
            raise self._unreachable(what, e) from None

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Start the producer, the admin client and the offsets reader; BackendUnavailable within ~10 s."""
        if self._producer is not None:
            await self.ping()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        if self._ssl_context is not None or self._sasl is not None:
            await self.check_login(deadline)
        common: dict[str, Any] = {
            "bootstrap_servers": self._servers, "request_timeout_ms": REQUEST_TIMEOUT_MS, **self._security,
        }
        producer = await self._start_producer(common, deadline)
        admin = AIOKafkaAdminClient(**common)
        reader = AIOKafkaConsumer(**common, enable_auto_commit=False)
        try:
            await self._bounded("admin connect", admin.start(), max(deadline - loop.time(), 0.1))
            await self._bounded("consumer connect", reader.start(), max(deadline - loop.time(), 0.1))
        except BackendError:
            await _quietly(producer.stop())
            await _quietly(admin.close())
            await _quietly(reader.stop())
            raise
        self._producer, self._admin, self._reader = producer, admin, reader

    async def _start_producer(self, common: dict[str, Any], deadline: float) -> AIOKafkaProducer:
        """Idempotent if the broker allows it, else acks="all" alone (Tansu refuses idempotence)."""
        loop = asyncio.get_running_loop()
        for idempotent in (True, False):
            producer = AIOKafkaProducer(
                **common, acks="all", enable_idempotence=idempotent, linger_ms=2, max_batch_size=1 << 20,
            )
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as e:
                await _quietly(producer.stop())
                if idempotent and not _is_outage(e):  # the broker answered, and refused idempotence
                    reason = str(e) or type(e).__name__
                    log.warning("bus_producer_not_idempotent", url=self._url, reason=reason)
                    continue
                raise self._unreachable("connect", e) from None
            self.idempotent = idempotent
            return producer
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def check_login(self, deadline: float) -> None:
        """Connect to one broker with the TLS and SASL settings, so a failure says why: BackendError for a
        refused certificate or login (settings to fix: start-up stops at once), BackendUnavailable when no
        broker answers (start-up waits for one)."""
        loop = asyncio.get_running_loop()
        outage: BackendUnavailable | None = None
        for server in self._servers.split(","):
            host, _, port = server.rpartition(":")
            try:
                conn = await self._probe(host, int(port), self._sasl, max(deadline - loop.time(), 0.1))
            except BackendUnavailable as e:  # this broker is down: another may answer
                outage = e
                continue
            conn.close()
            return
        if outage is not None:
            raise outage

    async def _probe(self, host: str, port: int, login: SaslLogin | None, timeout_s: float) -> Any:
        """One aiokafka connection (handshakes done), its failure translated."""
        where = f"{host}:{port}"
        sasl = "" if login is None else f"SASL {login.mechanism} login as {login.username!r} at {where}"
        try:
            async with asyncio.timeout(timeout_s):
                return await create_conn(host, port, request_timeout_ms=REQUEST_TIMEOUT_MS,
                                         **_security_options(self._ssl_context, login))
        except ssl.SSLCertVerificationError as e:
            raise BackendError(f"bus {self._url}: TLS: the certificate of {where} was refused: {e.verify_message} "
                               "(check bus.tls_ca_file)") from None
        except ssl.SSLError as e:
            raise BackendError(f"bus {self._url}: TLS handshake with {where} failed: {e.reason or e}") from None
        except TimeoutError:
            waited = min(timeout_s, REQUEST_TIMEOUT_MS / 1000)  # aiokafka gives up on a connection after this
            hint = " (is it a TLS listener?)" if self._ssl_context is not None else ""
            raise BackendUnavailable(f"bus {self._url} unreachable: {where} did not answer within {waited:g}s"
                                     f"{hint}") from None
        except UnsupportedSaslMechanismError as e:
            detail = e.args[0] if e.args and isinstance(e.args[0], str) else "is SASL enabled on that listener?"
            raise BackendError(f"bus {self._url}: {sasl} refused: mechanism not offered ({detail})") from None
        except SaslAuthenticationFailed as e:
            raise BackendError(f"bus {self._url}: {sasl} refused: {e.args[0] if e.args else e}") from None
        except (KeyError, ValueError):  # aiokafka's SCRAM client, given a server-final message without a proof
            if login is None:
                raise
            raise BackendError(f"bus {self._url}: {sasl} refused (wrong username or password?)") from None
        except KafkaConnectionError as e:
            if login is not None and await self._answers(host, port, timeout_s):  # so the login made it hang up
                raise BackendError(f"bus {self._url}: {sasl}: the broker closed the connection "
                                   f"(does it offer SASL {login.mechanism}?)") from None
            hint = ""
            if self._ssl_context is not None and not self._client_cert:  # TLS 1.3 refuses one after the handshake
                hint = " (does it want a client certificate? set bus.tls_cert_file and bus.tls_key_file)"
            raise BackendUnavailable(f"bus {self._url} unreachable: connecting to {where} failed: "
                                     f"{str(e) or type(e).__name__}{hint}") from None
        except (KafkaError, OSError) as e:
            raise self._unreachable(f"connecting to {where}", e) from None

    async def _answers(self, host: str, port: int, timeout_s: float) -> bool:
        """Whether the broker takes a connection without SASL."""
        try:
            conn = await self._probe(host, port, None, timeout_s)
        except BackendError:
            return False
        conn.close()
        return True

    def _connected(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._producer is None or self._admin is None or self._reader is None:
            raise BackendUnavailable(f"bus {self._url} is not connected")
        return self._producer, self._admin, self._reader

    async def aclose(self) -> None:
        """Close every client, including consumers still running (each holds its own connections)."""
        for consumer in list(self._consumers):
            await consumer.stop()
        producer, admin, reader = self._producer, self._admin, self._reader
        self._producer = self._admin = self._reader = None
        if producer is not None:
            await _quietly(producer.stop())
        if admin is not None:
            await _quietly(admin.close())
        if reader is not None:
            await _quietly(reader.stop())

    # --- metadata -------------------------------------------------------------------------------------------
    async def _metadata(self, topics: list[str]) -> dict[str, Any]:
        """One metadata request that never auto-creates a topic (a plain one would on most brokers)."""
        producer, _, _ = self._connected()
        client = producer.client
        node = client.get_random_node()
        if node is None:
            raise BackendUnavailable(f"bus {self._url} unreachable: no broker known")
        response = await client.send(node, MetadataRequest(topics, allow_auto_topic_creation=False))
        obj: dict[str, Any] = response.to_object()
        return obj

    async def ping(self) -> None:
        await self._bounded("metadata", self._metadata([]), PING_TIMEOUT_S)

    async def _partition_counts(self, topics: list[str]) -> dict[str, int]:
        """Partition count per existing topic (absent: it does not exist); waits out leader elections."""

        async def ask() -> dict[str, int]:
            while True:
                counts: dict[str, int] = {}
                retry = False
                for t in (await self._metadata(topics))["topics"]:
                    code = t["error_code"]
                    if code == UnknownTopicOrPartitionError.errno:
                        continue
                    if code and for_code(code).retriable:  # e.g. a leader election after create
                        retry = True
                    elif code:
                        raise for_code(code)(f"topic {t['topic']!r}")
                    else:
                        counts[t["topic"]] = len(t["partitions"])
                if not retry:
                    return counts
                await asyncio.sleep(0.1)

        return await self._bounded("metadata", ask())

    async def partitions_for(self, topic: str) -> int:
        """The topic's partition count; NotFound if it does not exist."""
        counts = await self._partition_counts([topic])
        if topic not in counts:
            raise NotFound(f"bus {self._url}: topic {topic!r} does not exist")
        return counts[topic]

    async def create_topic(self, topic: str, *, partitions: int) -> None:
        """Create the topic if it does not exist (an existing one keeps its partitions), then wait until the
        brokers' metadata shows it, so a consumer or partitions_for right after sees it."""
        if partitions < 1:
            raise ValueError(f"topic {topic!r} needs at least one partition, not {partitions}")
        producer, admin, _ = self._connected()
        replicas = max(1, min(3, len(producer.client.cluster.brokers())))
        response = await self._bounded(
            "create topic", admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                          replication_factor=replicas)]),
        )
        for result in response.to_object()["topic_errors"]:
            code = result["error_code"]
            if code and code != TopicAlreadyExistsError.errno:
                error = for_code(code)(result.get("error_message") or f"topic {topic!r}")
                raise self._unreachable(f"create topic {topic!r}", error)

        async def visible() -> None:
            while True:
                if topic in await self._partition_counts([topic]):
                    return
                await asyncio.sleep(0.1)

        await self._bounded(f"create topic {topic!r} (waiting for metadata)", visible())

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to be written per partition; NotFound for a missing topic or partition."""
        _, _, reader = self._connected()
        counts = await self._partition_counts(sorted({tp.topic for tp in tps}))
        for tp in tps:
            if tp.topic not in counts:
                raise NotFound(f"bus {self._url}: topic {tp.topic!r} does not exist")
            if not 0 <= tp.partition < counts[tp.topic]:
                raise NotFound(f"bus {self._url}: topic {tp.topic!r} has no partition {tp.partition}")
        ktps = [KafkaTP(tp.topic, tp.partition) for tp in tps]
        async with self._reader_lock:
            listed = await self._bounded("end offsets", reader.end_offsets(ktps))
            ends = {tp: int(listed[tp]) for tp in ktps}
            async with self._reading(reader, [tp for tp in ktps if ends[tp] > 0]) as assigned:
                await self._correct_ends(reader, assigned, ends)
        return {TopicPartition(tp.topic, tp.partition): off for tp, off in ends.items()}

    @contextlib.asynccontextmanager
    async def _reading(self, reader: AIOKafkaConsumer, ktps: list[KafkaTP]) -> AsyncIterator[list[KafkaTP]]:
        reader.assign(ktps)
        try:
            yield ktps
        finally:
            reader.assign([])  # stop the background fetches

    async def _correct_ends(
        self, reader: AIOKafkaConsumer, ktps: list[KafkaTP], ends: dict[KafkaTP, int]
    ) -> None:
        """Read from each listed end - 1: on Kafka that is the last record; on Tansu, whose end is short after
        a multi-record batch, it is the start of the last batch, whose last record gives the true end."""
        if not ktps:
            return
        for tp in ktps:
            reader.seek(tp, ends[tp] - 1)
        pending = set(ktps)
        loop = asyncio.get_running_loop()
        # a transaction marker at end - 1 yields no record: keep the listed end for that partition
        deadline = loop.time() + END_OFFSET_READ_S
        while pending and loop.time() < deadline:
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    batches = await reader.getmany(*pending, timeout_ms=200)
            except (KafkaError, OSError, TimeoutError) as e:
                raise self._unreachable("end offsets", e) from None
            for tp, records in batches.items():
                if records:
                    ends[tp] = max(ends[tp], int(records[-1].offset) + 1)
                    pending.discard(tp)

    # --- publishing -----------------------------------------------------------------------------------------
    async def publish(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> tuple[int, int]:
        producer, _, _ = self._connected()
        meta = await self._bounded(
            "publish", producer.send_and_wait(topic, value, key=key, headers=list(headers) or None)
        )
        return int(meta.partition), int(meta.offset)

    async def publish_many(self, topic: str, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        producer, _, _ = self._connected()

        async def send_all() -> None:
            # send() only queues (it waits when the client's buffer is full); the acks arrive batch by batch
            acks = [await producer.send(topic, value, key=key) for key, value in items]
            await asyncio.gather(*acks)

        await self._bounded("publish", send_all(), CALL_TIMEOUT_S + len(items) / 10_000)

    # --- consuming ------------------------------------------------------------------------------------------
    def consumer(self, topics: Sequence[str], *, group: str) -> KafkaConsumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        return KafkaConsumer(self, list(topics), group)

    def _consumer_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self._servers, "request_timeout_ms": REQUEST_TIMEOUT_MS, **self._security,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "session_timeout_ms": self._session_timeout_ms,
            "heartbeat_interval_ms": min(1_000, self._session_timeout_ms // 3),
            "metadata_max_age_ms": 5_000,  # notice new partitions and topics within seconds
            # a fetch the broker holds open returns at the latest after this: bounds the delivery latency
            # of brokers that do not answer a held fetch as soon as data arrives (Tansu), at the cost of a
            # few more fetch requests per second while idle
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        }


class _KeepPaused(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance hands out fresh partitions, unpaused; a paused member must stay paused."""

    def __init__(self, owner: KafkaConsumer, client: AIOKafkaConsumer) -> None:
        self._owner = owner
        self._client = client

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._owner.paused:
            self._client.pause(*assigned)


class _RoundRobin:
    """aiokafka's round-robin assignor (same protocol name, so members of other versions agree), which also
    notes whether the broker handed this member, as the group's leader, the share it assigned itself."""

    name = RoundRobinPartitionAssignor.name
    version = RoundRobinPartitionAssignor.version

    def __init__(self) -> None:
        self.client: AIOKafkaConsumer | None = None
        self.short = False
        """The last assignment received is not the one this member computed for itself as the leader."""
        self._led: tuple[tuple[int, str], set[KafkaTP]] | None = None

    def metadata(self, topics: Any) -> Any:
        return RoundRobinPartitionAssignor.metadata(topics)

    def assign(self, cluster: Any, members: Any) -> Any:
        assignments = RoundRobinPartitionAssignor.assign(cluster, members)
        identity = _identity(self.client)
        own = assignments.get(identity[1])
        self._led = (identity, set() if own is None else set(own.partitions()))
        return assignments

    def on_assignment(self, assignment: Any) -> None:
        led, self._led = self._led, None
        self.short = led is not None and led[0] == _identity(self.client) and led[1] != set(assignment.partitions())


def _identity(client: AIOKafkaConsumer | None) -> tuple[int, str]:
    """(generation, member id) of the client's group membership."""
    assert client is not None
    return int(client._coordinator.generation), str(client._coordinator.member_id)


def _stall_reason(client: AIOKafkaConsumer, assignor: _RoundRobin) -> str | None:
    """Why the client cannot be reading its share of the topics, from its own group state (aiokafka's private
    attributes: it has no public view of its membership); None for a member in its group with its partitions,
    whether or not anything arrives, and with none when the group has more members than partitions."""
    coordinator = client._coordinator
    subscription = client._subscription.subscription
    if coordinator is None or subscription is None:
        return None
    if coordinator.coordinator_id is None:
        return "coordinator_unknown"
    if coordinator.need_rejoin(subscription):
        return "not_joined"
    if assignor.short:
        return "stale_assignment"
    return None


class KafkaConsumer:
    """One member of a consumer group (an AIOKafkaConsumer, created on start).

    poll() is also a watchdog: a client stuck (see _stall_reason) for the bus's consumer_stall_s while the broker
    answers a ping is closed and replaced by a new one, which resumes from the committed offsets. Until the new
    one has its partitions, poll() returns nothing and the other calls raise BackendUnavailable.
    """

    def __init__(self, bus: KafkaBus, topics: list[str], group: str) -> None:
        self._bus = bus
        self._topics = topics
        self._group = group
        self.client: AIOKafkaConsumer | None = None
        self.paused = False
        self.rebuilds = 0
        """Clients replaced by the watchdog."""
        self._assignor = _RoundRobin()
        self._running = False  # between start() and stop(), also while the client is being replaced
        self._stalled_since: float | None = None
        self._rebuild: asyncio.Task[None] | None = None
        self._rebuild_reason = ""
        self._rebuild_error: BackendError | None = None

    def _started(self) -> AIOKafkaConsumer:
        if self.client is None:
            if self._running:
                self._replace(None)  # after a replacement that could not start: try again
                raise self._rebuild_error or BackendUnavailable(
                    f"bus {self._bus.url}: the consumer of group {self._group!r} is being rebuilt")
            self._bus._connected()  # a closed bus stopped its consumers: BackendUnavailable, as on memory://
            raise RuntimeError("the consumer is not started (or was stopped)")
        return self.client

    async def _open(self) -> tuple[AIOKafkaConsumer, _RoundRobin]:
        """A new client in the group; returns once it has its partitions."""
        self._bus._connected()
        assignor = _RoundRobin()
        client = AIOKafkaConsumer(group_id=self._group, partition_assignment_strategy=(assignor,),
                                  **self._bus._consumer_options())
        assignor.client = client
        client.subscribe(self._topics, listener=_KeepPaused(self, client))
        try:
            await self._bus._bounded("consumer start", client.start(), CONSUMER_START_TIMEOUT_S)
        except BaseException:  # cancelled too: a half-started client would stay in the group
            await _quietly(client.stop())
            raise
        return client, assignor

    async def start(self) -> None:
        """Join the group; returns once this member has its partitions."""
        if self._running:
            return
        self.client, self._assignor = await self._open()
        self._running = True
        self._stalled_since = None
        self._bus._consumers.add(self)

    async def poll(self, *, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Message]]:
        if self.client is None and self._running:  # being replaced: wait for it, up to timeout_s
            await asyncio.wait({self._replace(None)}, timeout=max(timeout_s, 0))
            if self.client is None and self._rebuild_error is not None:
                raise self._rebuild_error
            return {}
        client = self._started()
        try:
            async with asyncio.timeout(max(timeout_s, 0) + CALL_TIMEOUT_S):
                batches = await client.getmany(timeout_ms=max(int(timeout_s * 1000), 0), max_records=max_records)
        except (KafkaError, OSError, TimeoutError) as e:
            raise self._bus._unreachable("poll", e) from None
        await self._watch(client)
        return {
            TopicPartition(tp.topic, tp.partition): [_message(r) for r in records]
            for tp, records in batches.items() if records
        }

    async def _watch(self, client: AIOKafkaConsumer) -> None:
        """Replace the client once it has been stuck for consumer_stall_s and the broker answers (when it does
        not, this is an outage, which aiokafka rides out by itself: the clock starts again)."""
        reason = _stall_reason(client, self._assignor)
        now = asyncio.get_running_loop().time()
        if reason is None or self.client is not client:
            self._stalled_since = None
            return
        if self._stalled_since is None:
            self._stalled_since = now
        stalled_s = now - self._stalled_since
        if stalled_s < self._bus._consumer_stall_s:
            return
        try:
            await self._bus.ping()
        except BackendError:
            self._stalled_since = asyncio.get_running_loop().time()
            return
        if self.client is not client:  # a concurrent poll replaced it, or stop() ran
            return
        log.warning("bus_consumer_stalled", group=self._group, topics=self._topics, reason=reason,
                    stalled_s=round(stalled_s, 1))
        self.client, self._stalled_since, self._rebuild_reason = None, None, reason
        self._replace(client)

    def _replace(self, old: AIOKafkaConsumer | None) -> asyncio.Task[None]:
        """The task replacing the client (closing `old` first), started unless one is under way."""
        if self._rebuild is None or self._rebuild.done():
            self._rebuild_error = None
            self._rebuild = asyncio.create_task(self._rebuilt(old), name=f"bus-consumer-rebuild-{self._group}")
        return self._rebuild

    async def _rebuilt(self, old: AIOKafkaConsumer | None) -> None:
        if old is not None:
            await _quietly(old.stop())
        try:
            client, assignor = await self._open()
        except BackendError as e:  # the next poll or call tries again
            self._rebuild_error = e
            log.error("bus_consumer_rebuild_failed", group=self._group, reason=self._rebuild_reason, error=str(e))
            return
        if not self._running:  # stopped meanwhile
            await _quietly(client.stop())
            return
        self.client, self._assignor, self._rebuild_error = client, assignor, None
        self.rebuilds += 1
        if self._bus._metrics is not None:
            self._bus._metrics.bus_consumer_rebuilds.labels(self._group, self._rebuild_reason).inc()
        log.warning("bus_consumer_rebuilt", group=self._group, topics=self._topics, reason=self._rebuild_reason,
                    assignment=sorted(f"{tp.topic}/{tp.partition}" for tp in client.assignment()))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        client = self._started()
        await self._bus._bounded(
            "commit", client.commit({KafkaTP(tp.topic, tp.partition): off for tp, off in offsets.items()})
        )

    async def committed(self, tp: TopicPartition) -> int | None:
        client = self._started()
        value = await self._bus._bounded("committed", client.committed(KafkaTP(tp.topic, tp.partition)))
        return None if value is None else int(value)

    def assignment(self) -> set[TopicPartition]:
        if self.client is None:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self.client.assignment()}

    async def seek_to_committed(self) -> None:
        client = self._started()
        for tp in client.assignment():
            committed = await self._bus._bounded("committed", client.committed(tp))
            if committed is None:
                await self._bus._bounded("seek", client.seek_to_beginning(tp))
            else:
                client.seek(tp, committed)

    def pause(self) -> None:
        self.paused = True
        if self.client is not None:
            self.client.pause(*self.client.assignment())

    def resume(self) -> None:
        self.paused = False
        if self.client is not None:
            self.client.resume(*self.client.paused())

    async def stop(self) -> None:
        """Leave the group, so the others take over its partitions without waiting for the session timeout.

        aiokafka sends LeaveGroup only from generation 1 on; Tansu numbers generations from 0, so there a
        member stopped in the group's first generation lingers until its session times out.
        """
        self._running = False
        client, self.client = self.client, None
        rebuild, self._rebuild = self._rebuild, None
        self._bus._consumers.discard(self)
        if rebuild is not None and not rebuild.done():
            rebuild.cancel()
            await asyncio.wait({rebuild})
        if client is not None:
            await _quietly(client.stop())


def _security_options(context: ssl.SSLContext | None, sasl: SaslLogin | None) -> dict[str, Any]:
    if sasl is None:
        return {"security_protocol": "PLAINTEXT"} if context is None else {
            "security_protocol": "SSL", "ssl_context": context}
    return {
        "security_protocol": "SASL_PLAINTEXT" if context is None else "SASL_SSL", "ssl_context": context,
        "sasl_mechanism": sasl.mechanism, "sasl_plain_username": sasl.username,
        "sasl_plain_password": sasl.password,
    }


def _message(record: Any) -> Message:
    headers = tuple((str(k), bytes(v or b"")) for k, v in (record.headers or ()))
    return Message(
        record.topic, int(record.partition), int(record.offset), record.key,
        b"" if record.value is None else record.value, int(record.timestamp), headers,
    )


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Close a client after a failure; errors here would only hide the original one."""
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await awaitable
    except Exception:  # nothing useful to report beyond the original error
        return
