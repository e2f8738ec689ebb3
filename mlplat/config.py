"""Typed settings: field defaults (mirrored by config/default.toml) < --config FILE < MLPLAT_* env < CLI flags.

Read once at start-up and passed down; nothing else reads os.environ. Errors name the key, the value and
what was expected, on one line.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mlplat.backends import artifacts, bus, hotstore
from mlplat.backends.security import SaslLogin, SaslMechanism, TlsFiles
from mlplat.backends.urls import redact_url, scheme_of
from mlplat.errors import ConfigError

_config_file: ContextVar[dict[str, Any] | None] = ContextVar("_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_scheme(url: str, schemes: tuple[str, ...]) -> str:
    scheme = scheme_of(url)
    if scheme not in schemes:
        raise ValueError(f"unknown scheme {scheme!r} (expected {', '.join(schemes)})")
    return url


def _read_secret_file(path: Path | None, key: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"config: {key} = {str(path)!r}: cannot read secret file ({e.strerror})") from None


class HotStoreSettings(_Section):
    url: str = Field("memory://", description="memory:// (embedded), redis://host:6379/0 or rediss:// (TLS)")
    username: str | None = Field(None, description="Redis ACL user, with the password below (default: the URL's "
                                                   "user, else Redis' default user)")
    password: SecretStr | None = Field(None, description="Redis password; set by env, never in a file")
    password_file: Path | None = Field(None, description="file holding the Redis password")
    tls_ca_file: Path | None = Field(None, description="rediss://: PEM CA bundle the server's certificate must "
                                                      "chain to (default: the system's CAs)")
    tls_cert_file: Path | None = Field(None, description="rediss://: PEM client certificate, for a server "
                                                        "that asks for one")
    tls_key_file: Path | None = Field(None, description="rediss://: PEM private key of tls_cert_file")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, hotstore.SCHEMES)

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        return _read_secret_file(self.password_file, "hot_store.password_file")

    def login(self) -> tuple[str | None, str | None]:
        """(username, password) for Redis; an ACL user without a password is a ConfigError, not a late
        WRONGPASS."""
        password = self.secret()
        if self.username and not password and not urlsplit(self.url).password:
            raise ConfigError(f"config: hot_store.username = {self.username!r} needs a password: set "
                              "MLPLAT_HOT_STORE__PASSWORD or hot_store.password_file")
        return self.username or None, password

    def tls(self) -> TlsFiles | None:
        """The TLS client files of a rediss:// URL, read now (None: no TLS)."""
        if scheme_of(self.url) != "rediss":
            for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"config: hot_store.{key} is set but hot_store.url = "
                                      f"{redact_url(self.url)!r} does not use TLS: use a rediss:// URL")
            return None
        files = TlsFiles("hot_store", self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        files.context()
        return files


class BusSettings(_Section):
    url: str = Field("memory://", description="memory:// (embedded) or kafka://host:9092[,host:9092]")
    tls: bool = Field(False, description="connect to the brokers over TLS (SSL), verified against tls_ca_file")
    tls_ca_file: Path | None = Field(None, description="PEM CA bundle the brokers' certificates must chain to "
                                                      "(default: the system's CAs)")
    tls_cert_file: Path | None = Field(None, description="PEM client certificate, for brokers that ask for one")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL login: PLAIN, SCRAM-SHA-256 or "
                                                                   "SCRAM-SHA-512; none: no login")
    sasl_username: str | None = Field(None, description="SASL user (Azure Event Hubs: $ConnectionString)")
    sasl_password: SecretStr | None = Field(None, description="SASL password; set by env, never in a file")
    sasl_password_file: Path | None = Field(None, description="file holding the SASL password")
    consumer_stall_s: float = Field(30.0, gt=0, description="a Kafka consumer stuck this long (out of its group, "
                                    "no coordinator, or short of its partitions) while the broker answers is "
                                    "closed and created again")
    session_timeout_ms: int = Field(10_000, ge=1_000, description="a Kafka consumer silent this long (killed, "
                                    "hung) leaves its group, whose partitions go to the others; the broker "
                                    "bounds it (Kafka's default: 6000 to 1800000)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, bus.SCHEMES)

    @field_validator("sasl_mechanism", mode="before")
    @classmethod
    def _mechanism(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _stall_above_session(self) -> BusSettings:
        if self.consumer_stall_s * 1000 <= self.session_timeout_ms:
            raise ValueError("consumer_stall_s must be longer than session_timeout_ms: a healthy rebalance keeps a "
                             "member out of its group for up to a session")
        return self

    def security(self) -> tuple[TlsFiles | None, SaslLogin | None]:
        """TLS files (read now) and the SASL login for the Kafka clients; settings that cannot work together
        are a ConfigError naming the key."""
        password = (self.sasl_password.get_secret_value() if self.sasl_password is not None
                    else _read_secret_file(self.sasl_password_file, "bus.sasl_password_file"))
        set_keys = [key for key in ("tls_ca_file", "tls_cert_file", "tls_key_file", "sasl_mechanism",
                                    "sasl_username", "sasl_password", "sasl_password_file")
                    if getattr(self, key) is not None] + (["tls"] if self.tls else [])
        if scheme_of(self.url) != "kafka":
            if set_keys:
                raise ConfigError(f"config: bus.{set_keys[0]} is set but bus.url = {redact_url(self.url)!r} "
                                  "connects to no broker: use a kafka:// URL")
            return None, None
        if not self.tls:
            for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"config: bus.{key} is set but bus.tls = false: set bus.tls = true")
        files = TlsFiles("bus", self.tls_ca_file, self.tls_cert_file, self.tls_key_file) if self.tls else None
        if files is not None:
            files.context()
        if self.sasl_mechanism is None:
            for key in ("sasl_username", "sasl_password", "sasl_password_file"):
                if key in set_keys:
                    raise ConfigError(f"config: bus.{key} is set but bus.sasl_mechanism is not: set it to PLAIN, "
                                      "SCRAM-SHA-256 or SCRAM-SHA-512")
            return files, None
        if not self.sasl_username:
            raise ConfigError(f"config: bus.sasl_mechanism = {self.sasl_mechanism!r} needs bus.sasl_username")
        if not password:
            raise ConfigError(f"config: bus.sasl_username = {self.sasl_username!r} needs a password: set "
                              "MLPLAT_BUS__SASL_PASSWORD or bus.sasl_password_file")
        return files, SaslLogin(self.sasl_mechanism, self.sasl_username, password)


class ArtifactSettings(_Section):
    url: str = Field("file://./.mlplat/artifacts", description="file://DIR or azure://CONTAINER[/prefix]")
    connection_string: SecretStr | None = Field(None, description="Azure Storage connection string (env)")
    connection_string_file: Path | None = Field(None, description="file holding the connection string")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, artifacts.SCHEMES)

    def secret(self, environ: dict[str, str]) -> str | None:
        if self.connection_string is not None:
            return self.connection_string.get_secret_value()
        from_file = _read_secret_file(self.connection_string_file, "artifacts.connection_string_file")
        return from_file or environ.get("AZURE_STORAGE_CONNECTION_STRING")


