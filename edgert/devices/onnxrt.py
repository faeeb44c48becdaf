"""The onnxruntime backend: an ONNX folder written by `edgert convert --to onnx` (model.onnx with
past/present KV tensors, genai_config.json, edgert.json) run through edgert's generation layer.

Execution providers are taken from an ordered list and checked against what the installed
onnxruntime offers; the session reports the ones it really uses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from ..models.config import ModelConfig

NAME = "onnxruntime"
EXTRA = "onnx"
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
             "NnapiExecutionProvider", "QNNExecutionProvider", "CPUExecutionProvider")
log = logging.getLogger(__name__)


def available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, "onnxruntime is not installed; pip install 'edgert[onnx]'"
    return True, ""


def is_onnx_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model.onnx").exists()


def read_folder(folder: Path) -> tuple[ModelConfig, dict]:
    """The model config and the tokenizer metadata (GGUF keys) that edgert wrote beside the model."""
    f = folder / "edgert.json"
    if not f.exists():
        raise EdgertError(f"{folder} has no edgert.json; run ONNX folders written by `edgert convert --to onnx`.")
    d = json.loads(f.read_text())
    return ModelConfig(**d["config"]), d["tokenizer"]


def choose_providers(wanted: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if wanted:
        missing = [p for p in wanted if p not in have]
        if missing:
            raise EdgertError(f"onnxruntime here has no {', '.join(missing)}; available: {', '.join(have)}.")
        return wanted
    return [p for p in PROVIDERS if p in have] or have


class OrtSession:
    backend = NAME

    def __init__(self, folder: Path, cfg: ModelConfig, n_ctx: int, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        from .host import physical_cores

        self.folder, self.config = folder, cfg
        self.n_ctx, self.n_vocab, self.n_slots = n_ctx, cfg.vocab_size, 1
        self.threads = threads or physical_cores()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=choose_providers(providers))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(e).strip().splitlines()[0][:300]
            raise EdgertError(f"onnxruntime cannot load {folder / 'model.onnx'} ({first}); re-convert it with "
                              "`edgert convert --to onnx`.") from None
        self.providers = self.sess.get_providers()
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.reset()

    def reset(self, slot: int | None = None) -> None:
        c = self.config
        empty = np.zeros((1, c.n_head_kv, 0, c.head_dim), np.float32)
        self.past = {f"past_key_values.{i}.{k}": empty for i in range(c.n_layer) for k in ("key", "value")}
        self.n_cached = 0

    def forward(self, ids: np.ndarray, pos: int, slot: int = 0, all_logits: bool = False) -> np.ndarray:
        n = len(ids)
        if slot != 0:
            raise EdgertError("the onnxruntime backend has one sequence slot.")
        if pos < 0 or pos > self.n_cached or pos + n > self.n_ctx:
            raise EdgertError(f"positions {pos}..{pos + n} do not follow the {self.n_cached} cached tokens within "
                              f"the context of {self.n_ctx}.")
        if pos < self.n_cached:
            self.past = {k: v[:, :, :pos] for k, v in self.past.items()}
        feed = {"input_ids": np.asarray(ids, np.int64)[None], "attention_mask": np.ones((1, pos + n), np.int64),
                "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None], **self.past}
        outs = self.sess.run(None, feed)
        for name, value in zip(self.out_names[1:], outs[1:], strict=True):
            self.past[name.replace("present.", "past_key_values.")] = value
        self.n_cached = pos + n
        logits = outs[0][0]
        return logits if all_logits else logits[-1:]

    @property
    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("model.onnx*"))

    @property
    def memory_bytes(self) -> int:
        c = self.config
        return self.weight_bytes + 2 * 4 * c.n_layer * c.n_head_kv * self.n_ctx * c.head_dim
