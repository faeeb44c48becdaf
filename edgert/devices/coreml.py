"""The Core ML backend: a `model.mlpackage` from `edgert convert --to coreml`, predicted through
`MLModel.predict` with its KV-cache state. Core ML runs only on macOS and iOS."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from ..models.config import ModelConfig

NAME = "coreml"
EXTRA = "coreml"


def available() -> tuple[bool, str]:
    if platform.system() != "Darwin":
        return False, "Core ML predicts only on macOS and iOS; run this package on a Mac or an iPhone"
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False, "coremltools is not installed; pip install 'edgert[coreml]'"
    return True, ""


def causal_mask(s: int, t: int) -> np.ndarray:
    """The model's mask input for s new tokens after t - s cached ones: 0 where a query may attend."""
    m = np.full((1, 1, s, t), -np.inf, np.float16)
    past = t - s
    for i in range(s):
        m[0, 0, i, : past + i + 1] = 0
    return m


def is_coreml_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model.mlpackage").exists()


class CoreMLSession:
    backend = NAME

    def __init__(self, folder: Path, cfg: ModelConfig, n_ctx: int | None = None, threads: int | None = None):
        import coremltools as ct

        self.folder, self.config = folder, cfg
        self.max_ctx = int(json.loads((folder / "edgert.json").read_text()).get("max_ctx", 512))
        if n_ctx is not None and n_ctx > self.max_ctx:
            raise EdgertError(f"n_ctx {n_ctx} is past the {self.max_ctx} positions this Core ML model was written for.")
        self.n_ctx, self.n_vocab, self.n_slots, self.threads = n_ctx or self.max_ctx, cfg.vocab_size, 1, threads
        self.model = ct.models.MLModel(str(folder / "model.mlpackage"), compute_units=ct.ComputeUnit.ALL)
        self.reset()

    def reset(self, slot: int | None = None) -> None:
        self.state = self.model.make_state()
        self.n_cached = 0

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray:
        n = len(ids)
        if slot != 0 or pos < 0 or pos > self.n_cached or pos + n > self.n_ctx:
            raise EdgertError(f"positions {pos}..{pos + n} do not follow the {self.n_cached} cached tokens within "
                              f"the context of {self.n_ctx}.")
        out = self.model.predict({"input_ids": np.asarray([ids], np.int32), "causal_mask": causal_mask(n, pos + n)},
                                 state=self.state)["logits"][0].astype(np.float32)
        self.n_cached = pos + n  # rows past pos + n in the state are masked out until overwritten
        return out if all_logits else out[-1:]

    @property
    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.folder / "model.mlpackage").rglob("*") if p.is_file())

    @property
    def memory_bytes(self) -> int:
        c = self.config
        return self.weight_bytes + 2 * 2 * c.n_layer * c.n_head_kv * self.max_ctx * c.head_dim
