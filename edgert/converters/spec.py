"""ModelSpec: one description of a model, whatever it was published as, so that every target is
written once. A GGUF file and a Hugging Face checkpoint folder both become a config, weights by
GGUF name (float32 on request, in GGUF's layout), a tokenizer and a chat template."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgertError, ModelFileError, UnsupportedError
from ..models.config import ModelConfig

log = logging.getLogger(__name__)

# Hugging Face architecture -> (GGUF architecture, RoPE in NeoX order, QKV biases, Q/K norms)
HF_ARCHS = {
    "LlamaForCausalLM": ("llama", False, False, False),
    "MistralForCausalLM": ("llama", False, False, False),  # llama.cpp writes Mistral 7B as llama
    "Qwen2ForCausalLM": ("qwen2", True, True, False),
    "Qwen3ForCausalLM": ("qwen3", True, False, True),
}
# GGUF tensor name (with {i} for the layer) -> Hugging Face name
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


@dataclass
class TokenizerSpec:
    model: str                      # GGUF tokenizer.ggml.model: gpt2 (byte-level BPE) or llama (SentencePiece)
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    chat_template: str | None
    scores: list[float] | None = None
    extra: dict = field(default_factory=dict)  # other tokenizer.ggml.* keys (eot, pad, ...), as they were


@dataclass
class ModelSpec:
    config: ModelConfig
    source: Path
    kind: str                                   # "gguf" or "hf"
    names: list[str]                            # GGUF tensor names, in writing order
    shapes: dict[str, tuple[int, ...]]          # NumPy order, rows first
    load: Callable[[str], np.ndarray]           # name -> float32 in GGUF's layout
    tokenizer: TokenizerSpec
    source_types: dict[str, str] = field(default_factory=dict)  # GGUF source: the tensor's GGML type
    hf_load: Callable[[str], np.ndarray] | None = None  # HF source: name -> the checkpoint's own layout

    def tensor(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.load(name), dtype=np.float32)

    def tensor_halves(self, name: str) -> np.ndarray:
        """A weight with Q/K rows in transformers' order (RoPE on halves), which the ONNX, TFLite
        and Core ML graphs use; a llama-architecture GGUF stores them in llama.cpp's pair order."""
        w = self.tensor(name)
        if not self.config.rope_neox and name.endswith(("attn_q.weight", "attn_k.weight")):
            n = self.config.n_head if ".attn_q." in name else self.config.n_head_kv
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return w

    def rope_angles(self, n_pos: int) -> np.ndarray:
        """RoPE angles (n_pos, n_rot/2) in float64: base frequencies, Llama-3 frequency factors
        (the rope_freqs.weight tensor) and linear position scaling, as every target needs them."""
        cfg = self.config
        inv = cfg.rope_base ** (-np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot)
        if "rope_freqs.weight" in self.names:
            inv = inv / self.tensor("rope_freqs.weight").astype(np.float64)[: cfg.n_rot // 2]
        return np.outer(np.arange(n_pos, dtype=np.float64) * cfg.rope_pos_scale, inv)


def target_quant(name: str, target: str, quants: tuple[str, ...], generic: dict[str, str]) -> str:
    """A --quant name for one target: its own scheme names, or a generic one (q4, q8, f16) mapped
    to the target's nearest scheme."""
    q = generic.get(name.lower(), name.lower())
    if q not in quants:
        raise EdgertError(f"unknown {target} quant {name!r}; use one of {', '.join(quants)} (or q4, q8, f16).")
    return q


def load_spec(src: str | Path) -> ModelSpec:
    path = Path(src)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelFileError(f"{path} has no config.json; give a Hugging Face checkpoint folder or a .gguf file.")
        return _from_hf(path)
    if path.suffix.lower() == ".gguf" or path.is_file():
        return _from_gguf(path)
    raise ModelFileError(f"{path} does not exist; give a .gguf file or a Hugging Face checkpoint folder.")


def _from_gguf(path: Path) -> ModelSpec:
    from ..devices.cpu import model_config
    from ..formats.gguf import read_gguf
    from ..kernels import quant

    g = read_gguf(path)
    cfg = model_config(g)
    m = g.meta

    def load(name: str) -> np.ndarray:
        info = g.tensors[name]
        if info.ggml_type == 0:
            return np.asarray(g.array(name), dtype=np.float32).reshape(info.shape)
        if not quant.is_supported(info.ggml_type):
            raise UnsupportedError(f"{path}: tensor {name!r} is {info.type_name}, which edgert cannot read.")
        return quant.dequantize(g.raw(name), info.ggml_type, info.shape[-1]).reshape(info.shape)

    extra = {k: v for k, v in m.items() if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in
             ("eot_token_id", "eom_token_id", "padding_token_id", "unknown_token_id", "add_eos_token",
              "add_space_prefix")}
    tok = TokenizerSpec(
        model=m.get("tokenizer.ggml.model", "gpt2"), pre=m.get("tokenizer.ggml.pre", "default"),
        tokens=list(m["tokenizer.ggml.tokens"]), token_types=list(m.get("tokenizer.ggml.token_type") or []),
        merges=list(m.get("tokenizer.ggml.merges") or []), bos_id=m.get("tokenizer.ggml.bos_token_id"),
        eos_id=m.get("tokenizer.ggml.eos_token_id"), add_bos=bool(m.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=m.get("tokenizer.chat_template"), scores=m.get("tokenizer.ggml.scores"), extra=extra)
    names = list(g.tensors)
    return ModelSpec(cfg, path, "gguf", names, {n: g.tensors[n].shape for n in names}, load, tok,
                     {n: g.tensors[n].type_name for n in names})


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's Q/K rows (RoPE on halves) -> llama.cpp's order (RoPE on adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _from_hf(folder: Path) -> ModelSpec:
    from ..formats.safetensors import Checkpoint

    conf = json.loads((folder / "config.json").read_text())
    arch_name = (conf.get("architectures") or ["?"])[0]
    if arch_name not in HF_ARCHS:
        raise UnsupportedError(f"{folder} is a {arch_name} checkpoint; edgert converts {', '.join(HF_ARCHS)}.")
    arch, neox, bias, qk_norm = HF_ARCHS[arch_name]
    scaling = conf.get("rope_scaling") or {}
    scaling_type = scaling.get("rope_type") or scaling.get("type")
    if scaling_type not in (None, "default", "linear", "llama3"):
        raise UnsupportedError(f"{folder} uses {scaling_type!r} RoPE scaling; edgert converts none, linear and "
                               "llama3 scaling.")
    ckpt = Checkpoint(folder)
    n_head, n_embd = conf["num_attention_heads"], conf["hidden_size"]
    n_head_kv = conf.get("num_key_value_heads", n_head)
    head_dim = conf.get("head_dim") or n_embd // n_head
    tied = bool(conf.get("tie_word_embeddings", False)) or "lm_head.weight" not in ckpt
    cfg = ModelConfig(
        arch=arch, n_layer=conf["num_hidden_layers"], n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, n_ff=conf["intermediate_size"], vocab_size=conf["vocab_size"],
        n_ctx_train=conf.get("max_position_embeddings", 2048), rope_base=float(conf.get("rope_theta", 10000.0)),
        n_rot=head_dim, rope_neox=neox,
        rope_pos_scale=1.0 / float(scaling.get("factor", 1.0)) if scaling_type == "linear" else 1.0,
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)), tied_embeddings=tied,
        qkv_bias=bias or bool(conf.get("attention_bias")), qk_norm=qk_norm, name=folder.name)

    def hf_name(gguf_name: str) -> str:
        parts = gguf_name.split(".")
        if parts[0] == "blk":
            return HF_NAMES["blk.{i}." + ".".join(parts[2:])].format(i=parts[1])
        return HF_NAMES[gguf_name]

    names = ["token_embd.weight", "output_norm.weight"] + ([] if tied else ["output.weight"])
    for i in range(cfg.n_layer):
        per = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
               "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
        if cfg.qkv_bias:
            per += ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
        if cfg.qk_norm:
            per += ["attn_q_norm.weight", "attn_k_norm.weight"]
        names += [f"blk.{i}.{p}" for p in per]

    freqs = _llama3_factors(scaling, cfg.rope_base, head_dim) if scaling_type == "llama3" else None
    if freqs is not None:
        names.append("rope_freqs.weight")

    def hf_load(name: str) -> np.ndarray:
        if name == "rope_freqs.weight":
            return freqs
        return np.asarray(ckpt.get(hf_name(name)), dtype=np.float32)

    def load(name: str) -> np.ndarray:
        w = hf_load(name)
        if not neox and name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _permute(w, n_head if ".attn_q." in name else n_head_kv)
        return w

    shapes = {n: tuple(ckpt.where[hf_name(n)].tensors[hf_name(n)][1]) for n in names if n != "rope_freqs.weight"}
    if freqs is not None:
        shapes["rope_freqs.weight"] = freqs.shape
    return ModelSpec(cfg, folder, "hf", names, shapes, load, _hf_tokenizer(folder, conf), hf_load=hf_load)


def _llama3_factors(scaling: dict, base: float, n_rot: int) -> np.ndarray:
    """Llama 3.1's per-frequency divisors (what llama.cpp stores as rope_freqs.weight): long
    wavelengths are slowed by `factor`, short ones kept, the band between interpolated."""
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _hf_tokenizer(folder: Path, conf: dict) -> TokenizerSpec:
    """tokenizer.json (byte-level BPE) + tokenizer_config.json -> the GGUF vocabulary."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise ModelFileError(f"{folder} has no tokenizer.json; edgert needs the fast tokenizer file to convert.")
    tj = json.loads(path.read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{path} is a {model.get('type')} tokenizer; edgert converts BPE tokenizers "
                               "(byte-level, or SentencePiece-style with byte fallback).")
    spm = bool(model.get("byte_fallback"))  # Llama 2 / Mistral: '▁' for spaces, <0xXX> byte tokens
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    n = max(max(vocab.values()) + 1, conf.get("vocab_size", 0))
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # unused, until named
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = 1
    for t in added.values():
        types[t["id"]] = 3 if t.get("special") else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    scores = None
    if spm:
        # GGUF's SentencePiece vocabulary ranks merges by the merged token's score: a token made by
        # merge rank r scores -r, so the GGUF tokenizer applies the checkpoint's merges in its order
        scores = [0.0] * n
        for rank, m in enumerate(merges):
            merged = m.replace(" ", "", 1)
            if merged in vocab:
                i = vocab[merged]
                scores[i] = max(scores[i], -float(rank)) if scores[i] else -float(rank)
        for text, i in vocab.items():
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">") and types[i] == 1:
                types[i] = 6  # byte token
        merges = []
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}

    def token_id(key: str) -> int | None:
        v = tc.get(key)
        text = v.get("content") if isinstance(v, dict) else v
        if isinstance(text, str) and text in vocab:
            return vocab[text]
        for src in (gen, conf):
            x = src.get(f"{key}_id")
            if isinstance(x, list):
                x = x[0] if x else None
            if isinstance(x, int):
                return x
        return None

    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates: take the default
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if spm:
        prepend = "Prepend" in json.dumps(tj.get("normalizer") or {}) or "Metaspace" in json.dumps(
            tj.get("pre_tokenizer") or {})
        return TokenizerSpec(model="llama", pre="default", tokens=tokens, token_types=types, merges=[],
                             bos_id=token_id("bos_token"), eos_id=token_id("eos_token"),
                             add_bos=bool(tc.get("add_bos_token", True)), chat_template=template, scores=scores,
                             extra={"tokenizer.ggml.add_space_prefix": prepend})
    return TokenizerSpec(model="gpt2", pre=_pre_type(tj), tokens=tokens, token_types=types, merges=merges,
                         bos_id=token_id("bos_token"), eos_id=token_id("eos_token"),
                         add_bos=bool(tc.get("add_bos_token", False)), chat_template=template)


def _pre_type(tj: dict) -> str:
    """The llama.cpp pre-tokenizer name for a tokenizer.json's pre_tokenizer, by its structure."""
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    regexes = [p.get("pattern", {}).get("Regex", "") for p in items if p.get("type") == "Split"]
    if "Digits" in kinds and "ByteLevel" in kinds:
        return "smollm"
    if any(r"\p{N}{1,3}" in r for r in regexes):
        return "llama-bpe"
    if any(r"[^\r\n\p{L}\p{N}]?\p{L}+" in r for r in regexes):
        return "qwen2"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    log.warning("unrecognised pre-tokenizer %s: writing 'gpt-2'", kinds)
    return "gpt-2"
