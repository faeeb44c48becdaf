"""Tiny random Hugging Face checkpoints (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) for the converter tests; no torch, no hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from synth import byte_vocab

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "mistral": "MistralForCausalLM"}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tokenizer(folder: Path) -> int:
    tokens, types, merges = byte_vocab()
    normal = [t for t, ty in zip(tokens, types, strict=True) if ty == 1]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(normal)},
                               merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": TEMPLATE}))
    return tok.get_vocab_size()


def write_spm_tokenizer(folder: Path) -> int:
    """A Llama-2/Mistral-style tokenizer.json: '▁' for spaces, byte fallback to <0xXX> tokens."""
    from tokenizers import normalizers

    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("e", "r"), ("o", "n"), ("t", "h")]
    for a, b in merges:
        if a + b not in pieces:
            pieces.append(a + b)
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": TEMPLATE}))
    return tok.get_vocab_size()


def write_checkpoint(folder: Path, arch: str = "llama", *, n_layer: int = 2, hidden: int = 256, heads: int = 4,
                     kv_heads: int = 2, ff: int = 512, tied: bool = True, seed: int = 0, spm: bool = False,
                     rope_scaling: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_spm_tokenizer(folder) if spm else write_tokenizer(folder)
    rng = np.random.default_rng(seed)
    hd = hidden // heads

    def mat(rows, cols, scale=0.08):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def vec(n, center=1.0):
        return (center + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(vocab, hidden, 1.0), "model.norm.weight": vec(hidden)}
    if not tied:
        # untied, but close to the embedding: logits peak clearly, as a trained model's do, instead of
        # the near-ties of a purely random head, which any 4-bit rounding flips
        w["lm_head.weight"] = w["model.embed_tokens.weight"] + mat(vocab, hidden, 0.3)
    for i in range(n_layer):
        p = f"model.layers.{i}."
        w.update({
            p + "input_layernorm.weight": vec(hidden), p + "post_attention_layernorm.weight": vec(hidden),
            p + "self_attn.q_proj.weight": mat(heads * hd, hidden),
            p + "self_attn.k_proj.weight": mat(kv_heads * hd, hidden),
            p + "self_attn.v_proj.weight": mat(kv_heads * hd, hidden),
            p + "self_attn.o_proj.weight": mat(hidden, heads * hd),
            p + "mlp.gate_proj.weight": mat(ff, hidden), p + "mlp.up_proj.weight": mat(ff, hidden),
            p + "mlp.down_proj.weight": mat(hidden, ff),
        })
        if arch == "qwen2":
            w.update({p + "self_attn.q_proj.bias": vec(heads * hd, 0.0),
                      p + "self_attn.k_proj.bias": vec(kv_heads * hd, 0.0),
                      p + "self_attn.v_proj.bias": vec(kv_heads * hd, 0.0)})
        if arch == "qwen3":
            w.update({p + "self_attn.q_norm.weight": vec(hd), p + "self_attn.k_norm.weight": vec(hd)})
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architectures": [ARCHS[arch]], "hidden_size": hidden, "intermediate_size": ff, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "num_hidden_layers": n_layer, "vocab_size": vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": tied,
        "rope_scaling": rope_scaling}))
    return folder
