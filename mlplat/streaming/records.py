"""The prediction record on the predictions topic: what inference publishes and the action executor reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class PredictionRecord:
    id: str  # <model>:<event id>, or <model>:<entity>:<window start>: the same on a replay
    model: str
    version: int
    entity_id: str
    score: float
    event_time_us: int  # the event's time, or the window's end
    published_at_us: int
    window_start_us: int | None = None
    events: int = 1  # events behind the prediction (the window's count)

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes dataclasses natively, far faster than asdict

    @classmethod
    def from_json(cls, data: bytes) -> PredictionRecord:
        """Raises ValueError naming what is wrong with a record that is not ours."""
        try:
            doc: Any = orjson.loads(data)
            return cls(**doc)
        except (orjson.JSONDecodeError, TypeError) as e:
            raise ValueError(f"not a prediction record: {e}") from None
