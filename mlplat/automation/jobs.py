"""Training jobs and their event streams: what a Train call follows, and re-attaches to by job id.

A job's events are kept (the newest MAX_EVENTS of them), so a client that connects late or re-attaches
after a disconnect first gets what it missed, then follows live. Followers never hold up the job: the job
appends and wakes them; each follower reads at its own pace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mlplat.errors import NotFound

# queued -> [waiting_for_data] -> loading_data -> fitting -> evaluating -> uploading -> registered ->
# promoted | staging (kept there, with why) ; failed at any point (with why)
FINAL_STAGES = ("promoted", "staging", "failed")
MAX_EVENTS = 256


@dataclass(frozen=True)
class JobEvent:
    seq: int
    job_id: str
    model: str
    stage: str
    progress: float  # 0 .. 1
    message: str
    version: int = 0  # from `registered` on
    at: str = ""

    @property
    def final(self) -> bool:
        return self.stage in FINAL_STAGES


class TrainingJob:
    def __init__(self, model: str, trigger: str, reason: str) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.model = model
        self.trigger = trigger  # bootstrap | drift | schedule | request
        self.reason = reason
        self.version = 0
        self._events: deque[JobEvent] = deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._changed = asyncio.Condition()

    @property
    def done(self) -> bool:
        return bool(self._events) and self._events[-1].final

    @property
    def last(self) -> JobEvent | None:
        return self._events[-1] if self._events else None

    async def emit(self, stage: str, progress: float, message: str = "", version: int = 0) -> None:
        self.version = version or self.version
        event = JobEvent(self._seq, self.id, self.model, stage, progress, message, self.version,
                         dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))
        self._seq += 1
        async with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[JobEvent]:
        """Every kept event from the first, then live ones, until the final one."""
        seen = 0  # events before this sequence number were yielded
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._seq > seen)  # noqa: B023 - re-read on every wake-up
                fresh = [e for e in self._events if e.seq >= seen]
            for event in fresh:
                yield event
                if event.final:
                    return
            seen = fresh[-1].seq + 1


class JobBook:
    """Running and recently finished jobs; at most one running job per model."""

    def __init__(self, keep_finished: int) -> None:
        self._keep = keep_finished
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._running: dict[str, TrainingJob] = {}

    def running(self, model: str) -> TrainingJob | None:
        job = self._running.get(model)
        return job if job is not None and not job.done else None

    def add(self, job: TrainingJob) -> None:
        self._running[job.model] = job
        self._jobs[job.id] = job
        finished = [jid for jid, j in self._jobs.items() if j.done]
        for jid in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[jid]

    def get(self, job_id: str) -> TrainingJob:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no training job {job_id!r} (finished jobs are kept for a while, then forgotten)") from None
