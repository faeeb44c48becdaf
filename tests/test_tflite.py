"""The TFLite target and the LiteRT backend, on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.converters.reference import hf_logits
from edgert.converters.spec import load_spec
from edgert.errors import EdgertError

import hf_synth

pytest.importorskip("ai_edge_litert")

from edgert.converters.tflite_out import write_tflite  # noqa: E402
from edgert.devices.litert import LiteRTSession, available, is_tflite_folder, load_folder  # noqa: E402

N = 20


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    return {a: load_spec(hf_synth.write_checkpoint(root / a, a)) for a in ("llama", "qwen2", "qwen3")}


@pytest.fixture(scope="module")
def folders(specs, tmp_path_factory):
    root, made = tmp_path_factory.mktemp("tflite_out"), {}

    def get(arch: str, quant: str, max_ctx: int | None = None):
        key = (arch, quant, max_ctx)
        if key not in made:
            made[key] = root / f"{arch}-{quant}-{max_ctx}"
            write_tflite(specs[arch], made[key], quant, max_ctx=max_ctx)
        return made[key]

    return get


def _ids(spec, n=N, seed=1):
    return np.random.default_rng(seed).integers(0, spec.config.vocab_size, n)


def _decode_only(session, ids):
    session.reset()
    return np.concatenate([session.forward(ids[p:p + 1], p) for p in range(len(ids))])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fp32_matches_reference_decode_and_prefill(specs, folders, arch):
    spec = specs[arch]
    ids = _ids(spec)
    ref = hf_logits(spec, ids.tolist())
    s = load_folder(folders(arch, "fp32"), threads=1)
    dec = _decode_only(s, ids)
    assert np.abs(dec - ref).max() / np.abs(ref).max() < 1e-3
    assert (dec.argmax(-1) == ref.argmax(-1)).all()
    # prefill (a padded chunk) then decode equals decode-only
    s.reset()
    pre = s.forward(ids[:13], 0, all_logits=True)
    assert pre.shape == (13, spec.config.vocab_size)
    rest = np.concatenate([s.forward(ids[p:p + 1], p) for p in range(13, N)])
    both = np.concatenate([pre, rest])
    assert np.abs(both - dec).max() / np.abs(dec).max() < 1e-4


@pytest.mark.parametrize("arch,quant,rel", [("llama", "int8", 0.05), ("qwen3", "int8", 0.05), ("qwen2", "fp16", 5e-3),
                                            ("llama", "int4", 0.3)])
def test_quantized_top1(specs, folders, arch, quant, rel):
    spec = specs[arch]
    ids = _ids(spec)
    ref = hf_logits(spec, ids.tolist())
    out = _decode_only(load_folder(folders(arch, quant), threads=1), ids)
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.95
    assert np.abs(out - ref).max() / np.abs(ref).max() < rel


def test_session_contract_and_generation(specs, folders):
    from edgert.devices.onnxrt import read_folder
    from edgert.generate import SlotState, stream_generate
    from edgert.sampling import make_sampler
    from edgert.tokenizer import Tokenizer

    assert available() == (True, "")
    folder = folders("llama", "fp32", 40)  # a small max_ctx: a prompt near the end falls back to decode
    assert is_tflite_folder(folder) and not is_tflite_folder(folder / "model.tflite")
    cfg, meta = read_folder(folder)
    assert cfg == specs["llama"].config
    s = LiteRTSession(folder, cfg, n_ctx=None, threads=1)
    assert (s.backend, s.n_ctx, s.n_vocab, s.n_slots, s.threads) == ("litert", 40, cfg.vocab_size, 1, 1)
    assert s.memory_bytes > s.weight_bytes > 0
    with pytest.raises(EdgertError, match="n_ctx 64"):
        LiteRTSession(folder, cfg, n_ctx=64)

    tok = Tokenizer.from_gguf_meta(meta)
    prompt = _ids(specs["llama"], 30, seed=2).tolist()
    state = SlotState()
    got = [r.token for r in stream_generate(s, tok, state, prompt, make_sampler(temp=0), max_tokens=6,
                                            ignore_eos=True) if r.token is not None]
    want, seq = [], list(prompt)
    for _ in range(6):  # greedy from the float reference
        want.append(int(hf_logits(specs["llama"], seq)[-1].argmax()))
        seq.append(want[-1])
    assert got == want
    # past the cache end and a rewind: positions beyond the new end are never attended
    with pytest.raises(EdgertError, match="do not follow"):
        s.forward(np.array([1]), 60)
    last = s.forward(np.asarray(prompt[20:]), 20, all_logits=True)
    ref = hf_logits(specs["llama"], prompt)
    assert np.abs(last - ref[20:]).max() / np.abs(ref).max() < 1e-3


def test_int4_packing_and_bad_quant(specs, tmp_path):
    from edgert.converters.tflite_out import _int_rows, tflite_quant

    w = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    packed, scale = _int_rows(w, 4)
    lo, hi = (packed & 0xF).astype(np.int8), (packed >> 4).astype(np.int8)
    codes = np.empty((3, 8), np.int8)
    codes[:, 0::2], codes[:, 1::2] = np.where(lo > 7, lo - 16, lo), np.where(hi > 7, hi - 16, hi)
    assert np.abs(codes * scale[:, None] - w).max() <= scale.max() / 2 + 1e-6
    assert [tflite_quant(q) for q in ("q4", "Q8_0", "f16", "fp32")] == ["int4", "int8", "fp16", "fp32"]
    with pytest.raises(EdgertError, match="unknown TFLite quant"):
        write_tflite(specs["llama"], tmp_path, "q3_weird")
    assert not (tmp_path / "model.tflite").exists()


def test_convert_to_every_target_in_one_run(tmp_path):
    """`edgert convert --to gguf,onnx,tflite`: one command, each artifact checked, each runnable."""
    pytest.importorskip("onnxruntime")
    import edgert
    from edgert.converters.convert import convert

    import hf_synth

    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama")
    rows = convert(src, ["gguf", "onnx", "tflite"], "f16", tmp_path / "out")
    assert [r["target"] for r in rows] == ["gguf", "onnx", "tflite"]
    assert all(r["top1"] >= 0.97 for r in rows)
    m = edgert.load(str(tmp_path / "out" / "tflite"))
    assert m.backend == "litert" and m.generate("hi", temp=0, max_tokens=3, ignore_eos=True).generation_tokens == 3


@pytest.mark.model
@pytest.mark.slow
def test_default_model_to_tflite_int8(default_model_path, tmp_path):
    import json

    from edgert.converters.convert import convert

    for quant, floor in (("int8", 0.95), ("int4", 0.85)):
        (row,) = convert(default_model_path, ["tflite"], quant, tmp_path / quant)
        parity = json.loads((tmp_path / quant / "tflite" / "parity.json").read_text())
        assert parity["passed"] and parity["top1_agreement"] >= floor and parity["positions"] >= 64


def test_int4_is_block_wise(tmp_path):
    """int4 codes in 32-value blocks with their own scale and offset: a Q4_1-style block is exact,
    so int4 follows the float model far closer than one scale per row could."""
    import json

    from edgert.converters.convert import convert

    import hf_synth

    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "qwen2", tied=False)
    (row,) = convert(src, ["tflite"], "q4", tmp_path / "out")
    parity = json.loads((tmp_path / "out" / "tflite" / "parity.json").read_text())
    assert row["quant"] == "int4" and parity["top1_agreement"] >= 0.95
