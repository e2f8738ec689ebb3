"""Typed settings: field defaults (mirrored by config/default.toml) < --config FILE < MLPLAT_* env < CLI flags.

Read once at start-up and passed down; nothing else reads os.environ. Errors name the key, the value and
what was expected, on one line.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mlplat.backends import artifacts, bus, hotstore
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
    url: str = Field("memory://", description="memory:// (embedded) or redis://host:6379/0")
    password: SecretStr | None = Field(None, description="Redis password; set by env, never in a file")
    password_file: Path | None = Field(None, description="file holding the Redis password")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, hotstore.SCHEMES)

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        return _read_secret_file(self.password_file, "hot_store.password_file")


class BusSettings(_Section):
    url: str = Field("memory://", description="memory:// (embedded) or kafka://host:9092[,host:9092]")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_scheme(v, bus.SCHEMES)


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


class SupervisorSettings(_Section):
    restart_initial_s: float = Field(0.5, gt=0, description="first restart delay of a crashed service")
    restart_max_s: float = Field(30.0, gt=0, description="restart delay cap (doubles each crash)")
    crash_loop_restarts: int = Field(5, ge=1, description="restarts within the window that mean a loop")
    crash_loop_window_s: float = Field(60.0, gt=0, description="window for counting restarts")
    shutdown_deadline_s: float = Field(10.0, gt=0, description="SIGTERM to exit, at most")
    health_interval_s: float = Field(2.0, gt=0, description="how often backends are pinged")


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
    bins: int = Field(10, ge=2, le=1000, description="bins (reference quantiles) for PSI, KL and JS")
    min_rows: int = Field(100, ge=1, description="fewer current rows than this: not enough data, no verdict")
    reference_max_rows: int = Field(1_000_000, ge=100, description="reference rows read at most (newest first)")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"psi": 0.2, "ks": 0.1, "js": 0.1, "kl": 0.1},
        description="a statistic at or above its threshold has crossed it",
    )
    detect_on: list[str] = Field(default_factory=lambda: ["psi", "ks"],
                                 description="statistics whose crossing counts as drift")
    labels_feature_set: str | None = Field("user_labels", description="feature set whose events are ground truth")
    label_feature: str = Field("label", description="the feature of those events that holds the label")
    label_horizon_s: float = Field(86_400.0, gt=0, description="a label older than this never matches a prediction")
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


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; raises ConfigError with one line naming key, value and expectation."""
    file_data = read_config_file(config_file) if config_file else {}
    token = _config_file.set(file_data)
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None
    finally:
        _config_file.reset(token)
    # resolve secret files now, so a missing file is a start-up error rather than a late surprise
    settings.hot_store.secret()
    settings.artifacts.secret(dict(os.environ))
    settings.api.tokens()
    settings.api.tls()
    return settings
