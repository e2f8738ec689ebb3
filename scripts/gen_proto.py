"""Regenerate mlplat/api/v1 from proto/mlplat/v1/*.proto (run after editing a .proto file).

The generated modules import each other as `mlplat.api.v1.X_pb2`, so the package is importable without
putting the generated folder on sys.path. tests/unit/test_proto.py fails if these files are stale.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
OUT = REPO / "mlplat" / "api" / "v1"


def generate(out: Path) -> None:
    # protoc finds the mypy plugins on PATH; they live beside this interpreter
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "mlplat" / "v1").glob("*.proto"))
    include = str(files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}", *protos]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*_pb2*"):
            old.unlink()
        for path in sorted((Path(tmp) / "mlplat" / "v1").iterdir()):
            text = path.read_text()
            text = re.sub(r"^from mlplat\.v1 import", "from mlplat.api.v1 import", text, flags=re.M)
            text = re.sub(r"^import mlplat\.v1\.(\w+)", r"import mlplat.api.v1.\1", text, flags=re.M)
            text = text.replace("mlplat.v1.", "mlplat.api.v1.") if path.suffix == ".pyi" else text
            (out / path.name).write_text(text)
    init = out / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated from proto/mlplat/v1 by scripts/gen_proto.py: do not edit."""\n')


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    generate(target)
    if target != OUT:
        shutil.copy(OUT / "__init__.py", target / "__init__.py")
