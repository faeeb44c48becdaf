"""The Core ML target: an ML Program built with coremltools' MIL builder from a ModelSpec (no torch),
deployment target iOS 18 / macOS 15, the KV cache held as Core ML state.

    inputs   input_ids int32 [1, s] (s flexible, 1..max_ctx)
             causal_mask fp16 [1, 1, s, t] (0 where a query may attend, -inf elsewhere; t = past + s)
    states   key_cache, value_cache fp16 [layers, kv_heads, max_ctx, head_dim]
    outputs  logits fp32 [1, s, vocab]

As in Apple's Llama example, the caller supplies the mask, and its width says how many cached
positions there are. Weights: fp16, or int8/int4 block-wise (32 values a block) as iOS 18
`constexpr_blockwise_shift_scale` ops written directly (4-bit with float offsets, which
`coremltools.optimize`'s integer zero points cannot express: they cost the default model a
third of its top-1 agreement).

Core ML predicts only on macOS and iOS. Elsewhere the program is still checked: it converts and
validates, its inputs, outputs, states and operators are the expected ones, and `evaluate` runs
the same MIL program in NumPy (float32 compute, half-float state) against the source.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from .spec import ModelSpec, target_quant

QUANTS = ("fp16", "int8", "int4")
GENERIC = {"q4": "int4", "q8": "int8", "f16": "fp16", "q4_k_m": "int4", "q8_0": "int8", "fp32": "fp16"}
MAX_CTX = 512
log = logging.getLogger(__name__)


def coreml_quant(name: str) -> str:
    return target_quant(name, "Core ML", QUANTS, GENERIC)


def _blocks(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """W (N, K) -> codes, scales (N, K/32) and offsets for constexpr_blockwise_shift_scale, value =
    scale * (code - offset). 4-bit: each block's min..max in 16 steps with a float offset, so a Q4_1
    or Q4_K source block comes through exactly (an integer zero point shifts every value of a block
    by up to half a step: 68% top-1 on the default model); 8-bit: symmetric, no offset."""
    n, k = w.shape
    b = w.reshape(n, k // 32, 32).astype(np.float32)
    if bits == 8:
        scale = np.abs(b).max(-1) / 127
        scale[scale == 0] = 1.0
        codes = np.clip(np.rint(b / scale[..., None]), -127, 127).astype(np.int8)
        return codes.reshape(n, k), scale, None
    lo, hi = b.min(-1), b.max(-1)
    scale = (hi - lo) / 15
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint((b - lo[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    return codes.reshape(n, k), scale, -lo / scale


def build_program(spec: ModelSpec, max_ctx: int | None = None, quant: str = "fp16"):
    """The decoder as a pymil Program; int8/int4 weights are block-wise constexpr ops (32 values a
    block), the embedding table and output head at 8 bits, as the GGUF and ONNX targets keep them."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    cfg = spec.config
    if cfg.n_rot != cfg.head_dim:
        raise EdgertError("partial rotary embeddings are not exported to Core ML yet; convert this model to GGUF.")
    T = min(max_ctx or MAX_CTX, cfg.n_ctx_train)
    H, KV, hd, L = cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_layer
    half = hd // 2

    W = spec.tensor_halves

    def Q(w: np.ndarray, bits: int | None = None):
        """A weight as the quant stores it: a float const, or codes + scales decompressed at load."""
        if quant == "fp16" or w.ndim != 2 or w.shape[1] % 32:
            return w
        bits = bits or (4 if quant == "int4" else 8)
        codes, scale, offset = _blocks(w, bits)
        data = codes.astype(types.np_uint4_dtype if bits == 4 else np.int8)
        return mb.constexpr_blockwise_shift_scale(data=data, scale=scale.astype(np.float32),
                                                  offset=None if offset is None else offset.astype(np.float32))

    ang = spec.rope_angles(T)
    cos_t = np.cos(np.concatenate([ang, ang], 1)).astype(np.float32)
    sin_t = np.concatenate([-np.sin(ang), np.sin(ang)], 1).astype(np.float32)  # signed: rot = [b, a] * sin
    from coremltools.converters.mil.mil import get_new_symbol

    seq, total = get_new_symbol(), get_new_symbol()  # flexible: bounded to 1..max_ctx at conversion
    specs = [mb.TensorSpec((1, seq), dtype=types.int32), mb.TensorSpec((1, 1, seq, total), dtype=types.fp16),
             mb.StateTensorSpec((L, KV, T, hd), dtype=types.fp16), mb.StateTensorSpec((L, KV, T, hd), dtype=types.fp16)]

    @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
    def prog(input_ids, causal_mask, key_cache, value_cache):
        s = mb.gather(x=mb.shape(x=input_ids), indices=1)
        t = mb.gather(x=mb.shape(x=causal_mask), indices=3)
        past = mb.sub(x=t, y=s)
        pos = mb.range_1d(start=past, end=t, step=1)
        cos = mb.expand_dims(x=mb.gather(x=cos_t, indices=pos, axis=0), axes=[0])  # [1, s, hd]
        sin = mb.expand_dims(x=mb.gather(x=sin_t, indices=pos, axis=0), axes=[0])
        mask = mb.cast(x=causal_mask, dtype="fp32")
        embed = Q(W("token_embd.weight"), 8)
        x = mb.gather(x=embed, indices=mb.squeeze(x=input_ids, axes=[0]), axis=0)
        x = mb.expand_dims(x=x, axes=[0])  # [1, s, d]
        scale = np.float32(1.0 / np.sqrt(hd))

        def norm(v, w):
            ms = mb.reduce_mean(x=mb.mul(x=v, y=v), axes=[-1], keep_dims=True)
            return mb.mul(x=mb.mul(x=v, y=mb.rsqrt(x=ms, epsilon=np.float32(cfg.norm_eps))), y=w)

        def rope(v):  # [1, n, s, hd]
            a = mb.slice_by_index(x=v, begin=[0, 0, 0, 0], end=[0, 0, 0, half], end_mask=[True, True, True, False])
            b = mb.slice_by_index(x=v, begin=[0, 0, 0, half], end=[0, 0, 0, 0], end_mask=[True, True, True, True])
            rot = mb.concat(values=[b, a], axis=-1)
            return mb.add(x=mb.mul(x=v, y=mb.expand_dims(x=cos, axes=[1])),
                          y=mb.mul(x=rot, y=mb.expand_dims(x=sin, axes=[1])))

        def heads(v, n):  # [1, s, n*hd] -> [1, n, s, hd]
            return mb.transpose(x=mb.reshape(x=v, shape=[1, -1, n, hd]), perm=[0, 2, 1, 3])

        for i in range(L):
            p = f"blk.{i}."
            h = norm(x, W(p + "attn_norm.weight"))
            bias = {n: (spec.tensor(p + f"attn_{n}.bias") if cfg.qkv_bias else None) for n in "qkv"}
            q = heads(mb.linear(x=h, weight=Q(W(p + "attn_q.weight")), bias=bias["q"]), H)
            k = heads(mb.linear(x=h, weight=Q(W(p + "attn_k.weight")), bias=bias["k"]), KV)
            v = heads(mb.linear(x=h, weight=Q(W(p + "attn_v.weight")), bias=bias["v"]), KV)
            if cfg.qk_norm:
                q = norm(q, spec.tensor(p + "attn_q_norm.weight"))
                k = norm(k, spec.tensor(p + "attn_k_norm.weight"))
            q, k = rope(q), rope(k)
            layer_caches = []
            for state, new in ((key_cache, k), (value_cache, v)):
                cache = mb.read_state(input=state)
                begin = mb.concat(values=[[i, 0], mb.expand_dims(x=past, axes=[0]), [0]], axis=0)
                end = mb.concat(values=[[i + 1, KV], mb.expand_dims(x=t, axes=[0]), [hd]], axis=0)
                cache = mb.slice_update(x=cache, update=mb.cast(x=new, dtype="fp16"), begin=begin, end=end)
                mb.coreml_update_state(state=state, value=cache)
                upto = mb.concat(values=[[i + 1, KV], mb.expand_dims(x=t, axes=[0]), [hd]], axis=0)
                seen = mb.slice_by_index(x=cache, begin=[i, 0, 0, 0], end=upto)  # [1, KV, t, hd]
                layer_caches.append(mb.cast(x=seen, dtype="fp32"))
            ks, vs = layer_caches
            if H != KV:  # grouped-query attention: each kv head serves H/KV query heads
                ks = mb.reshape(x=mb.tile(x=mb.expand_dims(x=ks, axes=[2]), reps=[1, 1, H // KV, 1, 1]),
                                shape=[1, H, -1, hd])
                vs = mb.reshape(x=mb.tile(x=mb.expand_dims(x=vs, axes=[2]), reps=[1, 1, H // KV, 1, 1]),
                                shape=[1, H, -1, hd])
            scores = mb.add(x=mb.mul(x=mb.matmul(x=q, y=ks, transpose_y=True), y=scale), y=mask)
            att = mb.matmul(x=mb.softmax(x=scores, axis=-1), y=vs)  # [1, H, s, hd]
            att = mb.reshape(x=mb.transpose(x=att, perm=[0, 2, 1, 3]), shape=[1, -1, H * hd])
            x = mb.add(x=x, y=mb.linear(x=att, weight=Q(W(p + "attn_output.weight"))))
            h = norm(x, W(p + "ffn_norm.weight"))
            gate = mb.linear(x=h, weight=Q(W(p + "ffn_gate.weight")))
            up = mb.linear(x=h, weight=Q(W(p + "ffn_up.weight")))
            act = mb.mul(x=mb.mul(x=gate, y=mb.sigmoid(x=gate)), y=up)
            x = mb.add(x=x, y=mb.linear(x=act, weight=Q(W(p + "ffn_down.weight"))))
        x = norm(x, W("output_norm.weight"))
        head = embed if cfg.tied_embeddings else Q(W("output.weight"), 8)
        return mb.linear(x=x, weight=head, name="logits")

    return prog, T


def write_coreml(spec: ModelSpec, folder: Path, quant: str, max_ctx: int | None = None) -> tuple[dict, object]:
    """folder/model.mlpackage (+ tokenizer files, edgert.json, a manifest); returns the manifest and
    the final MIL program (after Core ML's passes and the quantization), for `evaluated_logits`."""
    import coremltools as ct

    from .onnx_out import _tokenizer_files

    prog, T = build_program(spec, max_ctx, quant)
    bounds = ct.RangeDim(1, T)
    inputs = [ct.TensorType(name="input_ids", shape=(1, bounds)),
              ct.TensorType(name="causal_mask", shape=(1, 1, bounds, ct.RangeDim(1, T)))]
    mlmodel = ct.convert(prog, inputs=inputs, minimum_deployment_target=ct.target.iOS18,
                         compute_precision=ct.precision.FLOAT16, skip_model_load=True)
    mlmodel.save(str(folder / "model.mlpackage"))
    meta = _tokenizer_files(spec, folder)
    import dataclasses

    (folder / "edgert.json").write_text(json.dumps({"config": dataclasses.asdict(spec.config), "tokenizer": meta,
                                                    "max_ctx": T}))
    desc = mlmodel.get_spec().description
    manifest = {"format": "mlpackage", "deployment_target": "iOS18 / macOS15", "quant": quant, "max_ctx": T,
                "inputs": [i.name for i in desc.input], "outputs": [o.name for o in desc.output],
                "states": [s.name for s in desc.state], "ops": sorted(_op_types(mlmodel))}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return manifest, mlmodel._mil_program


def _op_types(mlmodel) -> set[str]:
    prog = mlmodel.get_spec().mlProgram
    return {op.type for f in prog.functions.values() for b in f.block_specializations.values() for op in b.operations}


def _np_dtype(name) -> type:
    return {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
            "uint16": np.uint16, "uint8": np.uint8, "bool": np.bool_}[str(name)]


def _slice(x: np.ndarray, get) -> tuple:
    begin, end = get("begin"), get("end")
    bm = get("begin_mask", [False] * x.ndim)
    em = get("end_mask", [False] * x.ndim)
    return tuple(slice(None if bm[d] else int(begin[d]), None if em[d] else int(end[d])) for d in range(x.ndim))


class Evaluator:
    """Runs a MIL program (as built, before Core ML's own passes) in NumPy: float32 compute, the
    states in half floats between calls, as Core ML keeps them. The Linux stand-in for
    `MLModel.predict`, for the parity check."""

    def __init__(self, prog):
        self.fn = prog.functions["main"]
        self.states = {name: np.zeros([int(d) for d in v.shape], np.float16)
                       for name, v in self.fn.inputs.items() if "state" in str(v.sym_type).lower()}

    def __call__(self, **inputs) -> np.ndarray:
        env = {name: inputs[name] for name in self.fn.inputs if name in inputs}
        env.update({name: name for name in self.states})  # a state input evaluates to its own name

        def val(var):
            if isinstance(var, (list, tuple)):
                return [val(v) for v in var]
            if var.name in env:
                return env[var.name]
            return np.asarray(var.val)

        for op in self.fn.operations:
            def get(key, default=None, args=op.inputs):
                return val(args[key]) if key in args else default

            out = _eval_op(op.op_type, get, self.states)
            if out is not None:
                env[op.outputs[0].name] = out
        return env[self.fn.outputs[0].name]


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "floor_div": np.floor_divide,
           "maximum": np.maximum, "minimum": np.minimum, "pow": np.power, "mod": np.mod,
           "less": np.less, "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
           "equal": np.equal, "not_equal": np.not_equal, "logical_and": np.logical_and, "logical_or": np.logical_or}
_UNARY = {"exp": np.exp, "sqrt": np.sqrt, "abs": np.abs, "neg": np.negative, "logical_not": np.logical_not,
          "floor": np.floor, "ceil": np.ceil, "identity": lambda v: v, "tanh": np.tanh}


def _eval_op(kind: str, get, states):  # noqa: C901 - one branch per MIL operator the builder uses
    x = get("x")
    if kind == "const":
        return None
    if kind in _BINARY or kind == "matmul":
        a, b = np.asarray(x), np.asarray(get("y"))
        if kind == "matmul":
            a = np.swapaxes(a, -1, -2) if get("transpose_x", False) else a
            b = np.swapaxes(b, -1, -2) if get("transpose_y", False) else b
            return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float32)
        return _BINARY[kind](a, b)
    if kind in _UNARY:
        return _UNARY[kind](np.asarray(x))
    if kind == "select":
        return np.where(np.asarray(get("cond")), get("a"), get("b"))
    if kind == "shape":
        return np.asarray(x.shape, np.int32)
    if kind == "gather":
        axis = int(get("axis", 0))
        return np.take(np.asarray(x), np.asarray(get("indices")).astype(np.int64), axis=axis)
    if kind == "range_1d":
        return np.arange(int(get("start")), int(get("end")), int(get("step")), dtype=np.int32)
    if kind == "expand_dims":
        return np.expand_dims(x, tuple(int(a) for a in get("axes")))
    if kind == "squeeze":
        return np.squeeze(x, tuple(int(a) for a in get("axes")))
    if kind == "cast":
        return np.asarray(x).astype(_np_dtype(get("dtype")))
    if kind == "reduce_mean":
        return np.mean(x, axis=tuple(int(a) for a in get("axes")), keepdims=bool(get("keep_dims", False)))
    if kind == "rsqrt":
        return (1.0 / np.sqrt(x + get("epsilon", 1e-12))).astype(np.float32)
    if kind == "slice_by_index":
        return x[_slice(x, get)]
    if kind == "concat":
        vals = [np.atleast_1d(np.asarray(v)) for v in get("values")]
        return np.concatenate(vals, axis=int(get("axis")))
    if kind == "transpose":
        return np.transpose(x, [int(p) for p in get("perm")])
    if kind == "reshape":
        return np.reshape(x, [int(d) for d in get("shape")])
    if kind == "tile":
        return np.tile(x, [int(r) for r in get("reps")])
    if kind == "linear":
        w, b = np.asarray(get("weight"), np.float32), get("bias")
        y = np.asarray(x, np.float32) @ w.T
        return y + np.asarray(b, np.float32) if b is not None else y
    if kind == "softmax":
        axis = int(get("axis"))
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if kind == "silu":
        x = np.asarray(x, np.float32)
        return x / (1.0 + np.exp(-x))
    if kind == "constexpr_blockwise_shift_scale":  # the quantized weights: (data - offset) * scale, per block
        data = np.asarray(get("data"), np.float32)
        scale, offset = np.asarray(get("scale"), np.float32), get("offset")
        reps = [d // s for d, s in zip(data.shape, scale.shape, strict=True)]
        off = 0.0 if offset is None else np.repeat(np.repeat(np.asarray(offset, np.float32), reps[0], 0), reps[1], 1)
        return (data - off) * np.repeat(np.repeat(scale, reps[0], 0), reps[1], 1)
    if kind == "read_state":
        return states[get("input")].copy()
    if kind == "slice_update":
        out = np.array(x)
        out[_slice(out, get)] = get("update")
        return out
    if kind in ("coreml_update_state", "write_state"):
        if kind == "write_state":
            states[get("input")][...] = np.asarray(get("data"), np.float16)
            return None
        value = np.asarray(get("value"), np.float16)
        states[get("state")][...] = value
        return value
    raise EdgertError(f"the Core ML evaluator has no rule for MIL operator {kind!r}.")


def evaluated_logits(program, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits of a Core ML program (the converted, quantized one) for ids."""
    from ..devices.coreml import causal_mask

    out = Evaluator(program)(input_ids=np.asarray([ids], np.int32), causal_mask=causal_mask(len(ids), len(ids)))
    return np.asarray(out[0], np.float32)
