"""Every family and quant type on synthetic GGUF files: edgert's decoder against the float32
NumPy forward over gguf.quants-dequantized weights, and against llama.cpp on the same file."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import edgert
from edgert.devices.cpu import model_config
from edgert.formats.gguf import read_gguf

import naive
import synth

# random-weight toy models: float32 in both, summed in different orders over 2 layers
LOGIT_ATOL = 2e-3
IDS = [5, 77, 200, 13, 13, 250, 9, 101, 42]
LONG = [(i * 37 + 11) % 260 for i in range(40)]  # past GEMM_MIN_TOKENS: the BLAS prefill path

FAMILIES = [
    ("llama", {}), ("mistral", {}), ("qwen2", {}), ("qwen3", {"head_dim": 32}),
    ("llama", {"tied": False}), ("llama", {"n_head_kv": 4}),
]


def _load(path):
    return edgert.load(str(path), n_ctx=64, threads=2)


@pytest.mark.parametrize("arch,opts", FAMILIES, ids=[f"{a}-{'-'.join(map(str, o.values()))}" for a, o in FAMILIES])
def test_family_matches_reference(tmp_path, arch, opts):
    path = synth.write_model(tmp_path / f"{arch}.gguf", arch, T.Q8_0, **opts)
    m = _load(path)
    g = read_gguf(path)
    ref = naive.forward(g, model_config(g), IDS)
    got = m.logits(IDS)
    assert got.shape == (len(IDS), m.config.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=LOGIT_ATOL * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("ids", [IDS, LONG], ids=["tiled", "gemm"])
def test_quant_types_match_reference(tmp_path, qtype, ids):
    path = synth.write_model(tmp_path / "m.gguf", "llama", qtype, n_layer=1, embd_type=T.Q8_0)
    m = _load(path)
    g = read_gguf(path)
    ref = naive.forward(g, model_config(g), ids)
    np.testing.assert_allclose(m.logits(ids), ref, atol=LOGIT_ATOL * np.abs(ref).max(), rtol=0)


def test_incremental_equals_batched(tmp_path):
    """Decoding one token at a time over the KV cache gives the batched logits."""
    path = synth.write_model(tmp_path / "m.gguf", "qwen2", T.Q4_0)
    m = _load(path)
    batched = m.logits(IDS)
    s = m.session
    rows = [s.forward(np.array([t]), i, 0)[-1].copy() for i, t in enumerate(IDS)]
    np.testing.assert_allclose(np.stack(rows), batched, atol=1e-4 * np.abs(batched).max(), rtol=0)


# llama.cpp names no "mistral" architecture: Mistral 7B GGUFs say "llama", with grouped-query
# attention of 4 query heads per KV head, which the llama-gqa4 case covers
LLAMA_CPP_CASES = [("llama", {}), ("llama", {"n_head": 8, "n_head_kv": 2}), ("qwen2", {}),
                   ("qwen3", {"head_dim": 32})]


@pytest.mark.llama
@pytest.mark.parametrize("arch,opts", LLAMA_CPP_CASES, ids=["llama", "llama-gqa4", "qwen2", "qwen3"])
def test_family_matches_llama_cpp(tmp_path, arch, opts):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = synth.write_model(tmp_path / f"{arch}.gguf", arch, T.Q8_0, **opts)
    ll = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, verbose=False)
    ll.eval(IDS)
    ref = np.asarray(ll.scores[: len(IDS)], dtype=np.float32)
    got = _load(path).logits(IDS)
    # llama.cpp quantizes activations to 8 bits for Q8_0 products: a few percent of the logit range
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75
