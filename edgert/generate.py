"""Generation over any Session, in three layers (as mlx-lm does):

`generate_step` yields token ids; `stream_generate` yields small frozen records with the text
piece and running stats; `generate` joins them. The CLI, the Python API and the server only
consume the stream. A backend supplies logits, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import EdgertError
from .sampling import LogitsProcessor, Sampler


class Session(Protocol):
    """What a backend hands to generation: logits over a KV cache it owns, per sequence slot."""

    n_ctx: int
    n_vocab: int
    n_slots: int

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray: ...

    def reset(self, slot: int | None = None) -> None: ...


@dataclass
class SlotState:
    """The token ids whose keys and values a slot's cache holds, so a shared prefix is reused."""

    slot: int = 0
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationResponse:
    text: str                      # the new text piece (may be empty while bytes are pending)
    token: int | None              # the token just generated; None on the closing record
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float              # prefill tokens per second (tokens actually computed)
    generation_tps: float          # decode tokens per second
    finish_reason: str | None = None  # None while running, then "stop" or "length"
    cached_tokens: int = 0         # prompt tokens whose cache was reused


def prefill(session: Session, state: SlotState, ids: Sequence[int]) -> tuple[np.ndarray, int]:
    """Bring the slot's cache to `ids`, reusing the longest cached prefix; returns the last logits
    row and how many tokens were reused."""
    if not ids:
        raise EdgertError("the prompt is empty after tokenization; give some text.")
    if len(ids) >= session.n_ctx:
        raise EdgertError(
            f"the prompt is {len(ids)} tokens but the context holds {session.n_ctx}; "
            "raise --ctx (n_ctx) or shorten the prompt."
        )
    common = 0
    for a, b in zip(state.tokens, ids, strict=False):
        if a != b:
            break
        common += 1
    common = min(common, len(ids) - 1)  # the last prompt token must run to give logits
    state.tokens = state.tokens[:common]
    logits = session.forward(np.asarray(ids[common:], dtype=np.int64), common, state.slot)
    state.tokens = list(ids)
    return logits[-1], common


def generate_step(session: Session, state: SlotState, prompt: Sequence[int], sampler: Sampler,
                  processors: Sequence[LogitsProcessor] = (), stats: dict | None = None) -> Iterator[int]:
    """Yield sampled token ids forever (the caller stops); `stats` gets prefill timings."""
    t0 = time.perf_counter()
    logits, reused = prefill(session, state, prompt)
    if stats is not None:
        stats.update(prefill_s=time.perf_counter() - t0, reused=reused)
    history = list(prompt)
    one = np.zeros(1, dtype=np.int64)
    while True:
        for p in processors:
            logits = p(history, logits)
        tok = sampler(logits)
        history.append(tok)
        yield tok
        pos = len(state.tokens)
        if pos >= session.n_ctx:
            return
        one[0] = tok
        logits = session.forward(one, pos, state.slot)[-1]
        state.tokens.append(tok)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that begins some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def stream_generate(session: Session, tokenizer, state: SlotState, prompt: Sequence[int], sampler: Sampler,
                    processors: Sequence[LogitsProcessor] = (), max_tokens: int = 256,
                    stop: Sequence[str] = (), ignore_eos: bool = False) -> Iterator[GenerationResponse]:
    from .tokenizer import StreamDetokenizer

    detok = StreamDetokenizer(tokenizer)
    stop_ids = frozenset() if ignore_eos else tokenizer.stop_ids
    stats: dict = {}
    steps = generate_step(session, state, prompt, sampler, processors, stats)
    n, pending, finish = 0, "", None
    t_decode = None
    prompt_tps = 0.0

    def record(text: str, tok: int | None, reason: str | None) -> GenerationResponse:
        dt = time.perf_counter() - t_decode if t_decode is not None else 0.0
        gen_tps = (n - 1) / dt if n > 1 and dt > 0 else 0.0
        return GenerationResponse(text, tok, len(prompt), n, prompt_tps, gen_tps, reason, stats.get("reused", 0))

    try:
        while n < max_tokens:
            try:
                tok = next(steps)
            except StopIteration:
                finish = "length"
                break
            if t_decode is None:
                t_decode = time.perf_counter()
                computed = len(prompt) - stats["reused"]
                prompt_tps = computed / stats["prefill_s"] if stats["prefill_s"] > 0 else 0.0
            n += 1
            if tok in stop_ids:
                finish = "stop"
                break
            pending += detok.add(tok)
            if stop:
                hit = min((i for i in (pending.find(s) for s in stop) if i >= 0), default=-1)
                if hit >= 0:
                    pending = pending[:hit]
                    finish = "stop"
                    break
                keep = _held_back(pending, stop)
                out, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            else:
                out, pending = pending, ""
            yield record(out, tok, None)
        else:
            finish = "length"
        if finish != "stop" or not stop:
            pending += detok.flush()
        yield record(pending, None, finish)
    finally:
        steps.close()
