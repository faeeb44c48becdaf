"""The memory plan: what a load will hold resident, computed from the file's header and the
options before anything is allocated, and checked against a budget.

    weights    the bytes the backend keeps resident: the CPU backend's repacked tiles (or the
               mapped file bytes of tensors it runs in place); llama.cpp's mapped file
    kv         keys and values for every position of the context, in the chosen precision
    scratch    activation buffers, per-thread accumulators, prefill decode buffers
    overhead   the runtime itself: Python, NumPy, Numba/LLVM or libllama, the tokenizer

The overhead constants were measured on the machine the README names (x86-64 Linux, Python
3.11, numba 0.68); a test holds the plan within 15% of the measured peak resident memory of
`edgert run` for contexts 512..8192 and each KV type.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..errors import EdgertError
from ..formats.gguf import GGUFFile
from ..models.config import ModelConfig

MIB = 1 << 20
# Resident memory of the runtime before any model: Python + NumPy + Numba's runtime with the
# kernels loaded (LLVM, typing and target registries), the OpenMP and prefill worker threads, measured
# 195-215 MiB here with the planned buffers subtracted; llama.cpp's
# process (Python, NumPy, libllama) is far lighter.
RUNTIME_BYTES = {"cpu": 205 * MIB, "llama.cpp": 60 * MIB, "onnxruntime": 80 * MIB, "litert": 60 * MIB,
                 "coreml": 60 * MIB}
VOCAB_BYTES_PER_TOKEN = 700   # the tokenizer (tokenizers' BPE tables + edgert's piece tables) per vocab entry
KERNEL_EFFICIENCY = 0.3       # share of the bandwidth roofline edgert's decode reaches (measured ~0.25-0.3)
CTX_STEP = 256


@dataclass(frozen=True)
class MemoryPlan:
    backend: str
    n_ctx: int
    kv_type: str
    weights_bytes: int
    kv_bytes: int
    scratch_bytes: int
    overhead_bytes: int
    budget_bytes: int | None
    budget_source: str                 # "--budget", a device profile name, or "available memory"
    max_ctx: int                       # the largest context that fits the budget (0: none)
    roofline_decode_tps: float         # memory bandwidth / bytes read per token: an upper bound
    predicted_decode_tps: float        # the roofline times edgert's measured kernel efficiency: an estimate
    device: str
    unified_memory: bool = False       # GPU buffers (llama.cpp offload) share this same budget
    suggestions: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.scratch_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.total_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(total_bytes=self.total_bytes, fits=self.fits)
        return d

    def refusal(self) -> str:
        """One sentence: the numbers and what would fit."""
        fix = "; ".join(self.suggestions) or "use a smaller model"
        return (f"the model needs {self.total_bytes / MIB:.0f} MiB (weights {self.weights_bytes / MIB:.0f}, KV cache "
                f"{self.kv_bytes / MIB:.0f}, scratch {self.scratch_bytes / MIB:.0f}, runtime "
                f"{self.overhead_bytes / MIB:.0f}) but the budget ({self.budget_source}) is "
                f"{self.budget_bytes / MIB:.0f} MiB; {fix}.")


def parse_size(text: str | int | None) -> int | None:
    """'1.5GiB', '800MB', '2G', '512m' or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise EdgertError(f"cannot read the size {text!r}; write it like 1.5GiB, 800MB or 2G.")
    num, unit, suffix = float(m.group(1)), m.group(2), m.group(3)
    power = "kmgt".index(unit) + 1 if unit else 0
    base = 1000 if suffix == "b" and unit else 1024
    return int(num * base**power)


def _weights_bytes_cpu(g: GGUFFile) -> int:
    from ..kernels import packed

    total = 0
    for t in g.tensors.values():
        if len(t.shape) < 2 or t.name == "rope_freqs.weight":
            total += 4 * t.n_elements  # copied to float32 at load
            continue
        rows, k = t.shape[0], t.shape[-1]
        if packed.can_pack(t.ggml_type, rows):
            block = 16 if t.ggml_type == packed.Q6_K else 32
            nb, tiles = k // block, rows // packed.TILE
            per_block = (16 if t.ggml_type in packed.NIBBLE else block) + 4
            has_min = t.ggml_type in (packed.Q4_0, packed.Q4_1, packed.Q4_K, packed.Q5_1, packed.Q5_K)
            total += tiles * nb * packed.TILE * (per_block + (4 if has_min else 0))
        else:
            total += t.nbytes  # run in place from the mapped file: its pages become resident
    return total


