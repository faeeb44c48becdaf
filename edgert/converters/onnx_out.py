"""The ONNX target: the decoder built node by node with `onnx.helper` from a ModelSpec (no torch
tracing), with the KV cache as inputs and outputs in the layout onnxruntime-genai expects:

    inputs   input_ids [b, s], attention_mask [b, t], position_ids [b, s],
             past_key_values.{i}.key / .value [b, kv_heads, p, head_dim]
    outputs  logits [b, s, vocab], present.{i}.key / .value [b, kv_heads, t, head_dim]   (t = p + s)

Standard opset-17 operators throughout; the int4 and int8 weights use onnxruntime's
`MatMulNBits` (com.microsoft): block-wise, weight-only, 32 values a block. RoPE is applied on
halves (as transformers does), so llama.cpp-ordered Q/K rows from a GGUF source are permuted back.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from .spec import ModelSpec, target_quant

QUANTS = ("fp32", "fp16", "int8", "int4")
GENERIC = {"q4": "int4", "q8": "int8", "f16": "fp16", "f32": "fp32", "q4_k_m": "int4", "q8_0": "int8"}
OPSET = 17
BLOCK = 32


def onnx_quant(name: str) -> str:
    return target_quant(name, "ONNX", QUANTS, GENERIC)


def _nbits(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """W (N, K) -> MatMulNBits B (N, K/32, 32*bits/8) uint8, scales (N * K/32,) and zero points.

    4-bit: each block's min..max in 16 steps with a float zero point, value = scale * (code - zp);
    a Q4_1 (or Q4_K) block whose codes span 0..15 comes through exactly. 8-bit: symmetric around
    the default zero point 128 (onnxruntime's CPU kernel takes no float zero point at 8 bits)."""
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    if bits == 8:
        scale = np.abs(blocks).max(axis=-1) / 127
        scale[scale == 0] = 1.0
        q = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        return np.ascontiguousarray(q), scale.reshape(-1), None
    top = (1 << bits) - 1
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    scale = (hi - lo) / top
    scale[scale == 0] = 1.0
    q = np.clip(np.rint((blocks - lo[..., None]) / scale[..., None]), 0, top).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return np.ascontiguousarray(q), scale.reshape(-1), (-lo / scale).astype(np.float32).reshape(-1)


class _Graph:
    def __init__(self, quant: str):
        from onnx import helper

        self.h, self.quant = helper, quant
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        return self.init(self.name("const"), np.asarray(values, dtype=dtype))

    def op(self, op: str, inputs: list[str], domain: str = "", outputs: list[str] | None = None, **attrs) -> str:
        outs = outputs or [self.name(op.lower())]
        self.nodes.append(self.h.make_node(op, inputs, outs, domain=domain or None, **attrs))
        return outs[0]

    def weight(self, name: str, w: np.ndarray) -> tuple[str, dict]:
        """A float weight (rows, cols) as the graph stores it: float32, float16 (cast at load), or
        MatMulNBits blocks."""
        if self.quant == "fp32":
            return self.init(name, w.astype(np.float32)), {}
        if self.quant == "fp16":
            return self.op("Cast", [self.init(name, w.astype(np.float16))], to=1), {}
        raise AssertionError("linear weights go through linear()")

    def linear(self, x: str, name: str, w: np.ndarray, bias: np.ndarray | None = None, bits: int | None = None) -> str:
        """x @ W.T for W (out, in) as the checkpoint stores it; `bits` overrides the recipe's width."""
        n, k = w.shape
        if self.quant in ("int4", "int8") and k % BLOCK == 0:
            bits = bits or (4 if self.quant == "int4" else 8)
            b, s, z = _nbits(w, bits)
            ins = [x, self.init(name + ".qweight", b), self.init(name + ".scales", s)]
            if z is not None:
                ins.append(self.init(name + ".zero_points", z))
            y = self.op("MatMulNBits", ins, domain="com.microsoft", K=k, N=n, bits=bits, block_size=BLOCK)
        else:
            wt = w.T.astype(np.float16 if self.quant == "fp16" else np.float32)
            src = self.init(name + ".weight_t", wt)
            if self.quant == "fp16":
                src = self.op("Cast", [src], to=1)
            y = self.op("MatMul", [x, src])
        if bias is not None:
            y = self.op("Add", [y, self.init(name + ".bias", bias.astype(np.float32))])
        return y

    def rmsnorm(self, x: str, w: np.ndarray, eps: float, name: str) -> str:
        sq = self.op("Mul", [x, x])
        ms = self.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [ms, self.const([eps], np.float32)])])])
        return self.op("Mul", [self.op("Mul", [x, inv]), self.init(name, w.astype(np.float32))])


