"""The architecture config: every number the decoder, the memory plan and converters need."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    arch: str               # GGUF general.architecture: llama, mistral, qwen2, qwen3
    n_layer: int
    n_embd: int             # hidden size
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int               # feed-forward (SwiGLU) size
    vocab_size: int
    n_ctx_train: int        # context length the model was trained for
    rope_base: float
    n_rot: int              # rotary dimensions per head (<= head_dim)
    rope_neox: bool         # NeoX rotation order (i, i + n_rot/2) instead of pairs (2i, 2i+1)
    rope_pos_scale: float   # linear RoPE scaling: positions are multiplied by this
    norm_eps: float
    tied_embeddings: bool   # output projection shares token_embd
    qkv_bias: bool          # qwen2
    qk_norm: bool           # qwen3: RMSNorm on each query/key head before RoPE
    name: str = ""

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim
