"""The memory plan, budgets, KV cache precisions and the backend registry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

import edgert
from edgert.cli import cli
from edgert.devices import get_backend
from edgert.devices.cpu import model_config
from edgert.devices.plan import parse_size, plan_memory
from edgert.errors import EdgertError
from edgert.formats.gguf import read_gguf

import synth

PLAN_TOLERANCE = 0.15  # measured peak resident memory within 15% of the plan's total


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth.write_model(tmp_path_factory.mktemp("p") / "tiny.gguf", "llama", T.Q8_0, n_layer=2)


@pytest.mark.parametrize("text,bytes_", [("1.5GiB", 3 << 29), ("800MB", 800_000_000), ("2G", 2 << 30),
                                         ("512m", 512 << 20), ("1000", 1000), (4096, 4096)])
def test_parse_size(text, bytes_):
    assert parse_size(text) == bytes_


def test_parse_size_rejects_nonsense():
    with pytest.raises(EdgertError, match="cannot read the size"):
        parse_size("lots")


def test_plan_json_fields(tiny):
    r = CliRunner().invoke(cli, ["plan", str(tiny), "--json", "--ctx", "256"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    for key in ("weights_bytes", "kv_bytes", "scratch_bytes", "overhead_bytes", "total_bytes", "budget_bytes",
                "fits", "max_ctx", "predicted_decode_tps"):
        assert key in p
    assert p["total_bytes"] == p["weights_bytes"] + p["kv_bytes"] + p["scratch_bytes"] + p["overhead_bytes"]
    assert p["fits"] and p["max_ctx"] == 512  # the synthetic model is trained for 512


def test_kv_bytes_scale_with_type_and_ctx(tiny):
    g = read_gguf(tiny)
    cfg = model_config(g)
    sizes = {kv: plan_memory(g, cfg, n_ctx=512, kv_type=kv).kv_bytes for kv in ("f32", "f16", "q8_0")}
    assert sizes["f32"] == 2 * sizes["f16"] and sizes["q8_0"] == sizes["f32"] * 1.125 / 4
    assert plan_memory(g, cfg, n_ctx=256, kv_type="f32").kv_bytes * 2 == sizes["f32"]


def test_budget_refuses_before_loading(tiny):
    with pytest.raises(EdgertError, match=r"needs \d+ MiB .* budget \(--budget\) is \d+ MiB"):
        edgert.load(str(tiny), budget="50MB")
    r = CliRunner().invoke(cli, ["run", str(tiny), "hi", "--budget", "50MB"])
    assert r.exit_code == 1 and "budget" in r.output and "Traceback" not in r.output


def test_ctx_auto_takes_the_largest_context_that_fits(default_model_path):
    g = read_gguf(default_model_path)
    cfg = model_config(g)
    full = plan_memory(g, cfg, n_ctx=8192, kv_type="f32")
    budget = full.total_bytes - full.kv_bytes // 2  # room for about half the trained context
    p = plan_memory(g, cfg, n_ctx="auto", kv_type="f32", budget=budget)
    assert 2048 <= p.n_ctx < 8192 and p.n_ctx % 256 == 0 and p.fits
    assert not plan_memory(g, cfg, n_ctx=p.n_ctx + 256, kv_type="f32", budget=budget).fits
    m = edgert.load(str(default_model_path), n_ctx="auto", budget=budget, kv_type="f32")
    assert m.n_ctx == p.n_ctx


def test_device_profiles_set_the_budget(default_model_path):
    g = read_gguf(default_model_path)
    cfg = model_config(g)
    p = plan_memory(g, cfg, device="android-6gb", n_ctx=2048)
    assert p.budget_bytes < 6 << 30 and p.fits and p.predicted_decode_tps > 0
    with pytest.raises(EdgertError, match="known"):
        plan_memory(g, cfg, device="no-such-phone")


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_kv_precision_close_to_f32(tiny, kv):
    ids = list(range(5, 45))
    ref = edgert.load(str(tiny), n_ctx=64, kv_type="f32").logits(ids)
    got = edgert.load(str(tiny), n_ctx=64, kv_type=kv).logits(ids)
    tol = {"f16": 0.01, "q8_0": 0.05}[kv]  # of the logit range: half floats, then 8-bit blocks
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


QUESTIONS = [("Name the capital of France.", "Paris"), ("Which planet is known as the Red Planet?", "Mars"),
             ("What is the largest ocean on Earth?", "Pacific"), ("What language is spoken in Brazil?", "Portuguese")]


@pytest.mark.model
def test_q8_0_kv_cache_keeps_the_facts(default_model_path):
    m = edgert.load(str(default_model_path), n_ctx=512, kv_type="q8_0")
    hits = sum(want in m.generate([{"role": "user", "content": q}], temp=0, max_tokens=40).text
               for q, want in QUESTIONS)
    assert hits >= 3


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("kv", ["f32", "f16", "q8_0"])
def test_plan_is_true(default_model_path, kv):
    """Peak resident memory of a real `edgert run` against the plan's total, across contexts."""
    prompt = "The quick brown fox jumps over the lazy dog. " * 40  # past the BLAS prefill threshold
    for ctx in (512, 8192):
        p = subprocess.run([sys.executable, "-m", "edgert.cli", "run", str(default_model_path), prompt, "-n", "4",
                            "--ctx", str(ctx), "--kv-type", kv, "--json"], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        ratio = out["peak_rss_bytes"] / out["planned_bytes"]
        print(f"kv {kv} ctx {ctx}: plan {out['planned_bytes'] >> 20} MiB, peak {out['peak_rss_bytes'] >> 20} MiB, "
              f"ratio {ratio:.3f}")
        assert abs(ratio - 1) <= PLAN_TOLERANCE


def test_backend_registry_errors(monkeypatch):
    with pytest.raises(EdgertError, match="unknown backend 'tpu'; edgert has cpu, llama.cpp"):
        get_backend("tpu")
    from edgert.devices import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: (False, llamacpp.NOT_INSTALLED))
    with pytest.raises(EdgertError, match=r"pip install 'edgert\[llama\]'; usable backends: cpu"):
        get_backend("llama.cpp")
    assert get_backend("auto").NAME == "cpu"  # this host is a generic x86 machine


def test_llama_cpp_backend_through_the_cli(tiny):
    pytest.importorskip("llama_cpp")
    r = CliRunner().invoke(cli, ["run", str(tiny), "hello", "--backend", "llama.cpp", "-n", "3", "--temp", "0",
                                 "--json", "--ignore-eos"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["backend"] == "llama.cpp" and out["tokens"] == 3 and out["kv_type"] == "f16"


def test_devices_json():
    r = CliRunner().invoke(cli, ["devices", "--json"])
    d = json.loads(r.stdout)
    assert d["host"]["logical_cores"] >= 1
    names = {p["name"] for p in d["profiles"]}
    assert {"raspberry-pi-5-8gb", "jetson-orin-nano-8gb", "iphone-8gb", "android-6gb"} <= names
