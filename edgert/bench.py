"""`edgert bench`: edgert beside llama.cpp on the same GGUF file and thread count.

Throughput is measured in this process, the backends interleaved (A, B, A, B, ...) so that
a noisy neighbour slows both alike: a prefill of the same prompt ids, then greedy decode of
`gen_tokens` tokens. edgert runs through its own generation layer (`Model.stream`, samplers
and detokenizer included); llama.cpp through `Llama.eval` and an argmax, its fastest path.
Start-up and memory are measured in child processes, one per backend, so that neither
counts the other's memory: peak resident set (the kernel's ru_maxrss for that child), time
from process start to first token with the kernel cache warm, and for edgert the same with
an empty Numba cache (first-run compile = cold start - warm start).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgertError

BACKENDS = ("edgert", "llama.cpp")
TEXT = ("The history of computing is a story of machines that became smaller, cheaper and closer to the people "
        "who use them. Mainframes filled rooms, minicomputers filled cabinets, and personal computers sat on "
        "desks; today a phone in a pocket runs programs that once needed a data centre. ")


def _repeat(ids: list[int], n: int) -> list[int]:
    return (ids * (n // len(ids) + 1))[:n]


class _Edgert:
    name = "edgert"

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import edgert

        t0 = time.perf_counter()
        self.model = edgert.load(str(path), n_ctx=n_ctx, threads=threads)
        self.load_s = time.perf_counter() - t0

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False)

    def run(self, ids: list[int], gen: int) -> tuple[float, float, float]:
        """(prefill seconds, time to first token, decode seconds for gen-1 tokens)."""
        self.model.reset()
        t0 = time.perf_counter()
        t_first = t_last = None
        n = 0
        for r in self.model.stream(ids, temp=0, max_tokens=gen, ignore_eos=True):
            if r.token is None:
                break
            n += 1
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            t_last = now
        if n < gen:
            raise EdgertError(f"edgert stopped after {n} of {gen} tokens; raise --ctx.")
        ttft = t_first - t0
        return ttft, ttft, t_last - t_first


class _LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: Path, threads: int, n_ctx: int):
        try:
            import llama_cpp
        except ImportError:
            raise EdgertError("llama.cpp comparison needs llama-cpp-python: pip install 'edgert[llama]'.") from None
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.load_s = time.perf_counter() - t0

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def run(self, ids: list[int], gen: int) -> tuple[float, float, float]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t_prefill = time.perf_counter() - t0
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t_first = time.perf_counter()
        for _ in range(gen - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return t_prefill, t_first - t0, time.perf_counter() - t_first


@dataclass
class Result:
    backend: str
    prefill_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    load_s: float = 0.0
    start: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def stat(v: list[float]) -> dict:
            return {"median": statistics.median(v), "min": min(v), "max": max(v)}

        out = {
            "backend": self.backend,
            "prefill_tps": statistics.median(self.prefill_tps),
            "decode_tps": statistics.median(self.decode_tps),
            "ttft_s": statistics.median(self.ttft_s),
            "load_s": self.load_s,
            "spread": {"prefill_tps": stat(self.prefill_tps), "decode_tps": stat(self.decode_tps),
                       "ttft_s": stat(self.ttft_s)},
        }
        out.update(self.start)
        return out


def _child_run(backend: str, path: Path, threads: int, n_ctx: int, n_prompt: int, n_gen: int,
               cache_dir: str | None) -> dict:
    """Start a fresh interpreter that loads `backend`, prefills and decodes; returns its report
    with the peak resident memory the kernel measured for it."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    args = [sys.executable, "-m", "edgert.bench", backend, str(path), str(threads), str(n_ctx), str(n_prompt),
            str(n_gen)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.time()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            tail = err.read().decode(errors="replace").strip()[-400:]
            raise EdgertError(f"the {backend} start-up run failed: {tail}")
        report = json.loads(out.read())
    report["start_to_first_token_s"] = report["t_first_token"] - t0
    if report.get("peak_rss_bytes") is None:  # no /proc: the kernel's figure for the child
        report["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return report


def _child_main(argv: list[str]) -> None:
    from .devices.host import peak_rss_bytes

    """In a fresh process: a short prompt to the first token (the start-up a user waits for),
    then the full prompt and generation, so the peak memory covers a real run."""
    backend, path, threads, n_ctx, n_prompt, n_gen = argv[0], Path(argv[1]), *map(int, argv[2:])
    cls = _Edgert if backend == "edgert" else _LlamaCpp
    b = cls(path, threads, n_ctx)
    ids = b.tokenize(TEXT)  # each backend's own tokenizer: no second vocabulary in memory
    t_before = time.time()
    ttft, _, _ = b.run(ids[:8], 2)
    t_first = t_before + ttft
    b.run(_repeat(ids, n_prompt), n_gen)
    print(json.dumps({"t_first_token": t_first, "load_s": b.load_s, "peak_rss_bytes": peak_rss_bytes()}))


def run_bench(model_path: Path, threads: int, n_prompt: int, n_gen: int, repeat: int, versus: list[str],
              n_ctx: int | None = None, starts: bool = True, progress=None) -> dict:
    n_ctx = n_ctx or max(512, n_prompt + n_gen + 8)
    from .devices.onnxrt import is_onnx_folder

    if is_onnx_folder(model_path) and any(v != "edgert" for v in versus):
        raise EdgertError(f"{model_path} is an ONNX folder; --vs compares on a GGUF file, so bench it alone.")
    names = ["edgert"] + [v for v in versus if v != "edgert"]
    for name in names:
        if name not in BACKENDS:
            raise EdgertError(f"unknown backend {name!r} for --vs; known: {', '.join(BACKENDS[1:])}.")
    # start-up and memory first, in children, while this process holds no model or thread pool
    starts_by = {}
    for name in names if starts else ():
        if progress:
            progress(f"start-up and memory: {name}")
        warm = _child_run(name, model_path, threads, n_ctx, n_prompt, n_gen, None)
        start = {"peak_rss_bytes": warm["peak_rss_bytes"], "warm_start_s": warm["start_to_first_token_s"]}
        if name == "edgert":
            with tempfile.TemporaryDirectory(prefix="edgert-cold-") as cold_dir:
                cold = _child_run(name, model_path, threads, n_ctx, 8, 2, cold_dir)
            start["cold_start_s"] = cold["start_to_first_token_s"]
            start["compile_s"] = max(0.0, cold["start_to_first_token_s"] - warm["start_to_first_token_s"])
        starts_by[name] = start
    runners = [(_Edgert if name == "edgert" else _LlamaCpp)(model_path, threads, n_ctx) for name in names]
    ids = _repeat(runners[0].tokenize(TEXT), n_prompt)  # the same ids for every backend
    results = {r.name: Result(r.name, load_s=r.load_s, start=starts_by.get(r.name, {})) for r in runners}
    for r in runners:  # one untimed pass each: page in weights, load cached kernels
        r.run(ids[: min(16, len(ids))], 2)
    for i in range(repeat):
        for r in runners:
            if progress:
                progress(f"repeat {i + 1}/{repeat}: {r.name}")
            t_prefill, ttft, t_decode = r.run(ids, n_gen)
            res = results[r.name]
            res.prefill_tps.append(len(ids) / t_prefill)
            res.decode_tps.append((n_gen - 1) / t_decode)
            res.ttft_s.append(ttft)
    out = {
        "model": str(model_path), "threads": threads, "prompt_tokens": n_prompt, "gen_tokens": n_gen,
        "repeat": repeat, "n_ctx": n_ctx, "edgert_backend": runners[0].model.backend,
        "results": [results[n].summary() for n in names],
    }
    if "llama.cpp" in results:
        e, lc = out["results"][0], out["results"][names.index("llama.cpp")]
        out["ratios"] = {k: e[k] / lc[k] for k in ("prefill_tps", "decode_tps", "ttft_s", "load_s",
                                                  "peak_rss_bytes", "warm_start_s") if k in e and k in lc}
    return out


if __name__ == "__main__":
    _child_main(sys.argv[1:])
