"""Qwen3 (dense): no QKV biases; RMSNorm on every query and key head before RoPE; NeoX RoPE."""

from .family import Family

FAMILY = Family(name="qwen3", archs=("qwen3",), rope_neox=True, qk_norm=True)
