"""structlog set up once by the entry point: JSON lines when not a TTY, console when it is, secrets redacted.

Redaction has two layers: values under secret-looking keys are masked, and every registered secret value
(passwords, connection strings read at start-up) is masked wherever it appears in any string, including
exceptions and third-party log lines routed through the same processors.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

SECRET_KEYS = frozenset({"password", "token", "secret", "connection_string", "authorization", "api_key"})
MASK = "***"
_MIN_SECRET_LEN = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this value in every log line from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(value)
            # the account key inside a connection string is a secret on its own
            for part in value.split(";"):
                name, _, val = part.partition("=")
                if name.strip().lower() in {"accountkey", "sharedaccesssignature", "password"} and val:
                    _secrets.add(val)


def mask_secrets(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: MASK if str(k).lower() in SECRET_KEYS else _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_value(v) for v in value)
    return value


def redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in list(event):
        if key.lower() in SECRET_KEYS:
            event[key] = MASK
        else:
            event[key] = _mask_value(event[key])
    return event


def _default_service(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.setdefault("service", "mlplat")
    return event


def _from_stdlib(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Third-party libraries log through stdlib; name their lines after the library."""
    record = event.get("_record")
    if record is not None and "service" not in event:
        event["service"] = record.name.split(".")[0]
    return event


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream: TextIO | None = None
) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _from_stdlib,
        _default_service,
    ]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if use_console else structlog.processors.JSONRenderer()
    )
    tail: list[Processor] = [structlog.processors.format_exc_info, redact, renderer]
    if use_console:
        tail = [redact, renderer]  # the console renderer prints tracebacks itself

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    # chatty libraries: their INFO lines are noise for an operator
    for noisy in ("aiokafka", "azure", "kafka"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )


def get_logger(service: str) -> structlog.stdlib.BoundLogger:
    """A lazy logger: modules create theirs at import, before the entry point configures logging."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("mlplat", service=service)
    return logger