class WarehouseSettings(_Section):
    url: str = Field("duckdb://./.mlplat/warehouse.duckdb", description="duckdb://PATH or duckdb://:memory:")
    queue_size: int = Field(1024, ge=1, description="write commands waiting before writers are held back")
    max_batch_commands: int = Field(512, ge=1, description="commands folded into one group commit")
    max_batch_rows: int = Field(2_000_000, ge=1, description="rows folded into one group commit")
    read_threads: int = Field(4, ge=1, le=64, description="threads serving read queries")
    query_timeout_s: float = Field(30.0, gt=0, description="a read query running longer is interrupted")
    query_max_rows: int = Field(100_000, ge=1, description="rows a user query may return")
    cache_enabled: bool = Field(True, description="answer repeated read queries from the hot store")
    cache_ttl_s: float = Field(300.0, gt=0, description="lifetime of a cached query result")
    cache_max_bytes: int = Field(8 * 1024 * 1024, ge=0, description="larger results are not cached")
    memory_limit: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory_limit, e.g. '512MB' (default: DuckDB's own, 80% of RAM); with it, DuckDB "
                    "keeps the event-id indexes of checkpointed data on disk instead of in memory")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, ("duckdb",))

    @property
    def path(self) -> str:
        """The DuckDB database: a file path, or ':memory:'."""
        rest = self.url.split("://", 1)[1]
        return rest or ":memory:"


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="gRPC bind address (loopback unless you mean it)")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    http_host: str = Field("127.0.0.1", description="HTTP bind address for /metrics, /healthz, /readyz")
    http_port: int = Field(9464, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    grace_s: float = Field(3.0, ge=0, description="time in-flight RPCs get to finish on shutdown")
    max_message_mb: int = Field(64, ge=1, description="largest gRPC message accepted or sent")
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (chain): gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of the server certificate")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA bundle: clients must present a "
                                                              "certificate it signed (mutual TLS)")
    read_token: SecretStr | None = Field(None, description="token for read RPCs (predict, list, get); set by env")
    read_token_file: Path | None = Field(None, description="file holding the read token")
    admin_token: SecretStr | None = Field(None, description="token for every RPC, including those that change "
                                                            "state; set by env")
    admin_token_file: Path | None = Field(None, description="file holding the admin token")
    allow_plaintext: bool = Field(False, description="a listener other machines can reach without TLS is meant "
                                                     "(a trusted network): no warning at start-up")

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file (mutual TLS is TLS)")
        return self

    def tokens(self) -> tuple[str | None, str | None]:
        """(read, admin); both None: the API is open."""
        read = (self.read_token.get_secret_value() if self.read_token is not None
                else _read_secret_file(self.read_token_file, "api.read_token_file"))
        admin = (self.admin_token.get_secret_value() if self.admin_token is not None
                 else _read_secret_file(self.admin_token_file, "api.admin_token_file"))
        if read and not admin:
            raise ConfigError("config: api.read_token without api.admin_token would leave every admin RPC "
                              "closed to everyone: set an admin token too")
        return read or None, admin or None

    def tls(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate chain, private key, client CA or None), read now so a bad path fails at start-up."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        files = {"api.tls_cert_file": self.tls_cert_file, "api.tls_key_file": self.tls_key_file}
        if self.tls_client_ca_file is not None:
            files["api.tls_client_ca_file"] = self.tls_client_ca_file
        data = {}
        for key, path in files.items():
            try:
                data[key] = path.read_bytes()
            except OSError as e:
                raise ConfigError(f"config: {key} = {str(path)!r}: cannot read ({e.strerror})") from None
        return data["api.tls_cert_file"], data["api.tls_key_file"], data.get("api.tls_client_ca_file")

    def check_exposure(self) -> list[str]:
        """Refuse a listener other machines can reach without an admin token (ConfigError); return a warning
        for each such listener that is plaintext, unless allow_plaintext says that is meant.

        The HTTP listener counts too: it serves only /metrics and health today (they stay open), but the
        console will serve pages that change state on it, and a deployment valid now must not become an open
        console then."""
        exposed = [(key, host) for key, host in (("api.host", self.host), ("api.http_host", self.http_host))
                   if not is_loopback(host)]
        if not exposed:
            return []
        if self.tokens()[1] is None:
            keys = ", ".join(f"{key} = {host!r}" for key, host in exposed)
            raise ConfigError(f"config: {keys}: not loopback, and no admin token is set: an API other machines "
                              "can reach needs one (set api.admin_token_file or MLPLAT_API__ADMIN_TOKEN, or bind "
                              "127.0.0.1)")
        if self.allow_plaintext:
            return []
        warnings = []
        for key, host in exposed:
            if key == "api.host" and self.tls_cert_file is None:
                warnings.append(f"{key} = {host!r} without TLS: tokens and data cross the network in plaintext "
                                "(set api.tls_cert_file and api.tls_key_file, or api.allow_plaintext = true "
                                "on a trusted network)")
            elif key == "api.http_host":
                warnings.append(f"{key} = {host!r}: HTTP has no TLS, /metrics and health cross the network in "
                                "plaintext (api.allow_plaintext = true on a trusted network)")
        return warnings


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or localhost. A host name or an empty host (every
    interface) counts as reachable from elsewhere."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SupervisorSettings(_Section):
    restart_initial_s: float = Field(0.5, gt=0, description="first restart delay of a crashed service")
    restart_max_s: float = Field(30.0, gt=0, description="restart delay cap (doubles each crash)")
    crash_loop_restarts: int = Field(5, ge=1, description="restarts within the window that mean a loop")
    crash_loop_window_s: float = Field(60.0, gt=0, description="window for counting restarts")
    shutdown_deadline_s: float = Field(10.0, gt=0, description="SIGTERM to exit, at most")
    health_interval_s: float = Field(2.0, gt=0, description="how often backends are pinged")
    startup_wait_s: float = Field(60.0, ge=0, description="how long start-up waits for backends still starting "
                                                          "(retrying with backoff) before giving up")


