"""Every mlplat_* metric, defined once. The daemon builds one Metrics; tests build their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Metrics grouped by the service that updates them; labels stay bounded (no entity ids)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # supervisor
        self.service_restarts = Counter(
            "mlplat_service_restarts", "Restarts of a crashed service.", ["service"], registry=r
        )
        self.service_up = Gauge(
            "mlplat_service_up", "1 while the service runs, 0 when crashed or given up.", ["service"], registry=r
        )
        self.backend_up = Gauge(
            "mlplat_backend_up", "1 when the last ping of the backend succeeded.", ["backend"], registry=r
        )
        # warehouse writer
        self.warehouse_queue_depth = Gauge(
            "mlplat_warehouse_queue_depth", "Write commands waiting for the writer.", registry=r
        )
        self.warehouse_commits = Counter(
            "mlplat_warehouse_commits", "Group commits applied by the writer.", ["outcome"], registry=r
        )
        self.warehouse_rows_written = Counter(
            "mlplat_warehouse_rows_written", "Rows written to the warehouse.", ["table"], registry=r
        )
        self.warehouse_commit_seconds = Histogram(
            "mlplat_warehouse_commit_seconds", "Time to apply one group commit.", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.warehouse_batch_commands = Histogram(
            "mlplat_warehouse_batch_commands", "Write commands folded into one group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r,
        )
        # queries
        self.queries = Counter("mlplat_queries", "Read-only queries answered.", ["outcome"], registry=r)
        self.query_seconds = Histogram(
            "mlplat_query_seconds", "Time to answer one read query.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.query_cache = Counter(
            "mlplat_query_cache", "Query cache lookups.", ["result"], registry=r
        )
        # balancer
        self.jobs_queued = Gauge(
            "mlplat_jobs_queued", "Jobs waiting for a worker.", ["class", "lane"], registry=r
        )
        self.job_wait_seconds = Histogram(
            "mlplat_job_wait_seconds", "Time a job waited for a worker.", ["class"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_run_seconds = Histogram(
            "mlplat_job_run_seconds", "Time a job ran.", ["class", "lane"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.workers_busy = Gauge("mlplat_workers_busy", "Workers running a job.", ["lane"], registry=r)
        self.jobs_preempted = Counter(
            "mlplat_jobs_preempted", "Training jobs paused or cancelled for ingest/serve work.", registry=r
        )
        self.worker_restarts = Counter(
            "mlplat_worker_restarts", "Worker processes replaced after dying or being cancelled.", registry=r
        )
        self.cpu_percent = Gauge("mlplat_cpu_percent", "System CPU use sampled by the balancer.", registry=r)
        self.worker_cpu_percent = Gauge(
            "mlplat_worker_cpu_percent", "CPU use of each worker process.", ["worker"], registry=r
        )
        # ingest
        self.ingest_events = Counter(
            "mlplat_ingest_events", "Events ingested, by outcome.", ["feature_set", "outcome"], registry=r
        )
        self.ingest_batch_seconds = Histogram(
            "mlplat_ingest_batch_seconds", "Time to ingest one batch end to end.", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_lag_seconds = Histogram(
            "mlplat_ingest_lag_seconds", "Event time to warehouse commit (oldest event of each batch).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600), registry=r,
        )
        self.consumer_position = Gauge(
            "mlplat_consumer_position", "Next offset ingest will read.", ["topic", "partition"], registry=r
        )
        self.consumer_lag = Gauge(
            "mlplat_consumer_lag", "Events on the bus not yet ingested.", ["topic", "partition"], registry=r
        )
        self.bus_consumer_rebuilds = Counter(
            "mlplat_bus_consumer_rebuilds", "Kafka consumers closed and created again after a stall, by reason "
            "(coordinator_unknown, not_joined, stale_assignment).", ["group", "reason"], registry=r
        )
        self.dead_letters = Counter("mlplat_dead_letters", "Records rejected, by reason.", ["reason"], registry=r)
        # serving
        self.predictions = Counter(
            "mlplat_predictions", "Predictions answered or refused.", ["model", "version", "outcome"], registry=r
        )
        self.predict_latency_seconds = Histogram(
            "mlplat_predict_latency_seconds", "Time from request to answer for one prediction.", ["model"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.batch_size = Histogram(
            "mlplat_batch_size", "Rows per model call (micro-batches and PredictBatch).", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096), registry=r,
        )
        self.model_version_info = Gauge(
            "mlplat_model_version_info", "1 for the version this daemon serves per model and stage.",
            ["model", "version", "stage"], registry=r,
        )
        self.model_swaps = Counter("mlplat_model_swaps", "Production versions swapped in.", ["model"], registry=r)
        self.model_load_failures = Counter(
            "mlplat_model_load_failures", "Versions that failed to load or verify (never served).", ["model"],
            registry=r,
        )
        self.prediction_log_dropped = Counter(
            "mlplat_prediction_log_dropped", "Prediction log rows dropped because the log buffer was full.",
            registry=r,
        )
        # streaming inference and actions
        self.stream_predictions = Counter(
            "mlplat_stream_predictions", "Predictions published by streaming models.", ["model"], registry=r
        )
        self.stream_lag_seconds = Histogram(
            "mlplat_stream_lag_seconds", "Event time (or window end) to prediction published.", ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0), registry=r,
        )
        self.stream_skipped = Counter(
            "mlplat_stream_skipped", "Events or windows a streaming model did not predict for, by reason.",
            ["model", "reason"], registry=r,
        )
        self.actions = Counter("mlplat_actions", "Actions by outcome (ok, duplicate, dead_letter).",
                               ["action", "outcome"], registry=r)
        self.action_retries = Counter("mlplat_action_retries", "Action attempts that failed and were retried.",
                                      ["action"], registry=r)
        self.actions_pending = Gauge(
            "mlplat_actions_pending", "Actions read from the predictions topic and not finished (back-pressure).",
            registry=r,
        )
        # monitoring
        self.feature_drift = Gauge("mlplat_feature_drift", "Latest drift statistic of a model input (as served) or "
                                   "of another string or bool feature of its feature set (as ingested).",
                                   ["model", "feature", "statistic"], registry=r)
        self.prediction_drift = Gauge("mlplat_prediction_drift", "Latest drift statistic of a model's scores.",
                                      ["model", "statistic"], registry=r)
        self.model_performance = Gauge("mlplat_model_performance", "Latest performance against labels.",
                                       ["model", "metric"], registry=r)
        self.drift_detected = Gauge("mlplat_drift_detected", "1 when the latest drift run crossed a threshold.",
                                    ["model"], registry=r)
        self.drift_run_seconds = Histogram("mlplat_drift_run_seconds", "Time one drift run took (every model).",
                                           buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
                                           registry=r)
        # automation
        self.training_jobs = Counter(
            "mlplat_training_jobs", "Training jobs finished, by trigger (bootstrap, drift, schedule, request) "
            "and outcome (promoted, staging, failed).", ["model", "trigger", "outcome"], registry=r)
        self.training_seconds = Histogram(
            "mlplat_training_seconds", "Time one training job took, queued to decided.", ["model"],
            buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0), registry=r)
        self.training_running = Gauge("mlplat_training_running", "1 while a training job of the model runs.",
                                      ["model"], registry=r)
        self.automation_decisions = Counter(
            "mlplat_automation_decisions", "Decisions automation took (each is also in the audit log).",
            ["model", "decision"], registry=r)
        self.artifacts_deleted = Counter(
            "mlplat_artifacts_deleted", "Artifacts of old versions deleted by lifecycle rules.", ["model"],
            registry=r)
        self.demo_shift_active = Gauge("mlplat_demo_shift_active", "1 once the demo generator shifted a feature.",
                                       registry=r)
        # api
        self.grpc_requests = Counter(
            "mlplat_grpc_requests", "gRPC calls handled.", ["method", "code"], registry=r
        )
        self.auth_failures = Counter(
            "mlplat_auth_failures", "gRPC calls refused for a missing, wrong or too weak token.", ["method", "code"],
            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
