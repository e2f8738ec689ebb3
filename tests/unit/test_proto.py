"""The generated gRPC stubs in mlplat/api/v1 match proto/ (regenerate with scripts/gen_proto.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    """Editing a .proto without regenerating fails here, not in a user's client."""
    out = tmp_path / "v1"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_proto.py"), str(out)], check=True)
    committed = REPO / "mlplat" / "api" / "v1"
    generated = {p.name: p.read_text() for p in out.iterdir() if p.name != "__init__.py"}
    current = {p.name: p.read_text() for p in committed.iterdir() if "_pb2" in p.name}
    assert generated.keys() == current.keys()
    stale = [name for name in generated if generated[name] != current[name]]
    assert not stale, f"regenerate with: python scripts/gen_proto.py ({stale})"
