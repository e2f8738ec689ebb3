"""`mlplat run --demo`: the packaged demo feature sets, models and the generated traffic that feeds them."""

from pathlib import Path

DEMO_FEATURES = Path(__file__).with_name("features.toml")


def demo_models_file(fast: bool) -> Path:
    """The demo's streams and model specs; `--fast` compresses the automation schedule to seconds."""
    return Path(__file__).with_name("models-fast.toml" if fast else "models.toml")
