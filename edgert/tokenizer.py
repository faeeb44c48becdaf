"""GGUF vocabulary -> `tokenizers.Tokenizer`, mirroring llama.cpp's llama-vocab.cpp; streaming detokenizer.

Encoding runs in the `tokenizers` library (Rust). Decoding joins per-token byte strings taken
from the vocabulary once (what llama.cpp's `token_to_piece` returns), so `decode` and the
streaming detokenizer agree byte for byte and a streamed token costs one table look-up.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import ModelFileError, UnsupportedError

logger = logging.getLogger(__name__)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes, copied from llama.cpp's llm_tokenizer_bpe. Each is applied in turn
# to the pieces the previous one produced, every match kept as its own piece.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PUNCT = r"[\p{P}\$\+<=>\^~\|]+"
_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "gpt4o": (_GPT4O,),
    "falcon": (_PUNCT, _GPT2, "[0-9][0-9][0-9]"),
    "default": (_PUNCT, _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
}
# tokenizer.ggml.pre -> regex family, as llama.cpp groups them
_PRE_FAMILY = {
    "default": "default", "falcon": "falcon", "qwen35": "qwen35",
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "gigachat", "exaone4",
                     "jina-es", "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    "smollm"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "chatglm-bpe"),
                    "llama3"),
    **dict.fromkeys(("qwen2", "stablelm2", "megrez"), "qwen2"),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2"), "gpt4o"),
}
# llama.cpp: these pre types match whole words against the vocabulary first and add BOS by default
_IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3"})
# llama.cpp's end-of-generation tokens found by their text (FIM pad/repo/file-separator included)
_END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
                "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
                "<|fim_pad|>", "<|fim_repo|>", "<|repo_name|>", "<|file_sep|>")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _spm_merges(tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges from a SentencePiece vocabulary: every split of a piece into two pieces,
    ranked by the merged piece's score (tokenizers' SentencePieceExtractor)."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED, UNUSED)}
    ranked = []
    for piece, i in vocab.items():
        local = [(vocab[piece[:k]], vocab[piece[k:]]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        ranked.extend((-scores[i], left, right) for left, right in sorted(local))
    ranked.sort(key=lambda r: r[0])  # stable: equal scores keep vocabulary order
    return [(tokens[left], tokens[right]) for _, left, right in ranked]


def _meta_id(meta: dict[str, Any], key: str, n: int, default: int | None) -> int | None:
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is None:
        return default
    if not 0 <= int(value) < n:
        logger.warning("ignoring tokenizer.ggml.%s = %s: outside the vocabulary of %d tokens", key, value, n)
        return default
    return int(value)


class Tokenizer:
    """A GGUF vocabulary: encode text to ids and ids back to text, as llama.cpp does."""

    def __init__(self, meta: dict[str, Any]):
        model = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model not in ("gpt2", "llama"):
            raise UnsupportedError(
                f"GGUF tokenizer model {model!r} is not supported; edgert reads 'gpt2' (byte-level BPE) "
                "and 'llama' (SentencePiece) vocabularies, so use a model that has one of those.")
        if not tokens:
            raise ModelFileError("the GGUF file has no tokenizer.ggml.tokens; re-convert the model with its "
                                 "tokenizer.")
        n = len(tokens)
        types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)
        if len(types) != n:
            raise ModelFileError(f"the GGUF file has {len(types)} token types for {n} tokens; re-convert the "
                                 "model.")
        self.kind = "bpe" if model == "gpt2" else "spm"
        self.pre = str(meta.get("tokenizer.ggml.pre") or "default") if self.kind == "bpe" else None
        if self.kind == "bpe" and not meta.get("tokenizer.ggml.pre"):
            logger.warning("the GGUF file names no tokenizer.ggml.pre; using llama.cpp's 'default' splitting")
        for i, text in enumerate(tokens):  # llama.cpp forces end-of-turn tokens to control
            if text in _END_OF_TURN and types[i] != CONTROL:
                types[i] = CONTROL
        self._tokens = tokens
        self._types = types
        spm = self.kind == "spm"
        self.bos_id = _meta_id(meta, "bos_token_id", n, 1 if spm else None)
        self.eos_id = _meta_id(meta, "eos_token_id", n, 2 if spm else None)
        self.eot_id = _meta_id(meta, "eot_token_id", n, None)
        self.eom_id = _meta_id(meta, "eom_token_id", n, None)
        self.unk_id = _meta_id(meta, "unknown_token_id", n, 0 if spm else None)
        self.pad_id = _meta_id(meta, "padding_token_id", n, None)
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spm or self.pre in _IGNORE_MERGES))
        self.add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = spm and bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        self.chat_template: str | None = meta.get("tokenizer.chat_template") or None
        stops = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        stops.update(i for i, t in enumerate(tokens) if t in _END_OF_TURN)
        self.stop_ids = frozenset(stops)
        self.special_ids = frozenset(i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN))
        self._hf = self._build_spm(meta) if spm else self._build_bpe(meta)
        self._hf_plain: HFTokenizer | None = None
        self._pieces, self._pieces_skip = self._piece_tables()

    @classmethod
    def from_gguf_meta(cls, meta: dict[str, Any]) -> Tokenizer:
        return cls(meta)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        from .formats.gguf import read_gguf

        return cls(read_gguf(path).meta)

    # -- building -------------------------------------------------------------------------------------

    def _build_bpe(self, meta: dict[str, Any]) -> HFTokenizer:
        family = _PRE_FAMILY.get(self.pre or "")
        if family is None:
            logger.warning("unknown tokenizer.ggml.pre %r: splitting words with the GPT-2 regex, so token "
                           "ids may differ from the model's own tokenizer", self.pre)
            family = "gpt2"
        merges = []
        for m in meta.get("tokenizer.ggml.merges") or []:
            cut = m.find(" ", 1)
            if cut > 0:
                merges.append((m[:cut], m[cut + 1:]))
        vocab = self._vocab()
        try:
            model = models.BPE(vocab, merges, ignore_merges=self.pre in _IGNORE_MERGES)
        except Exception as e:
            raise ModelFileError(f"the GGUF tokenizer merges do not match its vocabulary ({e}); re-convert "
                                 "the model.") from e
        hf = HFTokenizer(model)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _REGEXES[family]]
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.decoder = decoders.ByteLevel()
        self._add_special(hf)
        return hf

    def _build_spm(self, meta: dict[str, Any]) -> HFTokenizer:
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(self._tokens)
        vocab = self._vocab()
        unk = self._tokens[self.unk_id] if self.unk_id is not None else None
        model = models.BPE(vocab, _spm_merges(self._tokens, self._types, scores), unk_token=unk,
                           fuse_unk=True, byte_fallback=True)
        hf = HFTokenizer(model)
        norms = [normalizers.Prepend("▁")] if self.add_space_prefix else []
        hf.normalizer = normalizers.Sequence([*norms, normalizers.Replace(" ", "▁")])
        decs = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        hf.decoder = decoders.Sequence(decs + ([decoders.Strip(" ", 1, 0)] if self.add_space_prefix else []))
        self._add_special(hf)
        return hf

    def _vocab(self) -> dict[str, int]:
        vocab = {t: i for i, t in enumerate(self._tokens)}
        if len(vocab) < len(self._tokens):
            logger.warning("the GGUF vocabulary has %d duplicate tokens; the last of each is used",
                           len(self._tokens) - len(vocab))
        return vocab

    def _add_special(self, hf: HFTokenizer) -> None:
        """Control, unknown and user-defined tokens are matched in the raw text and never split."""
        special, user = [], []
        for text, t in zip(self._tokens, self._types, strict=True):
            if t in (CONTROL, UNKNOWN):
                special.append(AddedToken(text, special=True, normalized=False))
            elif t == USER_DEFINED:
                user.append(AddedToken(text, special=False, normalized=False))
        hf.add_special_tokens(special)
        hf.add_tokens(user)
        if hf.get_vocab_size(with_added_tokens=True) > len(self._tokens):
            raise ModelFileError("the GGUF vocabulary's special tokens do not match its token list; "
                                 "re-convert the model.")

    def _piece_tables(self) -> tuple[list[bytes], list[bytes]]:
        """Bytes each token stands for (llama.cpp's token_to_piece), with and without special tokens."""
        table = _byte_decoder()
        to_bytes = {ord(c): b for c, b in table.items()}  # str.translate + latin-1: one C call a token
        pieces = []
        for text, t in zip(self._tokens, self._types, strict=True):
            if t in (CONTROL, UNKNOWN, USER_DEFINED):
                piece = text.encode()
            elif t == BYTE and self.kind == "spm":
                piece = bytes([int(text[3:5], 16)])
            elif t == NORMAL and self.kind == "spm":
                piece = text.replace("▁", " ").encode()
            elif t == NORMAL:
                try:
                    piece = text.translate(to_bytes).encode("latin-1")
                except UnicodeEncodeError:  # a character outside GPT-2's byte alphabet: as UTF-8
                    piece = b"".join(bytes([table[c]]) if c in table else c.encode() for c in text)
            else:  # unused, and byte tokens in a BPE vocabulary: llama.cpp prints nothing
                piece = b""
            pieces.append(piece)
        skip = [b"" if i in self.special_ids else p for i, p in enumerate(pieces)]
        return pieces, skip

    # -- public API -----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def token_types(self) -> Sequence[int]:
        return self._types

    @property
    def hf(self) -> HFTokenizer:
        """The underlying `tokenizers.Tokenizer` (special tokens are matched in text)."""
        return self._hf

    def token_text(self, token_id: int) -> str:
        """The token's string as the vocabulary stores it."""
        return self._tokens[token_id]

    def token_to_id(self, text: str) -> int | None:
        return self._hf.token_to_id(text)

    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """The bytes the token stands for when decoded."""
        return (self._pieces_skip if skip_special else self._pieces)[token_id]

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids for `text`; `add_special` adds BOS/EOS as the model asks, `parse_special` maps
        control-token strings such as `<|im_start|>` in the text to their ids."""
        ids = self._encoder(parse_special).encode(text, add_special_tokens=False).ids
        if add_special:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for `ids`; broken UTF-8 becomes U+FFFD; `skip_special` drops control tokens."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._tokens)):
            raise ValueError(f"token id outside the vocabulary of {len(self._tokens)} tokens")
        table = self._pieces_skip if skip_special else self._pieces
        data = b"".join([table[i] for i in ids])
        if self.add_space_prefix and data[:1] == b" ":
            data = data[1:]
        return data

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def _encoder(self, parse_special: bool) -> HFTokenizer:
        if parse_special:
            return self._hf
        if self._hf_plain is None:  # a copy that reads control-token strings as plain text
            plain = HFTokenizer.from_str(self._hf.to_str())
            plain.encode_special_tokens = True
            self._hf_plain = plain
        return self._hf_plain

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, pre={self.pre!r}, vocab_size={self.vocab_size})"


class StreamDetokenizer:
    """Turns token ids, one at a time, into text pieces that never split a UTF-8 character.

    Joined, the pieces from `add` and `flush` equal `tokenizer.decode(ids, skip_special)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self.reset()

    def reset(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._table = self._tokenizer._pieces_skip if self._skip_special else self._tokenizer._pieces
        self._strip_space = self._tokenizer.add_space_prefix
        self.tokens: list[int] = []

    def add(self, token_id: int) -> str:
        """Feed one id; returns the text it completes (possibly '')."""
        if not 0 <= token_id < len(self._table):
            raise ValueError(f"token id {token_id} is outside the vocabulary of {len(self._table)} tokens")
        data = self._table[token_id]
        self.tokens.append(token_id)
        if self._strip_space and data:
            self._strip_space = False
            if data[:1] == b" ":
                data = data[1:]
        return self._decoder.decode(data)

    def flush(self) -> str:
        """The held-back tail (an unfinished character becomes U+FFFD); the stream can continue."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
