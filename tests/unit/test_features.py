"""Feature definitions: parsing with named errors, and evolution that only ever adds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlplat.errors import ConfigError, IncompatibleChange
from mlplat.features.definitions import FeatureSet, catalog_from_dict, load_catalog

REPO = Path(__file__).resolve().parents[2]


def fs(*features: dict[str, Any], entity: str = "user") -> FeatureSet:
    return FeatureSet.model_validate({"name": "s", "entity": entity, "features": list(features)})


def test_the_shipped_features_toml_loads() -> None:
    """config/features.toml is valid and names a topic and a table per feature set."""
    catalog = load_catalog(REPO / "config" / "features.toml")
    activity = catalog.feature_sets["user_activity"]
    assert activity.topic == "mlplat.events.user_activity" and activity.table == "fs_user_activity"
    assert catalog.key_of(activity) == "user_id"


@pytest.mark.parametrize(("data", "named"), [
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "nobody",
      "features": [{"name": "a", "type": "int"}]}}}, "unknown entity 'nobody'"),
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
      "features": [{"name": "a", "type": "complex"}]}}}, "feature_sets.s.features.0.type"),
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
      "features": [{"name": "Bad Name", "type": "int"}]}}}, "features.0.name"),
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
      "features": [{"name": "a", "type": "string", "min": 1}]}}}, "min/max apply to float and int"),
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
      "features": [{"name": "a", "type": "int"}, {"name": "a", "type": "int"}]}}}, "declared twice"),
    ({"entities": {"user": {"key": "user_id"}}, "feature_sets": {"s": {"entity": "user",
      "features": [{"name": "event_time", "type": "int"}]}}}, "reserved"),
    ({"entity": {}}, "unknown section"),
])
def test_bad_definitions_are_refused_with_the_key(data: dict[str, Any], named: str) -> None:
    """Every mistake in a feature file is reported with where it is."""
    with pytest.raises(ConfigError, match=named):
        catalog_from_dict(data)


def test_adding_a_nullable_feature_is_a_new_version() -> None:
    """Additive change: version goes up by one; re-registering the same definition is a no-op."""
    v1 = fs({"name": "a", "type": "int"})
    v2 = v1.evolve(fs({"name": "a", "type": "int"}, {"name": "b", "type": "float"}))
    assert v2.version == 2 and [f.name for f in v2.features] == ["a", "b"]
    assert v2.evolve(fs({"name": "a", "type": "int"}, {"name": "b", "type": "float"})) is v2


@pytest.mark.parametrize(("new", "named"), [
    (fs({"name": "b", "type": "int"}), "feature 'a' is removed"),
    (fs({"name": "a", "type": "float"}), "changes type from int to float"),
    (fs({"name": "a", "type": "int", "nullable": False}), "becomes non-nullable"),
    (fs({"name": "a", "type": "int"}, {"name": "c", "type": "int", "nullable": False}), "must be nullable"),
    (fs({"name": "a", "type": "int"}, entity="account"), "entity changes"),
])
def test_breaking_changes_are_refused(new: FeatureSet, named: str) -> None:
    """Changes that would break stored rows or consumers are refused, saying which and why."""
    with pytest.raises(IncompatibleChange, match=named):
        fs({"name": "a", "type": "int"}).evolve(new)
