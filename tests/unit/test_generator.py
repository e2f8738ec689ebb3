"""The generator: valid by default, bad records on request, shifts that move a feature, same seed same data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from mlplat.features.definitions import load_catalog
from mlplat.ingest.generator import GeneratorSpec, generate_labelled, generate_payloads
from mlplat.ingest.validation import validate_events

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(REPO / "config" / "features.toml")
FS = CATALOG.feature_sets["user_activity"]
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def spec(**kw: object) -> GeneratorSpec:
    return GeneratorSpec(FS, "user_id", **kw)  # type: ignore[arg-type]


def test_generated_events_respect_every_constraint() -> None:
    """With no bad fraction, every generated event passes validation."""
    batch = validate_events(FS, "user_id", [p for _, p in generate_payloads(spec(), 5000)], NOW)
    assert batch.dead == [] and batch.rows.num_rows == 5000


def test_bad_fraction_produces_dead_letters_of_several_kinds() -> None:
    """About the requested share is invalid, spread over several reasons."""
    batch = validate_events(FS, "user_id", [p for _, p in generate_payloads(spec(bad_fraction=0.1), 5000)], NOW)
    assert 350 < len(batch.dead) < 650
    assert len({d.code for d in batch.dead}) >= 4


def test_shift_moves_only_the_shifted_feature() -> None:
    """--shift spend_1h=50 raises that feature's mean and leaves the others alone."""
    def means(s: GeneratorSpec) -> tuple[float, float]:
        rows = [json.loads(p) for _, p in generate_payloads(s, 5000)]
        return float(np.mean([r["spend_1h"] for r in rows])), float(np.mean([r["clicks_1h"] for r in rows]))

    base_spend, base_clicks = means(spec())
    shifted_spend, shifted_clicks = means(spec(shift={"spend_1h": 50.0}))
    assert shifted_spend > base_spend + 25 and abs(shifted_clicks - base_clicks) < 1e-9


def test_same_seed_same_events_and_labels_for_valid_events_only() -> None:
    """Generation is deterministic for a seed and start time; rejected events carry no label."""
    first = generate_labelled(spec(seed=3, bad_fraction=0.2, start=NOW), 200)
    assert first == generate_labelled(spec(seed=3, bad_fraction=0.2, start=NOW), 200)
    assert first != generate_labelled(spec(seed=4, bad_fraction=0.2, start=NOW), 200)
    batch = validate_events(FS, "user_id", [p for _, p, _ in first], NOW)
    dead = {d.index for d in batch.dead}
    assert all((label is None) == (i in dead) for i, (_, _, label) in enumerate(first))
