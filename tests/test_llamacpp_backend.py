"""The llama.cpp backend (edgert.devices.llamacpp) behind the Session contract.

llama.cpp gives slightly different numbers for a token evaluated alone and the same token inside
a batch (its matmul paths differ), so incremental-vs-batched checks compare argmaxes (>= 90%
agree) and bound the difference by REL_TOL of the row's largest |logit|; runs that go through the
same batched path (prefix reuse, all_logits rows vs a prefix run) must agree to float noise.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from edgert.devices import llamacpp  # noqa: E402
from edgert.errors import EdgertError, UnsupportedError  # noqa: E402
from edgert.formats.gguf import read_gguf  # noqa: E402

import synth  # noqa: E402

THREADS = 1  # llama.cpp's worker threads spin at barriers: on a shared 2-core machine 2 threads ran 10x slower
REL_TOL = 0.05  # incremental vs batched: max |diff| / max |logit| of the row (measured: 0.004 synth, 0.03 SmolLM2)
TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
        "capital of Germany. Water boils at one hundred degrees Celsius at sea level.")


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def synth_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("llamacpp") / "llama-q8.gguf"
    return synth.write_model(path, "llama", gguf.GGMLQuantizationType.Q8_0)


@pytest.fixture(scope="module")
def synth_session(synth_path):
    return llamacpp.load(read_gguf(synth_path), 128, threads=THREADS)


@pytest.fixture(scope="module")
def smol_session(default_model_path):
    return llamacpp.load(read_gguf(default_model_path), 256, threads=THREADS)


def random_ids(session, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, min(session.n_vocab, 2000), n).astype(np.int64)


# -- availability and imports ---------------------------------------------------------------

def test_available_here():
    assert llamacpp.available() == (True, "")
    assert llamacpp.NAME == "llama.cpp" and llamacpp.EXTRA == "llama"


def test_unavailable_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    ok, why = llamacpp.available()
    assert not ok and "edgert[llama]" in why and "llama-cpp-python" in why


def test_unavailable_via_import_hook(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("no llama_cpp")
        return real(name, *a, **k)

    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)
    ok, why = llamacpp.available()
    assert not ok and "pip install 'edgert[llama]'" in why


def test_import_is_lazy():
    code = "import sys, edgert.devices.llamacpp; assert 'llama_cpp' not in sys.modules, 'imported llama_cpp'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- the session object ---------------------------------------------------------------------

def test_session_attributes(synth_session, synth_path):
    s, g = synth_session, read_gguf(synth_path)
    cfg = s.config
    assert s.backend == "llama.cpp"
    assert (s.n_ctx, s.n_slots, s.threads) == (128, 1, THREADS)
    assert s.n_vocab == cfg.vocab_size == len(synth.byte_vocab()[0])
    assert s.weight_bytes == sum(t.nbytes for t in g.tensors.values())
    kv = 2 * cfg.n_layer * 128 * cfg.n_head_kv * cfg.head_dim * 2
    assert s.memory_bytes > s.weight_bytes + kv


def test_more_slots_refused(synth_path):
    with pytest.raises(EdgertError, match="one sequence slot"):
        llamacpp.load(read_gguf(synth_path), 64, n_slots=2, threads=THREADS)


def test_unknown_option_refused(synth_path):
    with pytest.raises(UnsupportedError, match="bogus"):
        llamacpp.load(read_gguf(synth_path), 64, threads=THREADS, bogus=1)


def test_corrupt_file_says_why(synth_path, tmp_path):
    g = read_gguf(synth_path)
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(synth_path.read_bytes()[:-1000])
    g.path = bad
    with pytest.raises(UnsupportedError, match="not within the file bounds"):
        llamacpp.load(g, 64, threads=THREADS)


def test_bad_positions_and_ids(synth_session):
    s = synth_session
    s.reset()
    s.forward(np.array([1, 2, 3]), 0)
    with pytest.raises(EdgertError, match="gap"):
        s.forward(np.array([4]), 5)
    with pytest.raises(EdgertError, match="context"):
        s.forward(np.array([4, 5]), 127)
    with pytest.raises(EdgertError, match="token ids"):
        s.forward(np.array([s.n_vocab]), 3)
    with pytest.raises(EdgertError, match="slot"):
        s.forward(np.array([4]), 3, slot=1)
    assert s.forward(np.array([4]), 3).shape == (1, s.n_vocab)  # still usable


# -- logits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["synth", "smol"])
def test_incremental_decode_matches_batched(which, request):
    s = request.getfixturevalue(f"{which}_session")
    s.reset()
    prompt = random_ids(s, 12)
    logits = s.forward(prompt, 0)
    assert logits.shape == (1, s.n_vocab) and logits.dtype == np.float32
    seq, rows = list(prompt), [logits[0]]
    for _ in range(10):  # greedy decode, one token at a time
        seq.append(int(rows[-1].argmax()))
        rows.append(s.forward(np.array(seq[-1:]), len(seq) - 1)[0])
    s.reset()
    full = s.forward(np.array(seq), 0, all_logits=True)
    assert full.shape == (len(seq), s.n_vocab) and full.dtype == np.float32
    batched = full[len(prompt) - 1 :]
    agree = np.mean([r.argmax() == b.argmax() for r, b in zip(rows, batched, strict=True)])
    assert agree >= 0.9
    assert max(rel_diff(r, b) for r, b in zip(rows, batched, strict=True)) <= REL_TOL
    np.testing.assert_allclose(full[-1], s.forward(np.array(seq), 0)[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("which", ["synth", "smol"])
def test_prefix_reuse_then_divergence(which, request):
    s = request.getfixturevalue(f"{which}_session")
    a, b = random_ids(s, 20, seed=1), random_ids(s, 20, seed=2)
    b[:8] = a[:8]
    s.reset()
    s.forward(a, 0)
    assert s.n_cached == 20
    reused = s.forward(b[8:], 8, all_logits=True)  # drops a[8:] from the cache, keeps the prefix
    assert s.n_cached == 20
    s.reset()
    fresh = s.forward(b, 0, all_logits=True)[8:]
    np.testing.assert_allclose(reused, fresh, rtol=0, atol=1e-3 * np.abs(fresh).max())
    assert (reused.argmax(-1) == fresh.argmax(-1)).all()
    # and again at a position inside the last run, continuing after it
    s.forward(a[15:], 15)
    s.forward(np.array([a[19]]), 20)
    s.reset()
    ref = s.forward(np.concatenate([b[:15], a[15:], a[19:]]), 0)
    s.reset()
    s.forward(b, 0)
    s.forward(a[15:], 15)
    np.testing.assert_allclose(s.forward(np.array([a[19]]), 20), ref, rtol=0, atol=REL_TOL * np.abs(ref).max())


@pytest.mark.parametrize("which", ["synth", "smol"])
def test_all_logits_rows_are_prefix_logits(which, request):
    s = request.getfixturevalue(f"{which}_session")
    ids = random_ids(s, 16, seed=3)
    s.reset()
    full = s.forward(ids, 0, all_logits=True)
    agree, worst = 0, 0.0
    for k in range(1, len(ids) + 1):
        s.reset()
        last = s.forward(ids[:k], 0)[0]
        agree += last.argmax() == full[k - 1].argmax()
        worst = max(worst, rel_diff(last, full[k - 1]))
    assert agree / len(ids) >= 0.9
    assert worst <= 1e-3  # the same batched path: float noise at most (measured 0.0)


def test_prefix_rebuilt_when_partial_removal_is_refused(synth_path, monkeypatch):
    """Recurrent models refuse to drop part of a sequence: the kept prefix is evaluated again."""
    s = llamacpp.load(read_gguf(synth_path), 64, threads=THREADS)
    a, b = random_ids(s, 12, seed=5), random_ids(s, 12, seed=6)
    b[:6] = a[:6]
    fresh = s.forward(b, 0, all_logits=True)[6:]
    s.reset()
    s.forward(a, 0)
    monkeypatch.setattr(s.llama._ctx, "kv_cache_seq_rm", lambda seq_id, p0, p1: False)
    reused = s.forward(b[6:], 6, all_logits=True)
    assert s.n_cached == 12
    np.testing.assert_allclose(reused, fresh, rtol=0, atol=1e-3 * np.abs(fresh).max())
    s.close()


def test_chunks_of_n_batch(synth_path, synth_session):
    """Runs longer than n_batch go in chunks; every row comes back."""
    small = llamacpp.load(read_gguf(synth_path), 64, threads=THREADS, n_batch=8)
    assert small.n_batch == 8
    ids = random_ids(small, 21, seed=4)
    chunked = small.forward(ids, 0, all_logits=True)
    synth_session.reset()
    whole = synth_session.forward(ids, 0, all_logits=True)
    assert chunked.shape == whole.shape
    assert (chunked.argmax(-1) == whole.argmax(-1)).mean() >= 0.9
    assert max(rel_diff(c, w) for c, w in zip(chunked, whole, strict=True)) <= REL_TOL
    last = small.forward(ids[10:], 10)  # prefix reuse across a chunk boundary
    np.testing.assert_allclose(last[0], chunked[-1], rtol=0, atol=REL_TOL * np.abs(chunked[-1]).max())
    small.close()


def test_agrees_with_cpu_backend(default_model, smol_session):
    ids = np.array(default_model.tokenize(TEXT, add_special=False)[:32], dtype=np.int64)
    assert len(ids) == 32
    ours = default_model.logits(ids)
    smol_session.reset()
    theirs = smol_session.forward(ids, 0, all_logits=True)
    assert ours.shape == theirs.shape
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9