def _cpu_count() -> int:
    return os.cpu_count() or 2


class BalancerSettings(_Section):
    max_python_workers: int = Field(
        default_factory=_cpu_count, ge=1, le=256, description="worker processes running CPU-heavy jobs at once"
    )
    thread_workers: int = Field(
        default_factory=lambda: min(32, _cpu_count() + 4), ge=1, le=512, description="threads for I/O and GIL-free work"
    )
    spare_workers: int | None = Field(
        None, ge=0, description="warm processes that take over while low-priority jobs are paused (default: same)"
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {"ingest": 8.0, "serve": 4.0, "monitor": 2.0, "train": 1.0},
        description="share of free workers per priority class under contention (weighted, never strict)",
    )
    preempt_after_ms: float = Field(
        0.0, ge=0, description="ingest/serve work waiting longer than this preempts training (pausing is cheap)"
    )
    inline_max_ms: float = Field(0.5, ge=0, description="jobs expected to be cheaper than this run on the loop")
    cpu_saturated_percent: float = Field(
        90.0, gt=0, le=100, description="above this system CPU, low-priority process jobs wait"
    )
    cpu_sample_s: float = Field(0.5, gt=0, description="how often CPU load is sampled")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        expected = {"ingest", "serve", "monitor", "train"}
        if set(v) != expected:
            raise ValueError(f"need a weight for each of {', '.join(sorted(expected))}, got {', '.join(sorted(v))}")
        if any(w <= 0 for w in v.values()):
            raise ValueError("weights must be > 0 (a zero weight would starve a class)")
        return v


