"""Tokenizer and streaming detokenizer, measured against llama.cpp (llama-cpp-python) on the same GGUF."""

from __future__ import annotations

import functools
import logging
import random

import pytest

from edgert.errors import ModelFileError, UnsupportedError
from edgert.tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, StreamDetokenizer, Tokenizer

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "numbers 1234567 and 3.14159, 1e-10, $100.00, 2024-01-31",
    "whitespace  runs   and    tabs\t\tand\nnewlines\n\n\n",
    "   leading and trailing   ",
    "\r\n\r\n  \n \t",
    "I'm sure they'll say it's fine; WE'RE, YOU'VE, she'd",
    "café naïve Ångström façade Straße",
    "日本語のテキスト 你好世界 한국어",
    "emoji 👋🏽 🇫🇷 👨‍👩‍👧 ✨🚀",
    "مرحبا بالعالم नमस्ते दुनिया",
    "def f(x):\n    return x**2  # square\n\nprint(f(3) == 9)\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] << 2; }",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>",
    "a<|im_start|><|im_end|>b",
    "!!! ??? ... --- ' ' 's camelCaseWord HTTPServer https://x.org/a?b=c",
    "\u00a0non-breaking\u2003em space \u200bzero width",
    "٣٤٥ ①②③ Ⅻ",
    "",
]


@functools.cache
def _tokenizer(path: str) -> Tokenizer:
    return Tokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def _oracles():
    cache: dict = {}
    yield cache
    for llm in cache.values():
        llm.close()


@pytest.fixture
def tok(default_model_path) -> Tokenizer:
    return _tokenizer(str(default_model_path))


@pytest.fixture
def oracle(default_model_path, _oracles):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = str(default_model_path)
    if path not in _oracles:
        _oracles[path] = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return _oracles[path]


def _stream(tokenizer: Tokenizer, ids, skip_special=False) -> list[str]:
    sd = StreamDetokenizer(tokenizer, skip_special=skip_special)
    return [sd.add(i) for i in ids] + [sd.flush()]


# -- default model (byte-level BPE, pre 'smollm') -------------------------------------------------------

@pytest.mark.model
def test_default_model_facts(tok):
    assert tok.kind == "bpe" and tok.pre == "smollm"
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 2, False, False)
    im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert tok.stop_ids == frozenset({im_end, eot})
    assert tok.token_to_id("<|im_start|>") in tok.special_ids
    assert "<|im_start|>" in tok.chat_template


@pytest.mark.model
@pytest.mark.llama
@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_llama_cpp(tok, oracle, text):
    assert tok.encode(text, add_special=False) == oracle.tokenize(text.encode(), add_bos=False, special=True)
    assert tok.encode(text, add_special=False, parse_special=False) == oracle.tokenize(
        text.encode(), add_bos=False, special=False)
    assert tok.encode(text) == oracle.tokenize(text.encode(), add_bos=True, special=True)


@pytest.mark.model
@pytest.mark.llama
@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_llama_cpp(tok, oracle, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == oracle.detokenize(ids, special=True).decode("utf-8", errors="replace")
    assert tok.decode(ids, skip_special=True) == oracle.detokenize(ids).decode("utf-8", errors="replace")


@pytest.mark.model
@pytest.mark.parametrize("text", CORPUS)
def test_round_trip_and_hf_decoder_agree(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.hf.decode(ids, skip_special_tokens=False) == text
    plain = tok.encode(text, parse_special=False)
    assert tok.decode(plain) == text
    assert not set(plain) & tok.special_ids


@pytest.mark.model
def test_special_tokens_parse(tok):
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == start and ids[-1] == end
    assert start not in tok.encode("<|im_start|>", parse_special=False)
    assert tok.decode(ids, skip_special=True) == "user\nhi"


# -- streaming detokenizer -----------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.parametrize("text", CORPUS)
def test_stream_equals_decode(tok, text):
    ids = tok.encode(text)
    for skip in (False, True):
        pieces = _stream(tok, ids, skip)
        assert "".join(pieces) == tok.decode(ids, skip_special=skip)
        assert not any("\ufffd" in p for p in pieces)  # valid text is never split mid-character


@pytest.mark.model
def test_stream_holds_back_partial_characters(tok):
    ids = tok.encode("👋🏽")
    assert len(ids) > 2  # byte-level BPE splits the emoji across tokens
    pieces = _stream(tok, ids)
    assert "".join(pieces) == "👋🏽"
    assert "" in pieces[:-1]


@pytest.mark.model
def test_stream_random_tokens_and_broken_bytes(tok):
    """Any id sequence, including ones that spell invalid UTF-8, streams to exactly `decode`."""
    rng = random.Random(0)
    byte_ids = [i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1 and tok.token_bytes(i)[0] > 127]
    assert len(byte_ids) > 60
    for _ in range(200):
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randint(0, 30))]
        for skip in (False, True):
            assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


