"""The llama.cpp backend: a GGUF file run by llama-cpp-python (the optional extra `edgert[llama]`).

llama_cpp is imported only inside `available()` and `load()`, never when this module is imported.

One `llama_cpp.Llama` object owns the model and its context; the session drives llama.cpp's
low-level API under it so that it can place ids at any position and ask for every row of logits
without `logits_all=True` (which would keep an n_ctx x vocab score array in Python):

- positions: before a run at `pos`, the cache entries from `pos` on are removed with
  `Llama._ctx.kv_cache_seq_rm(0, pos, -1)` (in 0.3.36 that wraps `llama_memory_seq_rm` on the
  context's `llama_memory_t`); the Llama object's `n_tokens` and `input_ids` are kept in step.
  Where a partial removal is refused (recurrent models), the cache is cleared with
  `llama_memory_clear` and the kept prefix is evaluated again from `input_ids`.
- logits: ids go in chunks of n_batch through the Llama object's `llama_batch` (`LlamaBatch.set_batch`,
  which marks the last token's output, or every token's with all_logits), `llama_decode`, then
  `llama_get_logits`, which holds the requested rows contiguously in batch order.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np

from ..errors import EdgertError, UnsupportedError
from ..formats.gguf import GGUFFile
from ..models import ModelConfig

NAME = "llama.cpp"
EXTRA = "llama"
NOT_INSTALLED = "llama-cpp-python is not installed; pip install 'edgert[llama]'"
MAX_BATCH = 512
_GGML_LOG_ERROR, _GGML_LOG_CONT = 4, 5  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
# Llama(...) keyword options a caller may pass through load(**options)
OPTIONS = ("n_gpu_layers", "flash_attn", "use_mmap", "use_mlock", "n_batch", "logits_all")


def available() -> tuple[bool, str]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False, NOT_INSTALLED
    except Exception as e:  # the shared library failed to load
        return False, f"llama-cpp-python does not load ({e}); reinstall it: pip install 'edgert[llama]'"
    return True, ""


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise EdgertError(NOT_INSTALLED) from None
    return llama_cpp


def kv_cache_bytes(cfg: ModelConfig, n_ctx: int) -> int:
    """Keys and values for n_ctx positions in llama.cpp's default f16 cache."""
    return 2 * cfg.n_layer * n_ctx * cfg.n_head_kv * cfg.head_dim * 2


def compute_buffer_bytes(cfg: ModelConfig, n_ctx: int, n_ubatch: int) -> int:
    """An estimate of llama.cpp's CPU compute buffer for a micro-batch of n_ubatch tokens.

    The graph allocator reuses memory, so the peak is about the larger of the output logits
    (n_ubatch x vocab f32) and one layer's attention scores (n_ubatch x n_ctx x n_head f32), plus
    a few activations (4 x n_embd + 2 x n_ff per token). Measured against llama.cpp's log for
    SmolLM2-135M: 98.3 MiB actual vs 106.5 MiB estimated at n_ctx 1024 (ubatch 512), 49.1 vs
    53.2 at n_ctx 256 — a slight overestimate, as a budget wants.
    """
    per_token = max(cfg.vocab_size, n_ctx * cfg.n_head) + 4 * cfg.n_embd + 2 * cfg.n_ff
    return 4 * n_ubatch * per_token


@contextlib.contextmanager
def _errors_logged(llama_cpp):
    """Collect llama.cpp's error-level log lines (verbose=False sends them to os.devnull) so that a
    failed load can say why; llama-cpp-python's own log callback is put back afterwards."""
    errors: list[str] = []
    last = [0]

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:
        level = last[0] if level == _GGML_LOG_CONT else level
        last[0] = level
        if level == _GGML_LOG_ERROR:
            line = text.decode("utf-8", "replace").strip()
            if line and "failed to load model" not in line:
                errors.append(line.split(": ", 1)[-1] if line.startswith("llama_") else line)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield errors
    finally:
        try:
            from llama_cpp._logger import llama_log_callback
        except ImportError:  # pragma: no cover - a llama-cpp-python without its logger module
            llama_log_callback = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))


