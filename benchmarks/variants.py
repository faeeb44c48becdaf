"""Write Q8_0 and Q4_K_M GGUFs of a model (by default the catalogue's SmolLM2-135M Q4_1), so that
`edgert bench` can race every quant family, not just the one that was downloaded.

    python benchmarks/variants.py [MODEL] [-o DIR]

They are written by edgert's converter (`edgert.converters.gguf_out`): Q4_K_M follows llama.cpp's
recipe, Q4_K with Q6_K for the output head and for attn_v and ffn_down in the first and last
eighth of the layers and every third between; a tensor whose rows are not a multiple of 256
values takes llama.cpp's fallback (Q4_K -> Q5_0, Q6_K -> Q8_0), which on SmolLM2 (width 576)
covers every tensor but ffn_down. (`edgert convert` does the same with a parity check.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgert.converters.gguf_out import write_gguf
from edgert.converters.spec import load_spec
from edgert.store import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("-o", "--out", default=None, help="folder for the files [default: beside the cached model]")
    args = ap.parse_args()
    src = resolve(args.model)
    out = Path(args.out) if args.out else src.parent
    out.mkdir(parents=True, exist_ok=True)
    spec = None
    for quant in ("q8_0", "q4_k_m"):
        dst = out / f"{src.stem.rsplit('.', 1)[0]}.{quant.upper()}.gguf"
        if not dst.exists():
            spec = spec or load_spec(src)
            tmp = dst.with_name(dst.name + ".part")
            write_gguf(spec, tmp, quant)
            os.replace(tmp, dst)
        print(dst)


if __name__ == "__main__":
    main()