def plan_memory(g: GGUFFile, cfg: ModelConfig, *, backend: str = "cpu", n_ctx: int | str | None = None,
                kv_type: str = "f32", budget: str | int | None = None, device: str | None = None,
                threads: int | None = None, n_slots: int = 1, n_batch: int = 256) -> MemoryPlan:
    """Plan a load. `n_ctx` may be 'auto': the largest context (up to the trained length) that
    fits the budget. The budget is `budget`, else the device profile's usable memory, else this
    host's available memory."""
    from ..models.kvcache import check_kv_type, kv_bytes
    from .host import physical_cores
    from .profiles import get_profile

    check_kv_type(kv_type, cfg.head_dim)
    threads = threads or physical_cores()
    budget_bytes = parse_size(budget)
    if device:
        profile = get_profile(device)
    else:
        from .host import detect_host
        from .profiles import host_profile

        profile = host_profile(detect_host())
    source = "--budget" if budget_bytes is not None else profile.name
    if budget_bytes is None:
        budget_bytes = profile.usable_bytes
        source = f"{profile.name} usable memory" if device else "available memory"

    if backend == "llama.cpp":
        from .llamacpp import compute_buffer_bytes

        weights = sum(t.nbytes for t in g.tensors.values())
        if kv_type != "f16":
            raise EdgertError("the llama.cpp backend keeps its KV cache in f16; use --kv-type f16 with it.")

        def kv_of(ctx: int) -> int:
            return kv_bytes("f16", n_slots, cfg.n_layer, cfg.n_head_kv, ctx, cfg.head_dim)

        def scratch_of(ctx: int) -> int:
            return compute_buffer_bytes(cfg, ctx, min(ctx, 512)) + 4 * cfg.vocab_size
    else:
        from ..models.decoder import RunState

        weights = _weights_bytes_cpu(g)

        def kv_of(ctx: int) -> int:
            return kv_bytes(kv_type, n_slots, cfg.n_layer, cfg.n_head_kv, ctx, cfg.head_dim)

        def scratch_of(ctx: int) -> int:
            return RunState.bytes_needed(cfg, ctx, n_batch, n_slots, threads)["scratch"]

    overhead = RUNTIME_BYTES.get(backend, RUNTIME_BYTES["cpu"]) + VOCAB_BYTES_PER_TOKEN * cfg.vocab_size

    def total(ctx: int) -> int:
        return weights + kv_of(ctx) + scratch_of(ctx) + overhead

    lo, hi = 0, cfg.n_ctx_train // CTX_STEP
    while lo < hi:  # largest multiple of CTX_STEP (or the trained length) within the budget
        mid = (lo + hi + 1) // 2
        if total(mid * CTX_STEP) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    max_ctx = lo * CTX_STEP
    if total(cfg.n_ctx_train) <= budget_bytes:
        max_ctx = cfg.n_ctx_train

    if n_ctx in (None, "auto"):
        ctx = max_ctx if n_ctx == "auto" else min(2048, cfg.n_ctx_train)
        if n_ctx == "auto" and ctx == 0:
            ctx = min(CTX_STEP, cfg.n_ctx_train)  # nothing fits: plan the smallest and refuse with it
    else:
        ctx = int(n_ctx)
        if ctx < 16:
            raise EdgertError(f"a context of {ctx} tokens is too small; use at least 16.")

    per_token = weights + kv_of(ctx) // 2  # every weight once, and on average half the cache
    roofline = profile.memory_bandwidth_gbps * 1e9 / per_token
    plan = MemoryPlan(backend, ctx, kv_type, weights, kv_of(ctx), scratch_of(ctx), overhead, budget_bytes, source,
                      max_ctx, roofline, roofline * KERNEL_EFFICIENCY, profile.name, profile.unified_memory)
    if not plan.fits:
        plan.suggestions.extend(_suggestions(plan, g, cfg, kv_type, budget_bytes, weights, scratch_of, overhead,
                                             n_slots, kv_of))
    return plan


