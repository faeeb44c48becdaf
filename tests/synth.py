"""Tiny GGUF models written in the tests with `gguf.GGUFWriter`: every quant type and family
runs without downloading anything. Weights are random; K-quant blocks are random bytes with
bounded scales (gguf.quants cannot quantize K types), so every decoder path sees real data."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

# byte offsets of the half-float scales in each block, kept small and finite
_SCALES = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
_SCALE_SIZE = {T.Q4_K: 0.0004, T.Q5_K: 0.0002, T.Q6_K: 0.00005}


def quantize(x: np.ndarray, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """x (rows, k) float32 in the given GGML type, as the writer takes it."""
    if qtype == T.F32:
        return x.astype(np.float32)
    if qtype == T.F16:
        return x.astype(np.float16)
    if qtype in _SCALES:  # random blocks with bounded scales (x is ignored: only its shape counts)
        block, size = GGML_QUANT_SIZES[qtype]
        rows, k = x.shape
        raw = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
        for off in _SCALES[qtype]:
            d = (rng.random((rows, k // block)) * _SCALE_SIZE[qtype]).astype(np.float16)
            raw[:, :, off : off + 2] = d.view(np.uint8).reshape(rows, k // block, 2)
        return raw.reshape(rows, -1)
    return gguf.quants.quantize(x.astype(np.float32), qtype)


def byte_vocab() -> tuple[list[str], list[int], list[str]]:
    """A GPT-2 style byte-level vocabulary: 256 byte tokens, a few merges, ChatML specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r"]
    tokens = chars + [m.replace(" ", "") for m in merges]
    types = [1] * len(tokens)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(3)
    return tokens, types, merges


def write_model(path: Path, arch: str = "llama", qtype: T = T.Q8_0, *, n_layer: int = 2, n_embd: int = 256,
                n_head: int = 4, n_head_kv: int = 2, n_ff: int = 512, tied: bool = True, seed: int = 0,
                head_dim: int | None = None, embd_type: T | None = None) -> Path:
    rng = np.random.default_rng(seed)
    tokens, types, merges = byte_vocab()
    vocab = len(tokens)
    hd = head_dim or n_embd // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"synthetic-{arch}-{qtype.name}")
    w.add_block_count(n_layer)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    if head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_file_type(1 if qtype == T.F16 else 0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 3)
    w.add_eos_token_id(vocab - 1)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def mat(name: str, rows: int, k: int, t: T = qtype, scale: float = 0.08) -> None:
        x = (rng.standard_normal((rows, k)) * scale).astype(np.float32)
        q = quantize(x, t, rng)
        w.add_tensor(name, q, raw_dtype=t if t not in (T.F32, T.F16) else None)

    def vec(name: str, n: int, center: float = 1.0) -> None:
        w.add_tensor(name, (center + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", vocab, n_embd, embd_type or qtype, scale=0.5)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", vocab, n_embd)
    q_dim, kv_dim = n_head * hd, n_head_kv * hd
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "attn_q.weight", q_dim, n_embd)
        mat(p + "attn_k.weight", kv_dim, n_embd)
        mat(p + "attn_v.weight", kv_dim, n_embd)
        mat(p + "attn_output.weight", n_embd, q_dim)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
        if arch == "qwen2":
            vec(p + "attn_q.bias", q_dim, 0.0)
            vec(p + "attn_k.bias", kv_dim, 0.0)
            vec(p + "attn_v.bias", kv_dim, 0.0)
        if arch == "qwen3":
            vec(p + "attn_q_norm.weight", hd)
            vec(p + "attn_k_norm.weight", hd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
