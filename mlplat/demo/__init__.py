"""`mlplat run --demo`: the packaged demo feature sets and the generated traffic that feeds them."""

from pathlib import Path

DEMO_FEATURES = Path(__file__).with_name("features.toml")
