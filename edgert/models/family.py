"""What differs between decoder families, and GGUF metadata -> ModelConfig."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFileError, UnsupportedError
from .config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    archs: tuple[str, ...]
    rope_neox: bool
    qkv_bias: bool = False
    qk_norm: bool = False

    def config(self, arch: str, meta: dict[str, Any], tensors: dict[str, Any], where: str) -> ModelConfig:
        def get(key: str, default: Any = None, required: bool = True) -> Any:
            v = meta.get(f"{arch}.{key}", default)
            if v is None and required:
                raise ModelFileError(f"{where} lacks the metadata key {arch}.{key}; the file is incomplete.")
            return v

        n_embd = int(get("embedding_length"))
        n_head = int(get("attention.head_count"))
        n_head_kv = get("attention.head_count_kv", n_head)
        if isinstance(n_head_kv, list):
            raise UnsupportedError(f"{where} has a different KV head count per layer, which edgert does not run.")
        head_dim = int(get("attention.key_length", n_embd // max(n_head, 1)))
        n_ff = get("feed_forward_length")
        if isinstance(n_ff, list):
            raise UnsupportedError(f"{where} has a different FFN size per layer, which edgert does not run.")
        if "token_embd.weight" not in tensors:
            raise ModelFileError(f"{where} has no token_embd.weight tensor; the file is incomplete.")
        vocab = int(meta.get(f"{arch}.vocab_size") or tensors["token_embd.weight"].shape[0])
        scaling = get("rope.scaling.type", "none", required=False)
        if scaling not in ("none", "linear"):
            raise UnsupportedError(
                f"{where} uses {scaling!r} RoPE scaling; edgert supports none, linear and Llama-3 "
                "frequency factors, so pick a model without it."
            )
        factor = float(get("rope.scaling.factor", 1.0, required=False) or 1.0)
        if scaling != "linear":
            factor = 1.0
        cfg = ModelConfig(
            arch=arch,
            n_layer=int(get("block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(n_head_kv),
            head_dim=head_dim,
            n_ff=int(n_ff),
            vocab_size=vocab,
            n_ctx_train=int(get("context_length", 2048, required=False)),
            rope_base=float(get("rope.freq_base", 10000.0, required=False)),
            n_rot=int(get("rope.dimension_count", head_dim, required=False)),
            rope_neox=self.rope_neox,
            rope_pos_scale=1.0 / factor,
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
            tied_embeddings="output.weight" not in tensors,
            qkv_bias=self.qkv_bias or "blk.0.attn_q.bias" in tensors,
            qk_norm=self.qk_norm,
            name=str(meta.get("general.name", "")),
        )
        check_shapes(cfg, tensors, where)
        return cfg


def check_shapes(cfg: ModelConfig, tensors: dict[str, Any], where: str) -> None:
    """Every tensor the decoder reads exists with the shape the metadata implies."""
    d, q, kv, ff = cfg.n_embd, cfg.q_dim, cfg.kv_dim, cfg.n_ff
    want = {"token_embd.weight": (cfg.vocab_size, d), "output_norm.weight": (d,)}
    if not cfg.tied_embeddings:
        want["output.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        want.update({
            p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,),
            p + "attn_q.weight": (q, d), p + "attn_k.weight": (kv, d), p + "attn_v.weight": (kv, d),
            p + "attn_output.weight": (d, q),
            p + "ffn_gate.weight": (ff, d), p + "ffn_up.weight": (ff, d), p + "ffn_down.weight": (d, ff),
        })
        if cfg.qkv_bias:
            want.update({p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)})
        if cfg.qk_norm:
            want.update({p + "attn_q_norm.weight": (cfg.head_dim,), p + "attn_k_norm.weight": (cfg.head_dim,)})
    for name, shape in want.items():
        if name not in tensors:
            raise ModelFileError(
                f"{where} lacks tensor {name!r} that a {cfg.arch} model needs; the file is incomplete."
            )
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ModelFileError(
                f"{where}: tensor {name!r} has shape {got} but the metadata implies {shape}; the file is corrupt."
            )
