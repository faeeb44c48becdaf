"""The default model against llama.cpp on the same file, and against a float32 NumPy forward.

Teacher-forced: the same token sequence is evaluated once (batched) by each; we compare the
argmax of the logits at every position and the largest absolute logit difference."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.devices.cpu import model_config
from edgert.formats.gguf import read_gguf

import naive

pytestmark = pytest.mark.model

PROMPTS = [
    "The history of the Roman Empire spans many centuries. It began when Augustus became the first emperor "
    "in 27 BC, and in the west it ended in 476 AD when the last emperor was deposed. During this time the "
    "empire built roads, aqueducts and cities across Europe, North Africa and the Middle East, and Latin "
    "spread as the language of law and government.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n\n\nif __name__ == \"__main__\":\n    for i in range(10):\n"
    "        print(i, fibonacci(i))\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nGive me three tips for staying healthy during winter.<|im_end|>\n<|im_start|>assistant\n"
    "1. Stay active: regular exercise keeps your immune system strong.\n2. Eat a balanced diet with plenty of "
    "fruit and vegetables.\n3. Get enough sleep, at least seven hours a night.<|im_end|>\n",
]
# Floors and bounds. For scale (PERF-NOTES.md): llama.cpp agrees with itself, batched against
# incremental, at ~97% top-1 (max |diff| 1.33), and with a float32 forward at ~97% (max 1.45):
# it quantizes activations to 8 bits, edgert keeps them in float32.
TOP1_FLOOR = 0.95
MAX_ABS_DIFF_LLAMA = 3.0      # edgert vs llama.cpp, logits of SmolLM2 range about +-30
MAX_ABS_DIFF_NAIVE = 0.05     # edgert vs the float32 reference: same arithmetic, another summation order


@pytest.fixture(scope="module")
def sequences(default_model):
    seqs = [default_model.tokenize(p, add_special=False) for p in PROMPTS]
    assert all(len(s) >= 64 for s in seqs), [len(s) for s in seqs]
    return seqs


@pytest.mark.llama
def test_logits_agree_with_llama_cpp(default_model, llama_model, sequences, record_property):
    agree, total, worst = 0, 0, 0.0
    for ids in sequences:
        llama_model.reset()
        llama_model.eval(ids)
        ref = np.asarray(llama_model.scores[: len(ids)], dtype=np.float32)
        got = default_model.logits(ids)
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(got - ref).max()))
    rate = agree / total
    record_property("top1_vs_llama_cpp", rate)
    record_property("max_abs_diff_vs_llama_cpp", worst)
    print(f"edgert vs llama.cpp: top-1 {rate:.3f} over {total} positions, max |diff| {worst:.3f}")
    assert rate >= TOP1_FLOOR
    assert worst <= MAX_ABS_DIFF_LLAMA


def test_logits_agree_with_float32_reference(default_model, default_model_path, sequences):
    g = read_gguf(default_model_path)
    cfg = model_config(g)
    ids = sequences[0][:72]
    ref = naive.forward(g, cfg, ids)
    got = default_model.logits(ids)
    rate = float((got.argmax(1) == ref.argmax(1)).mean())
    worst = float(np.abs(got - ref).max())
    print(f"edgert vs float32 NumPy: top-1 {rate:.3f}, max |diff| {worst:.4f}")
    assert rate >= TOP1_FLOOR
    assert worst <= MAX_ABS_DIFF_NAIVE


@pytest.mark.llama
def test_tokenizer_ids_equal_llama_cpp(default_model, llama_model):
    corpus = PROMPTS + ["  spaces   and\ttabs\n\n", "Ünïcödé café naïve", "日本語のテキスト", "emoji 🚀🎉👍🏽",
                        "12345678901234567890", "x = {'a': [1, 2.5e-3]}"]
    for text in corpus:
        assert default_model.tokenize(text, add_special=False) == llama_model.tokenize(
            text.encode(), add_bos=False, special=True)


QUESTIONS = [("Name the capital of France.", "Paris"), ("Which planet is known as the Red Planet?", "Mars"),
             ("What is the largest ocean on Earth?", "Pacific"), ("What language is spoken in Brazil?", "Portuguese")]


def test_greedy_chat_answers_facts(default_model):
    hits = 0
    for q, want in QUESTIONS:
        g = default_model.generate([{"role": "user", "content": q}], temp=0, max_tokens=48)
        print(f"{q!r} -> {g.text!r}")
        hits += want.lower() in g.text.lower()
    assert hits >= 3