def build_model(spec: ModelSpec, quant: str, max_ctx: int | None = None):
    """The decoder as an onnx.ModelProto."""
    from onnx import TensorProto, helper

    cfg = spec.config
    if cfg.n_rot != cfg.head_dim:
        raise EdgertError("partial rotary embeddings are not exported to ONNX yet; convert this model to GGUF.")
    max_ctx = max_ctx or cfg.n_ctx_train
    g = _Graph(quant)
    hd, H, KV = cfg.head_dim, cfg.n_head, cfg.n_head_kv

    W = spec.tensor_halves

    emb = W("token_embd.weight")
    # the embedding table: float16 unless fp32 was asked for (it is only gathered, a row at a time)
    x = g.op("Gather", [g.init("embed_tokens", emb.astype(np.float32 if quant == "fp32" else np.float16)),
                        "input_ids"])
    if quant != "fp32":
        x = g.op("Cast", [x], to=1)
    # RoPE tables, gathered by position: cos/sin [b, 1, s, hd]
    ang = spec.rope_angles(max_ctx)
    ang = np.concatenate([ang, ang], axis=1)
    cos = g.op("Unsqueeze", [g.op("Gather", [g.init("rope_cos", np.cos(ang).astype(np.float32)), "position_ids"]),
                             g.const([1])])
    sin = g.op("Unsqueeze", [g.op("Gather", [g.init("rope_sin", np.sin(ang).astype(np.float32)), "position_ids"]),
                             g.const([1])])
    # attention bias [b, 1, s, t]: causal over absolute positions, and the attention mask's padding
    t = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const(1)], axis=0)
    s = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(1)], axis=0)
    past = g.op("Sub", [t, s])
    q_pos = g.op("Unsqueeze", [g.op("Range", [past, t, g.const(1)]), g.const([1])])
    k_pos = g.op("Unsqueeze", [g.op("Range", [g.const(0), t, g.const(1)]), g.const([0])])
    causal = g.op("LessOrEqual", [k_pos, q_pos])
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), g.const([1, 2])])
    allowed = g.op("And", [g.op("Unsqueeze", [causal, g.const([0, 1])]), pad])
    bias = g.op("Where", [allowed, g.const([0.0], np.float32), g.const([-3.0e38], np.float32)])
    half = hd // 2
    scale = g.const([1.0 / np.sqrt(hd)], np.float32)

    def rope(v: str) -> str:
        a = g.op("Slice", [v, g.const([0]), g.const([half]), g.const([-1])])
        b = g.op("Slice", [v, g.const([half]), g.const([hd]), g.const([-1])])
        rot = g.op("Concat", [g.op("Neg", [b]), a], axis=-1)
        return g.op("Add", [g.op("Mul", [v, cos]), g.op("Mul", [rot, sin])])

    def heads(v: str, n: int) -> str:  # [b, s, n*hd] -> [b, n, s, hd]
        return g.op("Transpose", [g.op("Reshape", [v, g.const([0, 0, n, hd])])], perm=[0, 2, 1, 3])

    def repeat_kv(v: str) -> str:  # [b, KV, t, hd] -> [b, H, t, hd]
        if H == KV:
            return v
        u = g.op("Unsqueeze", [v, g.const([2])])
        shp = g.op("Shape", [v])
        full = g.op("Concat", [g.op("Slice", [shp, g.const([0]), g.const([2])]), g.const([H // KV]),
                               g.op("Slice", [shp, g.const([2]), g.const([4])])], axis=0)
        return g.op("Reshape", [g.op("Expand", [u, full]), g.const([0, H, -1, hd])])

    eps = cfg.norm_eps
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        h = g.rmsnorm(x, W(p + "attn_norm.weight"), eps, f"layers.{i}.input_norm")
        bq, bk, bv = ((spec.tensor(p + f"attn_{n}.bias") for n in "qkv") if cfg.qkv_bias else (None, None, None))
        q = heads(g.linear(h, f"layers.{i}.q_proj", W(p + "attn_q.weight"), bq), H)
        k = heads(g.linear(h, f"layers.{i}.k_proj", W(p + "attn_k.weight"), bk), KV)
        v = heads(g.linear(h, f"layers.{i}.v_proj", W(p + "attn_v.weight"), bv), KV)
        if cfg.qk_norm:
            q = g.rmsnorm(q, spec.tensor(p + "attn_q_norm.weight"), eps, f"layers.{i}.q_norm")
            k = g.rmsnorm(k, spec.tensor(p + "attn_k_norm.weight"), eps, f"layers.{i}.k_norm")
        q, k = rope(q), rope(k)
        pk = g.op("Concat", [f"past_key_values.{i}.key", k], axis=2, outputs=[f"present.{i}.key"])
        pv = g.op("Concat", [f"past_key_values.{i}.value", v], axis=2, outputs=[f"present.{i}.value"])
        kt = g.op("Transpose", [repeat_kv(pk)], perm=[0, 1, 3, 2])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, kt]), scale]), bias])
        att = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), repeat_kv(pv)])
        att = g.op("Reshape", [g.op("Transpose", [att], perm=[0, 2, 1, 3]), g.const([0, 0, H * hd])])
        x = g.op("Add", [x, g.linear(att, f"layers.{i}.o_proj", W(p + "attn_output.weight"))])
        h = g.rmsnorm(x, W(p + "ffn_norm.weight"), eps, f"layers.{i}.post_attention_norm")
        gate = g.linear(h, f"layers.{i}.gate_proj", W(p + "ffn_gate.weight"))
        up = g.linear(h, f"layers.{i}.up_proj", W(p + "ffn_up.weight"))
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        x = g.op("Add", [x, g.linear(act, f"layers.{i}.down_proj", W(p + "ffn_down.weight"))])
    x = g.rmsnorm(x, W("output_norm.weight"), eps, "final_norm")
    head = emb if cfg.tied_embeddings else W("output.weight")
    g.linear(x, "lm_head", head, bits=8)  # the output head stays 8-bit, as Q4_K_M keeps it at 6
    g.nodes[-1].output[0] = "logits"

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total_seq"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", cfg.vocab_size])]
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch", KV, "past_seq", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, ["batch", KV, "total_seq", hd]))
    graph = helper.make_graph(g.nodes, "edgert", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="edgert")


