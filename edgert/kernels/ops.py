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
from .quant import F16_TABLE


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


def _make_attention(dot, axpy):
    """Causal grouped-query attention over a preallocated cache whose rows `dot` and `axpy`
    read (float32, float16 bits, or 8-bit blocks with scales)."""

    @njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
    def attention(q, k_cache, k_scale, v_cache, v_scale, pos0, scale, out, scores, tmp):
        """q (n, heads, hd) for positions pos0..pos0+n-1; caches (kv_heads, ctx, hd) already hold
        those positions; out (n, heads, hd); scores (threads, ctx) and tmp (threads, hd) uint32
        scratch, one row per thread."""
        n, heads, hd = q.shape
        kv_heads = k_cache.shape[0]
        group = heads // kv_heads
        for task in prange(n * heads):
            i = task // heads
            a = task % heads
            kv = a // group
            tid = numba.get_thread_id()
            row = scores[tid]
            bits = tmp[tid]
            vals = bits.view(np.float32)
            last = pos0 + i + 1
            mx = np.float32(-np.inf)
            for p in range(last):
                s = dot(q[i, a], k_cache[kv, p], k_scale[kv, p], bits, vals) * scale
                row[p] = s
                if s > mx:
                    mx = s
            total = np.float32(0.0)
            for p in range(last):
                e = np.exp(row[p] - mx)
                row[p] = e
                total += e
            inv = np.float32(1.0) / total
            o = out[i, a]
            for j in range(hd):
                o[j] = 0.0
            for p in range(last):
                axpy(row[p] * inv, v_cache[kv, p], v_scale[kv, p], o, bits, vals)

    return attention


@njit(inline="always", fastmath=FASTMATH)
def _dot_f32(x, k, _s, _b, _v):
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += x[j] * k[j]
    return acc


@njit(inline="always", fastmath=FASTMATH)
def _axpy_f32(w, v, _s, o, _b, _v):
    for j in range(o.shape[0]):
        o[j] += w * v[j]


@njit(inline="always", fastmath=FASTMATH)
def _dot_f16(x, k, _s, _b, _v):
    """Half-float keys through the 65536-entry table (Numba has no float16 arithmetic)."""
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += x[j] * F16_TABLE[k[j]]
    return acc


@njit(inline="always", fastmath=FASTMATH)
def _axpy_f16(w, v, _s, o, _b, _v):
    for j in range(o.shape[0]):
        o[j] += w * F16_TABLE[v[j]]


@njit(inline="always", fastmath=FASTMATH)
def _dot_q8(x, k, s, _b, _v):
    acc = np.float32(0.0)
    for b in range(s.shape[0]):
        part = np.float32(0.0)
        for j in range(32):
            part += x[b * 32 + j] * np.float32(k[b * 32 + j])
        acc += part * s[b]
    return acc


@njit(inline="always", fastmath=FASTMATH)
def _axpy_q8(w, v, s, o, _b, _v):
    for b in range(s.shape[0]):
        ws = w * s[b]
        for j in range(32):
            o[b * 32 + j] += ws * np.float32(v[b * 32 + j])


attention_f32 = _make_attention(_dot_f32, _axpy_f32)
attention_f16 = _make_attention(_dot_f16, _axpy_f16)
attention_q8 = _make_attention(_dot_q8, _axpy_q8)


def attention(q, k_cache, v_cache, pos0, scale, out, scores):
    """Float32 caches (kv_heads, ctx, hd): the common case, without scale arrays."""
    tmp = np.zeros((scores.shape[0], q.shape[2]), np.uint32)
    attention_f32(q, k_cache, k_cache, v_cache, v_cache, pos0, scale, out, scores, tmp)


@njit(cache=CACHE)
def store_q8(src, pos0, dst, dst_scale):
    """Quantize src (n, kv_heads, hd) into 8-bit blocks of 32 at positions pos0.. of
    dst (kv_heads, ctx, hd) int8 with dst_scale (kv_heads, ctx, hd // 32) float32."""
    n, heads, hd = src.shape
    for i in range(n):
        for h in range(heads):
            for b in range(hd // 32):
                amax = np.float32(0.0)
                for j in range(32):
                    amax = max(amax, abs(src[i, h, b * 32 + j]))
                d = amax / np.float32(127.0)
                inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
                dst_scale[h, pos0 + i, b] = d
                for j in range(32):
                    dst[h, pos0 + i, b * 32 + j] = np.int8(np.rint(src[i, h, b * 32 + j] * inv))


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
