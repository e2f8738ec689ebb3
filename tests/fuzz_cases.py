"""How many generated cases each fuzzing test runs (hypothesis max_examples), in one place: CI runs them all, and
together they stay above ten thousand (tests/unit/test_fuzz_inputs.py checks the sum)."""

from __future__ import annotations

INPUT_CASES = {"events": 2500, "files": 1200, "queries": 2000, "names": 1500, "conditions": 1500}
"""tests/unit/test_fuzz_inputs.py: parsers and checks called directly."""
RPC_CASES = {"predict": 900, "predict_batch": 700, "predict_stream": 250, "query": 450, "declare": 450,
             "registry": 350, "features": 350, "register_model": 120, "upload": 120, "monitoring": 150}
"""tests/e2e/test_fuzz_rpc.py: gRPC requests to a running daemon."""
