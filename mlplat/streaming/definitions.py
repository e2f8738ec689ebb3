"""`models.toml`: which models predict on arriving events, over which windows, and what their predictions do.

    [streams.churn]                     # a registered model; its production version predicts
    feature_set = "user_activity"       # the events it listens to
    window_s = 0                        # 0: every event; N: tumbling N-second windows per entity
    lateness_s = 2.0                    # (windows) events this late are still counted in their window
    aggregates = [                      # (windows) model inputs computed over each window
      { name = "clicks_mean", feature = "clicks_1h", fn = "mean" },
      { name = "events", fn = "count" },
    ]

    [[actions]]
    name = "churn_alert"
    model = "churn"
    when = "score > 0.9"                # comparisons of `score` joined by `and`
    kind = "webhook"                    # publish (target: a topic) | webhook (a URL) | table (a table name)
    target = "http://alerts.internal/churn"

A model input the event (or window) does not give comes from the entity's online features.
"""

from __future__ import annotations

import operator
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlplat.errors import ConfigError, describe_invalid

AGGREGATES = ("count", "sum", "mean", "min", "max", "last")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COMPARISON = re.compile(r"^\s*score\s*(>=|<=|==|!=|>|<)\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Aggregate(_Model):
    name: str = Field(description="the model input this aggregate feeds")
    fn: Literal["count", "sum", "mean", "min", "max", "last"]
    feature: str | None = Field(None, description="the event feature aggregated (not for count)")

    @model_validator(mode="after")
    def _feature_given(self) -> Aggregate:
        if self.fn != "count" and not self.feature:
            raise ValueError(f"aggregate {self.name!r}: fn {self.fn!r} needs a feature")
        return self


class StreamSpec(_Model):
    model: str
    feature_set: str
    window_s: float = Field(0.0, ge=0, description="0: predict per event; N: tumbling windows of N seconds")
    lateness_s: float = Field(2.0, ge=0)
    aggregates: tuple[Aggregate, ...] = ()

    @model_validator(mode="after")
    def _windows_have_aggregates(self) -> StreamSpec:
        if self.window_s and not self.aggregates:
            raise ValueError(f"stream {self.model!r}: a window needs aggregates (what the model gets from it)")
        if not self.window_s and self.aggregates:
            raise ValueError(f"stream {self.model!r}: aggregates need window_s > 0")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise ValueError(f"stream {self.model!r}: aggregate names must be unique")
        return self


class Condition:
    """`score > 0.9 and score <= 1`: comparisons of the score joined by `and`; parsed, never evaluated as code."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self._checks: list[tuple[Callable[[float, float], bool], float]] = []
        if self.text.lower() in ("", "always"):
            return
        for part in re.split(r"\s+and\s+", self.text):
            match = _COMPARISON.match(part)
            if not match:
                raise ValueError(f"cannot read {part.strip()!r}: expected `score <op> <number>` with op one of "
                                 f"{' '.join(_OPERATORS)} (several joined by `and`), or `always`")
            self._checks.append((_OPERATORS[match[1]], float(match[2])))

    def __call__(self, score: float) -> bool:
        return all(check(score, bound) for check, bound in self._checks)


class ActionRule(_Model):
    name: str
    model: str
    when: str = "always"
    kind: Literal["publish", "webhook", "table"]
    target: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IDENTIFIER.match(v):
            raise ValueError("must be letters, digits and _ (it names metrics and idempotency keys)")
        return v

    @field_validator("when")
    @classmethod
    def _when(cls, v: str) -> str:
        Condition(v)
        return v

    @model_validator(mode="after")
    def _target_fits_kind(self) -> ActionRule:
        if self.kind == "webhook" and not re.match(r"^https?://", self.target):
            raise ValueError(f"action {self.name!r}: a webhook target must be an http(s) URL")
        if self.kind == "table" and not IDENTIFIER.match(self.target):
            raise ValueError(f"action {self.name!r}: a table target must be a plain table name")
        return self

    @property
    def condition(self) -> Condition:
        return Condition(self.when)


class StreamingConfig(_Model):
    streams: tuple[StreamSpec, ...] = ()
    actions: tuple[ActionRule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> StreamingConfig:
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ValueError("action names must be unique")
        streamed = {s.model for s in self.streams}
        for action in self.actions:
            if action.model not in streamed:
                raise ValueError(f"action {action.name!r}: model {action.model!r} is not under [streams] "
                                 f"(streamed: {', '.join(sorted(streamed)) or 'none'})")
        return self


def config_from_dict(data: dict[str, Any], origin: str = "models") -> StreamingConfig:
    """Build from parsed TOML; ConfigError names the key, the value and what was wrong, on one line."""
    streams = data.get("streams", {})
    if not isinstance(streams, dict):
        raise ConfigError(f"{origin}: [streams] must be a table of models")
    unknown = set(data) - {"streams", "actions", "models"}  # [models.*]: automation's specs (automation/specs.py)
    if unknown:
        raise ConfigError(f"{origin}: unknown key {sorted(unknown)[0]!r} (expected streams, actions, models)")
    try:
        return StreamingConfig(
            streams=tuple(StreamSpec(model=name, **(spec if isinstance(spec, dict) else {"_": spec}))
                          for name, spec in streams.items()),
            actions=tuple(data.get("actions", ())),
        )
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe_invalid(e)}") from None
    except TypeError as e:  # a stream that is not a table
        raise ConfigError(f"{origin}: {e}") from None


def read_models_file(path: Path) -> dict[str, Any]:
    """The parsed models file (streams, actions, and automation's [models.*] specs)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"streaming.models_file {str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {e}") from None


def load_streaming_config(path: Path) -> StreamingConfig:
    return config_from_dict(read_models_file(path), str(path))

