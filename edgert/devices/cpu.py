"""The default backend: the GGUF file memory-mapped and run by edgert's Numba kernels."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import EdgertError
from ..formats.gguf import GGUFFile
from ..models import ModelConfig, family_for

NAME = "cpu"
log = logging.getLogger(__name__)


def _configure_numba(threads: int | None) -> None:
    """Cache compiled kernels in edgert's cache folder, prefer the OpenMP threading layer
    (about 30 us per parallel launch here, against 185 us for workqueue), set the threads."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        from ..store import cache_dir

        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")
    import numba

    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        from .host import physical_cores

        threads = min(physical_cores(), limit)
    if not 1 <= threads <= limit:
        raise EdgertError(f"--threads {threads} is outside 1..{limit} (the CPU threads numba can use).")
    numba.set_num_threads(threads)


def available() -> tuple[bool, str]:
    try:
        import numba  # noqa: F401
    except ImportError as e:  # pragma: no cover - numba is a hard dependency
        return False, f"numba does not import ({e}); reinstall edgert."
    return True, ""


def model_config(g: GGUFFile) -> ModelConfig:
    arch = g.meta.get("general.architecture")
    if not isinstance(arch, str):
        raise EdgertError(f"{g.path} has no general.architecture key; it is not a model file.")
    return family_for(arch, str(g.path)).config(arch, g.meta, g.tensors, str(g.path))


class CPUSession:
    """Logits for runs of token ids over a KV cache with `n_slots` sequence slots."""

    backend = NAME

    def __init__(self, g: GGUFFile, cfg: ModelConfig, n_ctx: int, n_slots: int = 1, n_batch: int = 256,
                 threads: int | None = None, kv_type: str = "f32"):
        _configure_numba(threads)
        import numba

        from ..models.decoder import Decoder, RunState, load_weights

        self.gguf, self.config = g, cfg
        self.n_ctx, self.n_vocab, self.n_slots = n_ctx, cfg.vocab_size, n_slots
        self.threads = numba.get_num_threads()
        self.weights = load_weights(g, cfg)
        self.state = RunState(cfg, n_ctx, n_batch, n_slots, self.threads, kv_type)
        self.kv_type = kv_type
        self.decoder = Decoder(cfg, self.weights, self.state)

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray:
        """Logits (1, vocab) for the last id, or (len(ids), vocab) with all_logits."""
        n = len(ids)
        if pos < 0 or pos + n > self.n_ctx:
            raise EdgertError(f"positions {pos}..{pos + n} run past the context of {self.n_ctx} tokens; raise n_ctx.")
        if not 0 <= slot < self.n_slots:
            raise EdgertError(f"slot {slot} does not exist; this session has {self.n_slots}.")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if n and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise EdgertError(f"token ids must lie in 0..{self.n_vocab - 1}.")
        out = np.empty((n, self.n_vocab), np.float32) if all_logits else None
        return self.decoder.forward(ids, pos, slot, out)

    def reset(self, slot: int | None = None) -> None:
        """Nothing to clear: a slot's cache is overwritten from position 0 by the next prefill."""

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.weights.matrices())

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.state.scratch_bytes + self.state.kv.nbytes


def load(g: GGUFFile, n_ctx: int, n_slots: int = 1, threads: int | None = None, kv_type: str = "f32",
         **_) -> CPUSession:
    return CPUSession(g, model_config(g), n_ctx, n_slots=n_slots, threads=threads, kv_type=kv_type)
