"""Generated events on the bus at a steady rate, as a supervised service of the daemon (`--demo`).

The events go through the bus like anyone else's, so the demo exercises the real ingest path: consumer
group, validation, dead letters, warehouse and hot store. Each valid event's label (ground truth) is
published label_delay_s later, as labels arrive in real life; pending labels are bounded by what the rate
and the delay can produce. After shift_after_s the generator shifts the configured features (and the
labels follow the shifted population), so drift detection and retraining have something to react to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque

from mlplat.backends.bus import EventBus
from mlplat.config import DemoSettings
from mlplat.errors import ConfigError
from mlplat.features.registry import FeatureRegistry
from mlplat.ingest.generator import GeneratorSpec, generate_labelled
from mlplat.observability.logging import get_logger
from mlplat.observability.metrics import Metrics

log = get_logger("demo")
TICKS_PER_S = 10
REPORT_EVERY_S = 10.0


class DemoTraffic:
    name = "demo"

    def __init__(self, settings: DemoSettings, bus: EventBus, registry: FeatureRegistry, metrics: Metrics) -> None:
        self._settings = settings
        self._bus = bus
        self._registry = registry
        self._metrics = metrics
        self.shifted = False
        self.published = 0
        self.labels_published = 0
        self._spec: GeneratorSpec | None = None
        self._events_topic = ""
        self._labels_topic: str | None = None
        self._pending: deque[tuple[float, bytes, bytes]] = deque(
            maxlen=int(settings.rate * (settings.label_delay_s + 1)) + TICKS_PER_S
        )

    async def start(self) -> None:
        """Resolve the feature sets now, so a misnamed one stops the daemon at start-up with its name."""
        fs = self._registry.get(self._settings.feature_set)
        self._events_topic = fs.topic
        if self._settings.labels:
            self._labels_topic = self._registry.get(self._settings.labels).topic
        self._spec = GeneratorSpec(fs, self._registry.key_of(fs), entities=self._settings.entities,
                                   seed=self._settings.seed, bad_fraction=self._settings.bad_fraction,
                                   step_ms=1000 / self._settings.rate, id_prefix=f"demo{int(time.time())}-")
        # checked now: a shift of a feature that is not numeric stops the daemon at start-up
        try:
            dataclasses.replace(self._spec, shift=self._settings.shift)
        except ValueError as e:
            raise ConfigError(f"demo.shift: {e}") from None
        log.info("demo_traffic_starting", feature_set=fs.name, labels=self._settings.labels,
                 rate=self._settings.rate, shift_after_s=self._settings.shift_after_s)

    async def run(self) -> None:
        assert self._spec is not None
        started = time.monotonic() - self.published / self._settings.rate  # a restart resumes the pace
        next_report = started + REPORT_EVERY_S
        while True:
            shift_after = self._settings.shift_after_s
            if not self.shifted and shift_after is not None and time.monotonic() - started >= shift_after:
                self._shift()
            due = int((time.monotonic() - started) * self._settings.rate) - self.published
            if due > 0:
                await self._publish_events(due)
            await self._publish_due_labels()
            if time.monotonic() >= next_report:
                log.info("demo_traffic", events=self.published, labels=self.labels_published)
                next_report += REPORT_EVERY_S
            await asyncio.sleep(1 / TICKS_PER_S)

    def _shift(self) -> None:
        assert self._spec is not None
        self._spec = dataclasses.replace(self._spec, shift=self._settings.shift)
        self.shifted = True
        self._metrics.demo_shift_active.set(1)
        log.info("demo_shift", shift=self._settings.shift, after_s=self._settings.shift_after_s,
                 events=self.published)

    async def _publish_events(self, n: int) -> None:
        assert self._spec is not None
        batch = generate_labelled(self._spec, n, self.published)
        await self._bus.publish_many(self._events_topic, [(key, payload) for key, payload, _ in batch])
        self.published += n
        if self._labels_topic:
            at = time.monotonic() + self._settings.label_delay_s
            self._pending.extend((at, key, label) for key, _, label in batch if label is not None)

    async def _publish_due_labels(self) -> None:
        if not self._labels_topic:
            return
        now = time.monotonic()
        due: list[tuple[bytes | None, bytes]] = []
        while self._pending and self._pending[0][0] <= now:
            _, key, label = self._pending.popleft()
            due.append((key, label))
        if due:
            await self._bus.publish_many(self._labels_topic, due)
            self.labels_published += len(due)

    async def stop(self) -> None:
        log.info("demo_traffic_stopped", events=self.published, labels=self.labels_published)