class IngestSettings(_Section):
    features_file: Path | None = Field(None, description="TOML declaring entities and feature sets")
    consumer_group: str = Field("mlplat-ingest", description="bus consumer group shared by ingest daemons")
    partitions: int = Field(4, ge=1, description="partitions of event topics mlplat creates")
    batch_size: int = Field(5000, ge=1, description="events closing a batch")
    batch_wait_ms: float = Field(200.0, gt=0, description="time closing a batch that is not full")
    dead_letter_topic: str = Field("mlplat.deadletters", description="where rejected events are published")
    spool_dir: Path = Field(Path("./.mlplat/spool"), description="where uploads are written before parsing")
    max_upload_bytes: int = Field(64 << 30, ge=1, description="largest file one upload may send")
    partition_bytes: int = Field(16 << 20, ge=1024, description="bytes of a file one worker parses at a time")
    # the warehouse writer commits partitions one after another: parsing faster than it commits only takes
    # its CPU away, so by default one core is left to it
    upload_parallel: int = Field(
        default_factory=lambda: max(1, _cpu_count() - 1), ge=1, le=256,
        description="worker processes parsing one upload's partitions at once",
    )


class ServingSettings(_Section):
    batch_window_ms: float = Field(1.0, ge=0, le=100, description="how long concurrent requests wait to share a batch")
    max_batch: int = Field(64, ge=1, le=65_536, description="rows in one micro-batch at most")
    max_queue: int = Field(2048, ge=1, description="requests waiting per model before load is shed")
    reconcile_s: float = Field(5.0, gt=0, description="how often production pointers are re-read (swap fallback)")
    pinned_versions: int = Field(4, ge=0, description="non-production versions kept loaded for pinned requests")
    log_flush_ms: float = Field(500.0, gt=0, description="how often the prediction log is written")
    log_buffer: int = Field(100_000, ge=1, description="prediction log rows held before new ones are dropped")


