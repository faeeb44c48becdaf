"""Qwen2 / Qwen2.5: the Llama graph with biases on Q, K and V, and NeoX-order RoPE."""

from .family import Family

FAMILY = Family(name="qwen2", archs=("qwen2",), rope_neox=True, qkv_bias=True)
