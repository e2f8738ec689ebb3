"""models.toml: streams, windows and action rules are checked at start-up with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplat.errors import ConfigError
from mlplat.streaming.definitions import Condition, config_from_dict, load_streaming_config

WINDOWED = {"feature_set": "user_activity", "window_s": 60,
            "aggregates": [{"name": "clicks_mean", "feature": "clicks_1h", "fn": "mean"}, {"name": "n", "fn": "count"}]}


def test_a_full_config_reads() -> None:
    config = config_from_dict({
        "streams": {"churn": {"feature_set": "user_activity"}, "fraud": WINDOWED},
        "actions": [{"name": "alert", "model": "churn", "when": "score > 0.9", "kind": "publish", "target": "alerts"},
                    {"name": "hook", "model": "fraud", "kind": "webhook", "target": "http://127.0.0.1:1/x"},
                    {"name": "rows", "model": "fraud", "kind": "table", "target": "fraud_rows"}],
    })
    assert [s.model for s in config.streams] == ["churn", "fraud"]
    assert config.streams[1].aggregates[0].fn == "mean"
    assert [a.when for a in config.actions] == ["score > 0.9", "always", "always"]


@pytest.mark.parametrize(("text", "yes", "no"), [
    ("score > 0.9", [0.91, 1.0], [0.9, 0.0]),
    ("score >= 0.2 and score < 0.5", [0.2, 0.49], [0.5, 0.1]),
    ("score == 1", [1.0], [0.99]),
    ("score != 0", [0.5], [0.0]),
    ("always", [0.0, -5.0], []),
    ("score <= -1e-3", [-0.01], [0.0]),
])
def test_conditions_compare_the_score(text: str, yes: list[float], no: list[float]) -> None:
    condition = Condition(text)
    assert all(condition(s) for s in yes) and not any(condition(s) for s in no)


@pytest.mark.parametrize("text", ["score > abc", "__import__('os')", "score >", "label > 1", "score > 1 or score < 0"])
def test_a_condition_that_is_not_a_score_comparison_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected `score <op> <number>`"):
        Condition(text)


@pytest.mark.parametrize(("data", "message"), [
    ({"streams": {"m": {"feature_set": "fs", "window_s": 10}}}, "a window needs aggregates"),
    ({"streams": {"m": {"feature_set": "fs", "aggregates": WINDOWED["aggregates"]}}}, "aggregates need window_s"),
    ({"streams": {"m": {**WINDOWED, "aggregates": [{"name": "x", "fn": "mean"}]}}}, "fn 'mean' needs a feature"),
    ({"streams": {"m": {**WINDOWED, "aggregates": [{"name": "x", "fn": "median", "feature": "a"}]}}}, "median"),
    ({"streams": {"m": {"feature_set": "fs"}}, "actions": [
        {"name": "a", "model": "other", "kind": "publish", "target": "t"}]}, "model 'other' is not under"),
    ({"streams": {"m": {"feature_set": "fs"}}, "actions": [
        {"name": "a", "model": "m", "kind": "webhook", "target": "ftp://x"}]}, "http"),
    ({"streams": {"m": {"feature_set": "fs"}}, "actions": [
        {"name": "a", "model": "m", "kind": "table", "target": "x; DROP TABLE y"}]}, "plain table name"),
    ({"streams": {"m": {"feature_set": "fs"}}, "actions": [
        {"name": "a", "model": "m", "when": "score >> 1", "kind": "publish", "target": "t"}]}, "score >> 1"),
    ({"streams": {"m": {"feature_set": "fs"}}, "actions": [
        {"name": "a", "model": "m", "kind": "publish", "target": "t"},
        {"name": "a", "model": "m", "kind": "publish", "target": "u"}]}, "unique"),
    ({"streams": {"m": {"feature_set": "fs", "colour": 1}}}, "colour"),
    ({"stream": {}}, "unknown key 'stream'"),
])
def test_a_bad_config_names_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_the_example_in_config_reads() -> None:
    config = load_streaming_config(Path("config/models.toml"))
    assert [s.model for s in config.streams] == ["churn"] and [a.name for a in config.actions] == ["churn_alert"]
