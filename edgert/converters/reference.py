"""A float32 NumPy forward over a Hugging Face checkpoint's own tensors, as transformers computes
it (RoPE on halves, weights as published): the source side of a conversion's parity check.
It shares nothing with the GGUF writer's renaming and Q/K permutation, so it catches them."""

from __future__ import annotations

import numpy as np

from .spec import ModelSpec


def _rmsnorm(x, w, eps):
    return (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32) * w


def _rope_halves(x, n_rot, ang):
    """transformers' rotate_half: dims i and i + n_rot/2 form a pair. x (n, heads, hd), ang (n, n_rot/2)."""
    c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
    a, b = x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]
    out = x.copy()
    out[..., : n_rot // 2] = a * c - b * s
    out[..., n_rot // 2 : n_rot] = a * s + b * c
    return out


def hf_logits(spec: ModelSpec, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) of one causal evaluation from position 0."""
    cfg, W = spec.config, spec.hf_load
    n, hd = len(ids), cfg.head_dim
    emb = W("token_embd.weight")
    x = emb[np.asarray(ids)].astype(np.float32)
    mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
    ang = spec.rope_angles(n)
    group = cfg.n_head // cfg.n_head_kv
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        h = _rmsnorm(x, W(p + "attn_norm.weight"), cfg.norm_eps)
        q, k, v = h @ W(p + "attn_q.weight").T, h @ W(p + "attn_k.weight").T, h @ W(p + "attn_v.weight").T
        if cfg.qkv_bias:
            q, k, v = q + W(p + "attn_q.bias"), k + W(p + "attn_k.bias"), v + W(p + "attn_v.bias")
        q, k, v = q.reshape(n, cfg.n_head, hd), k.reshape(n, cfg.n_head_kv, hd), v.reshape(n, cfg.n_head_kv, hd)
        if cfg.qk_norm:
            q = _rmsnorm(q, W(p + "attn_q_norm.weight"), cfg.norm_eps)
            k = _rmsnorm(k, W(p + "attn_k_norm.weight"), cfg.norm_eps)
        q = _rope_halves(q, cfg.n_rot, ang)
        k = _rope_halves(k, cfg.n_rot, ang)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(n, -1)
        x = x + a @ W(p + "attn_output.weight").T
        h = _rmsnorm(x, W(p + "ffn_norm.weight"), cfg.norm_eps)
        g, u = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ W(p + "ffn_down.weight").T
    x = _rmsnorm(x, W("output_norm.weight"), cfg.norm_eps)
    out = emb if cfg.tied_embeddings else W("output.weight")
    return (x @ out.T).astype(np.float32)
