"""`import edgert` stays light: no CLI, UI, backends or numba at import, and fast."""

import subprocess
import sys

HEAVY = ("click", "rich", "llama_cpp", "onnxruntime", "coremltools", "numba", "tokenizers", "jinja2")


def test_import_is_light():
    code = ("import sys, time; t = time.perf_counter(); import edgert; dt = time.perf_counter() - t; "
            f"print(dt); print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "", f"import edgert pulled in {out[1]}"
    assert float(out[0]) < 0.5
