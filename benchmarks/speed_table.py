"""Reproduce the README's speed table: `edgert bench --vs llama.cpp` on the default model and on
its Q8_0 and Q4_K_M-style variants (written by benchmarks/variants.py), same threads.

    python benchmarks/speed_table.py [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(model: str, threads: int, repeat: int, startup: bool) -> dict:
    cmd = ["edgert", "bench", model, "--vs", "llama.cpp", "--threads", str(threads), "--repeat", str(repeat),
           "--json"] + ([] if startup else ["--no-startup"])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    variants = subprocess.run([sys.executable, str(HERE / "variants.py")], check=True, capture_output=True,
                              text=True).stdout.split()
    rows = []
    for i, model in enumerate(["smollm2-135m", *variants]):
        res = bench(model, args.threads, args.repeat, startup=i == 0)
        e, lc = res["results"]
        r = res["ratios"]
        name = Path(res["model"]).name.replace("SmolLM2-135M-Instruct.", "").replace(".gguf", "")
        rows.append(f"| {name} | {e['prefill_tps']:.0f} | {lc['prefill_tps']:.0f} | **{r['prefill_tps']:.2f}** | "
                    f"{e['decode_tps']:.0f} | {lc['decode_tps']:.0f} | **{r['decode_tps']:.2f}** |")
        if i == 0:
            first = (e, lc, r)
    print(f"SmolLM2-135M-Instruct, {args.threads} threads, 256-token prompt, 128 generated, median of "
          f"{args.repeat}, interleaved; {cpu_name()}, {platform.system()} {platform.machine()}.\n")
    print("| quant | edgert prefill tok/s | llama.cpp | ratio | edgert decode tok/s | llama.cpp | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    e, lc, r = first
    print(f"\nQ4_1 start-up and memory: peak RSS {e['peak_rss_bytes'] / 1e6:.0f} MB against "
          f"{lc['peak_rss_bytes'] / 1e6:.0f} MB (ratio {r['peak_rss_bytes']:.2f}); process start to first token "
          f"{e['warm_start_s']:.2f} s warm against {lc['warm_start_s']:.2f} s; first run compiles for "
          f"{e['compile_s']:.1f} s.")


if __name__ == "__main__":
    main()