def write_onnx(spec: ModelSpec, folder: Path, quant: str) -> dict:
    """model.onnx + model.onnx.data, genai_config.json and the tokenizer files into folder."""
    import onnx

    model = build_model(spec, quant)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    _genai_config(spec, folder)
    meta = _tokenizer_files(spec, folder)
    (folder / "edgert.json").write_text(json.dumps({"config": dataclasses.asdict(spec.config), "tokenizer": meta}))
    return {"nodes": len(model.graph.node), "MatMulNBits": sum(n.op_type == "MatMulNBits" for n in model.graph.node)}


def _genai_config(spec: ModelSpec, folder: Path) -> None:
    cfg, tok = spec.config, spec.tokenizer
    eos = tok.eos_id if tok.eos_id is not None else 0
    conf = {
        "model": {
            "type": {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(cfg.arch, "llama"),
            "bos_token_id": tok.bos_id if tok.bos_id is not None else eos, "eos_token_id": eos,
            "pad_token_id": eos, "vocab_size": cfg.vocab_size, "context_length": cfg.n_ctx_train,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx", "head_size": cfg.head_dim, "hidden_size": cfg.n_embd,
                "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head_kv,
                "num_hidden_layers": cfg.n_layer,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": cfg.n_ctx_train, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
    (folder / "genai_config.json").write_text(json.dumps(conf, indent=2))


def _tokenizer_files(spec: ModelSpec, folder: Path) -> dict:
    """tokenizer.json and tokenizer_config.json: copied from a checkpoint, or written from the
    GGUF vocabulary (edgert's tokenizers.Tokenizer, which reproduces llama.cpp's). Returns the
    vocabulary as GGUF metadata, for edgert's own tokenizer (edgert.json)."""
    from ..tokenizer import Tokenizer

    tok = spec.tokenizer
    meta = {"tokenizer.ggml.model": tok.model, "tokenizer.ggml.pre": tok.pre, "tokenizer.ggml.tokens": tok.tokens,
            "tokenizer.ggml.token_type": tok.token_types, "tokenizer.ggml.merges": tok.merges,
            "tokenizer.ggml.scores": tok.scores, "tokenizer.ggml.bos_token_id": tok.bos_id,
            "tokenizer.ggml.eos_token_id": tok.eos_id, "tokenizer.ggml.add_bos_token": tok.add_bos,
            "tokenizer.chat_template": tok.chat_template, **tok.extra}
    if spec.kind == "hf":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (spec.source / name).exists():
                shutil.copy(spec.source / name, folder / name)
        return meta
    Tokenizer.from_gguf_meta(meta).hf.save(str(folder / "tokenizer.json"))
    text = {i: t for i, t in enumerate(tok.tokens)}
    config = {"add_bos_token": tok.add_bos, "chat_template": tok.chat_template,
              "bos_token": text.get(tok.bos_id), "eos_token": text.get(tok.eos_id),
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return meta
