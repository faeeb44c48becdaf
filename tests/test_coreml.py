"""The Core ML target on Linux: the program converts and validates, has the expected interface,
state and operators, shrinks with its quantization, and its NumPy evaluation follows the source.
(Core ML's own runtime needs macOS; the backend says so in one sentence.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgert
from edgert.converters.convert import convert
from edgert.converters.reference import hf_logits
from edgert.converters.spec import load_spec
from edgert.errors import EdgertError

import hf_synth

pytest.importorskip("coremltools")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_converts_with_parity_and_interface(tmp_path, arch):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", arch, tied=arch != "qwen2")
    (row,) = convert(src, ["coreml"], "fp16", tmp_path / "out")
    folder = tmp_path / "out" / "coreml"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["structure_ok"] and parity["top1_agreement"] >= 0.97
    assert "macOS" in parity["not_run"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["states"] == ["key_cache", "value_cache"] and manifest["deployment_target"].startswith("iOS18")
    assert {"read_state", "write_state", "slice_update", "linear", "softmax"} <= set(manifest["ops"])
    assert (folder / "model.mlpackage").is_dir() and (folder / "tokenizer.json").exists()


def test_quantization_shrinks_the_weights(tmp_path):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama")
    sizes = {}
    for quant in ("fp16", "int8", "int4"):
        (row,) = convert(src, ["coreml"], quant, tmp_path / quant)
        sizes[quant] = sum(p.stat().st_size for p in (tmp_path / quant / "coreml" / "model.mlpackage").rglob("*")
                           if p.is_file())
    assert sizes["int8"] < 0.65 * sizes["fp16"] and sizes["int4"] < 0.65 * sizes["int8"]


def test_state_carries_the_cache_between_calls(tmp_path):
    from edgert.converters.coreml_out import Evaluator, build_program
    from edgert.devices.coreml import causal_mask

    spec = load_spec(hf_synth.write_checkpoint(tmp_path / "ckpt", "qwen3"))
    ids = list(range(10, 40))
    ev = Evaluator(build_program(spec, 64)[0])  # the program as built; the converted one in test above
    first = ev(input_ids=np.asarray([ids[:20]], np.int32), causal_mask=causal_mask(20, 20))[0]
    rest = [ev(input_ids=np.asarray([[t]], np.int32), causal_mask=causal_mask(1, 21 + i))[0]
            for i, t in enumerate(ids[20:])]
    got = np.concatenate([first, *rest])
    ref = hf_logits(spec, ids)
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max() + 0.05  # half-float KV state


def test_backend_says_it_needs_macos(tmp_path):
    src = hf_synth.write_checkpoint(tmp_path / "ckpt", "llama", n_layer=1)
    (row,) = convert(src, ["coreml"], "fp16", tmp_path / "out")
    import platform

    if platform.system() == "Darwin":
        pytest.skip("on macOS the package runs")
    with pytest.raises(EdgertError, match="Core ML predicts only on macOS and iOS"):
        edgert.load(row["artifact"])


@pytest.mark.model
@pytest.mark.slow
def test_default_model_to_coreml_int4(default_model_path, tmp_path):
    (row,) = convert(default_model_path, ["coreml"], "int4", tmp_path / "out")
    folder = tmp_path / "out" / "coreml"
    parity = json.loads((folder / "parity.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert parity["structure_ok"] and parity["passed"] and parity["top1_agreement"] >= 0.85
    assert "constexpr_blockwise_shift_scale" in manifest["ops"]  # the weights really are 4-bit blocks
