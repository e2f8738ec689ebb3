"""deploy/: the compose file names every service the config and the dashboard need, and every PromQL
expression of the Grafana dashboard returns data from a real Prometheus scraping a running daemon."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlplat.automation.specs import ModelSpec
from mlplat.daemon import Daemon
from tests.daemons import daemon_settings
from tests.models import FEATURES, NAMES, logistic_bytes, matrix, rows
from tests.servers import REPO, start_prometheus

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mlplat.json"


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_the_dashboard_file_is_what_the_script_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_dashboard", REPO / "scripts" / "gen_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(DASHBOARD.read_text()) == module.dashboard()


def test_compose_starts_every_server_the_production_config_names() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "kafka", "azurite", "prometheus", "grafana", "mlplat"} <= set(services)
    production = tomllib.loads((REPO / "config" / "production.toml").read_text())
    for url in (production["hot_store"]["url"], production["bus"]["url"]):
        assert urllib.parse.urlparse(url).hostname in services, url
    assert "config/production.toml" in (DEPLOY / "Dockerfile").read_text()
    assert "BlobEndpoint=http://azurite:10000" in services["mlplat"]["environment"]["AZURE_STORAGE_CONNECTION_STRING"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [target] = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == "mlplat:9464" and "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in \
        services["prometheus"]["volumes"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/mlplat.yml").read_text())
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted


def query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


async def test_every_dashboard_expression_returns_data_from_prometheus(tmp_path: Path) -> None:
    daemon = Daemon(daemon_settings(tmp_path, api={"grpc_port": 0, "http_port": 0}))
    await daemon.start()
    prometheus = start_prometheus(tmp_path, f"127.0.0.1:{daemon.http.port}")
    try:
        reference = rows(1, 2000)
        path = tmp_path / "reference.ndjson"
        path.write_text("\n".join(json.dumps(r) for r in reference))
        await daemon.batch.ingest_file(path, "user_activity", upload_id="reference")
        mv = await daemon.registry.register("churn", logistic_bytes(), "sklearn", FEATURES, feature_set="user_activity",
                                            training_window={"start": "2026-06-01T00:00:00+00:00",
                                                             "end": "2026-06-02T00:00:00+00:00"},
                                            metrics={"auc": 0.9})
        await daemon.registry.promote("churn", mv.version)
        await daemon.serving.swap_to(mv)
        events = [(str(r["user_id"]).encode(), json.dumps(r).encode()) for r in rows(5, 200)]
        events.append((b"x", b"{not json"))
        await daemon.bus.publish_many("mlplat.events.user_activity", events)
        now = dt.datetime.now(dt.UTC)
        users = [f"user_{i}" for i in range(120)]
        (tmp_path / "labels.ndjson").write_text("\n".join(json.dumps({
            "event_id": f"l{i}", "user_id": u, "event_time": (now - dt.timedelta(seconds=5)).isoformat(),
            "label": i % 2}) for i, u in enumerate(users)))
        await daemon.batch.ingest_file(tmp_path / "labels.ndjson", "user_labels", upload_id="labels")
        # one training job (kept in staging: the drift panels keep judging v1), for the automation panels
        await daemon.automation.declare(ModelSpec(name="churn", feature_set="user_activity", features=tuple(NAMES),
                                                  label="user_labels.label", estimator="decision_tree",
                                                  min_rows=100, promote="manual"))
        job = await daemon.automation.train("churn")
        async for event in job.follow():
            assert event.stage != "failed", event.message
        pending = {e.replace("$model", ".*").replace("$__rate_interval", "20s") for e in expressions()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        [record] = rows(6, 1)
        one = {n: record[n] for n in NAMES}
        while pending and loop.time() < deadline:
            # traffic all along, so that every rate has samples in its window
            for user in users:  # by entity: each label judges its entity's first call after it (min_rows of them)
                await daemon.serving.predict("churn", one, entity_id=user)
            await daemon.serving.predict_batch("churn", NAMES, matrix(rows(7, 200, {"spend_1h": 20.0})))
            await daemon.prediction_log.flush()
            await daemon.monitoring.run_drift()
            await asyncio.sleep(1)
            pending = {e for e in pending if not await asyncio.to_thread(query, prometheus.port, e)}
        assert not pending, f"no data from Prometheus for: {sorted(pending)}"
        assert np.isfinite(float(query(prometheus.port, 'mlplat_drift_detected{model="churn"}')[0]["value"][1]))
    finally:
        prometheus.stop()
        await daemon.stop()
