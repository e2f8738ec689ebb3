"""Versioned schema migrations, applied in order at start-up inside one transaction each.

A migration is never edited once released: add a new one. A database newer than this code is refused,
because running old code on it could corrupt what the newer version wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from mlplat.errors import WarehouseError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit log",
        """
        CREATE TABLE audit_log (
            id         UUID PRIMARY KEY DEFAULT uuid(),
            recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            actor      VARCHAR NOT NULL,
            action     VARCHAR NOT NULL,
            subject    VARCHAR NOT NULL,
            reason     VARCHAR NOT NULL,
            details    JSON
        );
        """,
    ),
    Migration(
        2,
        "feature registry and dead letters",
        """
        CREATE TABLE feature_sets (
            name          VARCHAR NOT NULL,
            version       INTEGER NOT NULL,
            definition    JSON NOT NULL,
            registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (name, version)
        );
        CREATE TABLE dead_letters (
            source_key  VARCHAR PRIMARY KEY,   -- topic:partition:offset or upload:<id>:<row>: replays are no-ops
            received_at TIMESTAMPTZ NOT NULL,
            source      VARCHAR NOT NULL,
            feature_set VARCHAR,
            event_id    VARCHAR,
            reason_code VARCHAR NOT NULL,
            reason      VARCHAR NOT NULL,
            payload     BLOB NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "model registry and prediction log",
        """
        CREATE TABLE model_versions (
            model            VARCHAR NOT NULL,
            version          INTEGER NOT NULL,
            stage            VARCHAR NOT NULL,      -- staging | production | archived
            flavour          VARCHAR NOT NULL,      -- sklearn (skops) | onnx
            sha256           VARCHAR NOT NULL,      -- of the artifact, checked before every load
            artifact_key     VARCHAR NOT NULL,
            features         JSON NOT NULL,         -- [{"name", "type"}] in the order the model takes them
            feature_set      VARCHAR,               -- where an entity's missing features come from
            metrics          JSON,
            training_window  JSON,
            created_by       VARCHAR NOT NULL,
            reason           VARCHAR NOT NULL,
            created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
            stage_changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (model, version)
        );
        CREATE TABLE predictions (
            request_id   VARCHAR NOT NULL,
            model        VARCHAR NOT NULL,
            version      INTEGER NOT NULL,
            predicted_at TIMESTAMPTZ NOT NULL,
            entity_id    VARCHAR,
            features     DOUBLE[] NOT NULL,      -- in the order of model_versions.features for that version
            score        DOUBLE NOT NULL,
            latency_ms   DOUBLE NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "actions: what was applied (idempotency) and what kept failing",
        """
        CREATE TABLE action_log (
            idempotency_key VARCHAR PRIMARY KEY,   -- <action>:<prediction id>: a replayed prediction is skipped
            action          VARCHAR NOT NULL,
            prediction_id   VARCHAR NOT NULL,
            outcome         VARCHAR NOT NULL,      -- ok | dead_letter
            attempts        INTEGER NOT NULL,
            done_at         TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE action_dead_letters (
            idempotency_key VARCHAR PRIMARY KEY,
            action          VARCHAR NOT NULL,
            model           VARCHAR NOT NULL,
            entity_id       VARCHAR,
            prediction      JSON NOT NULL,
            error           VARCHAR NOT NULL,
            attempts        INTEGER NOT NULL,
            failed_at       TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "drift results",
        """
        CREATE TABLE drift_results (
            model         VARCHAR NOT NULL,
            version       INTEGER NOT NULL,
            bucket_start  TIMESTAMPTZ NOT NULL,
            bucket_end    TIMESTAMPTZ NOT NULL,
            source        VARCHAR NOT NULL,    -- predictions (inputs as served), ingest (feature rows), labels
            feature       VARCHAR NOT NULL,    -- a model input, __prediction__ (scores), __performance__
            statistic     VARCHAR NOT NULL,    -- ks, ks_pvalue, psi, kl, js, wasserstein; accuracy, f1, auc ...
            value         DOUBLE NOT NULL,
            threshold     DOUBLE,              -- null: reported, never judged
            crossed       BOOLEAN NOT NULL,
            reference_n   BIGINT NOT NULL,
            current_n     BIGINT NOT NULL,
            computed_at   TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (model, version, bucket_start, source, feature, statistic)
        );
        """,
    ),
    Migration(
        6,
        "automation: exported artifacts, lifecycle deletions, declared model specs",
        """
        ALTER TABLE model_versions ADD COLUMN exports JSON;                  -- {"onnx": {"key", "sha256"}}
        ALTER TABLE model_versions ADD COLUMN artifacts_deleted_at TIMESTAMPTZ;  -- by lifecycle rules
        CREATE TABLE model_specs (
            model       VARCHAR PRIMARY KEY,
            spec        JSON NOT NULL,
            origin      VARCHAR NOT NULL,      -- the models file, or grpc
            declared_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        """,
    ),
    Migration(
        7,
        "prediction log: the event each streaming prediction was made on (labels name it)",
        """
        ALTER TABLE predictions ADD COLUMN event_id VARCHAR;  -- null: a Predict call (its request_id) or a window
        """,
    ),
    Migration(
        8,
        "warehouse identity: a random id made once per database, keying what daemons share (the query cache)",
        """
        CREATE TABLE warehouse_meta (
            key   VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL
        );
        INSERT INTO warehouse_meta VALUES ('warehouse_id', uuid()::VARCHAR);
        """,
    ),
)

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(_BOOKKEEPING)
    rows = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()  # finishes the result
    return int(rows[0][0]) if rows else 0


def migrate(con: duckdb.DuckDBPyConnection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every pending migration; returns the versions applied. Runs on the writer thread."""
    known = max((m.version for m in migrations), default=0)
    have = current_version(con)
    if have > known:
        raise WarehouseError(
            f"warehouse schema is version {have} but this mlplat knows only up to {known}: "
            "upgrade mlplat, or point warehouse.url at another database"
        )
    applied = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.version <= have:
            continue
        con.begin()
        try:
            con.execute(m.sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [m.version, m.name])
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise WarehouseError(f"warehouse migration {m.version} ({m.name}) failed: {e}") from e
        applied.append(m.version)
    return applied


def warehouse_id(con: duckdb.DuckDBPyConnection) -> str | None:
    """This database's random id (migration 8); None when the migrations applied did not create it."""
    meta = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = 'warehouse_meta'"
    ).fetchall()
    if not meta or not meta[0][0]:
        return None
    rows = con.execute("SELECT value FROM warehouse_meta WHERE key = 'warehouse_id'").fetchall()
    return str(rows[0][0]) if rows else None
