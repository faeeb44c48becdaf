"""Row-interleaved ("tiled") weight layouts for the formats that carry most bytes, packed once at load.

A GGML row stores its blocks one after another, so a kernel that walks a row mixes scale
look-ups, nibble unpacking and a per-block reduction in one short loop, which LLVM leaves
scalar (about 2 GB/s here). Packed, a tile holds TILE rows side by side:

    qs[tile, block, j, lane]   byte j of the block in row tile*TILE + lane
    d[tile, block, lane]       the block's scale as float32 (and m, its offset, for Q4_0/Q4_1)

so the innermost loop runs over TILE lanes with contiguous loads and one broadcast activation,
which vectorizes, and the per-block scale is applied once per block, with no horizontal sums.

Every packable format becomes value = d * code + m per block: 4-bit codes (Q4_0, Q4_1, Q4_K)
stay two to a byte, wider ones (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K) get a byte each; K-quant
sub-block scales are multiplied out to float32 at load. Activations stay float32, so results
match the row kernels to float rounding. Packing copies the weights (a Q4 block of 32 takes 24
bytes instead of 18-20, a Q8_0 block 36 instead of 34, Q6_K 10 bits a weight instead of 6.6);
the caller drops the file's pages from memory as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from . import CACHE, FASTMATH
from .quant import _f16, _scale_min_k4

TILE = 64          # rows per tile: 64 float32 lanes, 8 AVX2 or 4 AVX-512 registers
TOKENS = 32        # prefill tokens per pass over a tile, so the accumulators stay in L1
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 2, 3, 6, 7, 8, 12, 13, 14
NIBBLE = (Q4_0, Q4_1, Q4_K)             # 4-bit codes stay packed two to a byte
BYTE = (Q8_0, Q5_0, Q5_1, Q5_K, Q6_K)   # wider codes get a byte each
PACKABLE = NIBBLE + BYTE


@dataclass(frozen=True)
class Packed:
    """value = d * code + m per block of `block` values (m absent: 0)."""

    ggml_type: int
    qs: np.ndarray            # nibbles (tiles, nb, 16, TILE) uint8, or codes (tiles, nb, block, TILE) int8
    d: np.ndarray             # (tiles, nb, TILE) float32
    m: np.ndarray | None      # (tiles, nb, TILE) float32, for formats with an offset
    block: int                # 32, or 16 for Q6_K

    @property
    def nibbles(self) -> bool:
        return self.ggml_type in NIBBLE

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.d.nbytes + (self.m.nbytes if self.m is not None else 0)


def can_pack(ggml_type: int, rows: int) -> bool:
    return ggml_type in PACKABLE and rows % TILE == 0


@njit(cache=CACHE)
def _codes(row, ggml_type, b, codes):
    """Block b of a row as integer codes (the block's values / d, less m / d); returns (d, m)."""
    if ggml_type == Q8_0 or ggml_type == Q4_0 or ggml_type == Q4_1 or ggml_type == Q5_0 or ggml_type == Q5_1:
        if ggml_type == Q8_0:
            size = 34
        elif ggml_type == Q4_0:
            size = 18
        elif ggml_type == Q4_1:
            size = 20
        else:
            size = 22 if ggml_type == Q5_0 else 24
        o = b * size
        d = _f16(row, o)
        if ggml_type == Q8_0:
            for j in range(32):
                codes[j] = (np.int64(row[o + 2 + j]) ^ 0x80) - 0x80
            return d, np.float32(0.0)
        has_min = ggml_type == Q4_1 or ggml_type == Q5_1
        m = _f16(row, o + 2) if has_min else np.float32(0.0)
        qh = np.int64(0)
        q0 = o + (4 if has_min else 2)
        if ggml_type == Q5_0 or ggml_type == Q5_1:
            for i in range(4):
                qh |= np.int64(row[q0 + i]) << (8 * i)
            q0 += 4
        bias = 16 if ggml_type == Q5_0 else 0  # Q4_0's -8 becomes the offset m = -8 d
        for j in range(16):
            q = np.int64(row[q0 + j])
            codes[j] = ((q & 15) | (((qh >> j) << 4) & 0x10)) - bias
            codes[j + 16] = ((q >> 4) | ((qh >> (j + 12)) & 0x10)) - bias
        return d, m
    if ggml_type == Q6_K:  # blocks of 16: b indexes 16-value sub-blocks
        sb, s = b // 16, b % 16
        o = sb * 210
        half, part = s // 8, s % 8        # 128 values per half, 8 sub-blocks of 16 each
        quarter, second = part // 2, part % 2
        ql, qh = o + 64 * half, o + 128 + 32 * half
        sc = (np.int64(row[o + 192 + 8 * half + part]) ^ 0x80) - 0x80
        d = _f16(row, o + 208) * np.float32(sc)
        for i in range(16):
            li = 16 * second + i
            a = np.int64(row[ql + li + (32 if quarter & 1 else 0)])
            lo = (a & 15) if quarter < 2 else (a >> 4)
            hi = (np.int64(row[qh + li]) >> (2 * quarter)) & 3
            codes[i] = (lo | (hi << 4)) - 32
        return d, np.float32(0.0)
    # Q4_K, Q5_K: super-blocks of 256 in eight sub-blocks of 32
    sb, s = b // 8, b % 8
    size = 144 if ggml_type == Q4_K else 176
    o = sb * size
    sc, mn = _scale_min_k4(s, row, o + 4)
    d = _f16(row, o) * np.float32(sc)
    m = -(_f16(row, o + 2) * np.float32(mn))
    g, upper = s // 2, s % 2
    qs = o + (16 if ggml_type == Q4_K else 48) + 32 * g
    for j in range(32):
        q = np.int64(row[qs + j])
        code = (q >> 4) if upper else (q & 15)
        if ggml_type == Q5_K:
            code += 16 * ((np.int64(row[o + 16 + j]) >> s) & 1)
        codes[j] = code
    return d, m


@njit(parallel=True, cache=CACHE)
def _pack(raw, ggml_type, nibbles, qs, d, m):
    tiles, nb = d.shape[0], d.shape[1]
    for t in prange(tiles):
        codes = np.empty(32, np.int64)
        for lane in range(TILE):
            row = raw[t * TILE + lane]
            for b in range(nb):
                dd, mm = _codes(row, ggml_type, b, codes)
                d[t, b, lane] = dd
                m[t, b, lane] = mm
                if nibbles:
                    for j in range(16):
                        qs[t, b, j, lane] = np.uint8(codes[j] | (codes[j + 16] << 4))
                else:
                    for j in range(qs.shape[2]):
                        qs[t, b, j, lane] = np.uint8(codes[j] & 0xFF)


def pack(raw: np.ndarray, ggml_type: int, k: int, done=None, chunk_bytes: int = 4 << 20) -> Packed:
    """Repack raw GGML rows; `done(first_row, end_row)` is called after each chunk of about
    `chunk_bytes`, so the caller can release those source pages while the rest is packed."""
    rows = raw.shape[0]
    block = 16 if ggml_type == Q6_K else 32
    tiles, nb = rows // TILE, k // block
    nibbles = ggml_type in NIBBLE
    has_min = ggml_type in (Q4_0, Q4_1, Q4_K, Q5_1, Q5_K)
    d = np.empty((tiles, nb, TILE), np.float32)
    m = np.empty((tiles, nb, TILE), np.float32) if has_min else np.empty((1, nb, TILE), np.float32)
    qs = np.empty((tiles, nb, 16 if nibbles else block, TILE), np.uint8)
    step = max(1, chunk_bytes // max(1, raw.shape[1] * TILE))  # tiles per chunk
    for t0 in range(0, tiles, step):
        t1 = min(tiles, t0 + step)
        mt = m[t0:t1] if has_min else np.empty((t1 - t0, nb, TILE), np.float32)
        _pack(raw[t0 * TILE : t1 * TILE], ggml_type, nibbles, qs[t0:t1], d[t0:t1], mt)
        if done is not None:
            done(t0 * TILE, t1 * TILE)
    if nibbles and ggml_type == Q4_0:  # value = d (code - 8): an offset of -8 d
        m = -8.0 * d
    return Packed(ggml_type, qs if nibbles else qs.view(np.int8), d, m if has_min else None, block)


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def _q4_vec(qs, d, m, x, out, scratch):
    """out[r] = row r . x for one token (decode); x (k,)."""
    tiles, nb = d.shape[0], d.shape[1]
    for t in prange(tiles):
        s = scratch[numba.get_thread_id()]
        acc, bacc = s[0], s[1]
        for lane in range(TILE):
            acc[lane] = 0.0
        for b in range(nb):
            for lane in range(TILE):
                bacc[lane] = 0.0
            for j in range(16):
                # byte q = lo + 16 hi, so lo*xl + hi*xh = q*xl + hi*(xh - 16 xl): one conversion and
                # a floor in float lanes, where integer nibble masks made LLVM widen to 64-bit lanes
                xl = x[b * 32 + j]
                xh = x[b * 32 + 16 + j] - np.float32(16.0) * xl
                w = qs[t, b, j]
                for lane in range(TILE):
                    qf = np.float32(w[lane])
                    bacc[lane] += qf * xl + np.floor(qf * np.float32(0.0625)) * xh
            xs = np.float32(0.0)
            for j in range(32):
                xs += x[b * 32 + j]
            db, mb = d[t, b], m[t, b]
            for lane in range(TILE):
                acc[lane] += db[lane] * bacc[lane] + mb[lane] * xs
        for lane in range(TILE):
            out[t * TILE + lane] = acc[lane]


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def _q4_mat(qs, d, m, x, out, scratch):
    """out = x @ W.T for n tokens: each weight byte is unpacked once per TOKENS tokens."""
    tiles, nb = d.shape[0], d.shape[1]
    n = x.shape[0]
    for t in prange(tiles):
        s = scratch[numba.get_thread_id()]
        wl, wh = s[0], s[1]
        for i0 in range(0, n, TOKENS):
            ni = min(n - i0, TOKENS)
            acc = s[2 : 2 + ni]
            bacc = s[2 + TOKENS : 2 + TOKENS + ni]
            acc[:] = 0.0
            for b in range(nb):
                bacc[:] = 0.0
                for j in range(16):
                    w = qs[t, b, j]
                    for lane in range(TILE):
                        qf = np.float32(w[lane])
                        hi = np.floor(qf * np.float32(0.0625))
                        wl[lane] = qf - np.float32(16.0) * hi
                        wh[lane] = hi
                    for i in range(ni):
                        xl = x[i0 + i, b * 32 + j]
                        xh = x[i0 + i, b * 32 + 16 + j]
                        row = bacc[i]
                        for lane in range(TILE):
                            row[lane] += wl[lane] * xl + wh[lane] * xh
                db, mb = d[t, b], m[t, b]
                for i in range(ni):
                    xs = np.float32(0.0)
                    for j in range(32):
                        xs += x[i0 + i, b * 32 + j]
                    for lane in range(TILE):
                        acc[i, lane] += db[lane] * bacc[i, lane] + mb[lane] * xs
            for i in range(ni):
                out[i0 + i, t * TILE : (t + 1) * TILE] = acc[i]


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def _i8_vec(qs, d, m, has_min, x, out, scratch):
    """out[r] = row r . x for one token; byte codes in blocks of qs.shape[2] values; x (k,)."""
    tiles, nb, bs = d.shape[0], d.shape[1], qs.shape[2]
    for t in prange(tiles):
        s = scratch[numba.get_thread_id()]
        acc, bacc = s[0], s[1]
        for lane in range(TILE):
            acc[lane] = 0.0
        for b in range(nb):
            for lane in range(TILE):
                bacc[lane] = 0.0
            xs = np.float32(0.0)
            for j in range(bs):
                xv = x[b * bs + j]
                xs += xv
                w = qs[t, b, j]
                for lane in range(TILE):
                    bacc[lane] += np.float32(w[lane]) * xv
            db = d[t, b]
            if has_min:
                mb = m[t, b]
                for lane in range(TILE):
                    acc[lane] += db[lane] * bacc[lane] + mb[lane] * xs
            else:
                for lane in range(TILE):
                    acc[lane] += db[lane] * bacc[lane]
        for lane in range(TILE):
            out[t * TILE + lane] = acc[lane]


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def _i8_mat(qs, d, m, has_min, x, out, scratch):
    tiles, nb, bs = d.shape[0], d.shape[1], qs.shape[2]
    n = x.shape[0]
    for t in prange(tiles):
        s = scratch[numba.get_thread_id()]
        wf = s[0]
        for i0 in range(0, n, TOKENS):
            ni = min(n - i0, TOKENS)
            acc = s[2 : 2 + ni]
            bacc = s[2 + TOKENS : 2 + TOKENS + ni]
            acc[:] = 0.0
            for b in range(nb):
                bacc[:] = 0.0
                for j in range(bs):
                    w = qs[t, b, j]
                    for lane in range(TILE):
                        wf[lane] = np.float32(w[lane])
                    for i in range(ni):
                        xv = x[i0 + i, b * bs + j]
                        row = bacc[i]
                        for lane in range(TILE):
                            row[lane] += wf[lane] * xv
                db = d[t, b]
                for i in range(ni):
                    if has_min:
                        xs = np.float32(0.0)
                        for j in range(bs):
                            xs += x[i0 + i, b * bs + j]
                        mb = m[t, b]
                        for lane in range(TILE):
                            acc[i, lane] += db[lane] * bacc[i, lane] + mb[lane] * xs
                    else:
                        for lane in range(TILE):
                            acc[i, lane] += db[lane] * bacc[i, lane]
            for i in range(ni):
                out[i0 + i, t * TILE : (t + 1) * TILE] = acc[i]


@njit(inline="always")
def _decode_row(qs, d, m, nibbles, has_min, t, lane, out):
    """Row `lane` of tile t, decoded to float32 into out (k,)."""
    nb = d.shape[1]
    bs = out.shape[0] // nb
    for b in range(nb):
        db = d[t, b, lane]
        mb = m[t, b, lane] if has_min else np.float32(0.0)
        if nibbles:
            for j in range(16):
                q = qs[t, b, j, lane]
                out[b * 32 + j] = db * np.float32(q & np.uint8(15)) + mb
                out[b * 32 + 16 + j] = db * np.float32(q >> np.uint8(4)) + mb
        else:
            for j in range(bs):
                out[b * bs + j] = db * np.float32(qs[t, b, j, lane]) + mb


@njit(cache=CACHE)
def _rows(qs, d, m, nibbles, has_min, ids, out):
    """Decode whole rows (an embedding lookup) from the packed layout."""
    for i in range(ids.shape[0]):
        _decode_row(qs, d, m, nibbles, has_min, ids[i] // TILE, ids[i] % TILE, out[i])


@njit(nogil=True, fastmath=FASTMATH, cache=CACHE)
def _deq_tiles(qs, d, m, nibbles, has_min, t0, t1, out):
    """Rows of tiles t0..t1 decoded to float32 into out (rows, k), for a BLAS product; serial
    and without the GIL, so that worker threads each decode and multiply their own rows."""
    for t in range(t0, t1):
        for lane in range(TILE):
            _decode_row(qs, d, m, nibbles, has_min, t, lane, out[(t - t0) * TILE + lane])


def dequantize_rows(p: Packed, r0: int, r1: int, out: np.ndarray) -> None:
    """Rows r0..r1 (multiples of TILE) as float32 into out (r1 - r0, k)."""
    m = p.m if p.m is not None else p.d
    _deq_tiles(p.qs, p.d, m, p.nibbles, p.m is not None, r0 // TILE, r1 // TILE, out)


def scratch_shape(threads: int) -> tuple[int, int, int]:
    return (threads, 2 + 2 * TOKENS, TILE)


def matmul(p: Packed, x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """out (n, rows) = x (n, k) @ W.T, W packed; scratch from `scratch_shape`."""
    if p.nibbles:
        if x.shape[0] == 1:  # decode: 1-D views keep the index arithmetic simple enough to vectorize
            _q4_vec(p.qs, p.d, p.m, x[0], out[0], scratch)
        else:
            _q4_mat(p.qs, p.d, p.m, x, out, scratch)
        return
    m = p.m if p.m is not None else p.d
    if x.shape[0] == 1:
        _i8_vec(p.qs, p.d, m, p.m is not None, x[0], out[0], scratch)
    else:
        _i8_mat(p.qs, p.d, m, p.m is not None, x, out, scratch)


def rows(p: Packed, ids: np.ndarray, out: np.ndarray) -> None:
    m = p.m if p.m is not None else p.d
    _rows(p.qs, p.d, m, p.nibbles, p.m is not None, ids, out)
