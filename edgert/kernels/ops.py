"""Float kernels of the decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, softmax.

All work in place or into caller-owned buffers; none allocates except `rope_table`, which
runs once at load.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import CACHE, FASTMATH


@njit(fastmath=FASTMATH, cache=CACHE)
def rmsnorm(x, w, eps, out):
    """out[i] = x[i] / rms(x[i]) * w, row by row; x, out (n, d)."""
    n, d = x.shape
    for i in range(n):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[i, j] * x[i, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
        for j in range(d):
            out[i, j] = x[i, j] * inv * w[j]


@njit(fastmath=FASTMATH, cache=CACHE)
def rmsnorm_heads(x, w, eps):
    """In-place RMSNorm over each head vector: x (n, heads, head_dim), w (head_dim,)."""
    n, h, d = x.shape
    for i in range(n):
        for a in range(h):
            ss = np.float32(0.0)
            for j in range(d):
                ss += x[i, a, j] * x[i, a, j]
            inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
            for j in range(d):
                x[i, a, j] = x[i, a, j] * inv * w[j]


def rope_table(n_ctx: int, n_rot: int, base: float, pos_scale: float = 1.0,
               freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each (n_ctx, n_rot // 2), for rotary embeddings (computed in float64)."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)[: n_rot // 2]
    ang = np.outer(np.arange(n_ctx, dtype=np.float64) * pos_scale, inv)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@njit(fastmath=FASTMATH, cache=CACHE)
def rope(x, pos0, cos, sin, neox):
    """Rotate x (n, heads, head_dim) in place for positions pos0..pos0+n-1.

    Normal (GPT-J) order rotates pairs (2i, 2i+1); NeoX order rotates (i, i + n_rot/2).
    Dimensions past n_rot are left as they are (partial rotary)."""
    n, h, _ = x.shape
    half = cos.shape[1]
    for i in range(n):
        p = pos0 + i
        for a in range(h):
            for j in range(half):
                c = cos[p, j]
                s = sin[p, j]
                if neox:
                    i0, i1 = j, j + half
                else:
                    i0, i1 = 2 * j, 2 * j + 1
                x0 = x[i, a, i0]
                x1 = x[i, a, i1]
                x[i, a, i0] = x0 * c - x1 * s
                x[i, a, i1] = x0 * s + x1 * c


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def attention(q, k_cache, v_cache, pos0, scale, out, scores):
    """Causal grouped-query attention over a preallocated cache.

    q (n, heads, hd) for positions pos0..pos0+n-1; k_cache, v_cache (kv_heads, ctx, hd) already
    hold those positions; out (n, heads, hd); scores (threads, ctx) scratch, one row per thread."""
    n, heads, hd = q.shape
    kv_heads = k_cache.shape[0]
    group = heads // kv_heads
    for task in prange(n * heads):
        i = task // heads
        a = task % heads
        kv = a // group
        row = scores[numba.get_thread_id()]
        last = pos0 + i + 1
        mx = np.float32(-np.inf)
        for p in range(last):
            s = np.float32(0.0)
            for j in range(hd):
                s += q[i, a, j] * k_cache[kv, p, j]
            s *= scale
            row[p] = s
            if s > mx:
                mx = s
        total = np.float32(0.0)
        for p in range(last):
            e = np.exp(row[p] - mx)
            row[p] = e
            total += e
        inv = np.float32(1.0) / total
        for j in range(hd):
            out[i, a, j] = 0.0
        for p in range(last):
            wgt = row[p] * inv
            for j in range(hd):
                out[i, a, j] += wgt * v_cache[kv, p, j]


@njit(fastmath=FASTMATH, cache=CACHE)
def swiglu(gate, up):
    """gate = silu(gate) * up, in place; (n, ff)."""
    n, f = gate.shape
    for i in range(n):
        for j in range(f):
            g = gate[i, j]
            gate[i, j] = g / (np.float32(1.0) + np.exp(-g)) * up[i, j]


@njit(fastmath=FASTMATH, cache=CACHE)
def add_inplace(x, y):
    """x += y; (n, d)."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            x[i, j] += y[i, j]


@njit(fastmath=FASTMATH, cache=CACHE)
def add_bias(x, b):
    """x += b broadcast over rows; x (n, d), b (d,)."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            x[i, j] += b[j]


def softmax(x: np.ndarray) -> np.ndarray:
    """A numerically stable softmax over the last axis (NumPy; used by samplers and tests)."""
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sqrt_recip(d: int) -> float:
    return 1.0 / math.sqrt(d)
