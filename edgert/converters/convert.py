"""`edgert convert`: a source (GGUF file or Hugging Face folder) -> artifacts, each checked against
the source on fixed prompts before it is kept.

Output goes to a staging folder beside OUT and is renamed into place only when every target
passed its parity floor; an existing OUT is replaced only with `force`; the source is only read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import EdgertError
from .spec import ModelSpec, load_spec

log = logging.getLogger(__name__)

TARGETS = ("gguf", "onnx", "tflite", "coreml")
RUNNERS = {"gguf": "cpu", "onnx": "onnxruntime", "tflite": "litert", "coreml": "coreml"}
PROMPTS = (  # English prose, code and science: about 170 teacher-forced positions in all
    "The history of the Roman Empire spans many centuries. It began when Augustus became the first emperor in "
    "27 BC, and in the west it ended in 476 AD when the last emperor was deposed. During this time the empire "
    "built roads, aqueducts and cities.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n\nfor i in range(10):\n    print(i, fibonacci(i))\n",
    "Water boils at 100 degrees Celsius at sea level. At higher altitudes the air pressure is lower, so water "
    "boils at a lower temperature, which is why cooking pasta in the mountains takes longer.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose "
    "and oxygen. It takes place mainly in the leaves, inside small structures called chloroplasts.",
)
POSITIONS_PER_PROMPT = 48
# Floors of teacher-forced top-1 agreement with the source, by the precision of the weights
FLOORS = {"f32": 0.97, "f16": 0.97, "q8_0": 0.95, "q5_0": 0.85, "q5_1": 0.85, "q6_k": 0.95, "q4_0": 0.85,
          "q4_1": 0.85, "q4_k": 0.85, "q4_k_m": 0.85, "fp32": 0.97, "fp16": 0.97, "int8": 0.95, "int4": 0.85}
COREML_CTX = 256


def _prompt_ids(tokenizer, n_vocab: int) -> list[list[int]]:
    out = []
    for text in PROMPTS:
        ids = [i for i in tokenizer.encode(text, add_special=False) if i < n_vocab][:POSITIONS_PER_PROMPT]
        if tokenizer.add_bos and tokenizer.bos_id is not None:
            ids = [tokenizer.bos_id] + ids[: POSITIONS_PER_PROMPT - 1]
        out.append(ids)
    return out


def source_logits(spec: ModelSpec, ids: list[int]) -> np.ndarray:
    if spec.kind == "hf":
        from .reference import hf_logits

        return hf_logits(spec, ids)
    import edgert

    return edgert.load(str(spec.source), backend="cpu", n_ctx=max(64, len(ids) + 1)).logits(ids)


def parity(spec: ModelSpec, target: str, artifact: Path, quant: str, program=None) -> dict:
    """Teacher-forced top-1 agreement and largest |logit difference|, artifact against source, plus
    the target's own runtime check: llama.cpp on a GGUF, onnxruntime-genai on an ONNX folder."""
    import edgert

    if target == "coreml":
        from ..devices.coreml import available

        if not available()[0]:
            return _coreml_parity(spec, artifact, quant, program)
    m = edgert.load(str(artifact), backend=RUNNERS[target], n_ctx=POSITIONS_PER_PROMPT * 2)
    agree = total = 0
    worst = 0.0
    llama_agree = 0
    llama = _llama(artifact) if target == "gguf" else None
    for ids in _prompt_ids(m.tokenizer, spec.config.vocab_size):
        ref = source_logits(spec, ids)
        got = m.logits(ids)
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(ref - got).max()))
        if llama is not None:
            llama.reset()
            llama.eval(ids)
            lc = np.asarray(llama.scores[: len(ids)], dtype=np.float32)
            llama_agree += int((lc.argmax(1) == got.argmax(1)).sum())
    floor = FLOORS[quant]
    runner = {"gguf": "edgert's cpu backend", "onnx": "onnxruntime (edgert's onnxruntime backend)",
              "tflite": "LiteRT's interpreter with XNNPACK (edgert's litert backend)",
              "coreml": "Core ML's MLModel.predict with state (edgert's coreml backend)"}[target]
    source = "a float32 NumPy forward over the checkpoint" if spec.kind == "hf" else "edgert on the source GGUF"
    result = {
        "target": target, "quant": quant, "source": str(spec.source), "positions": total,
        "top1_agreement": agree / total, "max_abs_diff": worst, "floor": floor, "passed": agree / total >= floor,
        "checks": [f"{runner} on the artifact against {source}, teacher-forced"],
    }
    if llama is not None:
        result["llama_cpp_top1_vs_edgert"] = llama_agree / total
        result["checks"].append("llama.cpp loads the artifact; its top-1 against edgert's on the same positions")
    if target == "onnx":
        genai = _genai_greedy(artifact, m)
        if genai is not None:
            result["onnxruntime_genai_greedy_match"] = genai
            result["checks"].append("onnxruntime-genai generates greedy tokens from the folder; compared with "
                                    "edgert's onnxruntime backend on the same prompt")
    return result


