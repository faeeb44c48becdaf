"""The Llama-family decoder on the CPU kernels: config, mapped weights and run state kept apart.

`Weights` are views of the GGUF file's bytes (quantized matrices stay quantized); `RunState`
holds every buffer the forward pass writes, allocated once for a batch size, a context
length and a number of sequence slots, each slot with its own KV region.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..formats.gguf import GGUFFile
from ..kernels import ops, packed, quant
from .config import ModelConfig
from .kvcache import KVCache, kv_bytes


@dataclass(frozen=True)
class QTensor:
    """A weight matrix: raw GGML rows (rows, row_bytes) as the file stores them, or, for the
    formats with a tiled kernel, the same values repacked once at load (`packed`; `raw` then
    still views the file but its pages are released and never read again)."""

    raw: np.ndarray
    ggml_type: int
    shape: tuple[int, int]  # (rows, k) in values
    packed: packed.Packed | None = None

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes if self.packed is not None else self.raw.nbytes


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray   # (d,)
    wq: QTensor             # (n_head * hd, d)
    wk: QTensor             # (n_head_kv * hd, d)
    wv: QTensor             # (n_head_kv * hd, d)
    wo: QTensor             # (d, n_head * hd)
    ffn_norm: np.ndarray    # (d,)
    w_gate: QTensor         # (ff, d)
    w_up: QTensor           # (ff, d)
    w_down: QTensor         # (d, ff)
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # (hd,)
    k_norm: np.ndarray | None = None


@dataclass(frozen=True)
class Weights:
    tok_embd: QTensor
    output: QTensor         # token_embd again when tied
    output_norm: np.ndarray
    layers: tuple[LayerWeights, ...]
    rope_freqs: np.ndarray | None

    def matrices(self) -> list[QTensor]:
        out = [self.tok_embd] + ([] if self.output is self.tok_embd else [self.output])
        for lw in self.layers:
            out += [lw.wq, lw.wk, lw.wv, lw.wo, lw.w_gate, lw.w_up, lw.w_down]
        return out


def _vector(g: GGUFFile, name: str) -> np.ndarray:
    """A small 1-D tensor (norm weight, bias) as float32; copied, it is a few KB."""
    info = g.tensors[name]
    if info.ggml_type == 0:
        return np.ascontiguousarray(g.array(name), dtype=np.float32).reshape(-1)
    return quant.dequantize(g.raw(name), info.ggml_type, info.shape[-1]).reshape(-1)


def _matrix(g: GGUFFile, name: str, repack: bool = True) -> QTensor:
    info = g.tensors[name]
    if not quant.is_supported(info.ggml_type):
        raise UnsupportedError(
            f"{g.path}: tensor {name!r} is {info.type_name}, which edgert's CPU kernels do not run "
            f"(supported: {', '.join(quant.SUPPORTED_TYPES)}); re-quantize the model to one of those."
        )
    rows, k = info.shape[0], info.shape[-1]
    raw = g.raw(name)
    if repack and packed.can_pack(info.ggml_type, rows):
        row_bytes = raw.shape[1]
        p = packed.pack(raw, info.ggml_type, k, done=lambda a, b: g.release(name, a * row_bytes, b * row_bytes))
        return QTensor(raw, info.ggml_type, (rows, k), p)
    return QTensor(raw, info.ggml_type, (rows, k))


def load_weights(g: GGUFFile, cfg: ModelConfig, repack: bool = True) -> Weights:
    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        opt = {}
        if cfg.qkv_bias:
            opt.update(bq=_vector(g, p + "attn_q.bias"), bk=_vector(g, p + "attn_k.bias"),
                       bv=_vector(g, p + "attn_v.bias"))
        if cfg.qk_norm:
            opt.update(q_norm=_vector(g, p + "attn_q_norm.weight"), k_norm=_vector(g, p + "attn_k_norm.weight"))
        layers.append(LayerWeights(
            attn_norm=_vector(g, p + "attn_norm.weight"),
            wq=_matrix(g, p + "attn_q.weight", repack), wk=_matrix(g, p + "attn_k.weight", repack),
            wv=_matrix(g, p + "attn_v.weight", repack), wo=_matrix(g, p + "attn_output.weight", repack),
            ffn_norm=_vector(g, p + "ffn_norm.weight"),
            w_gate=_matrix(g, p + "ffn_gate.weight", repack), w_up=_matrix(g, p + "ffn_up.weight", repack),
            w_down=_matrix(g, p + "ffn_down.weight", repack), **opt,
        ))
    tok = _matrix(g, "token_embd.weight", repack)
    out = tok if cfg.tied_embeddings else _matrix(g, "output.weight", repack)
    freqs = _vector(g, "rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None
    return Weights(tok, out, _vector(g, "output_norm.weight"), tuple(layers), freqs)


def _touched(shape, dtype) -> np.ndarray:
    """A zeroed buffer whose pages are committed now (np.zeros maps them lazily)."""
    a = np.empty(shape, dtype)
    a.fill(0)
    return a


GEMM_FLOATS = 1 << 20       # prefill decodes weights 4 MB of float32 at a time for BLAS
GEMM_MIN_TOKENS = 16        # below this the tiled kernels win (no decode pass, no BLAS start-up)


class RunState:
    """Every buffer the forward pass writes; shapes in the comments (B = batch rows)."""

    def __init__(self, cfg: ModelConfig, n_ctx: int, n_batch: int, n_slots: int, n_threads: int,
                 kv_type: str = "f32"):
        d, q, kv, ff, hd = cfg.n_embd, cfg.q_dim, cfg.kv_dim, cfg.n_ff, cfg.head_dim
        B = n_batch
        self.n_batch, self.n_ctx, self.n_slots = n_batch, n_ctx, n_slots
        f32 = np.float32
        self.x = _touched((B, d), f32)          # residual stream
        self.xn = _touched((B, d), f32)         # normed input of a sub-block
        self.q = _touched((B, q), f32)
        self.k = _touched((B, kv), f32)
        self.v = _touched((B, kv), f32)
        self.att = _touched((B, q), f32)        # attention output, heads concatenated
        self.o = _touched((B, d), f32)          # projection output before the residual add
        self.gate = _touched((B, ff), f32)
        self.up = _touched((B, ff), f32)
        self.logits = _touched((1, cfg.vocab_size), f32)  # last position's logits
        self.scratch = _touched((n_threads, max(d, q, ff)), f32)  # one decoded weight row per thread
        self.tile_scratch = _touched(packed.scratch_shape(n_threads), f32)  # tiled kernels' accumulators
        # prefill: per worker thread, weight rows decoded to float32 a chunk at a time for a BLAS
        # product, and that product's output
        k_max = max(d, q, ff)
        self.gemm_rows = max(packed.TILE, GEMM_FLOATS // k_max // packed.TILE * packed.TILE)
        self.wbuf = _touched((n_threads, self.gemm_rows * k_max), f32)
        self.gemm_out = _touched((n_threads, B * self.gemm_rows), f32)
        self.scores = _touched((n_threads, n_ctx), f32)           # attention scores per thread
        self.half_bits = _touched((n_threads, hd), np.uint32)     # half-float KV rows widened per thread
        self.kv = KVCache(kv_type, n_slots, cfg.n_layer, cfg.n_head_kv, n_ctx, hd)  # (slots, layers, kv, ctx, hd)

    @staticmethod
    def bytes_needed(cfg: ModelConfig, n_ctx: int, n_batch: int, n_slots: int, n_threads: int,
                     kv_type: str = "f32") -> dict[str, int]:
        d, q, kv, ff = cfg.n_embd, cfg.q_dim, cfg.kv_dim, cfg.n_ff
        k_max = max(d, q, ff)
        gemm_rows = max(packed.TILE, GEMM_FLOATS // k_max // packed.TILE * packed.TILE)
        scratch = 4 * (n_batch * (3 * d + 2 * q + 2 * kv + 2 * ff) + cfg.vocab_size
                       + n_threads * (k_max + n_ctx) + int(np.prod(packed.scratch_shape(n_threads)))
                       + n_threads * gemm_rows * (k_max + n_batch))
        kv = kv_bytes(kv_type, n_slots, cfg.n_layer, cfg.n_head_kv, n_ctx, cfg.head_dim)
        return {"kv": kv, "scratch": scratch}

    @property
    def scratch_bytes(self) -> int:
        bufs = [self.x, self.xn, self.q, self.k, self.v, self.att, self.o, self.gate, self.up, self.logits,
                self.scratch, self.tile_scratch, self.wbuf, self.gemm_out, self.scores]
        return sum(b.nbytes for b in bufs)


class Decoder:
    """Runs the forward pass for one sequence slot over a run of token ids."""

    def __init__(self, cfg: ModelConfig, weights: Weights, state: RunState):
        self.cfg, self.w, self.s = cfg, weights, state
        self.cos, self.sin = ops.rope_table(state.n_ctx, cfg.n_rot, cfg.rope_base, cfg.rope_pos_scale,
                                            weights.rope_freqs)
        self.scale = np.float32(ops.sqrt_recip(cfg.head_dim))
        self._blas = self._pool = None  # made on the first prefill

    def _mm(self, t: QTensor, x: np.ndarray, out: np.ndarray) -> None:
        if x.shape[0] >= GEMM_MIN_TOKENS:
            return self._gemm(t, x, out)
        if t.packed is not None:
            packed.matmul(t.packed, x, out, self.s.tile_scratch)
        else:
            quant.matmul(t.raw, t.ggml_type, x, out, self.s.scratch)

    def _gemm(self, t: QTensor, x: np.ndarray, out: np.ndarray) -> None:
        """Prefill: decode weight rows to float32 a chunk at a time and multiply with NumPy's
        BLAS, which reaches far more FLOPs than a Numba loop; each weight is decoded once per
        batch. The rows are split over worker threads, each running single-threaded BLAS
        (set in `forward`), so OpenBLAS's own spinning pool never competes with the kernels."""
        rows = t.shape[0]
        workers = len(self.s.wbuf)
        per = -(-rows // workers // packed.TILE) * packed.TILE
        parts = [(i, r0, min(rows, r0 + per)) for i, r0 in enumerate(range(0, rows, per))]
        if len(parts) == 1:
            self._gemm_part(t, x, out, *parts[0])
            return
        for f in [self._pool.submit(self._gemm_part, t, x, out, *p) for p in parts]:
            f.result()

    def _gemm_part(self, t: QTensor, x: np.ndarray, out: np.ndarray, worker: int, first: int, end: int) -> None:
        s = self.s
        k = t.shape[1]
        n = x.shape[0]
        for r0 in range(first, end, s.gemm_rows):
            r1 = min(end, r0 + s.gemm_rows)
            w = s.wbuf[worker, : (r1 - r0) * k].reshape(r1 - r0, k)
            if t.packed is not None and r1 % packed.TILE == 0:
                packed.dequantize_rows(t.packed, r0, r1, w)
            else:
                quant.get_format(t.ggml_type).row_range(t.raw, r0, w)
            res = s.gemm_out[worker, : n * (r1 - r0)].reshape(n, r1 - r0)
            np.matmul(x, w.T, out=res)
            out[:, r0:r1] = res

    def forward(self, ids: np.ndarray, pos0: int, slot: int, out: np.ndarray | None) -> np.ndarray:
        """Feed ids at positions pos0.. into the slot's cache; returns logits.

        With `out` (len(ids), vocab) every position's logits are written there; otherwise only
        the last position's, into the run state's buffer (a view, valid until the next call)."""
        s = self.s
        n = len(ids)
        with self._blas_one_thread() if n >= GEMM_MIN_TOKENS else contextlib.nullcontext():
            for start in range(0, n, s.n_batch):
                chunk = ids[start : start + s.n_batch]
                rows = out[start : start + len(chunk)] if out is not None else None
                last = self._forward_chunk(chunk, pos0 + start, slot, rows)
        return out if out is not None else last

    def _blas_one_thread(self):
        if self._blas is None:
            from concurrent.futures import ThreadPoolExecutor

            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
            self._pool = ThreadPoolExecutor(len(self.s.wbuf), thread_name_prefix="edgert-gemm")
        return self._blas.limit(limits=1, user_api="blas")

    def _forward_chunk(self, ids: np.ndarray, pos0: int, slot: int, out_rows: np.ndarray | None) -> np.ndarray:
        s, cfg, w = self.s, self.cfg, self.w
        n = len(ids)
        hd, eps = cfg.head_dim, np.float32(cfg.norm_eps)
        x, xn = s.x[:n], s.xn[:n]
        q, k, v = s.q[:n], s.k[:n], s.v[:n]
        att, o, gate, up = s.att[:n], s.o[:n], s.gate[:n], s.up[:n]
        if w.tok_embd.packed is not None:
            packed.rows(w.tok_embd.packed, ids, x)
        else:
            quant.get_format(w.tok_embd.ggml_type).rows(w.tok_embd.raw, ids, x)
        q3 = q.reshape(n, cfg.n_head, hd)
        k3 = k.reshape(n, cfg.n_head_kv, hd)
        v3 = v.reshape(n, cfg.n_head_kv, hd)
        att3 = att.reshape(n, cfg.n_head, hd)
        for li, lw in enumerate(w.layers):
            ops.rmsnorm(x, lw.attn_norm, eps, xn)
            self._mm(lw.wq, xn, q)
            self._mm(lw.wk, xn, k)
            self._mm(lw.wv, xn, v)
            if lw.bq is not None:
                ops.add_bias(q, lw.bq)
                ops.add_bias(k, lw.bk)
                ops.add_bias(v, lw.bv)
            if lw.q_norm is not None:
                ops.rmsnorm_heads(q3, lw.q_norm, eps)
                ops.rmsnorm_heads(k3, lw.k_norm, eps)
            ops.rope(q3, pos0, self.cos, self.sin, cfg.rope_neox)
            ops.rope(k3, pos0, self.cos, self.sin, cfg.rope_neox)
            s.kv.store(slot, li, k3, v3, pos0)
            s.kv.attention(slot, li, q3, pos0, self.scale, att3, s.scores, s.half_bits)
            self._mm(lw.wo, att, o)
            ops.add_inplace(x, o)
            ops.rmsnorm(x, lw.ffn_norm, eps, xn)
            self._mm(lw.w_gate, xn, gate)
            self._mm(lw.w_up, xn, up)
            ops.swiglu(gate, up)
            self._mm(lw.w_down, gate, o)
            ops.add_inplace(x, o)
        if out_rows is not None:
            ops.rmsnorm(x, w.output_norm, eps, xn)
            self._mm(w.output, xn, out_rows)
            return out_rows[-1:]
        ops.rmsnorm(x[n - 1 : n], w.output_norm, eps, xn[:1])
        self._mm(w.output, xn[:1], s.logits)
        return s.logits
