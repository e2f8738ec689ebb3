"""The `mlplat` command. Every command has --help; data commands have --json; failures exit non-zero with
one clear line on stderr (exit 2 for invalid configuration or usage)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mlplat import __version__
from mlplat.cli.bench import bench_app
from mlplat.cli.client import query_command, status_command
from mlplat.cli.drift import drift_command
from mlplat.cli.generate import generate_app
from mlplat.cli.ingest import ingest_command
from mlplat.cli.models import models_app
from mlplat.cli.predict import predict_command
from mlplat.errors import ConfigError, MlplatError

app = typer.Typer(
    name="mlplat",
    help="Production ML infrastructure in one daemon: feature store, model registry and serving, drift "
    "monitoring, ingestion and automation.\n\nStart with `mlplat run`, then try `mlplat query \"SELECT 42\"`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")
app.add_typer(generate_app, name="generate")
app.add_typer(models_app, name="models")
app.command("query")(query_command)
app.command("status")(status_command)
app.command("ingest")(ingest_command)
app.command("predict")(predict_command)
app.command("drift")(drift_command)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (see config/default.toml); MLPLAT_* env vars override it."),
]


# `--demo --fast`: the whole loop within a minute (bootstrap, predictions, shift, drift, retrain, promotion)
FAST_DEMO: dict[str, dict[str, Any]] = {
    "demo": {"fast": True, "rate": 200.0, "label_delay_s": 1.0, "shift_after_s": 15.0},
    "monitoring": {"bucket_s": 5.0, "label_delay_s": 2.0},
    "automation": {"tick_s": 0.5},
}


def _overrides(grpc_port: int | None, http_port: int | None, demo: bool = False,
               fast: bool = False) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    api: dict[str, Any] = {}
    if grpc_port is not None:
        api["grpc_port"] = grpc_port
    if http_port is not None:
        api["http_port"] = http_port
    if api:
        overrides["api"] = api
    if demo:
        # drift is judged on buckets of recent predictions: the demo's minute needs short ones
        overrides["demo"] = {"enabled": True}
        overrides["monitoring"] = {"bucket_s": 20.0, "label_delay_s": 10.0, "performance_tolerance": 0.1}
        if fast:
            for section, values in FAST_DEMO.items():
                overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


@app.command()
def run(
    config: ConfigOption = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051; 0 picks a free one).")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port for /metrics, /healthz, /readyz (default 9464).")
    ] = None,
    demo: Annotated[bool, typer.Option(
        "--demo", help="Show the whole loop on the embedded defaults: generated events and labels for the "
        "packaged feature sets, the churn model trained and promoted once enough labels arrived, predictions "
        "on every event; after [demo] shift_after_s (60 s) a feature shifts, drift is detected, churn is "
        "retrained and the new version promoted and swapped in. Sets monitoring.bucket_s = 20, label_delay_s = 10 "
        "and performance_tolerance = 0.1.")] = False,
    fast: Annotated[bool, typer.Option(
        "--fast", help="With --demo: the same loop within 60 s (200 events/s, labels after 1 s, the shift "
        "after 15 s, drift checked every 2 s on 5 s buckets, label_delay_s = 2).")] = False,
) -> None:
    """Run the daemon until SIGTERM or Ctrl-C, then drain and exit.

    With no --config it runs on the embedded backends (memory hot store and bus, files under ./.mlplat):
    nothing else needs to be installed. config/production.toml shows Redis, Kafka and Azure.
    """
    from mlplat.config import load_settings
    from mlplat.daemon import run_forever
    from mlplat.observability.logging import configure_logging

    if fast and not demo:
        raise typer.BadParameter("--fast compresses the demo: use it with --demo", param_hint="--fast")
    settings = load_settings(config, **_overrides(grpc_port, http_port, demo, fast))
    configure_logging(settings.logging.level, settings.logging.format)
    raise typer.Exit(run_forever(settings))


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML-like text.")] = False,
) -> None:
    """Print the effective settings (defaults < --config file < MLPLAT_* env), secrets masked."""
    import json

    from mlplat.backends.urls import redact_url
    from mlplat.config import load_settings

    settings = load_settings(config)
    data = settings.model_dump(mode="json")
    for section in data.values():
        for key, value in list(section.items()):
            if key in ("password", "sasl_password", "connection_string", "read_token", "admin_token") \
                    and value is not None:
                section[key] = "***"
            elif key == "url" and isinstance(value, str):
                section[key] = redact_url(value)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    for name, section in data.items():
        typer.echo(f"[{name}]")
        for key, value in section.items():
            typer.echo(f"{key} = {json.dumps(value)}")
        typer.echo("")


@app.command()
def version() -> None:
    """Print the mlplat version."""
    typer.echo(__version__)


@app.callback()
def _connection(
    token_file: Annotated[Path | None, typer.Option(
        envvar="MLPLAT_TOKEN_FILE", help="File holding the API token (read or admin) of a daemon that needs one; "
        "or set MLPLAT_TOKEN.", dir_okay=False)] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        envvar="MLPLAT_TLS_CA", help="PEM CA bundle: talk TLS to the daemon and trust certificates it signed.",
        dir_okay=False)] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        envvar="MLPLAT_TLS_CERT", help="PEM client certificate, for a daemon that requires one (mutual TLS).",
        dir_okay=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(
        envvar="MLPLAT_TLS_KEY", help="PEM private key of --tls-cert.", dir_okay=False)] = None,
) -> None:
    """How client commands reach the daemon. Commands other than `run` log warnings only; `run` reconfigures
    logging from its settings."""
    import os

    from mlplat.cli.client import CONNECTION, ClientError
    from mlplat.observability.logging import configure_logging, register_secret

    configure_logging("warning")
    token = os.environ.get("MLPLAT_TOKEN")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ClientError(f"cannot read --token-file {str(token_file)!r}: {e.strerror}") from None
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    register_secret(token)
    CONNECTION.token, CONNECTION.tls_ca, CONNECTION.tls_cert, CONNECTION.tls_key = token or None, tls_ca, tls_cert, \
        tls_key


def main() -> None:
    """Entry point: click handles usage errors (exit 2); known errors become one line on stderr."""
    try:
        app()
    except ConfigError as e:
        print(f"mlplat: {e}", file=sys.stderr)
        sys.exit(2)
    except (MlplatError, OSError) as e:
        print(f"mlplat: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