def _coreml_parity(spec: ModelSpec, folder: Path, quant: str, program) -> dict:
    """Where Core ML cannot predict (not macOS): the converted MIL program (after Core ML's passes
    and the weight quantization, so the artifact's own weights) evaluated in NumPy, against the source."""
    from ..tokenizer import Tokenizer
    from .coreml_out import evaluated_logits

    manifest = json.loads((folder / "manifest.json").read_text())
    meta = json.loads((folder / "edgert.json").read_text())["tokenizer"]
    agree = total = 0
    worst = 0.0
    for ids in _prompt_ids(Tokenizer.from_gguf_meta(meta), spec.config.vocab_size):
        ref = source_logits(spec, ids)
        got = evaluated_logits(program, ids)
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += len(ids)
        worst = max(worst, float(np.abs(ref - got).max()))
    expected = {"inputs": ["input_ids", "causal_mask"], "outputs": ["logits"], "states": ["key_cache", "value_cache"]}
    structure_ok = all(manifest[k] == v for k, v in expected.items())
    floor = FLOORS[quant]
    return {
        "target": "coreml", "quant": quant, "source": str(spec.source), "positions": total,
        "top1_agreement": agree / total, "max_abs_diff": worst, "floor": floor,
        "passed": agree / total >= floor and structure_ok, "structure_ok": structure_ok,
        "checks": ["coremltools converted the MIL program (iOS18 target) and saved the .mlpackage",
                   "inputs, outputs and states are input_ids, causal_mask / logits / key_cache, value_cache",
                   "numerics: the converted MIL program, with the package's own (quantized, half-float) weights, "
                   "evaluated in NumPy (float32 compute, half-float KV state) against the source, teacher-forced"],
        "not_run": "Core ML's own runtime (MLModel.predict): it needs macOS or iOS",
    }


def _genai_greedy(folder: Path, model, n: int = 16) -> bool | None:
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    ids = model.tokenize(PROMPTS[0], add_special=True)[:24]
    gm = og.Model(str(folder))
    params = og.GeneratorParams(gm)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    gen = og.Generator(gm, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    theirs = []
    while not gen.is_done() and len(theirs) < n:
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    ours = [r.token for r in model.stream(ids, temp=0, max_tokens=len(theirs), ignore_eos=True) if r.token is not None]
    return ours == theirs


def _llama(path: Path):
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.Llama(model_path=str(path), n_ctx=POSITIONS_PER_PROMPT * 2, n_batch=POSITIONS_PER_PROMPT * 2,
                           logits_all=True, verbose=False)


def convert(src: str | Path, targets: list[str], quant: str, out: str | Path, force: bool = False,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    from .coreml_out import coreml_quant, write_coreml
    from .gguf_out import gguf_quant, write_gguf
    from .onnx_out import onnx_quant, write_onnx
    from .tflite_out import tflite_quant, write_tflite

    src, out = Path(src).resolve(), Path(out).resolve()
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise EdgertError(f"unknown target {', '.join(bad)}; edgert converts to {', '.join(TARGETS)} so far.")
    if out == src or src.is_relative_to(out) or out.is_relative_to(src):
        raise EdgertError(f"the output {out} overlaps the source {src}; write somewhere else.")
    if out.exists() and not force:
        raise EdgertError(f"{out} exists; pass --force to replace it, or pick another -o.")
    namers = {"gguf": gguf_quant, "onnx": onnx_quant, "tflite": tflite_quant, "coreml": coreml_quant}
    quants = {t: namers[t](quant) for t in targets}

    spec = load_spec(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    rows = []
    try:
        for target in targets:
            t0 = time.perf_counter()
            program = None  # Core ML: the converted program, for the NumPy evaluation
            folder = stage / target
            folder.mkdir()
            if target == "gguf":
                stem = (spec.config.name or src.stem).replace("/", "_").replace(" ", "_")
                artifact = folder / f"{stem}.{quants[target].upper()}.gguf"
                detail = {"tensor_types": write_gguf(spec, artifact, quants[target], progress)}
            else:
                if progress:
                    progress(f"{target} {quants[target]}: building the graph")
                artifact = folder
                if target == "coreml":
                    manifest, program = write_coreml(spec, folder, quants[target], max_ctx=COREML_CTX)
                    detail = {"graph": manifest}
                else:
                    write = write_onnx if target == "onnx" else write_tflite
                    detail = {"graph": write(spec, folder, quants[target])}
            if progress:
                progress(f"{target}: parity against the source")
            result = {**parity(spec, target, artifact, quants[target], program if target == "coreml" else None),
                      **detail}
            (folder / "parity.json").write_text(json.dumps(result, indent=2))
            parity_ok, top1, diff = result["passed"], result["top1_agreement"], result["max_abs_diff"]
            if not parity_ok:
                raise EdgertError(f"the {target} {quants[target]} artifact agrees with the source on "
                                  f"{top1:.1%} of positions, below its floor of {result['floor']:.0%}; nothing "
                                  "was kept.")
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            where = out / target / (artifact.name if target == "gguf" else "")
            rows.append({"target": target, "artifact": str(where), "bytes": size, "quant": quants[target],
                         "seconds": time.perf_counter() - t0, "top1": top1, "max_abs_diff": diff})
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return rows
