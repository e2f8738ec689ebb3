"""Logs, metrics and the HTTP endpoint that exposes health and /metrics."""