@pytest.mark.model
def test_stream_is_cheap_per_token(tok):
    import time

    ids = tok.encode("Streaming 日本語 and emoji 👋 in code: x = [i**2 for i in range(10)]\n" * 200)
    sd = StreamDetokenizer(tok)
    t0 = time.perf_counter()
    text = "".join(sd.add(i) for i in ids) + sd.flush()
    assert text == tok.decode(ids)
    assert (time.perf_counter() - t0) / len(ids) < 1e-4


def test_stream_rejects_bad_ids():
    t = Tokenizer.from_gguf_meta(_spm_meta())
    with pytest.raises(ValueError):
        StreamDetokenizer(t).add(-1)
    with pytest.raises(ValueError):
        t.decode([t.vocab_size])


# -- BPE pre-tokenizer families against llama.cpp, on the default vocabulary --------------------------

def _write_gguf(path, kv: list[tuple[str, object]]) -> None:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for fn, value in [("add_context_length", 64), ("add_embedding_length", 8), ("add_block_count", 1),
                      ("add_feed_forward_length", 16), ("add_head_count", 1), ("add_head_count_kv", 1),
                      ("add_layer_norm_rms_eps", 1e-5), *kv]:
        getattr(w, fn)(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.model
@pytest.mark.llama
@pytest.mark.parametrize("pre", ["gpt-2", "default", "llama-bpe", "qwen2", "gpt-4o", "falcon", "starcoder"])
def test_pre_tokenizers_match_llama_cpp(default_model_path, tmp_path, pre):
    llama_cpp = pytest.importorskip("llama_cpp")
    smollm = _tokenizer(str(default_model_path))
    m = {k: v for k, v in _meta(str(default_model_path)).items() if k.startswith("tokenizer.ggml.")}
    path = tmp_path / f"{pre}.gguf"
    _write_gguf(path, [("add_tokenizer_model", "gpt2"), ("add_tokenizer_pre", pre),
                       ("add_token_list", m["tokenizer.ggml.tokens"]),
                       ("add_token_types", m["tokenizer.ggml.token_type"]),
                       ("add_token_merges", m["tokenizer.ggml.merges"]), ("add_bos_token_id", 1),
                       ("add_eos_token_id", 2), ("add_add_bos_token", False)])
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    t = Tokenizer.from_gguf(path)
    assert t.pre == pre
    try:
        for text in CORPUS:
            assert t.encode(text) == llm.tokenize(text.encode(), add_bos=True, special=True), text
    finally:
        llm.close()
    sample = "x 1234567 a+b"  # the families split this differently; starcoder splits like smollm
    differs = t.hf.pre_tokenizer.pre_tokenize_str(sample) != smollm.hf.pre_tokenizer.pre_tokenize_str(sample)
    assert differs == (pre != "starcoder")


@functools.cache
def _meta(path: str) -> dict:
    from edgert.formats.gguf import read_gguf

    return read_gguf(path).meta


def test_unknown_pre_falls_back_to_gpt2_with_warning(caplog):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ"], "tokenizer.ggml.merges": ["a b"]}
    with caplog.at_level(logging.WARNING, logger="edgert.tokenizer"):
        t = Tokenizer.from_gguf_meta(meta)
    assert "no-such-pre" in caplog.text
    assert t.encode("ab a") == [2, 3, 0]
    assert t.decode([2, 3, 0]) == "ab a"


def test_unsupported_and_bad_vocabularies():
    with pytest.raises(UnsupportedError, match="'bert'"):
        Tokenizer.from_gguf_meta({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ModelFileError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf_meta({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(ModelFileError, match="token types"):
        Tokenizer.from_gguf_meta({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a", "b"],
                                  "tokenizer.ggml.token_type": [1]})


# -- SentencePiece-style ('llama') vocabulary ------------------------------------------------------------

_PIECES = ["▁t", "he", "▁the", "in", "▁in", "ing", "er", "▁w", "or", "▁wor", "ld", "▁world", "▁h", "el", "ll",
           "hel", "hell", "hello", "▁hello", "lo", "▁a", "an", "▁an", "nd", "and", "▁and", "▁▁", "▁▁▁▁", "日本",
           "▁H", "▁He", "llo", "▁Hello", "es", "st", "▁te", "▁test", "ca", "caf", "▁ca", "▁café"]
_CHARS = "▁abcdefghijklmnopqrstuvwxyzHWT.,!?'日本語0123456789"
SPM_CORPUS = ["Hello world", "hello the world and the test", "  leading spaces", "tabs\tand\nnewlines\n",
              "café 日本語 ü 👋", "<|user|>hi<|end|> the", "<s>the</s>", "", " ", "a", "Hello<|end|>",
              "the  the   the", "1234 5.6!", "hello hello hellohello"]


def _spm_meta(add_space_prefix: bool = True) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    for i, piece in enumerate(_PIECES):  # merged pieces outrank single characters, as in real vocabularies
        tokens.append(piece), types.append(NORMAL), scores.append(-float(i))
    for i, ch in enumerate(_CHARS):
        tokens.append(ch), types.append(NORMAL), scores.append(-1000.0 - i)
    tokens += ["<|user|>", "<|end|>"]
    types += [USER_DEFINED, CONTROL]
    scores += [0.0, 0.0]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_space_prefix": add_space_prefix}


def test_spm_encodes_by_score_with_byte_fallback():
    t = Tokenizer.from_gguf_meta(_spm_meta())
    assert t.kind == "spm" and t.add_bos and t.add_space_prefix
    pieces = [t.token_text(i) for i in t.encode("Hello world, hello!")]
    # merges go by score, not longest match: 'el' outranks '▁H' + 'e', so '▁Hello' is never reached
    assert pieces == ["<s>", "▁H", "el", "lo", "▁world", ",", "▁hello", "!"]
    assert [t.token_text(i) for i in t.encode("ü", add_special=False)] == ["▁", "<0xC3>", "<0xBC>"]
    assert [t.token_text(i) for i in t.encode("<|user|>the<|end|>", add_special=False)] == [
        "<|user|>", "▁the", "<|end|>"]
    assert t.stop_ids == frozenset({2, t.token_to_id("<|end|>")})
    no_prefix = Tokenizer.from_gguf_meta(_spm_meta(add_space_prefix=False))
    assert [no_prefix.token_text(i) for i in no_prefix.encode("the", add_special=False)] == ["t", "he"]


@pytest.mark.parametrize("text", SPM_CORPUS)
@pytest.mark.parametrize("prefix", [True, False])
def test_spm_decode_and_stream(text, prefix):
    t = Tokenizer.from_gguf_meta(_spm_meta(prefix))
    ids = t.encode(text)
    assert t.decode(ids) == t.hf.decode(ids, skip_special_tokens=False)
    assert t.decode(ids, skip_special=True) == t.hf.decode(ids, skip_special_tokens=True)
    if "<" not in text:
        assert t.decode(ids, skip_special=True) == text
    for skip in (False, True):
        assert "".join(_stream(t, ids, skip)) == t.decode(ids, skip_special=skip)


@pytest.mark.llama
@pytest.mark.parametrize("prefix", [True, False])
def test_spm_matches_llama_cpp(tmp_path, prefix):
    llama_cpp = pytest.importorskip("llama_cpp")
    m = _spm_meta(prefix)
    path = tmp_path / "spm.gguf"
    _write_gguf(path, [("add_tokenizer_model", "llama"), ("add_token_list", m["tokenizer.ggml.tokens"]),
                       ("add_token_types", m["tokenizer.ggml.token_type"]),
                       ("add_token_scores", m["tokenizer.ggml.scores"]), ("add_bos_token_id", 1),
                       ("add_eos_token_id", 2), ("add_unk_token_id", 0), ("add_add_bos_token", True),
                       ("add_add_space_prefix", prefix)])
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    t = Tokenizer.from_gguf(path)
    try:
        _compare_spm(t, llm, prefix)
    finally:
        llm.close()


def _compare_spm(t: Tokenizer, llm, prefix: bool) -> None:
    for text in SPM_CORPUS:
        for special in (True, False):
            assert t.encode(text, parse_special=special) == llm.tokenize(
                text.encode(), add_bos=True, special=special), (text, special)
        ids = t.encode(text)
        assert t.decode(ids) == llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        if prefix:  # llama-cpp-python strips the prefix space only after BOS, which is HF's result too
            assert t.decode(ids, skip_special=True) == llm.detokenize(ids).decode("utf-8", errors="replace")
