"""Drift thresholds for string and bool features: defaults, and a misspelt statistic named at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplat.config import MonitoringSettings, load_settings
from mlplat.errors import ConfigError


def test_categorical_features_have_their_own_thresholds() -> None:
    s = MonitoringSettings()
    assert s.categorical_thresholds == {"psi": 0.2, "unseen_share": 0.05}
    assert s.categorical_detect_on == ["psi", "unseen_share"]


@pytest.mark.parametrize(("toml", "bad"), [
    ('categorical_thresholds = { chi2_pvalue = 0.01 }', "chi2_pvalue"),  # falls with drift: no "at or above"
    ('categorical_detect_on = ["ks"]', "ks"),  # a numeric statistic
])
def test_an_unknown_categorical_statistic_is_named(tmp_path: Path, toml: str, bad: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[monitoring]\n{toml}\n")
    with pytest.raises(ConfigError, match=rf"monitoring\.categorical_.*unknown categorical statistic '{bad}' "
                                          r"\(expected chi2, psi, unseen_share\)"):
        load_settings(cfg)
