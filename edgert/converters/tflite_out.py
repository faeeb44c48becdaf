"""The TFLite (LiteRT) target: the decoder built operator by operator with LiteRT's own flatbuffer
schema object API (`ai_edge_litert.schema_py_generated`) from a ModelSpec; no TensorFlow, no torch.

One model.tflite with static shapes and two signatures over the same weight buffers (two subgraphs
that reference the same buffer indices):

    decode   input_ids int32 [1, 1], input_pos int32 [1]
    prefill  input_ids int32 [1, P], input_pos int32 [P]          (P = PREFILL, positions pos..pos+P-1)
    both     k_cache_{i} / v_cache_{i} float32 [1, max_ctx, kv_heads, head_dim]  in and out (updated),
             logits float32 [1, s, vocab]

The new K/V rows are written at input_pos[0] with DYNAMIC_UPDATE_SLICE; a key at position t is seen
by a query at position p when t <= p (the mask is built in the graph from input_pos), so cache rows
past the newest position never matter. Quants: fp32; fp16 (float16 weights, DEQUANTIZE at load);
int8 (per-output-channel symmetric int8 weights, DEQUANTIZEd for a float FULLY_CONNECTED: weight-only,
because LiteRT's dynamic-range "hybrid" kernel, which also rounds activations to 8 bits, agreed with
the default model on only 90.8% of positions against 97.7% this way); int4 (block-wise, 32 values
a block: INT4 codes DEQUANTIZEd, then each block's float scale and offset applied, so a Q4_1 or
Q4_K block is exact; 97.7% on the default model, where one scale per row gave 54%; the output
head stays 8-bit). The token embedding is float32 in every quant (it is gathered). RoPE is applied
on halves, so llama.cpp-ordered Q/K rows are permuted back as the ONNX target does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from .onnx_out import _tokenizer_files
from .spec import ModelSpec, target_quant

QUANTS = ("fp32", "fp16", "int8", "int4")
GENERIC = {"q4": "int4", "q4_k_m": "int4", "q8": "int8", "q8_0": "int8", "f16": "fp16", "f32": "fp32"}
PREFILL = 32
MAX_CTX = 512
NEG = -1.0e30  # the mask's "not allowed": finite, so a scaled softmax never sees inf - inf


def tflite_quant(name: str) -> str:
    return target_quant(name, "TFLite", QUANTS, GENERIC)


class _Model:
    """The model-level tables: buffers (weights, shared by every subgraph) and operator codes."""

    def __init__(self, schema):
        self.s = schema
        self.buffers = [schema.BufferT()]  # buffer 0: empty, for every non-constant tensor
        self.codes: dict[int, int] = {}
        self.opcodes = []
        # name -> (buffer, shape, dtype, quantization, TensorType name override)
        self.consts: dict[str, tuple[int, tuple, np.dtype, object, str | None]] = {}

    def buffer(self, key: str, arr: np.ndarray, quant=None, shape=None, ttype: str | None = None) -> str:
        """Stores arr's bytes once; `shape`/`ttype` describe packed data (INT4: two codes a byte)."""
        if key not in self.consts:
            b = self.s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
            self.buffers.append(b)
            self.consts[key] = (len(self.buffers) - 1, tuple(shape or arr.shape), arr.dtype, quant, ttype)
        return key

    def opcode(self, op: int) -> int:
        if op not in self.codes:
            c = self.s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = op, min(op, 127), 1
            self.opcodes.append(c)
            self.codes[op] = len(self.opcodes) - 1
        return self.codes[op]


