"""`edgert inspect`: what a GGUF file holds, read from its header only."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def describe(name_or_path: str) -> dict[str, Any]:
    from .devices.cpu import model_config
    from .formats.gguf import read_gguf
    from .store import resolve

    path = resolve(name_or_path, progress=True)
    g = read_gguf(path)
    cfg = model_config(g)
    types: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    params = 0
    for t in g.tensors.values():
        types[t.type_name][0] += 1
        types[t.type_name][1] += t.nbytes
        params += t.n_elements
    model = g.meta.get("tokenizer.ggml.model", "?")
    kind = {"gpt2": "byte-level BPE (gpt2)", "llama": "SentencePiece (llama)"}.get(model, model)
    pre = g.meta.get("tokenizer.ggml.pre")
    return {
        "path": str(path), "name": cfg.name, "architecture": cfg.arch, "parameters": params,
        "context_length": cfg.n_ctx_train, "layers": cfg.n_layer, "embedding": cfg.n_embd, "heads": cfg.n_head,
        "kv_heads": cfg.n_head_kv, "head_dim": cfg.head_dim, "ffn": cfg.n_ff, "vocab_size": cfg.vocab_size,
        "rope_base": cfg.rope_base, "tied_embeddings": cfg.tied_embeddings, "file_bytes": g.file_size,
        "tokenizer": f"{kind}, pre {pre}" if pre else kind,
        "tensor_types": [{"type": k, "count": v[0], "bytes": v[1]} for k, v in sorted(types.items())],
        "chat_template": g.meta.get("tokenizer.chat_template"),
    }
