"""Quantizers for the K formats, which `gguf.quants` can read but not write (Q4_K, Q6_K).

They follow the block layouts in ggml-common.h with the plain min/max choice of scales
(llama.cpp refines scales by a small search, `make_qkx2_quants`; these do not, so their error
is somewhat larger, and the tests bound it). The other formats are quantized by `gguf.quants`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels import CACHE


def _half(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


@njit(cache=CACHE)
def _q4_k_rows(x, d_out, dmin_out, sc_out, mn_out):
    """Per super-block scale and min steps (rounded to f16 by the caller) and each sub-block's
    float scale and min; the codes follow in `_q4_k_pack` once d and dmin are rounded."""
    rows, k = x.shape
    for r in range(rows):
        for sb in range(k // 256):
            scales = np.empty(8, np.float32)
            mins = np.empty(8, np.float32)
            for s in range(8):
                lo = np.float32(0.0)
                hi = np.float32(-np.inf)
                for j in range(32):
                    v = x[r, sb * 256 + s * 32 + j]
                    lo = min(lo, v)
                    hi = max(hi, v)
                scales[s] = (hi - lo) / np.float32(15.0)
                mins[s] = -lo
            d_out[r, sb] = scales.max() / np.float32(63.0)
            dmin_out[r, sb] = mins.max() / np.float32(63.0)
            for s in range(8):
                sc_out[r, sb, s] = scales[s]
                mn_out[r, sb, s] = mins[s]


@njit(cache=CACHE)
def _q4_k_pack(x, d, dmin, scales, mins, out):
    rows, k = x.shape
    for r in range(rows):
        for sb in range(k // 256):
            o = sb * 144
            dd, dm = d[r, sb], dmin[r, sb]
            sc = np.zeros(8, np.int64)
            mn = np.zeros(8, np.int64)
            for s in range(8):
                if dd > 0:
                    sc[s] = min(63, int(np.rint(scales[r, sb, s] / dd)))
                if dm > 0:
                    mn[s] = min(63, int(np.rint(mins[r, sb, s] / dm)))
            for j in range(4):
                out[r, o + 4 + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
                out[r, o + 8 + j] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6)
                out[r, o + 12 + j] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4)
            codes = np.zeros(256, np.int64)
            for s in range(8):
                step = dd * sc[s]
                off = dm * mn[s]
                for j in range(32):
                    v = x[r, sb * 256 + s * 32 + j]
                    c = int(np.rint((v + off) / step)) if step > 0 else 0
                    codes[s * 32 + j] = max(0, min(15, c))
            for g in range(4):
                for j in range(32):
                    out[r, o + 16 + 32 * g + j] = codes[64 * g + j] | (codes[64 * g + 32 + j] << 4)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, k), k a multiple of 256 -> Q4_K bytes (rows, k / 256 * 144)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    nsb = k // 256
    d = np.empty((rows, nsb), np.float32)
    dmin = np.empty((rows, nsb), np.float32)
    sc = np.empty((rows, nsb, 8), np.float32)
    mn = np.empty((rows, nsb, 8), np.float32)
    _q4_k_rows(x, d, dmin, sc, mn)
    dh, dminh = _half(d), _half(dmin)
    out = np.zeros((rows, nsb * 144), np.uint8)
    v = out.reshape(rows, nsb, 144)
    v[:, :, 0:2] = dh.view(np.uint8).reshape(rows, nsb, 2)
    v[:, :, 2:4] = dminh.view(np.uint8).reshape(rows, nsb, 2)
    _q4_k_pack(x, dh.astype(np.float32), dminh.astype(np.float32), sc, mn, out)
    return out


@njit(cache=CACHE)
def _q6_k_pack(x, d, out):
    rows, k = x.shape
    for r in range(rows):
        for sb in range(k // 256):
            o = sb * 210
            dd = d[r, sb]
            codes = np.zeros(256, np.int64)
            for s in range(16):
                amax = np.float32(0.0)
                for j in range(16):
                    amax = max(amax, abs(x[r, sb * 256 + s * 16 + j]))
                sc = 0
                if dd > 0:
                    sc = max(-128, min(127, int(np.rint(amax / np.float32(31.0) / dd))))
                out[r, o + 192 + s] = sc & 0xFF
                step = dd * sc
                for j in range(16):
                    c = int(np.rint(x[r, sb * 256 + s * 16 + j] / step)) if step != 0 else 0
                    codes[s * 16 + j] = max(-32, min(31, c)) + 32
            for h in range(2):
                for j in range(32):
                    v0 = codes[128 * h + j]
                    v1 = codes[128 * h + 32 + j]
                    v2 = codes[128 * h + 64 + j]
                    v3 = codes[128 * h + 96 + j]
                    out[r, o + 64 * h + j] = (v0 & 15) | ((v2 & 15) << 4)
                    out[r, o + 64 * h + 32 + j] = (v1 & 15) | ((v3 & 15) << 4)
                    out[r, o + 128 + 32 * h + j] = (v0 >> 4) | ((v1 >> 4) << 2) | ((v2 >> 4) << 4) | ((v3 >> 4) << 6)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 (rows, k), k a multiple of 256 -> Q6_K bytes (rows, k / 256 * 210)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    nsb = k // 256
    amax = np.abs(x.reshape(rows, nsb, 16, 16)).max(axis=-1)  # per sub-block
    d = _half((amax / 31.0).max(axis=-1) / 127.0)
    out = np.zeros((rows, nsb * 210), np.uint8)
    out.reshape(rows, nsb, 210)[:, :, 208:210] = d.view(np.uint8).reshape(rows, nsb, 2)
    _q6_k_pack(x, d.astype(np.float32), out)
    return out