class LlamaCppSession:
    """Logits for runs of token ids over llama.cpp's KV cache; one sequence slot."""

    backend = NAME

    def __init__(self, g: GGUFFile, cfg: ModelConfig, n_ctx: int, n_slots: int = 1, threads: int | None = None,
                 **options):
        if n_slots != 1:
            raise EdgertError(f"the {NAME} backend supports one sequence slot, not {n_slots}; use n_slots=1.")
        if n_ctx < 1:
            raise EdgertError(f"n_ctx must be at least 1, not {n_ctx}.")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise UnsupportedError(f"the {NAME} backend does not take {', '.join(unknown)}; "
                                   f"its options are {', '.join(OPTIONS)}.")
        if threads is None:
            from .host import physical_cores

            threads = physical_cores()
        if threads < 1:
            raise EdgertError(f"--threads must be at least 1, not {threads}.")
        llama_cpp = _llama_cpp()
        self.gguf, self.config = g, cfg
        self.n_ctx, self.n_vocab, self.n_slots, self.threads = n_ctx, cfg.vocab_size, n_slots, threads
        self.n_batch = min(n_ctx, int(options.pop("n_batch", MAX_BATCH)))
        if self.n_batch < 1:
            raise EdgertError(f"n_batch must be at least 1, not {self.n_batch}.")
        options.pop("logits_all", None)  # every row is reachable without it (see the module docstring)
        with _errors_logged(llama_cpp) as errors:
            try:
                self.llama = llama_cpp.Llama(model_path=str(g.path), n_ctx=n_ctx, n_batch=self.n_batch,
                                             n_ubatch=self.n_batch, n_threads=threads, n_threads_batch=threads,
                                             logits_all=False, verbose=False, **options)
            except (ValueError, RuntimeError) as e:
                detail = errors[0] if errors else str(e)
                raise UnsupportedError(f"llama.cpp cannot load {g.path}: {detail}") from None
        if self.llama.n_vocab() != self.n_vocab:
            self.n_vocab = self.llama.n_vocab()
        self._output_rows = 1  # rows of llama.cpp's logits output buffer, which grows with all_logits

    # -- the cache ---------------------------------------------------------------------------

    @property
    def n_cached(self) -> int:
        """Positions the cache holds (0..n_cached-1)."""
        return self.llama.n_tokens

    def _truncate(self, pos: int) -> None:
        """Keep positions 0..pos-1 only."""
        llama = self.llama
        if pos >= llama.n_tokens:
            return
        if llama._ctx.kv_cache_seq_rm(0, pos, -1):
            llama.n_tokens = pos
            return
        prefix = llama.input_ids[:pos].copy()  # partial removal refused: rebuild the prefix
        self._clear()
        if pos:
            self._decode(prefix, 0, False)

    def _clear(self) -> None:
        self.llama._ctx.kv_cache_clear()
        self.llama.n_tokens = 0
        self.llama._requires_eval = True

    def _decode(self, ids: np.ndarray, pos: int, all_logits: bool) -> np.ndarray:
        """Run ids at positions pos.. (pos == n_cached); logits for the last id or for every id."""
        llama = self.llama
        n, nb, vocab = len(ids), self.n_batch, self.n_vocab
        out = np.empty((n if all_logits else 1, vocab), np.float32)
        for i in range(0, n, nb):
            chunk = ids[i : i + nb].tolist()
            m = len(chunk)
            llama._batch.set_batch(batch=chunk, n_past=pos + i, logits_all=all_logits)
            try:
                llama._ctx.decode(llama._batch)
            except RuntimeError as e:
                llama._ctx.kv_cache_seq_rm(0, pos + i, -1)
                raise EdgertError(f"llama.cpp could not evaluate positions {pos + i}..{pos + i + m}: {e}") from None
            llama.input_ids[pos + i : pos + i + m] = chunk
            llama.n_tokens = pos + i + m
            llama._requires_eval = False
            if all_logits:
                self._output_rows = max(self._output_rows, m)
                out[i : i + m] = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(m, vocab))
            elif i + m == n:
                out[0] = np.ctypeslib.as_array(llama._ctx.get_logits_ith(m - 1), shape=(vocab,))
        return out

    # -- the Session contract --------------------------------------------------------------

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray:
        """Logits (1, vocab) for the last id, or (len(ids), vocab) with all_logits, for ids placed at
        positions pos..; cached positions from pos on are dropped first."""
        n = len(ids)
        if pos < 0 or pos + n > self.n_ctx:
            raise EdgertError(f"positions {pos}..{pos + n} run past the context of {self.n_ctx} tokens; raise n_ctx.")
        if slot != 0:
            raise EdgertError(f"slot {slot} does not exist; this session has {self.n_slots}.")
        if pos > self.n_cached:
            raise EdgertError(f"position {pos} would leave a gap: the cache holds {self.n_cached} positions; "
                              f"run from position {self.n_cached} or earlier.")
        if n == 0:
            raise EdgertError("forward needs at least one token id.")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise EdgertError(f"token ids must lie in 0..{self.n_vocab - 1}.")
        self._truncate(pos)
        return self._decode(ids, pos, all_logits)

    def reset(self, slot: int | None = None) -> None:
        """Empty the cache."""
        if slot not in (None, 0):
            raise EdgertError(f"slot {slot} does not exist; this session has {self.n_slots}.")
        self._clear()

    def close(self) -> None:
        """Free llama.cpp's model and context now rather than at garbage collection."""
        self.llama.close()

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.gguf.tensors.values())

    @property
    def memory_bytes(self) -> int:
        """Weights + the f16 KV cache + an estimate of the compute buffer (see compute_buffer_bytes)
        + the logits output buffer (one row, or up to n_batch rows once all_logits has been used)."""
        cfg = self.config
        kv = kv_cache_bytes(cfg, self.n_ctx)
        compute = compute_buffer_bytes(cfg, self.n_ctx, self.n_batch)
        return self.weight_bytes + kv + compute + 4 * self.n_vocab * self._output_rows


def load(g: GGUFFile, n_ctx: int, n_slots: int = 1, threads: int | None = None, **options) -> LlamaCppSession:
    from .cpu import model_config

    return LlamaCppSession(g, model_config(g), n_ctx, n_slots=n_slots, threads=threads, **options)