class StreamingSettings(_Section):
    """Models that predict on every arriving event or window (declared in `models_file`)."""

    models_file: Path | None = Field(None, description="TOML declaring streaming models and action rules")
    predictions_topic: str = Field("mlplat.predictions", description="where streaming predictions are published")
    partitions: int = Field(4, ge=1, description="partitions of the predictions topic when mlplat creates it")
    consumer_group: str = Field("mlplat-stream", description="consumer group prefix (one group per model)")
    batch_size: int = Field(2000, ge=1, description="events closing a batch")
    batch_wait_ms: float = Field(20.0, gt=0, description="time closing a batch that is not full")


class ActionSettings(_Section):
    """The consumer of the predictions topic that applies action rules (retries, dead letters)."""

    consumer_group: str = Field("mlplat-actions", description="consumer group of the action executors")
    concurrency: int = Field(32, ge=1, le=10_000, description="actions applied at once (entities in parallel)")
    batch_size: int = Field(500, ge=1, description="predictions taken from the bus at a time")
    max_attempts: int = Field(5, ge=1, le=100, description="attempts before an action is dead-lettered")
    backoff_s: float = Field(0.2, gt=0, description="first retry delay; doubles each time, with full jitter")
    backoff_max_s: float = Field(10.0, gt=0, description="longest delay between two attempts")
    timeout_s: float = Field(5.0, gt=0, description="time one webhook call may take")
    dead_letter_topic: str = Field("mlplat.actions.deadletters", description="where failed actions are published")


class MonitoringSettings(_Section):
    """Drift runs: each production model's recent predictions against its training window."""

    bucket_s: float = Field(3600.0, gt=0, description="width of the time buckets compared with the reference")
    bins: int = Field(10, ge=2, le=1000, description="bins for PSI, KL and JS: reference quantiles, or one per value "
                                                     "(and per gap) when the reference has at most this many")
    min_rows: int = Field(100, ge=1, description="fewer current rows than this: not enough data, no verdict")
    reference_max_rows: int = Field(1_000_000, ge=100, description="reference rows read at most (newest first)")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"psi": 0.2, "ks": 0.1, "js": 0.1, "kl": 0.1},
        description="a statistic at or above its threshold has crossed it",
    )
    detect_on: list[str] = Field(default_factory=lambda: ["psi", "ks"],
                                 description="statistics whose crossing counts as drift")
    categorical_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"psi": 0.2, "unseen_share": 0.05},
        description="the same for string and bool features (psi, chi2, unseen_share)",
    )
    categorical_detect_on: list[str] = Field(default_factory=lambda: ["psi", "unseen_share"],
                                             description="categorical statistics whose crossing counts as drift")
    labels_feature_set: str | None = Field("user_labels", description="feature set whose events are ground truth")
    label_feature: str = Field("label", description="the feature of those events that holds the label")
    label_for_feature: str = Field("for_id", description="the feature of those events naming the prediction they "
                                                        "are for: its event id (streaming) or request id (Predict)")
    label_match_tolerance_s: float = Field(
        60.0, gt=0, description="a label without that id matches its entity's first prediction at or after the "
                                "label's time, at most this much later")
    label_delay_s: float = Field(0.0, ge=0, description="labels arrive this long after the moment they describe: "
                                                       "predictions newer than this are not judged yet")
    performance_tolerance: float = Field(
        0.05, ge=0, description="performance this much worse than the registered metric counts as drift "
                                "(absolute for accuracy/f1/auc, relative for mae/rmse)")

    @field_validator("detect_on")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        known = {"ks", "psi", "kl", "js", "wasserstein"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown statistic {unknown[0]!r} (expected {', '.join(sorted(known))})")
        return v

    @field_validator("categorical_thresholds", "categorical_detect_on")
    @classmethod
    def _known_categorical(cls, v: dict[str, float] | list[str]) -> dict[str, float] | list[str]:
        known = {"psi", "chi2", "unseen_share"}  # chi2_pvalue falls with drift: no "at or above" threshold
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown categorical statistic {unknown[0]!r} (expected {', '.join(sorted(known))})")
        return v


class AutomationSettings(_Section):
    """Service D: scheduled drift checks, retraining, promotion and lifecycle for the models declared in
    `streaming.models_file` (`[models.<name>]`) or over gRPC. Per-model policies live with the specs."""

    enabled: bool = Field(True, description="run the scheduler (bootstrap, drift checks, retraining schedules)")
    tick_s: float = Field(1.0, gt=0, description="how often the scheduler looks at what is due")
    keep_versions: int = Field(5, ge=1, description="newest versions kept per model, besides production and "
                                                    "the rollback target; older ones lose their artifacts")
    max_training_rows: int = Field(1_000_000, ge=10, description="labelled rows one training reads at most "
                                                                 "(newest first)")
    data_wait_s: float = Field(3600.0, gt=0, description="how long a drift-triggered retraining waits for "
                                                         "min_rows labelled rows that arrived after the drift")
    jobs_kept: int = Field(200, ge=1, description="finished training jobs a client can still re-attach to")


class DemoSettings(_Section):
    """`mlplat run --demo`: generated traffic so every part of the platform has something to do."""

    enabled: bool = Field(False, description="publish generated events (and their labels) to the bus")
    fast: bool = Field(False, description="the compressed demo loop (`mlplat run --demo --fast`): its models file")
    feature_set: str = Field("user_activity", description="feature set the generated events are for")
    labels: str | None = Field("user_labels", description="feature set receiving ground truth; none: no labels")
    rate: float = Field(50.0, gt=0, le=100_000, description="events per second")
    label_delay_s: float = Field(5.0, ge=0, description="how much later each event's label arrives")
    entities: int = Field(200, ge=1, description="distinct entities the events are about")
    bad_fraction: float = Field(0.01, ge=0, le=1, description="share of invalid events (they become dead letters)")
    seed: int = Field(0, description="the same seed gives the same events")
    shift_after_s: float | None = Field(60.0, gt=0, description="when the generator shifts (drift); none: never")
    shift: dict[str, float] = Field(default_factory=lambda: {"session_minutes": 300.0},
                                    description="numeric features moved by the shift, and by how much")


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="lowest level logged")
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a TTY, else JSON")


