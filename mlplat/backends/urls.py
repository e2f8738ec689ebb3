"""Backend URLs: parsing, scheme tables and redaction of credentials for display."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Return the URL with any password replaced by ***, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()
