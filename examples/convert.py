"""Conversion: one source, every artifact a laptop, a phone or a Jetson needs, each checked.

    python examples/convert.py [SOURCE] [OUT]

SOURCE is a .gguf file, a Hugging Face checkpoint folder or a catalogue name (default
smollm2-135m); OUT defaults to ./converted. Each artifact's parity.json says how closely it
follows the source.
"""

import json
import sys
from pathlib import Path

import edgert
from edgert.converters.convert import convert
from edgert.store import resolve

source = resolve(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "converted")
rows = convert(source, ["gguf", "onnx", "tflite"], "f16", out, force=True, progress=print)
for row in rows:
    parity = json.loads((out / row["target"] / "parity.json").read_text())
    print(f"{row['target']:7} {row['bytes'] / 1e6:7.1f} MB  top-1 vs source {parity['top1_agreement']:.1%}")

# every artifact runs through the same API
for target in ("gguf", "onnx", "tflite"):
    path = rows[[r["target"] for r in rows].index(target)]["artifact"]
    m = edgert.load(path)
    print(target, m.backend, repr(m.generate([{"role": "user", "content": "Say hi."}], temp=0, max_tokens=12).text))