class _Graph:
    """One subgraph: tensors and operators; constants point at the model's shared buffers."""

    TYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.float16): "FLOAT16", np.dtype(np.int32): "INT32",
             np.dtype(np.int8): "INT8", np.dtype(np.bool_): "BOOL"}

    def __init__(self, model: _Model, name: str):
        self.m, self.s, self.name = model, model.s, name
        self.tensors, self.ops = [], []
        self.const_ids: dict[str, int] = {}
        self._n = 0

    def tensor(self, shape, dtype, name: str | None = None, buffer: int = 0, quant=None, ttype=None) -> int:
        t = self.s.TensorT()
        t.shape = list(shape)
        t.type = getattr(self.s.TensorType, ttype or self.TYPES[np.dtype(dtype)])
        t.buffer, t.quantization = buffer, quant
        self._n += 1
        t.name = name or f"t{self._n}"
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, key: str, arr: np.ndarray | None = None, quant=None) -> int:
        """A constant by key: the array is stored once in the model, each subgraph gets a tensor."""
        if key not in self.const_ids:
            if key not in self.m.consts:
                self.m.buffer(key, arr, quant)
            buf, shape, dtype, q, ttype = self.m.consts[key]
            self.const_ids[key] = self.tensor(shape, dtype, key, buf, q, ttype)
        return self.const_ids[key]

    def small(self, values, dtype=np.int32) -> int:
        arr = np.asarray(values, dtype=dtype)
        return self.const(f"c.{arr.dtype}.{arr.shape}.{arr.tobytes().hex()}", arr)

    def op(self, op: str, inputs: list[int], shape, dtype=np.float32, options=None, n_out: int = 1,
           out: int | None = None):
        code = getattr(self.s.BuiltinOperator, op)
        o = self.s.OperatorT()
        o.opcodeIndex = self.m.opcode(code)
        o.inputs = list(inputs)
        outs = [out] if out is not None else [self.tensor(shape, dtype) for _ in range(n_out)]
        o.outputs = outs
        if options is not None:
            kind, opts = options
            o.builtinOptionsType, o.builtinOptions = getattr(self.s.BuiltinOptions, kind), opts
        self.ops.append(o)
        return outs[0] if n_out == 1 else outs

    def opts(self, cls: str, **fields):
        o = getattr(self.s, cls + "T")()
        for k, v in fields.items():
            setattr(o, k, v)
        return cls, o

    # shape helpers: every tensor's shape is static, so the builder tracks them itself
    def shape(self, t: int) -> list[int]:
        return list(self.tensors[t].shape)

    def reshape(self, x: int, shape) -> int:
        return self.op("RESHAPE", [x, self.small(shape)], shape, self._dtype(x))

    def transpose(self, x: int, perm) -> int:
        shp = self.shape(x)
        return self.op("TRANSPOSE", [x, self.small(perm)], [shp[p] for p in perm], self._dtype(x))

    def _dtype(self, t: int):
        name = {v: k for k, v in vars(self.s.TensorType).items() if not k.startswith("_")}[self.tensors[t].type]
        return {"FLOAT32": np.float32, "INT32": np.int32, "BOOL": np.bool_, "INT8": np.int8, "INT4": np.int8,
                "FLOAT16": np.float16}[name]

    def binary(self, op: str, a: int, b: int) -> int:
        shape = list(np.broadcast_shapes(tuple(self.shape(a)), tuple(self.shape(b))))
        options = {"ADD": "AddOptions", "MUL": "MulOptions", "SUB": "SubOptions"}.get(op)
        return self.op(op, [a, b], shape, self._dtype(a), self.opts(options) if options else None)

    def subgraph(self, inputs: list[int], outputs: list[int]):
        g = self.s.SubGraphT()
        g.tensors, g.operators, g.inputs, g.outputs, g.name = self.tensors, self.ops, inputs, outputs, self.name
        return g


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """Signed 4-bit codes (rows, k) two to a byte, the even column in the low nibble (LiteRT's INT4)."""
    return ((q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)).astype(np.uint8)


def _int_rows(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """W (N, K) -> signed codes and one symmetric scale per output row; at 4 bits two codes a byte,
    the even column in the low nibble (LiteRT's INT4 packing)."""
    top = (1 << (bits - 1)) - 1
    scale = np.abs(w).max(axis=1) / top
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale[:, None]), -top, top).astype(np.int8)
    if bits == 4:
        q = _pack_int4(q)
    return q, scale.astype(np.float32)


