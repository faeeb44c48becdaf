"""`edgert convert`: tiny random checkpoints and the default model to GGUF, checked against the
source; bad requests end in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgert
from edgert.cli import cli
from edgert.converters.convert import convert
from edgert.converters.reference import hf_logits
from edgert.converters.spec import load_spec
from edgert.errors import EdgertError

import hf_synth


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_k_m"])
def test_checkpoint_converts_with_parity(tmp_path, arch, quant):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", arch, tied=arch != "qwen2")
    rows = convert(src, ["gguf"], quant, tmp_path / "out")
    (row,) = rows
    parity = json.loads((tmp_path / "out" / "gguf" / "parity.json").read_text())
    assert parity["passed"] and parity["positions"] >= 64
    if quant == "f32":  # same float32 arithmetic, other summation order
        assert parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    if "llama_cpp_top1_vs_edgert" in parity:
        assert parity["llama_cpp_top1_vs_edgert"] >= 0.9
    m = edgert.load(row["artifact"])
    assert m.config.arch == ("llama" if arch == "mistral" else arch)
    assert "<|im_start|>assistant" in m.apply_chat_template([{"role": "user", "content": "hi"}])


def test_llama_permutation_matches_llama_cpp(tmp_path):
    """The Q/K row permutation is checked by an oracle that shares none of edgert's code."""
    llama_cpp = pytest.importorskip("llama_cpp")
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama")
    (row,) = convert(src, ["gguf"], "f32", tmp_path / "out")
    ids = [5, 77, 200, 13, 13, 250, 9, 101, 42, 60]
    ll = llama_cpp.Llama(model_path=row["artifact"], n_ctx=32, logits_all=True, verbose=False, n_threads=1)
    ll.eval(ids)
    ref = hf_logits(load_spec(src), ids)
    got = np.asarray(ll.scores[: len(ids)], dtype=np.float32)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_llama3_rope_scaling(tmp_path):
    """Llama 3.1's frequency factors: written as rope_freqs.weight, read by edgert and llama.cpp,
    applied by the ONNX graph; all against transformers' formula in the reference forward."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # small, so the factors act within a short test
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", rope_scaling=scaling)
    spec = load_spec(src)
    assert "rope_freqs.weight" in spec.names and spec.tensor("rope_freqs.weight").max() == 8.0
    rows = convert(src, ["gguf", "onnx"], "f32", tmp_path / "out")
    assert all(r["top1"] == 1.0 and r["max_abs_diff"] < 1e-3 for r in rows)
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = list(range(20, 60))
    ll = llama_cpp.Llama(model_path=rows[0]["artifact"], n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    ll.eval(ids)
    ref = hf_logits(spec, ids)
    assert np.abs(np.asarray(ll.scores[: len(ids)]) - ref).max() < 0.05 * np.abs(ref).max()


def test_tokenizer_ids_match_the_checkpoint(tmp_path):
    from tokenizers import Tokenizer

    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "qwen2")
    (row,) = convert(src, ["gguf"], "f16", tmp_path / "out")
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    m = edgert.load(row["artifact"])
    for text in ["hello world", "the theater", "<|im_start|>user\nhi<|im_end|>", "äöü 日本"]:
        assert m.tokenize(text, add_special=False) == hf.encode(text).ids


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8", "int4"])
def test_checkpoint_converts_to_onnx(tmp_path, arch, quant):
    pytest.importorskip("onnxruntime")
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", arch, tied=arch != "qwen2")
    (row,) = convert(src, ["onnx"], quant, tmp_path / "out")
    folder = tmp_path / "out" / "onnx"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["positions"] >= 64
    if quant == "fp32":
        assert parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "edgert.json"} <= {
        p.name for p in folder.iterdir()}
    if quant in ("int4", "int8"):
        assert parity["graph"]["MatMulNBits"] > 0
    if "onnxruntime_genai_greedy_match" in parity:
        assert parity["onnxruntime_genai_greedy_match"]
    m = edgert.load(row["artifact"])  # the onnxruntime backend, edgert's generation layer
    assert m.backend == "onnxruntime"
    r = CliRunner().invoke(cli, ["run", row["artifact"], "hello", "-n", "4", "--temp", "0", "--json", "--ignore-eos"])
    assert r.exit_code == 0 and json.loads(r.stdout)["tokens"] == 4


def test_onnx_backend_prefix_reuse(tmp_path):
    pytest.importorskip("onnxruntime")
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "qwen3")
    (row,) = convert(src, ["onnx"], "fp32", tmp_path / "out")
    m = edgert.load(row["artifact"])
    cold = m.generate("the quick brown fox", temp=0, max_tokens=8, ignore_eos=True).text
    m.generate("the quick", temp=0, max_tokens=2, ignore_eos=True)
    assert m.generate("the quick brown fox", temp=0, max_tokens=8, ignore_eos=True).text == cold


def test_sentencepiece_checkpoint(tmp_path):
    """A Mistral/Llama-2 style checkpoint: '▁' pieces and byte fallback become a GGUF 'llama'
    vocabulary whose ids equal the checkpoint tokenizer's; llama.cpp agrees as well."""
    from tokenizers import Tokenizer

    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "mistral", spm=True)
    (row,) = convert(src, ["gguf"], "q8_0", tmp_path / "out")
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    m = edgert.load(row["artifact"])
    assert m.tokenizer.kind == "spm"
    for text in ["the theater in the north", "another one", "naïve café ☕", "a  b"]:
        ids = m.tokenize(text, add_special=False)
        assert ids == hf.encode(text).ids, text  # the fixture's tokenizer.json adds no BOS itself
        assert m.detokenize(ids) == text
        assert m.tokenize(text)[0] == m.tokenizer.bos_id  # add_bos_token from tokenizer_config.json
    llama_cpp = pytest.importorskip("llama_cpp")
    ll = llama_cpp.Llama(model_path=row["artifact"], n_ctx=32, vocab_only=True, verbose=False)
    assert ll.tokenize(b"the theater in the north", add_bos=True) == m.tokenize("the theater in the north")


