"""The LiteRT (TFLite) backend: a folder written by `edgert convert --to tflite` (model.tflite with a
`decode` and a `prefill` signature over the same weights, edgert.json, tokenizer files) run through
edgert's generation layer.

The KV caches are NumPy arrays [1, max_ctx, kv_heads, head_dim] per layer that go into every call
and come back updated; the graph masks keys past each query's position, so rewinding is just
calling forward at an earlier position. LiteRT's CPU path uses the XNNPACK delegate by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgertError
from ..models.config import ModelConfig

NAME = "litert"
EXTRA = "litert"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # the older runtime-only package
    return Interpreter


def available() -> tuple[bool, str]:
    try:
        _interpreter_class()
    except ImportError:
        return False, "LiteRT is not installed; pip install 'edgert[litert]' (ai-edge-litert)"
    return True, ""


def is_tflite_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "model.tflite").exists()


class LiteRTSession:
    backend = NAME

    def __init__(self, folder: Path, cfg: ModelConfig, n_ctx: int | None = None, threads: int | None = None):
        from .host import physical_cores

        ok, why = available()
        if not ok:
            raise EdgertError(why)
        self.folder, self.config = Path(folder), cfg
        self.threads = threads or physical_cores()
        try:
            self.interp = _interpreter_class()(model_path=str(self.folder / "model.tflite"), num_threads=self.threads)
            sigs = self.interp.get_signature_list()
            self.decode = self.interp.get_signature_runner("decode")
            self.prefill = self.interp.get_signature_runner("prefill") if "prefill" in sigs else None
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise EdgertError(f"LiteRT cannot load {self.folder / 'model.tflite'} ({first}); re-convert it with "
                              "`edgert convert --to tflite`.") from None
        shape = self.decode.get_input_details()["k_cache_0"]["shape"]
        self.max_ctx = int(shape[1])
        self.prefill_len = int(self.prefill.get_input_details()["input_ids"]["shape"][1]) if self.prefill else 1
        if n_ctx is not None and n_ctx > self.max_ctx:
            raise EdgertError(f"n_ctx {n_ctx} is past the {self.max_ctx} positions this TFLite model was written "
                              "for; re-convert with a larger context.")
        self.n_ctx = n_ctx or self.max_ctx
        self.n_vocab, self.n_slots = cfg.vocab_size, 1
        self.reset()

    def reset(self, slot: int | None = None) -> None:
        c = self.config
        shape = (1, self.max_ctx, c.n_head_kv, c.head_dim)
        self.caches = {f"{k}_cache_{i}": np.zeros(shape, np.float32) for i in range(c.n_layer) for k in "kv"}
        self.n_cached = 0

    def _run(self, runner, ids: np.ndarray, pos: int) -> np.ndarray:
        n = len(ids)
        out = runner(input_ids=ids.astype(np.int32)[None], input_pos=np.arange(pos, pos + n, dtype=np.int32),
                     **self.caches)
        for k in self.caches:
            self.caches[k] = out[k]
        return out["logits"][0]

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        if slot != 0:
            raise EdgertError("the litert backend has one sequence slot.")
        if n == 0 or pos < 0 or pos > self.n_cached or pos + n > self.n_ctx:
            raise EdgertError(f"positions {pos}..{pos + n} do not follow the {self.n_cached} cached tokens within "
                              f"the context of {self.n_ctx}.")
        rows, i, P = [], 0, self.prefill_len
        while i < n:
            left, at = n - i, pos + i
            if self.prefill is not None and left > 1 and at + P <= self.max_ctx:
                c = min(P, left)  # a short chunk is padded: its extra rows land past the end, never attended
                chunk = np.zeros(P, np.int64)
                chunk[:c] = ids[i:i + c]
                logits = self._run(self.prefill, chunk, at)[:c]
            else:
                c = 1
                logits = self._run(self.decode, ids[i:i + 1], at)
            if all_logits or i + c == n:
                rows.append(logits)
            i += c
        self.n_cached = pos + n
        out = np.concatenate(rows).astype(np.float32, copy=False)
        return out if all_logits else out[-1:]

    @property
    def weight_bytes(self) -> int:
        return (self.folder / "model.tflite").stat().st_size

    @property
    def memory_bytes(self) -> int:
        # the caches live three times: edgert's arrays, the interpreter's inputs and its outputs
        c = self.config
        return self.weight_bytes + 3 * 2 * 4 * c.n_layer * c.n_head_kv * self.max_ctx * c.head_dim


def load_folder(folder: Path, n_ctx: int | None = None, threads: int | None = None) -> LiteRTSession:
    """A session over a TFLite folder, its config read from edgert.json."""
    from .onnxrt import read_folder

    cfg, _ = read_folder(Path(folder))
    return LiteRTSession(Path(folder), cfg, n_ctx, threads)
