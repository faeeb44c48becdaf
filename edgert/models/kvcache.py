"""The KV cache in one of three precisions, allocated once and touched at load so that its
memory is committed then (and counted by the memory plan), not halfway through a chat.

    f32   4 bytes a value
    f16   2 bytes a value (stored as half-float bits, read through a 65536-entry table)
    q8_0  int8 values in blocks of 32 along the head dimension with a float32 scale per block:
          1.125 bytes a value (llama.cpp's q8_0 keeps a half-float scale: 1.0625)
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgertError
from ..kernels import ops

KV_TYPES = ("f32", "f16", "q8_0")
BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "q8_0": 1.125}


def kv_bytes(kv_type: str, n_slots: int, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int) -> int:
    check_kv_type(kv_type, head_dim)
    return int(2 * n_slots * n_layer * n_head_kv * n_ctx * head_dim * BYTES_PER_VALUE[kv_type])


def check_kv_type(kv_type: str, head_dim: int) -> None:
    if kv_type not in KV_TYPES:
        raise EdgertError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPES)}.")
    if kv_type == "q8_0" and head_dim % 32:
        raise EdgertError(f"a q8_0 KV cache needs a head size that is a multiple of 32 (this model's is "
                          f"{head_dim}); use --kv-type f16.")


class KVCache:
    """Keys and values for (slots, layers, kv_heads, ctx, head_dim)."""

    def __init__(self, kv_type: str, n_slots: int, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int):
        check_kv_type(kv_type, head_dim)
        self.kv_type = kv_type
        shape = (n_slots, n_layer, n_head_kv, n_ctx, head_dim)
        dtype = {"f32": np.float32, "f16": np.uint16, "q8_0": np.int8}[kv_type]
        self.k = np.empty(shape, dtype)
        self.v = np.empty(shape, dtype)
        self.k.fill(0)  # touch every page now: the plan counts this memory as resident
        self.v.fill(0)
        if kv_type == "q8_0":
            sshape = shape[:-1] + (head_dim // 32,)
            self.k_scale = np.zeros(sshape, np.float32)
            self.v_scale = np.zeros(sshape, np.float32)
            self.k_scale.fill(0)
            self.v_scale.fill(0)
        else:  # the attention kernels take a scale array; these are never read
            self.k_scale, self.v_scale = self.k, self.v

    @property
    def nbytes(self) -> int:
        extra = self.k_scale.nbytes + self.v_scale.nbytes if self.kv_type == "q8_0" else 0
        return self.k.nbytes + self.v.nbytes + extra

    def store(self, slot: int, layer: int, k3: np.ndarray, v3: np.ndarray, pos0: int) -> None:
        """Write keys and values (n, kv_heads, head_dim) for positions pos0..pos0+n-1."""
        n = k3.shape[0]
        if self.kv_type == "q8_0":
            ops.store_q8(k3, pos0, self.k[slot, layer], self.k_scale[slot, layer])
            ops.store_q8(v3, pos0, self.v[slot, layer], self.v_scale[slot, layer])
            return
        k, v = self.k[slot, layer], self.v[slot, layer]
        if self.kv_type == "f16":  # NumPy rounds float32 to half in place, through a float16 view
            k, v = k.view(np.float16), v.view(np.float16)
        k[:, pos0 : pos0 + n] = k3.transpose(1, 0, 2)
        v[:, pos0 : pos0 + n] = v3.transpose(1, 0, 2)

    def attention(self, slot: int, layer: int, q3, pos0: int, scale, out, scores, tmp) -> None:
        """tmp: (threads, head_dim) uint32 scratch for half-float conversion."""
        kernel = {"f32": ops.attention_f32, "f16": ops.attention_f16, "q8_0": ops.attention_q8}[self.kv_type]
        kernel(q3, self.k[slot, layer], self.k_scale[slot, layer], self.v[slot, layer], self.v_scale[slot, layer],
               pos0, scale, out, scores, tmp)
