"""Row-interleaved ("tiled") weight layouts for the formats that carry most bytes, packed once at load.

A GGML row stores its blocks one after another, so a kernel that walks a row mixes scale
look-ups, nibble unpacking and a per-block reduction in one short loop, which LLVM leaves
scalar (about 2 GB/s here). Packed, a tile holds TILE rows side by side:

    qs[tile, block, j, lane]   byte j of the block in row tile*TILE + lane
    d[tile, block, lane]       the block's scale as float32 (and m, its offset, for Q4_0/Q4_1)

so the innermost loop runs over TILE lanes with contiguous loads and one broadcast activation,
which vectorizes, and the per-block scale is applied once per block, with no horizontal sums.
Q4_0 becomes Q4_1 with m = -8 d. Activations stay float32, so results match the row kernels
to float rounding. Packing copies the weights (24 bytes a Q4 block instead of 18-20, 36 a
Q8_0 block instead of 34); the caller then drops the file's pages from memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from . import CACHE, FASTMATH
from .quant import F16_TABLE

TILE = 64          # rows per tile: 64 float32 lanes, 8 AVX2 or 4 AVX-512 registers
TOKENS = 32        # prefill tokens per pass over a tile, so the accumulators stay in L1
Q4_0, Q4_1, Q8_0 = 2, 3, 8
PACKABLE = (Q4_0, Q4_1, Q8_0)


@dataclass(frozen=True)
class Packed:
    ggml_type: int
    qs: np.ndarray            # (tiles, nb, 16, TILE) uint8 for Q4, (tiles, nb, 32, TILE) int8 for Q8_0
    d: np.ndarray             # (tiles, nb, TILE) float32
    m: np.ndarray | None      # (tiles, nb, TILE) float32 for Q4 formats

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.d.nbytes + (self.m.nbytes if self.m is not None else 0)


def can_pack(ggml_type: int, rows: int) -> bool:
    return ggml_type in PACKABLE and rows % TILE == 0


@njit(cache=CACHE)
def _pack_q4(raw, block_bytes, has_min, qs, d, m):
    tiles, nb = d.shape[0], d.shape[1]
    for t in range(tiles):
        for lane in range(TILE):
            row = raw[t * TILE + lane]
            for b in range(nb):
                o = b * block_bytes
                dd = F16_TABLE[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]
                d[t, b, lane] = dd
                if has_min:
                    m[t, b, lane] = F16_TABLE[np.int64(row[o + 2]) | (np.int64(row[o + 3]) << 8)]
                    o += 4
                else:
                    m[t, b, lane] = np.float32(-8.0) * dd
                    o += 2
                for j in range(16):
                    qs[t, b, j, lane] = row[o + j]


@njit(cache=CACHE)
def _pack_q8(raw, qs, d):
    tiles, nb = d.shape[0], d.shape[1]
    for t in range(tiles):
        for lane in range(TILE):
            row = raw[t * TILE + lane]
            for b in range(nb):
                o = b * 34
                d[t, b, lane] = F16_TABLE[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]
                for j in range(32):
                    qs[t, b, j, lane] = row[o + 2 + j]


def pack(raw: np.ndarray, ggml_type: int, k: int, done=None, chunk_bytes: int = 4 << 20) -> Packed:
    """Repack raw GGML rows; `done(first_row, end_row)` is called after each chunk of about
    `chunk_bytes`, so the caller can release those source pages while the rest is packed."""
    rows = raw.shape[0]
    tiles, nb = rows // TILE, k // 32
    d = np.empty((tiles, nb, TILE), np.float32)
    q8 = ggml_type == Q8_0
    qs = np.empty((tiles, nb, 32 if q8 else 16, TILE), np.uint8)
    m = None if q8 else np.empty((tiles, nb, TILE), np.float32)
    step = max(1, chunk_bytes // max(1, raw.shape[1] * TILE))  # tiles per chunk
    for t0 in range(0, tiles, step):
        t1 = min(tiles, t0 + step)
        src = raw[t0 * TILE : t1 * TILE]
        if q8:
            _pack_q8(src, qs[t0:t1], d[t0:t1])
        else:
            _pack_q4(src, 20 if ggml_type == Q4_1 else 18, ggml_type == Q4_1, qs[t0:t1], d[t0:t1], m[t0:t1])
        if done is not None:
            done(t0 * TILE, t1 * TILE)
    return Packed(ggml_type, qs.view(np.int8) if q8 else qs, d, m)


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
def _q8_vec(qs, d, x, out, scratch):
    """out[r] = row r . x for one token; x (k,)."""
    tiles, nb = d.shape[0], d.shape[1]
    for t in prange(tiles):
        s = scratch[numba.get_thread_id()]
        acc, bacc = s[0], s[1]
        for lane in range(TILE):
            acc[lane] = 0.0
        for b in range(nb):
            for lane in range(TILE):
                bacc[lane] = 0.0
            for j in range(32):
                xv = x[b * 32 + j]
                w = qs[t, b, j]
                for lane in range(TILE):
                    bacc[lane] += np.float32(w[lane]) * xv
            db = d[t, b]
            for lane in range(TILE):
                acc[lane] += db[lane] * bacc[lane]
        for lane in range(TILE):
            out[t * TILE + lane] = acc[lane]


@njit(parallel=True, fastmath=FASTMATH, cache=CACHE)
def _q8_mat(qs, d, x, out, scratch):
    tiles, nb = d.shape[0], d.shape[1]
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
                for j in range(32):
                    w = qs[t, b, j]
                    for lane in range(TILE):
                        wf[lane] = np.float32(w[lane])
                    for i in range(ni):
                        xv = x[i0 + i, b * 32 + j]
                        row = bacc[i]
                        for lane in range(TILE):
                            row[lane] += wf[lane] * xv
                db = d[t, b]
                for i in range(ni):
                    for lane in range(TILE):
                        acc[i, lane] += db[lane] * bacc[i, lane]
            for i in range(ni):
                out[i0 + i, t * TILE : (t + 1) * TILE] = acc[i]


@njit(cache=CACHE)
def _rows(qs, d, m, has_min, ids, out):
    """Decode whole rows (an embedding lookup) from the packed layout."""
    nb = d.shape[1]
    per = qs.shape[2]
    for i in range(ids.shape[0]):
        t, lane = ids[i] // TILE, ids[i] % TILE
        for b in range(nb):
            db = d[t, b, lane]
            if has_min:
                mb = m[t, b, lane]
                for j in range(16):
                    q = qs[t, b, j, lane]
                    out[i, b * 32 + j] = db * np.float32(q & np.uint8(15)) + mb
                    out[i, b * 32 + 16 + j] = db * np.float32(q >> np.uint8(4)) + mb
            else:
                for j in range(per):
                    out[i, b * 32 + j] = db * np.float32(qs[t, b, j, lane])


def scratch_shape(threads: int) -> tuple[int, int, int]:
    return (threads, 2 + 2 * TOKENS, TILE)


def matmul(p: Packed, x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """out (n, rows) = x (n, k) @ W.T, W packed; scratch from `scratch_shape`."""
    if x.shape[0] == 1:  # decode: 1-D views keep the index arithmetic simple enough to vectorize
        if p.m is not None:
            _q4_vec(p.qs, p.d, p.m, x[0], out[0], scratch)
        else:
            _q8_vec(p.qs, p.d, x[0], out[0], scratch)
    elif p.m is not None:
        _q4_mat(p.qs, p.d, p.m, x, out, scratch)
    else:
        _q8_mat(p.qs, p.d, x, out, scratch)


def rows(p: Packed, ids: np.ndarray, out: np.ndarray) -> None:
    m = p.m if p.m is not None else p.d
    _rows(p.qs, p.d, m, p.m is not None, ids, out)
