"""Write deploy/grafana/dashboards/mlplat.json (run after changing the panels below).

One dashboard for every model: the `model` variable filters the model panels. Every expression here is
checked against a real Prometheus scraping a daemon by tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards" / "mlplat.json"
M = 'model=~"$model"'
RATE = "$__rate_interval"

# (title, unit, [(expression, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Ingested events/s", "ops", [
        (f'sum by (feature_set) (rate(mlplat_ingest_events_total{{outcome="accepted"}}[{RATE}]))', "{{feature_set}}")]),
    ("Consumer lag (events)", "short", [("sum by (topic) (mlplat_consumer_lag)", "{{topic}}")]),
    ("Dead letters/s", "ops", [(f"sum by (reason) (rate(mlplat_dead_letters_total[{RATE}]))", "{{reason}}")]),
    ("Predict latency", "s", [
        (f"histogram_quantile({q}, sum by (le, model) (rate(mlplat_predict_latency_seconds_bucket{{{M}}}[{RATE}])))",
         f"{{{{model}}}} p{int(q * 100)}") for q in (0.5, 0.99)]),
    ("Predictions/s", "ops", [
        (f"sum by (model, outcome) (rate(mlplat_predictions_total{{{M}}}[{RATE}]))", "{{model}} {{outcome}}")]),
    ("Batch size (median rows per model call)", "short", [
        (f"histogram_quantile(0.5, sum by (le, model) (rate(mlplat_batch_size_bucket{{{M}}}[{RATE}])))",
         "{{model}}")]),
    ("Model versions served", "short", [(f"mlplat_model_version_info{{{M}}}", "{{model}} v{{version}} {{stage}}")]),
    ("Swaps", "short", [(f"sum by (model) (increase(mlplat_model_swaps_total{{{M}}}[1h]))", "{{model}}")]),
    ("Feature drift (PSI)", "short", [(f'mlplat_feature_drift{{{M}, statistic="psi"}}', "{{model}} {{feature}}")]),
    ("Feature drift (KS)", "short", [(f'mlplat_feature_drift{{{M}, statistic="ks"}}', "{{model}} {{feature}}")]),
    ("String and bool features: share in categories the reference lacks", "percentunit", [
        (f'mlplat_feature_drift{{{M}, statistic="unseen_share"}}', "{{model}} {{feature}}")]),
    ("Prediction drift", "short", [(f"mlplat_prediction_drift{{{M}}}", "{{model}} {{statistic}}")]),
    ("Drift detected", "short", [(f"mlplat_drift_detected{{{M}}}", "{{model}}")]),
    ("Performance against labels", "percentunit", [
        (f'mlplat_model_performance{{{M}, metric=~"accuracy|f1|auc"}}', "{{model}} {{metric}}"),
        (f'mlplat_model_performance{{{M}, metric=~".*_bound"}}', "{{model}} {{metric}} (registered - tolerance)")]),
    ("Training jobs (last hour)", "short", [
        (f"sum by (model, trigger, outcome) (increase(mlplat_training_jobs_total{{{M}}}[1h]))",
         "{{model}} {{trigger}} {{outcome}}")]),
    ("Automation decisions (last hour)", "short", [
        (f"sum by (model, decision) (increase(mlplat_automation_decisions_total{{{M}}}[1h]))",
         "{{model}} {{decision}}")]),
    ("Balancer: jobs queued", "short", [("sum by (class) (mlplat_jobs_queued)", "{{class}}")]),
    ("Balancer: busy workers", "short", [("mlplat_workers_busy", "{{lane}}")]),
    ("Warehouse writer queue", "short", [("mlplat_warehouse_queue_depth", "commands")]),
]


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": i + 1, "type": "timeseries", "title": title,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "prometheus"}}
                    for j, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "mlplat", "title": "mlplat", "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "tags": ["mlplat"],
        "templating": {"list": [{
            "name": "model", "label": "model", "type": "query", "multi": True, "includeAll": True,
            "allValue": ".*", "current": {"text": "All", "value": "$__all"},
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "query": {"query": "label_values(mlplat_model_version_info, model)", "refId": "models"},
            "definition": "label_values(mlplat_model_version_info, model)", "refresh": 2, "sort": 1,
        }]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