class Settings(BaseSettings):
    """Everything a user can set. Sections mirror config/default.toml."""

    model_config = SettingsConfigDict(
        env_prefix="MLPLAT_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    hot_store: HotStoreSettings = HotStoreSettings()
    bus: BusSettings = BusSettings()
    artifacts: ArtifactSettings = ArtifactSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    api: ApiSettings = ApiSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    balancer: BalancerSettings = BalancerSettings()
    ingest: IngestSettings = IngestSettings()
    serving: ServingSettings = ServingSettings()
    streaming: StreamingSettings = StreamingSettings()
    actions: ActionSettings = ActionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    automation: AutomationSettings = AutomationSettings()
    demo: DemoSettings = DemoSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, init_kwargs=_config_file.get() or {})
        return (init_settings, env_settings, file_source)


def _one_line(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
            continue
        value = e.get("input")
        if isinstance(value, (dict, list)):  # a check across a section: its raw input may hold secrets
            parts.append(f"{key}: {msg}")
            continue
        shown = redact_url(value) if isinstance(value, str) else value
        if "password" in key or "connection_string" in key or "token" in key:
            shown = "***"
        parts.append(f"{key} = {shown!r}: {msg}")
    return "config: " + "; ".join(parts)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config: --config {str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {str(path)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {str(path)!r}: {e.strerror}") from None


FILE_SECRETS = {"hot_store": ("password",), "bus": ("sasl_password",)}
"""Secrets a config file may not hold (files get committed, copied and shown): env or a *_file only."""


def _refuse_file_secrets(data: dict[str, Any], path: Path) -> None:
    for section, keys in FILE_SECRETS.items():
        table = data.get(section)
        for key in keys:
            if isinstance(table, dict) and key in table:
                raise ConfigError(f"config: {section}.{key} in {str(path)!r}: secrets never go in the config file; "
                                  f"set MLPLAT_{section.upper()}__{key.upper()} or {section}.{key}_file")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; raises ConfigError with one line naming key, value and expectation."""
    file_data = read_config_file(config_file) if config_file else {}
    if config_file:
        _refuse_file_secrets(file_data, config_file)
    token = _config_file.set(file_data)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None
    finally:
        _config_file.reset(token)
    # resolve secret files now, so a missing file is a start-up error rather than a late surprise
    settings.hot_store.login()
    settings.hot_store.tls()
    settings.bus.security()
    settings.artifacts.secret(dict(os.environ))
    settings.api.tokens()
    settings.api.tls()
    return settings
