"""The GGUF target: a ModelSpec written with `gguf.GGUFWriter`, metadata as llama.cpp reads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from .kquants import quantize_q4_k, quantize_q6_k
from .spec import ModelSpec, target_quant

QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k", "q4_k_m")
GENERIC = {"q4": "q4_k_m", "q8": "q8_0", "f16": "f16", "fp16": "f16", "fp32": "f32", "f32": "f32", "int8": "q8_0",
           "int4": "q4_k_m"}
_TYPES = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0,
          "q5_1": T.Q5_1, "q4_k": T.Q4_K, "q6_k": T.Q6_K}
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k": 15, "q6_k": 18,
              "q4_k_m": 15}
FALLBACK = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}  # llama.cpp's choice when rows are not a multiple of 256


def gguf_quant(name: str) -> str:
    return target_quant(name, "GGUF", QUANTS, GENERIC)


def _more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], quant: str, n_layers: int) -> T:
    """The GGML type a tensor gets under a recipe; vectors stay F32, as llama.cpp writes them."""
    if len(shape) < 2:
        return T.F32
    if quant == "q4_k_m":
        if name in ("output.weight", "token_embd.weight"):
            t = T.Q6_K
        elif name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(name.split(".")[1]), n_layers):
            t = T.Q6_K
        else:
            t = T.Q4_K
    else:
        t = _TYPES[quant]
    block = gguf.GGML_QUANT_SIZES[t][0]
    if shape[-1] % block:
        t = FALLBACK.get(t, T.F16)
        if shape[-1] % gguf.GGML_QUANT_SIZES[t][0]:
            t = T.F16
    return t


def quantize(x: np.ndarray, t: T) -> np.ndarray:
    if t == T.F32:
        return x.astype(np.float32)
    if t == T.F16:
        return x.astype(np.float16)
    if t == T.Q4_K:
        return quantize_q4_k(x)
    if t == T.Q6_K:
        return quantize_q6_k(x)
    return gguf.quants.quantize(x, t)  # bit-identical to llama.cpp's reference quantizers


def write_gguf(spec: ModelSpec, path: Path, quant: str, progress: Callable[[str], None] | None = None) -> dict:
    """Write the spec as GGUF; returns {tensor type name: count}."""
    cfg, tok = spec.config, spec.tokenizer
    arch = cfg.arch
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(cfg.name or spec.source.stem)
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(cfg.n_rot)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.head_dim != cfg.n_embd // cfg.n_head:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.rope_pos_scale != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0 / cfg.rope_pos_scale)
    w.add_file_type(FILE_TYPES[quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model(tok.model)
    w.add_tokenizer_pre(tok.pre)
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.token_types)
    if tok.merges:
        w.add_token_merges(tok.merges)
    if tok.scores:
        w.add_token_scores(tok.scores)
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
    if tok.eos_id is not None:
        w.add_eos_token_id(tok.eos_id)
    w.add_add_bos_token(tok.add_bos)
    for key, value in tok.extra.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)
    counts: dict[str, int] = {}
    for i, name in enumerate(spec.names):
        shape = spec.shapes[name]
        t = tensor_type(name, shape, quant, cfg.n_layer)
        x = spec.tensor(name).reshape(shape)
        data = quantize(x, t)
        w.add_tensor(name, data, raw_dtype=t if t not in (T.F32, T.F16) else None)
        counts[t.name] = counts.get(t.name, 0) + 1
        if progress:
            progress(f"gguf {i + 1}/{len(spec.names)} {name}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts
