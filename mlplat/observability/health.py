"""Readiness: what /readyz and the gRPC health service report, from services and backend pings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Readiness:
    """Named checks that must all be true for the daemon to be ready; each carries a reason when false."""

    _checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    _listeners: list[asyncio.Event] = field(default_factory=list)

    def set(self, name: str, ok: bool, reason: str = "") -> None:
        if self._checks.get(name) == (ok, reason):
            return
        self._checks[name] = (ok, reason)
        for event in self._listeners:
            event.set()

    def forget(self, name: str) -> None:
        self._checks.pop(name, None)

    def changed(self) -> asyncio.Event:
        """An event set on every change, for code that mirrors readiness elsewhere (gRPC health)."""
        event = asyncio.Event()
        self._listeners.append(event)
        return event

    @property
    def ready(self) -> bool:
        return bool(self._checks) and all(ok for ok, _ in self._checks.values())

    def report(self) -> dict[str, dict[str, object]]:
        return {name: {"ok": ok, "reason": reason} for name, (ok, reason) in sorted(self._checks.items())}
