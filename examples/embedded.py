"""Embedded use, as on a Jetson or any board running Python 3.10+: load once, answer many.

    python examples/embedded.py "What is the boiling point of water?"
"""

import sys

import edgert

model = edgert.load("smollm2-135m", n_ctx=1024, threads=2)  # pulled into the cache on first use
question = " ".join(sys.argv[1:]) or "Name three primary colours."
result = model.generate([{"role": "user", "content": question}], temp=0.2, max_tokens=128)
print(result.text)
print(f"{result.generation_tokens} tokens at {result.generation_tps:.1f} tok/s ({result.finish_reason})",
      file=sys.stderr)
