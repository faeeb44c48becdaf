"""Slow, obvious twins of the kernels and of the decoder, for the tests.

Weights come from `gguf.quants.dequantize`, never from edgert's own decoders, so a wrong
block layout in a kernel cannot hide in the reference too."""

from __future__ import annotations

import numpy as np
from gguf import quants

from edgert.formats.gguf import GGUFFile
from edgert.models.config import ModelConfig


def dequant(g: GGUFFile, name: str) -> np.ndarray:
    info = g.tensors[name]
    if info.ggml_type == 0:
        return np.asarray(g.array(name), dtype=np.float32).reshape(info.shape)
    return quants.dequantize(g.raw(name), info.ggml_type).astype(np.float32).reshape(info.shape)


def rmsnorm(x, w, eps):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w


def rope(x, positions, n_rot, base, neox, pos_scale=1.0, freq_factors=None):
    """x (n, heads, hd); rotates the first n_rot dims of each head."""
    x = x.copy()
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors[: n_rot // 2]
    ang = np.outer(np.asarray(positions, np.float64) * pos_scale, inv)  # (n, n_rot/2)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : n_rot // 2].copy(), x[..., n_rot // 2 : n_rot].copy()
        x[..., : n_rot // 2] = a * c - b * s
        x[..., n_rot // 2 : n_rot] = a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * c - b * s
        x[..., 1:n_rot:2] = a * s + b * c
    return x.astype(np.float32)


def attention(q, k, v, pos0):
    """q (n, H, hd) at positions pos0..; k, v (T, KV, hd) for positions 0..T-1 (T = pos0 + n)."""
    n, H, hd = q.shape
    group = H // k.shape[1]
    out = np.zeros_like(q)
    for i in range(n):
        last = pos0 + i + 1
        for h in range(H):
            s = k[:last, h // group] @ q[i, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h] = p @ v[:last, h // group]
    return out


def forward(g: GGUFFile, cfg: ModelConfig, ids) -> np.ndarray:
    """Logits (len(ids), vocab) for one batched evaluation from position 0."""
    n, hd = len(ids), cfg.head_dim
    W = lambda name: dequant(g, name)  # noqa: E731
    emb = W("token_embd.weight")
    x = emb[np.asarray(ids)]
    freqs = W("rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None
    pos = np.arange(n)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        h = rmsnorm(x, W(p + "attn_norm.weight"), cfg.norm_eps)
        q, k, v = h @ W(p + "attn_q.weight").T, h @ W(p + "attn_k.weight").T, h @ W(p + "attn_v.weight").T
        if cfg.qkv_bias:
            q, k, v = q + W(p + "attn_q.bias"), k + W(p + "attn_k.bias"), v + W(p + "attn_v.bias")
        q = q.reshape(n, cfg.n_head, hd)
        k = k.reshape(n, cfg.n_head_kv, hd)
        v = v.reshape(n, cfg.n_head_kv, hd)
        if cfg.qk_norm:
            q = rmsnorm(q, W(p + "attn_q_norm.weight"), cfg.norm_eps)
            k = rmsnorm(k, W(p + "attn_k_norm.weight"), cfg.norm_eps)
        q = rope(q, pos, cfg.n_rot, cfg.rope_base, cfg.rope_neox, cfg.rope_pos_scale, freqs)
        k = rope(k, pos, cfg.n_rot, cfg.rope_base, cfg.rope_neox, cfg.rope_pos_scale, freqs)
        a = attention(q, k, v, 0).reshape(n, -1)
        x = x + a @ W(p + "attn_output.weight").T
        h = rmsnorm(x, W(p + "ffn_norm.weight"), cfg.norm_eps)
        gate, up = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W(p + "ffn_down.weight").T
    x = rmsnorm(x, W("output_norm.weight"), cfg.norm_eps)
    out = emb if cfg.tied_embeddings else W("output.weight")
    return (x @ out.T).astype(np.float32)