class _Decoder:
    """Writes the decoder into a subgraph for a fixed sequence length s."""

    def __init__(self, spec: ModelSpec, model: _Model, quant: str, max_ctx: int):
        self.spec, self.cfg, self.m, self.quant, self.max_ctx = spec, spec.config, model, quant, max_ctx

    def W(self, name: str) -> np.ndarray:
        return self.spec.tensor_halves(name)

    def weight_const(self, g: _Graph, key: str, name: str, w_fn) -> int:
        """A FULLY_CONNECTED weight (out, in) as the quant stores it, decoded in the graph for a float
        FULLY_CONNECTED (weight-only quantization); a float32 tensor for fp32."""
        if self.quant in ("int8", "int4"):
            if self.quant == "int4" and not key.startswith("lm_head."):
                w = w_fn() if key not in self.m.consts else None
                if w is None or w.shape[1] % 32 == 0:
                    return self._int4_blocks(g, key, w)
            if key not in self.m.consts:
                w = w_fn()
                q, scale = _int_rows(w, 8)  # 8-bit rows: int8, and the int4 recipe's output head
                qp = self.m.s.QuantizationParametersT()
                qp.scale, qp.zeroPoint, qp.quantizedDimension = scale.tolist(), [0] * len(scale), 0
                self.m.buffer(key, q, qp, shape=w.shape)
            t = g.const(key)
            return g.op("DEQUANTIZE", [t], g.shape(t), np.float32)
        if self.quant == "fp16":
            k16 = key + ".f16"
            if k16 not in self.m.consts:
                self.m.buffer(k16, w_fn().astype(np.float16))
            t = g.const(k16)
            return g.op("DEQUANTIZE", [t], g.shape(t), np.float32)
        return g.const(key, w_fn() if key not in self.m.consts else None)

    def _int4_blocks(self, g: _Graph, key: str, w: np.ndarray | None) -> int:
        """Block-wise int4 from standard operators: the codes, an INT4 tensor (N * K/32, 32), are
        DEQUANTIZEd and each 32-value block gets its scale and offset back:
        value = scale * (code - 8) + (min + 8 * scale). A Q4_1 or Q4_K block
        comes through exactly (LiteRT's per-row int4 followed SmolLM2 on 54% of positions)."""
        if key not in self.m.consts:
            n, k = w.shape
            b = w.reshape(n, k // 32, 32).astype(np.float32)
            lo, hi = b.min(-1), b.max(-1)
            scale = (hi - lo) / 15
            scale[scale == 0] = 1.0
            codes = (np.clip(np.rint((b - lo[..., None]) / scale[..., None]), 0, 15) - 8).astype(np.int8)
            codes = codes.reshape(n * k // 32, 32)
            packed = _pack_int4(codes)
            qp = self.m.s.QuantizationParametersT()  # one scale of 1: the codes themselves
            qp.scale, qp.zeroPoint, qp.quantizedDimension = [1.0], [0], 0
            self.m.buffer(key, packed, qp, shape=codes.shape, ttype="INT4")
            # per-block scale and offset as float tensors: per-channel quantization parameters would
            # need a 64-bit zero point per block, doubling the file
            self.m.buffer(key + ".scale", scale[..., None].astype(np.float32))
            self.m.buffer(key + ".offset", (lo + 8 * scale)[..., None].astype(np.float32))
        t = g.const(key)
        rows, block = g.shape(t)
        scale, offset = g.const(key + ".scale"), g.const(key + ".offset")
        n, nb = g.shape(offset)[:2]
        f = g.reshape(g.op("DEQUANTIZE", [t], [rows, block], np.float32), [n, nb, block])
        return g.reshape(g.binary("ADD", g.binary("MUL", f, scale), offset), [n, nb * block])

    def linear(self, g: _Graph, x: int, key: str, name: str, bias: str | None = None) -> int:
        w = self.weight_const(g, key, name, lambda: self.W(name))
        b = g.const(bias, self.spec.tensor(bias) if bias not in self.m.consts else None) if bias else -1
        n = self.spec.shapes[name][0] if name in self.spec.shapes else g.shape(w)[0]
        opts = g.opts("FullyConnectedOptions")
        return g.op("FULLY_CONNECTED", [x, w, b], [g.shape(x)[0], n], np.float32, opts)

    def rmsnorm(self, g: _Graph, x: int, name: str) -> int:
        w = g.const(name, self.spec.tensor(name) if name not in self.m.consts else None)
        shp = g.shape(x)
        sq = g.binary("MUL", x, x)
        ms = g.op("MEAN", [sq, g.small([-1])], shp[:-1] + [1], np.float32, g.opts("ReducerOptions", keepDims=True))
        r = g.op("RSQRT", [g.binary("ADD", ms, g.small([self.cfg.norm_eps], np.float32))], shp[:-1] + [1])
        return g.binary("MUL", g.binary("MUL", x, r), w)

    def build(self, g: _Graph, s: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        cfg, T = self.cfg, self.max_ctx
        hd, H, KV, D = cfg.head_dim, cfg.n_head, cfg.n_head_kv, cfg.n_embd
        G, half = H // KV, hd // 2
        ids = g.tensor([1, s], np.int32, "input_ids")
        pos = g.tensor([s], np.int32, "input_pos")
        caches = [(g.tensor([1, T, KV, hd], np.float32, f"{kind}_cache_{i}"), kind, i)
                  for i in range(cfg.n_layer) for kind in "kv"]
        inputs = [("input_ids", ids), ("input_pos", pos)] + [(f"{kd}_cache_{i}", t) for t, kd, i in caches]
        cache_in = {(kd, i): t for t, kd, i in caches}

        emb_key = "token_embd.weight"
        emb = g.const(emb_key, self.spec.tensor(emb_key) if emb_key not in self.m.consts else None)
        x = g.op("GATHER", [emb, g.reshape(ids, [s])], [s, D], np.float32, g.opts("GatherOptions", axis=0))

        # RoPE on halves: cos [s, 1, hd] and a signed sin, so rope(v) = v*cos + concat(b, a)*sin
        ang = self.spec.rope_angles(T)
        cos_t = np.cos(np.concatenate([ang, ang], 1)).astype(np.float32)
        sin_t = np.concatenate([-np.sin(ang), np.sin(ang)], 1).astype(np.float32)
        cos = g.reshape(g.op("GATHER", [g.const("rope_cos", cos_t), pos], [s, hd], np.float32,
                             g.opts("GatherOptions", axis=0)), [s, 1, hd])
        sin = g.reshape(g.op("GATHER", [g.const("rope_sin", sin_t), pos], [s, hd], np.float32,
                             g.opts("GatherOptions", axis=0)), [s, 1, hd])

        # attention bias [s, T]: key position t is seen from query position p when t <= p
        allowed = g.op("LESS_EQUAL", [g.const("key_positions", np.arange(T, dtype=np.int32)[None]),
                                      g.reshape(pos, [s, 1])], [s, T], np.bool_)
        bias = g.op("SELECT_V2", [allowed, g.small([0.0], np.float32), g.small([NEG], np.float32)], [s, T])
        # where the new rows go: [0, input_pos[0], 0, 0]
        p0 = g.op("SLICE", [pos, g.small([0]), g.small([1])], [1], np.int32)
        start = g.op("CONCATENATION", [g.small([0]), p0, g.small([0, 0])], [4], np.int32,
                     g.opts("ConcatenationOptions", axis=0))

        def rope(v: int, n: int) -> int:
            a, b = g.op("SPLIT", [g.small(2), v], [s, n, half], np.float32, g.opts("SplitOptions", numSplits=2),
                        n_out=2)
            rot = g.op("CONCATENATION", [b, a], [s, n, hd], np.float32, g.opts("ConcatenationOptions", axis=2))
            return g.binary("ADD", g.binary("MUL", v, cos), g.binary("MUL", rot, sin))

        outputs = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            h = self.rmsnorm(g, x, p + "attn_norm.weight")
            bq, bk, bv = ((p + f"attn_{n}.bias" for n in "qkv") if cfg.qkv_bias else (None, None, None))
            q = g.reshape(self.linear(g, h, p + "attn_q.weight", p + "attn_q.weight", bq), [s, H, hd])
            k = g.reshape(self.linear(g, h, p + "attn_k.weight", p + "attn_k.weight", bk), [s, KV, hd])
            v = g.reshape(self.linear(g, h, p + "attn_v.weight", p + "attn_v.weight", bv), [s, KV, hd])
            if cfg.qk_norm:
                q, k = self.rmsnorm(g, q, p + "attn_q_norm.weight"), self.rmsnorm(g, k, p + "attn_k_norm.weight")
            q, k = rope(q, H), rope(k, KV)
            kc = g.op("DYNAMIC_UPDATE_SLICE", [cache_in["k", i], g.reshape(k, [1, s, KV, hd]), start],
                      [1, T, KV, hd])
            vc = g.op("DYNAMIC_UPDATE_SLICE", [cache_in["v", i], g.reshape(v, [1, s, KV, hd]), start],
                      [1, T, KV, hd])
            outputs += [(f"k_cache_{i}", kc), (f"v_cache_{i}", vc)]
            # GQA: the G query heads of a kv head become G*s rows of one batched matmul
            qg = g.reshape(g.transpose(g.reshape(q, [s, KV, G, hd]), [1, 2, 0, 3]), [KV, G * s, hd])
            kt = g.transpose(g.reshape(kc, [T, KV, hd]), [1, 0, 2])
            vt = g.transpose(g.reshape(vc, [T, KV, hd]), [1, 0, 2])
            sc = g.op("BATCH_MATMUL", [qg, kt], [KV, G * s, T], np.float32,
                      g.opts("BatchMatMulOptions", adjY=True))
            sc = g.reshape(g.binary("ADD", g.reshape(sc, [KV, G, s, T]), bias), [KV * G * s, T])
            pr = g.op("SOFTMAX", [sc], [KV * G * s, T], np.float32, g.opts("SoftmaxOptions", beta=1.0 / np.sqrt(hd)))
            att = g.op("BATCH_MATMUL", [g.reshape(pr, [KV, G * s, T]), vt], [KV, G * s, hd], np.float32,
                       g.opts("BatchMatMulOptions"))
            att = g.reshape(g.transpose(g.reshape(att, [KV, G, s, hd]), [2, 0, 1, 3]), [s, H * hd])
            x = g.binary("ADD", x, self.linear(g, att, p + "attn_output.weight", p + "attn_output.weight"))
            h = self.rmsnorm(g, x, p + "ffn_norm.weight")
            gate = self.linear(g, h, p + "ffn_gate.weight", p + "ffn_gate.weight")
            up = self.linear(g, h, p + "ffn_up.weight", p + "ffn_up.weight")
            act = g.binary("MUL", g.binary("MUL", gate, g.op("LOGISTIC", [gate], [s, cfg.n_ff])), up)
            x = g.binary("ADD", x, self.linear(g, act, p + "ffn_down.weight", p + "ffn_down.weight"))
        x = self.rmsnorm(g, x, "output_norm.weight")
        head = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        if self.quant == "fp32":
            logits = self.linear(g, x, head, head)  # a tied head shares the embedding's buffer
        else:
            logits = self.linear(g, x, "lm_head." + head, head)
        logits = g.reshape(logits, [1, s, cfg.vocab_size])
        return inputs, [("logits", logits)] + outputs


def build_model(spec: ModelSpec, quant: str, max_ctx: int | None = None, prefill: int = PREFILL) -> tuple[bytes, dict]:
    """The flatbuffer bytes of model.tflite, and a summary."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    cfg = spec.config
    if cfg.n_rot != cfg.head_dim:
        raise EdgertError("partial rotary embeddings are not exported to TFLite yet; convert this model to GGUF.")
    max_ctx = max_ctx or min(cfg.n_ctx_train, MAX_CTX)
    model = _Model(schema)
    dec = _Decoder(spec, model, quant, max_ctx)
    subgraphs, sigs, ops = [], [], set()
    for idx, (key, s) in enumerate((("decode", 1), ("prefill", min(prefill, max_ctx)))):
        g = _Graph(model, key)
        inputs, outputs = dec.build(g, s)
        subgraphs.append(g.subgraph([t for _, t in inputs], [t for _, t in outputs]))
        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = key, idx
        sig.inputs = [_tmap(schema, n, t) for n, t in inputs]
        sig.outputs = [_tmap(schema, n, t) for n, t in outputs]
        sigs.append(sig)
        ops |= {o.opcodeIndex for o in g.ops}
    m = schema.ModelT()
    m.version, m.description = 3, f"edgert {cfg.arch} {quant}"
    m.operatorCodes, m.subgraphs, m.buffers, m.signatureDefs = model.opcodes, subgraphs, model.buffers, sigs
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    summary = {"ops": sorted(names[c.builtinCode] for c in model.opcodes), "max_ctx": max_ctx,
               "prefill": min(prefill, max_ctx), "signatures": ["decode", "prefill"],
               "operators": sum(len(g.operators) for g in subgraphs), "buffers": len(model.buffers)}
    return bytes(b.Output()), summary


def _tmap(schema, name: str, index: int):
    t = schema.TensorMapT()
    t.name, t.tensorIndex = name, index
    return t


def write_tflite(spec: ModelSpec, folder: Path, quant: str, max_ctx: int | None = None) -> dict:
    """model.tflite, edgert.json and the tokenizer files into folder."""
    q = tflite_quant(quant)
    data, summary = build_model(spec, q, max_ctx)
    if len(data) >= 2**31:
        raise EdgertError(f"the {q} TFLite model is {len(data) / 2**30:.1f} GiB, past the 2 GiB a flatbuffer holds; "
                          "use --quant int8 or a smaller model.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(data)
    meta = _tokenizer_files(spec, folder)
    (folder / "edgert.json").write_text(json.dumps({"config": dataclasses.asdict(spec.config), "tokenizer": meta}))
    return {**summary, "quant": q, "bytes": len(data)}
