"""Samplers, stop rules, prefix reuse and the context guard, on a synthetic model."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import edgert
from edgert.conversation import Conversation
from edgert.sampling import make_logits_processors, make_sampler

import synth


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    p = synth.write_model(tmp_path_factory.mktemp("g") / "m.gguf", "llama", T.Q8_0, n_layer=1)
    return edgert.load(str(p), n_ctx=128)


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -1.0, 2.9], np.float32)
    assert make_sampler(0.0)(logits) == 1


def test_seeded_sampling_is_reproducible_and_respects_top_k():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    a = [make_sampler(1.0, top_k=5, seed=7)(logits) for _ in range(3)]
    s1, s2 = make_sampler(1.0, top_k=5, seed=7), make_sampler(1.0, top_k=5, seed=7)
    draws1 = [s1(logits) for _ in range(50)]
    assert draws1 == [s2(logits) for _ in range(50)]
    top5 = set(np.argsort(logits)[-5:].tolist())
    assert set(draws1) <= top5 and set(a) <= top5


def test_top_p_and_min_p_cut_the_tail():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s = make_sampler(1.0, top_p=0.7, seed=1)
    assert {s(logits) for _ in range(200)} == {0, 1}
    s = make_sampler(1.0, min_p=0.5, top_k=0, seed=1)
    assert {s(logits) for _ in range(200)} == {0, 1}


def test_repetition_penalty():
    (p,) = make_logits_processors(2.0)
    out = p([0, 2], np.array([4.0, 4.0, -1.0], np.float32))
    np.testing.assert_array_equal(out, [2.0, 4.0, -2.0])


def test_max_tokens_and_ignore_eos(model):
    g = model.generate("hello", temp=0, max_tokens=7, ignore_eos=True)
    assert g.generation_tokens == 7 and g.finish_reason == "length"


def test_stream_pieces_join_to_generate(model):
    pieces = [r.text for r in model.stream("the cat", temp=0, max_tokens=20, ignore_eos=True)]
    assert "".join(pieces) == model.generate("the cat", temp=0, max_tokens=20, ignore_eos=True).text


def test_stop_string_cuts_the_text(model):
    full = model.generate("abc", temp=0, max_tokens=30, ignore_eos=True).text
    assert len(full) > 6
    stop = full[3:6]
    g = model.generate("abc", temp=0, max_tokens=30, ignore_eos=True, stop=[stop])
    assert g.finish_reason == "stop" and g.text == full[: full.find(stop)]


def test_prefix_reuse_gives_the_same_tokens(model):
    """A second prompt sharing a prefix reuses its cache and decodes what a cold run decodes."""
    cold = model.generate("the quick brown fox", temp=0, max_tokens=10, ignore_eos=True).text
    model.generate("the quick", temp=0, max_tokens=3, ignore_eos=True)
    rs = list(model.stream("the quick brown fox", temp=0, max_tokens=10, ignore_eos=True))
    assert rs[-1].cached_tokens > 0
    assert "".join(r.text for r in rs) == cold


def test_generation_stops_at_the_context_end(model):
    rs = list(model.stream("hi", temp=0, max_tokens=10_000, ignore_eos=True))
    assert rs[-1].finish_reason == "length"
    assert rs[-1].generation_tokens <= model.n_ctx


def test_conversation_drops_oldest_turns(model):
    conv = Conversation(model, system="be brief", reserve=32)
    for i in range(30):
        conv.add_user(f"message number {i} " * 3)
        conv.add_assistant("ok " * 5)
    dropped = conv.add_user("last question")
    assert dropped > 0
    assert conv.messages[0]["role"] == "system"
    assert len(model.encode_prompt(conv.messages)) <= model.n_ctx - 32
    assert model.generate(conv.messages, temp=0, max_tokens=8).generation_tokens >= 1
