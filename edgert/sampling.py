"""Samplers and logits processors: plain callables built by factories.

`make_sampler(temp=0)` returns argmax. Otherwise the chain runs in llama.cpp's order:
top-k, top-p, min-p, then temperature, then a draw from a seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Sampler = Callable[[np.ndarray], int]
LogitsProcessor = Callable[[Sequence[int], np.ndarray], np.ndarray]


def make_sampler(temp: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | None = None) -> Sampler:
    """A function from one row of logits (vocab,) to a token id."""
    if temp < 0 or not 0.0 < top_p <= 1.0 or not 0.0 <= min_p < 1.0 or top_k < 0:
        raise ValueError("need temp >= 0, 0 < top_p <= 1, 0 <= min_p < 1 and top_k >= 0")
    if temp == 0:
        return lambda logits: int(np.argmax(logits))
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray) -> int:
        k = top_k if 0 < top_k < logits.shape[0] else min(logits.shape[0], 1024)
        # candidates: the k best (at most 1024 when no top-k: the tail is far below any useful p)
        idx = np.argpartition(logits, -k)[-k:]
        vals = logits[idx].astype(np.float64)
        order = np.argsort(-vals, kind="stable")
        idx, vals = idx[order], vals[order]
        if top_k == 0 and k < logits.shape[0]:
            # exact top-p/min-p need the whole distribution's normaliser
            full_max = vals[0]
            norm = np.exp(logits.astype(np.float64) - full_max).sum()
        else:
            full_max, norm = vals[0], None
        p = np.exp(vals - full_max)
        p /= norm if norm is not None else p.sum()
        keep = len(p)
        if top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(p), top_p) + 1))
        if min_p > 0.0:
            keep = min(keep, max(1, int(np.sum(p >= min_p * p[0]))))
        vals = vals[:keep] / temp
        w = np.exp(vals - vals[0])
        w /= w.sum()
        return int(idx[rng.choice(keep, p=w)])

    return sample


def make_repetition_penalty(penalty: float, last_n: int = 64) -> LogitsProcessor:
    """llama.cpp's repeat penalty: logits of recent tokens divided by it when positive, else times it."""

    def process(tokens: Sequence[int], logits: np.ndarray) -> np.ndarray:
        recent = np.unique(np.asarray(tokens[-last_n:], dtype=np.int64))
        if recent.size:
            v = logits[recent]
            logits[recent] = np.where(v > 0, v / penalty, v * penalty)
        return logits

    return process


def make_logits_processors(repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> list[LogitsProcessor]:
    if repeat_penalty <= 0:
        raise ValueError("repeat_penalty must be > 0")
    return [] if repeat_penalty == 1.0 else [make_repetition_penalty(repeat_penalty, repeat_last_n)]
