"""Each kernel against its naive twin; quant decoders bit-exact against gguf.quants."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T

from edgert.kernels import ops, quant

import naive
from synth import quantize

TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
# float32 products over k <= 768 terms: the kernel sums in another order than NumPy
MATMUL_RTOL, MATMUL_ATOL = 1e-4, 1e-3


def _raw(qtype: T, rows: int, k: int, rng, kind: str = "random") -> np.ndarray:
    x = rng.standard_normal((rows, k)).astype(np.float32)
    if kind == "zeros":
        x[:] = 0
    elif kind == "large":
        x *= 1000.0  # scales near the top of what a half float holds once multiplied
    if qtype == T.BF16:
        q = quants.quantize(x, T.BF16)
    elif kind == "zeros" and qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        block, size = GGML_QUANT_SIZES[qtype]
        q = np.zeros((rows, k // block * size), np.uint8)
    elif kind == "large" and qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        q = quantize(x, qtype, rng)
        block, size = GGML_QUANT_SIZES[qtype]
        v = q.reshape(rows, k // block, size)
        big = np.array([60000.0], np.float16).view(np.uint8)
        for off in {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}[qtype]:
            v[:, :, off : off + 2] = big
        q = v.reshape(rows, -1)
    else:
        q = quantize(x, qtype, rng)
    return np.ascontiguousarray(q.view(np.uint8).reshape(rows, -1))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["random", "zeros", "large"])
@pytest.mark.parametrize("rows,k", [(1, 256), (7, 512), (33, 768)])
def test_dequantize_matches_gguf(qtype, kind, rows, k):
    rng = np.random.default_rng(rows * 1000 + k)
    raw = _raw(qtype, rows, k, rng, kind)
    ref = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, k)
    got = quant.dequantize(raw, int(qtype), k)
    np.testing.assert_array_equal(got, ref)  # bit-exact: same float32 arithmetic per value


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_matches_naive(qtype, n):
    rng = np.random.default_rng(3)
    rows, k = 37, 512
    raw = _raw(qtype, rows, k, rng)
    w = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, k)
    x = rng.standard_normal((n, k)).astype(np.float32)
    out = np.full((n, rows), np.nan, np.float32)
    for threads in (1, 2, 3):  # the row split must cover every row for any part count
        out[:] = np.nan
        quant.matmul(raw, int(qtype), x, out, np.zeros((threads, k), np.float32))
        np.testing.assert_allclose(out, x @ w.T, rtol=MATMUL_RTOL, atol=MATMUL_ATOL * np.abs(w).max())


def test_rows_reads_embeddings():
    rng = np.random.default_rng(1)
    raw = _raw(T.Q8_0, 50, 64, rng)
    ids = np.array([0, 49, 7, 7], dtype=np.int64)
    out = np.empty((4, 64), np.float32)
    quant.get_format(int(T.Q8_0)).rows(raw, ids, out)
    np.testing.assert_array_equal(out, quants.dequantize(raw, T.Q8_0).reshape(50, 64)[ids])


def test_rmsnorm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    out = np.empty_like(x)
    ops.rmsnorm(x, w, np.float32(1e-5), out)
    np.testing.assert_allclose(out, naive.rmsnorm(x, w, 1e-5), rtol=1e-5, atol=1e-5)
    ops.rmsnorm(np.zeros_like(x), w, np.float32(1e-5), out)  # all zeros stays finite
    assert np.all(out == 0)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot", [64, 32])
def test_rope(neox, n_rot):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    freqs = np.linspace(1, 8, n_rot // 2)
    cos, sin = ops.rope_table(40, n_rot, 10000.0, 0.5, freqs)
    got = x.copy()
    ops.rope(got, 11, cos, sin, neox)
    ref = naive.rope(x, np.arange(11, 16), n_rot, 10000.0, neox, 0.5, freqs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos0,n", [(0, 1), (0, 6), (9, 1), (4, 3)])
def test_attention_gqa(pos0, n):
    rng = np.random.default_rng(pos0 + n)
    heads, kv, hd, ctx = 6, 2, 16, 32
    q = rng.standard_normal((n, heads, hd)).astype(np.float32)
    k = rng.standard_normal((kv, ctx, hd)).astype(np.float32)
    v = rng.standard_normal((kv, ctx, hd)).astype(np.float32)
    out = np.empty_like(q)
    ops.attention(q, k, v, pos0, np.float32(1 / np.sqrt(hd)), out, np.zeros((4, ctx), np.float32))
    T_ = pos0 + n
    ref = naive.attention(q, k[:, :T_].transpose(1, 0, 2), v[:, :T_].transpose(1, 0, 2), pos0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_swiglu_and_adds():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((2, 40)).astype(np.float32) * 5
    u = rng.standard_normal((2, 40)).astype(np.float32)
    ref = g / (1 + np.exp(-g)) * u
    ops.swiglu(g, u)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    b = np.arange(40, dtype=np.float32)
    x = np.zeros((2, 40), np.float32)
    ops.add_bias(x, b)
    ops.add_inplace(x, x)
    np.testing.assert_array_equal(x, np.stack([2 * b, 2 * b]))


PACKED = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.mark.parametrize("qtype", PACKED, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3, 33, 70])  # decode, and prefill across token-chunk edges
@pytest.mark.parametrize("rows,k", [(64, 256), (192, 768)])
def test_packed_matmul_matches_naive(qtype, n, rows, k):
    from edgert.kernels import packed

    rng = np.random.default_rng(n + rows)
    raw = _raw(qtype, rows, k, rng)
    w = quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, k)
    p = packed.pack(raw, int(qtype), k)
    x = rng.standard_normal((n, k)).astype(np.float32)
    out = np.full((n, rows), np.nan, np.float32)
    packed.matmul(p, x, out, np.zeros(packed.scratch_shape(2), np.float32))
    np.testing.assert_allclose(out, x @ w.T, rtol=MATMUL_RTOL, atol=MATMUL_ATOL * np.abs(w).max())
    ids = np.array([0, rows - 1, 17], dtype=np.int64)
    rows_out = np.empty((3, k), np.float32)
    packed.rows(p, ids, rows_out)
    np.testing.assert_array_equal(rows_out, w[ids])  # same float32 products as gguf.quants


def test_pack_only_what_tiles():
    from edgert.kernels import packed

    assert packed.can_pack(int(T.Q4_1), 128) and not packed.can_pack(int(T.Q4_1), 100)
    assert packed.can_pack(int(T.Q6_K), 128) and not packed.can_pack(int(T.BF16), 128)
