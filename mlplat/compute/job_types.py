"""Priority classes, lanes, cost hints and the errors a job can end with."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mlplat.errors import MlplatError


class Priority(enum.IntEnum):
    """Lower value = more urgent (seed 000, future feature 1: ingest > serve > monitor > train)."""

    INGEST = 0
    SERVE = 1
    MONITOR = 2
    TRAIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Lane(enum.StrEnum):
    INLINE = "inline"    # on the event loop: only for work cheaper than a context switch
    THREAD = "thread"    # I/O, and numpy/pyarrow/DuckDB work that releases the GIL
    PROCESS = "process"  # CPU-heavy pure Python: training, large parsing


@dataclass(frozen=True)
class Cost:
    """What the caller knows about a job: expected run time and whether it holds the GIL while it runs."""

    expected_ms: float | None = None
    releases_gil: bool = False


class JobFailed(MlplatError):
    """The job could not produce a result (its worker died, it was cancelled at shutdown ...)."""


class WorkerDied(JobFailed):
    """The worker process running the job died (killed, crashed or out of memory)."""


class DeadlineExceeded(JobFailed):
    """The job did not finish within its deadline and was cancelled."""


class BalancerStopped(JobFailed):
    """The balancer is shutting down; the job was not run."""