@pytest.mark.model
@pytest.mark.slow
def test_default_model_to_gguf_and_onnx(default_model_path, tmp_path):
    rows = convert(default_model_path, ["gguf", "onnx"], "q8", tmp_path / "q8")
    gguf_parity = json.loads((tmp_path / "q8" / "gguf" / "parity.json").read_text())
    assert rows[0]["quant"] == "q8_0" and gguf_parity["top1_agreement"] >= 0.95
    assert gguf_parity.get("llama_cpp_top1_vs_edgert", 1.0) >= 0.95
    (row,) = convert(default_model_path, ["onnx"], "int4", tmp_path / "int4")
    parity = json.loads((tmp_path / "int4" / "onnx" / "parity.json").read_text())
    assert parity["top1_agreement"] >= 0.85
    assert parity.get("onnxruntime_genai_greedy_match", True)


def test_output_is_atomic_and_never_overwritten(tmp_path):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", n_layer=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgertError, match="exists; pass --force"):
        convert(src, ["gguf"], "q8_0", out)
    assert (out / "keep.txt").read_text() == "mine"
    before = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    convert(src, ["gguf"], "q8_0", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "gguf" / "parity.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in src.iterdir()} == before  # the source is only read
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_failed_parity_keeps_nothing(tmp_path, monkeypatch):
    from edgert.converters import convert as mod

    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", n_layer=1)
    monkeypatch.setitem(mod.FLOORS, "q4_0", 1.01)  # no artifact can reach it
    with pytest.raises(EdgertError, match="below its floor .* nothing was kept"):
        convert(src, ["gguf"], "q4_0", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("args,words", [
    (["--to", "mlc"], "unknown target mlc"),
    (["--to", "onnx", "-q", "int3"], "unknown ONNX quant 'int3'"),
    (["-q", "q3_k"], "unknown GGUF quant 'q3_k'"),
])
def test_bad_requests(tmp_path, args, words):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", n_layer=1)
    r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "o"), *args])
    assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output


def test_unsupported_architecture_and_missing_files(tmp_path):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", n_layer=1)
    conf = json.loads((src / "config.json").read_text())
    conf["architectures"] = ["GPTNeoXForCausalLM"]
    (src / "config.json").write_text(json.dumps(conf))
    with pytest.raises(EdgertError, match="GPTNeoXForCausalLM checkpoint; edgert converts LlamaForCausalLM"):
        load_spec(src)
    (src / "config.json").unlink()
    with pytest.raises(EdgertError, match="no config.json"):
        load_spec(src)
    with pytest.raises(EdgertError, match="does not exist"):
        load_spec(tmp_path / "nothing")