def _suggestions(plan, g, cfg, kv_type, budget, weights, scratch_of, overhead, n_slots, kv_of) -> list[str]:
    from ..models.kvcache import kv_bytes

    out = []
    if plan.max_ctx >= CTX_STEP:
        out.append(f"a context of {plan.max_ctx} fits (--ctx {plan.max_ctx} or --ctx auto)")
    for other in ("q8_0", "f16"):
        if other == kv_type or plan.backend == "llama.cpp":
            continue
        need = weights + kv_bytes(other, n_slots, cfg.n_layer, cfg.n_head_kv, plan.n_ctx, cfg.head_dim)
        if need + scratch_of(plan.n_ctx) + overhead <= budget:
            out.append(f"--kv-type {other} fits this context")
            break
    short = plan.total_bytes - budget
    if short < weights:
        out.append(f"a smaller quant would have to save {short / MIB:.0f} MiB of the {weights / MIB:.0f} MiB of "
                   "weights (e.g. Q4_K_M)")
    if plan.max_ctx < CTX_STEP:
        floor = weights + kv_of(CTX_STEP) + scratch_of(CTX_STEP) + overhead
        out.append(f"even a {CTX_STEP}-token context needs {floor / MIB:.0f} MiB, so raise the budget to that "
                   "or use a smaller model")
    return out


def plan_folder(folder, cfg: ModelConfig, *, n_ctx: int | str | None = None, budget: str | int | None = None,
                device: str | None = None, backend: str = "onnxruntime") -> MemoryPlan:
    """The plan for a converted folder (ONNX on onnxruntime, TFLite on LiteRT): weights as the
    files hold them, a float32 KV cache, the runtime's activations for a full-context prefill
    (an estimate)."""
    from .host import detect_host
    from .profiles import get_profile, host_profile

    profile = get_profile(device) if device else host_profile(detect_host())
    budget_bytes = parse_size(budget)
    source = "--budget" if budget_bytes is not None else (f"{profile.name} usable memory" if device else
                                                          "available memory")
    budget_bytes = budget_bytes if budget_bytes is not None else profile.usable_bytes
    weights = sum(p.stat().st_size for pattern in ("model.onnx*", "*.tflite", "model.mlpackage/**/*")
                  for p in folder.glob(pattern) if p.is_file())
    overhead = RUNTIME_BYTES[backend] + VOCAB_BYTES_PER_TOKEN * cfg.vocab_size

    def kv_of(ctx: int) -> int:
        return 2 * 4 * cfg.n_layer * cfg.n_head_kv * ctx * cfg.head_dim

    def scratch_of(ctx: int) -> int:
        return 4 * (cfg.n_head * ctx * ctx // 8 + ctx * (cfg.vocab_size // 8 + 4 * cfg.n_embd + 2 * cfg.n_ff))

    def total(ctx: int) -> int:
        return weights + kv_of(ctx) + scratch_of(ctx) + overhead

    max_ctx = max((c for c in range(CTX_STEP, cfg.n_ctx_train + 1, CTX_STEP) if total(c) <= budget_bytes), default=0)
    ctx = max_ctx if n_ctx == "auto" else (int(n_ctx) if n_ctx else min(2048, cfg.n_ctx_train))
    roofline = profile.memory_bandwidth_gbps * 1e9 / (weights + kv_of(ctx) // 2)
    plan = MemoryPlan(backend, ctx, "f32", weights, kv_of(ctx), scratch_of(ctx), overhead, budget_bytes, source,
                      max_ctx, roofline, roofline * KERNEL_EFFICIENCY, profile.name, profile.unified_memory)
    if not plan.fits and max_ctx:
        plan.suggestions.append(f"a context of {max_ctx} fits (--ctx {max_ctx})")
    return plan
