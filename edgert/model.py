"""The public model object: tokenizer, chat template, a backend Session, and generation over it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgertError
from .generate import GenerationResponse, SlotState, stream_generate
from .sampling import make_logits_processors, make_sampler

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    finish_reason: str | None
    seconds: float


class Model:
    """A loaded model. Create it with `edgert.load()`."""

    def __init__(self, path: Path, session, tokenizer, config, backend: str, load_seconds: float):
        self.path, self.session, self.tokenizer, self.config = path, session, tokenizer, config
        self.backend, self.load_seconds = backend, load_seconds
        self._slot = SlotState(0)
        self.plan = None  # the MemoryPlan the load was checked against

    def __repr__(self) -> str:
        return f"Model({self.path.name!r}, arch={self.config.arch}, backend={self.backend}, n_ctx={self.n_ctx})"

    @property
    def n_ctx(self) -> int:
        return self.session.n_ctx

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (len(ids), vocab), float32, for one evaluation of `ids` from position 0."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise EdgertError("logits() takes a non-empty 1-D sequence of token ids.")
        if len(ids) > self.n_ctx:
            raise EdgertError(f"{len(ids)} ids do not fit the context of {self.n_ctx}; load with a larger n_ctx.")
        self._slot.tokens = []
        out = self.session.forward(ids, 0, self._slot.slot, all_logits=True)
        self._slot.tokens = ids.tolist()
        return out

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        from .chat import render_chat

        tok = self.tokenizer
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        return render_chat(tok.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos)

    def encode_prompt(self, prompt: str | list[dict[str, Any]]) -> list[int]:
        """A raw string is tokenized as it is (with BOS when the model wants it); a list of
        messages is rendered by the chat template first."""
        if isinstance(prompt, str):
            return self.tokenize(prompt)
        text = self.apply_chat_template(prompt)
        # the template writes BOS itself where the model wants one; do not add a second
        ids = self.tokenize(text, add_special=False)
        return ids

    def stream(self, prompt: str | list[dict[str, Any]] | Sequence[int], *, max_tokens: int = 256,
               temp: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
               repeat_penalty: float = 1.0, repeat_last_n: int = 64, seed: int | None = None,
               stop: str | Sequence[str] | None = None, ignore_eos: bool = False) -> Iterator[GenerationResponse]:
        """Yield GenerationResponse records (text piece, token, stats) as tokens are generated.

        `prompt` is raw text, a list of chat messages ({"role", "content"}), or token ids."""
        if isinstance(prompt, (str, list)) and not (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
            ids = self.encode_prompt(prompt)
        else:
            ids = [int(i) for i in prompt]
        if max_tokens < 1:
            raise EdgertError("max_tokens must be at least 1.")
        try:
            sampler = make_sampler(temp, top_k, top_p, min_p, seed)
            processors = make_logits_processors(repeat_penalty, repeat_last_n)
        except ValueError as e:
            raise EdgertError(f"bad sampling settings: {e}.") from None
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        yield from stream_generate(self.session, self.tokenizer, self._slot, ids, sampler, processors,
                                   max_tokens=max_tokens, stop=stops, ignore_eos=ignore_eos)

    def generate(self, prompt: str | list[dict[str, Any]] | Sequence[int], **kwargs) -> Generation:
        """The whole completion as one string, with its stats."""
        t0 = time.perf_counter()
        parts, last = [], None
        for r in self.stream(prompt, **kwargs):
            parts.append(r.text)
            last = r
        assert last is not None
        return Generation("".join(parts), last.prompt_tokens, last.generation_tokens, last.prompt_tps,
                          last.generation_tps, last.finish_reason, time.perf_counter() - t0)

    def reset(self) -> None:
        """Forget the cached conversation prefix."""
        self._slot.tokens = []
        self.session.reset(self._slot.slot)


def load(name_or_path: str | Path | None = None, backend: str = "auto", device: str | None = None,
         n_ctx: int | str | None = None, budget: str | int | None = None, threads: int | None = None,
         kv_type: str | None = None, progress: bool = False) -> Model:
    """Load a model by catalogue name or path, pulling a catalogue model on first use.

    The memory plan is computed first, from the file's header: with `budget` (bytes or '1.5GiB'),
    a `device` profile, or else this host's available memory as the limit, a load that would not
    fit is refused before anything is allocated, and `n_ctx='auto'` takes the largest context
    that fits."""
    from .devices import get_backend
    from .devices.cpu import model_config
    from .devices.plan import plan_memory
    from .formats.gguf import read_gguf
    from .store import resolve
    from .tokenizer import Tokenizer

    t0 = time.perf_counter()
    path = resolve(None if name_or_path is None else str(name_or_path), progress=progress)
    from .devices.coreml import is_coreml_folder
    from .devices.litert import is_tflite_folder
    from .devices.onnxrt import is_onnx_folder

    runner = ("onnxruntime" if is_onnx_folder(path) else "litert" if is_tflite_folder(path)
              else "coreml" if is_coreml_folder(path) else None)
    if runner:
        return _load_folder(path, runner, backend, device, n_ctx, budget, threads, t0)
    if path.is_dir() or path.suffix.lower() != ".gguf":
        raise EdgertError(f"{path} is not a .gguf file; edgert runs GGUF models (other formats come with convert).")
    g = read_gguf(path)
    cfg = model_config(g)
    be = get_backend(backend, device)
    kv_type = kv_type or ("f16" if be.NAME == "llama.cpp" else "f32")
    plan = plan_memory(g, cfg, backend=be.NAME, n_ctx=n_ctx, kv_type=kv_type, budget=budget, device=device,
                       threads=threads)
    if not plan.fits:
        raise EdgertError(plan.refusal())
    if plan.n_ctx > cfg.n_ctx_train:
        log.warning("n_ctx %d is past the %d tokens the model was trained for; quality may drop", plan.n_ctx,
                    cfg.n_ctx_train)
    tok = Tokenizer.from_gguf_meta(g.meta)
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.scores"):  # the tokenizer holds its own copy
        g.meta.pop(key, None)
    options = {"kv_type": kv_type} if be.NAME == "cpu" else {}
    session = be.load(g, plan.n_ctx, threads=threads, **options)
    model = Model(path, session, tok, cfg, be.NAME, time.perf_counter() - t0)
    model.plan = plan
    return model


def _load_folder(path: Path, runner: str, backend: str, device, n_ctx, budget, threads, t0: float) -> Model:
    """A folder from `edgert convert` (ONNX or TFLite): its runtime's backend, the same generation layer."""
    from .devices import get_backend
    from .devices.onnxrt import read_folder
    from .devices.plan import plan_folder
    from .tokenizer import Tokenizer

    if backend not in ("auto", runner):
        raise EdgertError(f"{path} runs on {runner}; use --backend {runner} (or auto), not {backend}.")
    mod = get_backend(runner)
    cfg, meta = read_folder(path)
    plan = plan_folder(path, cfg, n_ctx=n_ctx, budget=budget, device=device, backend=runner)
    if not plan.fits:
        raise EdgertError(plan.refusal())
    if runner == "onnxruntime":
        session = mod.OrtSession(path, cfg, plan.n_ctx, threads=threads)
    elif runner == "coreml":
        session = mod.CoreMLSession(path, cfg, n_ctx=n_ctx if isinstance(n_ctx, int) else None, threads=threads)
    else:
        # the context is fixed when the graph is written; an explicit n_ctx may only ask for less
        session = mod.LiteRTSession(path, cfg, n_ctx=n_ctx if isinstance(n_ctx, int) else None, threads=threads)
    model = Model(path, session, Tokenizer.from_gguf_meta(meta), cfg, runner, time.perf_counter() - t0)
    model.plan = plan
    return model
