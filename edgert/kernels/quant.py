"""GGML block formats, decoded straight from the file's bytes, and the products over them.

Each format has one `@njit` row decoder (`_deq_<type>(row_bytes, out)`), written from the
block layouts in ggml (`ggml-common.h`); `_make_matmul` builds a threaded matrix product
around a decoder. Weights are never dequantized as a whole: a row is decoded into a
per-thread scratch buffer and used for every token at once, so a prefill of n tokens
decodes each weight once.

Half-precision scales go through a 65536-entry float32 table (`F16_TABLE`), because
Numba has no float16 arithmetic on CPU.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import CACHE, FASTMATH

F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(inline="always")
def _f16(row, o):
    return F16_TABLE[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(inline="always")
def _i8(b):
    return np.float32((np.int64(b) ^ 0x80) - 0x80)


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_f32(row, out):
    v = row.view(np.float32)
    for j in range(out.shape[0]):
        out[j] = v[j]


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_f16(row, out):
    for j in range(out.shape[0]):
        out[j] = F16_TABLE[np.int64(row[2 * j]) | (np.int64(row[2 * j + 1]) << 8)]


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_bf16(row, out):
    bits = out.view(np.uint32)
    for j in range(out.shape[0]):
        bits[j] = (np.uint32(row[2 * j]) << 16) | (np.uint32(row[2 * j + 1]) << 24)


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q8_0(row, out):
    for b in range(out.shape[0] // 32):
        o = b * 34
        d = _f16(row, o)
        for j in range(32):
            out[b * 32 + j] = d * _i8(row[o + 2 + j])


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q4_0(row, out):
    for b in range(out.shape[0] // 32):
        o = b * 18
        d = _f16(row, o)
        for j in range(16):
            q = row[o + 2 + j]
            out[b * 32 + j] = d * np.float32(np.int64(q & 15) - 8)
            out[b * 32 + j + 16] = d * np.float32(np.int64(q >> 4) - 8)


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q4_1(row, out):
    for b in range(out.shape[0] // 32):
        o = b * 20
        d = _f16(row, o)
        m = _f16(row, o + 2)
        for j in range(16):
            q = row[o + 4 + j]
            out[b * 32 + j] = d * np.float32(q & 15) + m
            out[b * 32 + j + 16] = d * np.float32(q >> 4) + m


@njit(inline="always")
def _u32(row, o):
    return (np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)
            | (np.int64(row[o + 3]) << 24))


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q5_0(row, out):
    for b in range(out.shape[0] // 32):
        o = b * 22
        d = _f16(row, o)
        qh = _u32(row, o + 2)
        for j in range(16):
            q = np.int64(row[o + 6 + j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            out[b * 32 + j] = d * np.float32(((q & 15) | h0) - 16)
            out[b * 32 + j + 16] = d * np.float32(((q >> 4) | h1) - 16)


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q5_1(row, out):
    for b in range(out.shape[0] // 32):
        o = b * 24
        d = _f16(row, o)
        m = _f16(row, o + 2)
        qh = _u32(row, o + 4)
        for j in range(16):
            q = np.int64(row[o + 8 + j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            out[b * 32 + j] = d * np.float32((q & 15) | h0) + m
            out[b * 32 + j + 16] = d * np.float32((q >> 4) | h1) + m


@njit(inline="always")
def _scale_min_k4(j, row, o):
    """The 6-bit scale and min of sub-block j from the 12 packed bytes at row[o:]."""
    if j < 4:
        return np.int64(row[o + j]) & 63, np.int64(row[o + j + 4]) & 63
    sc = (np.int64(row[o + j + 4]) & 0xF) | ((np.int64(row[o + j - 4]) >> 6) << 4)
    mn = (np.int64(row[o + j + 4]) >> 4) | ((np.int64(row[o + j]) >> 6) << 4)
    return sc, mn


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q4_k(row, out):
    for b in range(out.shape[0] // 256):
        o = b * 144
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        qs = o + 16
        y = b * 256
        for g in range(4):
            sc1, m1 = _scale_min_k4(2 * g, row, o + 4)
            sc2, m2 = _scale_min_k4(2 * g + 1, row, o + 4)
            d1, mm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, mm2 = d * np.float32(sc2), dmin * np.float32(m2)
            for j in range(32):
                q = row[qs + 32 * g + j]
                out[y + 64 * g + j] = d1 * np.float32(q & 15) - mm1
                out[y + 64 * g + 32 + j] = d2 * np.float32(q >> 4) - mm2


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q5_k(row, out):
    for b in range(out.shape[0] // 256):
        o = b * 176
        d = _f16(row, o)
        dmin = _f16(row, o + 2)
        qh = o + 16
        qs = o + 48
        y = b * 256
        for g in range(4):
            sc1, m1 = _scale_min_k4(2 * g, row, o + 4)
            sc2, m2 = _scale_min_k4(2 * g + 1, row, o + 4)
            d1, mm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, mm2 = d * np.float32(sc2), dmin * np.float32(m2)
            for j in range(32):
                q = np.int64(row[qs + 32 * g + j])
                h = np.int64(row[qh + j])
                lo = (q & 15) + (16 if (h >> (2 * g)) & 1 else 0)
                hi = (q >> 4) + (16 if (h >> (2 * g + 1)) & 1 else 0)
                out[y + 64 * g + j] = d1 * np.float32(lo) - mm1
                out[y + 64 * g + 32 + j] = d2 * np.float32(hi) - mm2


@njit(fastmath=FASTMATH, cache=CACHE)
def _deq_q6_k(row, out):
    for b in range(out.shape[0] // 256):
        o = b * 210
        d = _f16(row, o + 208)
        for half in range(2):
            ql = o + 64 * half
            qh = o + 128 + 32 * half
            sc = o + 192 + 8 * half
            y = b * 256 + 128 * half
            for j in range(32):
                s = j // 16
                a = np.int64(row[ql + j])
                c = np.int64(row[ql + j + 32])
                h = np.int64(row[qh + j])
                q1 = ((a & 15) | ((h & 3) << 4)) - 32
                q2 = ((c & 15) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) - 32
                out[y + j] = d * _i8(row[sc + s]) * np.float32(q1)
                out[y + j + 32] = d * _i8(row[sc + s + 2]) * np.float32(q2)
                out[y + j + 64] = d * _i8(row[sc + s + 4]) * np.float32(q3)
                out[y + j + 96] = d * _i8(row[sc + s + 6]) * np.float32(q4)


def _make_matmul(deq):
    @njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
    def matmul(w, x, out, scratch):
        """out[i, r] = dot(row r of w, x[i]); w (rows, row_bytes) uint8, x (n, k), scratch (threads, k)."""
        rows = w.shape[0]
        n, k = x.shape
        parts = scratch.shape[0]
        per = (rows + parts - 1) // parts
        for t in prange(parts):
            buf = scratch[t]
            for r in range(t * per, min(rows, (t + 1) * per)):
                deq(w[r], buf)
                for i in range(n):
                    acc = np.float32(0.0)
                    for j in range(k):
                        acc += buf[j] * x[i, j]
                    out[i, r] = acc

    return matmul


def _make_row_range(deq):
    @njit(nogil=True, fastmath=FASTMATH, cache=CACHE)
    def row_range(w, r0, out):
        """out[i] = row r0 + i of w, decoded; out (n, k). Serial, without the GIL."""
        for i in range(out.shape[0]):
            deq(w[r0 + i], out[i])

    return row_range


def _make_rows(deq):
    @njit(fastmath=FASTMATH, cache=CACHE)
    def rows(w, ids, out):
        """out[i] = row ids[i] of w, decoded (an embedding lookup)."""
        for i in range(ids.shape[0]):
            deq(w[ids[i]], out[i])

    return rows


class QuantFormat:
    """One GGML type: its decoder and the kernels built from it (compiled on first use)."""

    def __init__(self, name: str, block: int, type_size: int, deq):
        self.name, self.block, self.type_size, self.deq = name, block, type_size, deq
        self.matmul = _make_matmul(deq)
        self.rows = _make_rows(deq)
        self.row_range = _make_row_range(deq)


# GGMLQuantizationType value -> decoder; block and byte sizes come from the gguf package
_DECODERS = {
    0: ("F32", _deq_f32), 1: ("F16", _deq_f16), 30: ("BF16", _deq_bf16),
    8: ("Q8_0", _deq_q8_0), 2: ("Q4_0", _deq_q4_0), 3: ("Q4_1", _deq_q4_1),
    6: ("Q5_0", _deq_q5_0), 7: ("Q5_1", _deq_q5_1),
    12: ("Q4_K", _deq_q4_k), 13: ("Q5_K", _deq_q5_k), 14: ("Q6_K", _deq_q6_k),
}
_FORMATS: dict[int, QuantFormat] = {}

SUPPORTED_TYPES = tuple(name for name, _ in _DECODERS.values())


def is_supported(ggml_type: int) -> bool:
    return ggml_type in _DECODERS


def get_format(ggml_type: int) -> QuantFormat:
    if ggml_type not in _FORMATS:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        name, deq = _DECODERS[ggml_type]
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        _FORMATS[ggml_type] = QuantFormat(name, block, size, deq)
    return _FORMATS[ggml_type]


def matmul(w: np.ndarray, ggml_type: int, x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """out (n, rows) = x (n, k) @ W.T for W given as raw GGML rows; all float32, C-contiguous."""
    get_format(ggml_type).matmul(w, x, out, scratch)


def dequantize(w: np.ndarray, ggml_type: int, k: int) -> np.ndarray:
    """A whole tensor as float32 (rows, k): for tests and converters, never for inference."""
    out = np.empty((w.shape[0], k), np.float32)
    get_format(ggml_type).rows(w, np.arange(w.shape[0], dtype=np.int64), out)
    return out
