"""Write Q8_0 and Q4_K_M-style GGUFs of a model (by default the catalogue's SmolLM2-135M Q4_1),
so that `edgert bench` can race every quant family, not just the one that was downloaded.

    python benchmarks/variants.py [MODEL] [-o DIR]

Q4_K_M follows llama.cpp's recipe: Q4_K, with Q6_K for the output head and for attn_v and
ffn_down in the first and last eighth of the layers and every third between; a tensor whose
rows are not a multiple of 256 values takes llama.cpp's fallback (Q4_K -> Q5_0, Q6_K -> Q8_0),
which on SmolLM2 (width 576) covers every tensor but ffn_down.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from edgert.converters.kquants import quantize_q4_k, quantize_q6_k
from edgert.store import resolve

FALLBACK = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}
FILE_TYPE = {"Q8_0": 7, "Q4_K_M": 15}


def _more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def target_type(name: str, shape: tuple[int, ...], recipe: str, n_layers: int) -> T | None:
    if len(shape) < 2:
        return None  # norms and biases stay as they are
    if recipe == "Q8_0":
        return T.Q8_0
    if name in ("output.weight", "token_embd.weight"):
        t = T.Q6_K
    elif name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(name.split(".")[1]), n_layers):
        t = T.Q6_K
    else:
        t = T.Q4_K
    return t if shape[-1] % 256 == 0 else FALLBACK[t]


def quantize(x: np.ndarray, t: T) -> np.ndarray:
    if t == T.Q4_K:
        return quantize_q4_k(x)
    if t == T.Q6_K:
        return quantize_q6_k(x)
    return gguf.quants.quantize(x, t)


def write_variant(src: Path, dst: Path, recipe: str) -> Path:
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    n_layers = int(reader.fields[f"{arch}.block_count"].contents())
    tmp = dst.with_name(dst.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub_type=sub)
    w.add_file_type(FILE_TYPE[recipe])
    for t in reader.tensors:
        shape = tuple(int(v) for v in reversed(t.shape))
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        qt = target_type(t.name, shape, recipe, n_layers)
        if qt is None:
            w.add_tensor(t.name, x)
        else:
            w.add_tensor(t.name, quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("-o", "--out", default=None, help="folder for the files [default: beside the cache]")
    args = ap.parse_args()
    src = resolve(args.model)
    out = Path(args.out) if args.out else src.parent
    out.mkdir(parents=True, exist_ok=True)
    for recipe in ("Q8_0", "Q4_K_M"):
        dst = out / f"{src.stem.rsplit('.', 1)[0]}.{recipe}.gguf"
        if not dst.exists():
            write_variant(src, dst, recipe)
        print(dst)


if __name__ == "__main__":
    main()
