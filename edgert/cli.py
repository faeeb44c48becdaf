"""The `edgert` command: thin click commands over the Python API.

Tokens go to stdout, flushed as they come; statistics and progress go to stderr. A user's
mistake (EdgertError) ends as one sentence and exit status 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from .errors import EdgertError

DEFAULT_MODEL = "smollm2-135m"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgertError as e:
            raise click.ClickException(str(e)) from None
        except MemoryError as e:
            raise click.ClickException(f"out of memory: {e}; use a smaller --ctx or model.") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgert")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """edgert: run language models on the devices people own."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="edgert: %(message)s", stream=sys.stderr)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


class _Ctx(click.ParamType):
    """A context length, or 'auto' for the largest that fits the memory budget."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of tokens nor 'auto'", param, ctx)
        if n < 16:
            self.fail(f"{n} is below the smallest context, 16", param, ctx)
        return n


CTX = _Ctx()


def load_options(f):
    """Where and how a model loads: backend, device profile, memory budget, context, KV precision."""
    opts = [
        click.option("--backend", default="auto", show_default=True, envvar="EDGERT_BACKEND",
                     help="cpu (edgert's kernels), llama.cpp, or auto (from the device and what is installed)."),
        click.option("--device", default=None, help="Plan for a device profile (see `edgert devices`)."),
        click.option("--budget", default=None, help="Memory budget, e.g. 1.5GiB; a load that cannot fit is refused."),
        click.option("--ctx", type=CTX, default=None, help="Context length, or auto: the largest that fits [2048]."),
        click.option("--kv-type", type=click.Choice(["f32", "f16", "q8_0"]), default=None,
                     help="KV cache precision [cpu: f32, llama.cpp: f16]."),
        click.option("--threads", "-t", type=click.IntRange(min=1), default=None, envvar="EDGERT_THREADS",
                     help="CPU threads [default: the physical cores]."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def sampling_options(f):
    """The sampling and context flags `chat` and `run` share (llama.cpp's defaults)."""
    opts = [
        click.option("--temp", type=float, default=0.8, show_default=True, help="Temperature; 0 is greedy."),
        click.option("--top-k", type=int, default=40, show_default=True, help="Keep the k likeliest tokens (0: off)."),
        click.option("--top-p", type=float, default=0.95, show_default=True, help="Nucleus sampling threshold."),
        click.option("--min-p", type=float, default=0.05, show_default=True,
                     help="Drop tokens below min-p times the best one's probability."),
        click.option("--repeat-penalty", type=float, default=1.0, show_default=True,
                     help="Penalty on tokens seen in the last 64 (1.0: off)."),
        click.option("--seed", type=int, default=None, help="Seed for reproducible sampling."),
        click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Most tokens to generate."),
    ]
    for o in reversed(opts):
        f = o(f)
    return load_options(f)


def _sampling(kw: dict) -> dict:
    return {k: kw[k] for k in ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "max_tokens")}


def _load(model: str | None, kw: dict):
    import edgert

    m = edgert.load(model or DEFAULT_MODEL, backend=kw["backend"], device=kw["device"], n_ctx=kw["ctx"],
                    budget=kw["budget"], threads=kw["threads"], kv_type=kw["kv_type"], progress=True)
    if kw["backend"] == "auto":
        logging.getLogger("edgert").info("backend: %s (auto)", m.backend)
    return m


def _peak_rss() -> int | None:
    from .devices.host import peak_rss_bytes

    return peak_rss_bytes()


def _stats_line(r) -> str:
    return (f"[{r.prompt_tokens} prompt tokens at {r.prompt_tps:.1f} tok/s, "
            f"{r.generation_tokens} generated at {r.generation_tps:.1f} tok/s, finish: {r.finish_reason}]")


@cli.command()
@click.argument("model", required=False)
@click.option("--system", "-s", default=None, help="System prompt (else the template's default).")
@click.option("--stats/--no-stats", default=False, help="Print speed after each reply, on stderr.")
@sampling_options
def chat(model, system, stats, **kw):
    """Chat with MODEL (a catalogue name or .gguf path; default smollm2-135m).

    /reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops the current reply."""
    from .conversation import Conversation

    m = _load(model, kw)
    conv = Conversation(m, system=system, reserve=min(kw["max_tokens"], m.n_ctx // 2))
    _err(f"edgert: {m.path.name} on {m.backend} ({m.config.arch}, ctx {m.n_ctx}, KV {m.plan.kv_type}). "
         "/reset, /exit, Ctrl-D to leave.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return
        if text == "/reset":
            conv.reset()
            _err("[conversation cleared]")
            continue
        if text.startswith("/"):
            _err("commands: /reset, /exit")
            continue
        dropped = conv.add_user(text)
        if dropped:
            _err(f"[context full: dropped the {dropped} oldest message(s) to make room]")
        last, parts = None, []
        try:
            for r in m.stream(conv.messages, **_sampling(kw)):
                parts.append(r.text)
                sys.stdout.write(r.text)
                sys.stdout.flush()
                last = r
        except KeyboardInterrupt:
            _err("\n[reply stopped]")
        conv.add_assistant("".join(parts))
        click.echo()
        if stats and last is not None:
            _err(_stats_line(last))


@cli.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--chat", "as_chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--system", "-s", default=None, help="System prompt (with --chat).")
@click.option("--ignore-eos", is_flag=True, help="Generate exactly --max-tokens tokens (for benchmarks).")
@click.option("--stop", multiple=True, help="Stop at this string (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the text and stats.")
@sampling_options
def run(model, prompt, as_chat, system, ignore_eos, stop, as_json, **kw):
    """Stream one completion of PROMPT ('-' reads stdin) from MODEL."""
    if prompt == "-":
        prompt = sys.stdin.read()
    m = _load(model, kw)
    inp = prompt
    if as_chat:
        inp = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    parts, last = [], None
    try:
        for r in m.stream(inp, ignore_eos=ignore_eos, stop=list(stop), **_sampling(kw)):
            parts.append(r.text)
            if not as_json:
                sys.stdout.write(r.text)
                sys.stdout.flush()
            last = r
    except KeyboardInterrupt:
        _err("\n[stopped]")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps({
            "text": "".join(parts), "prompt_tokens": last.prompt_tokens, "tokens": last.generation_tokens,
            "prefill_tps": round(last.prompt_tps, 2), "decode_tps": round(last.generation_tps, 2),
            "finish_reason": last.finish_reason, "load_s": round(m.load_seconds, 3), "backend": m.backend,
            "n_ctx": m.n_ctx, "kv_type": m.plan.kv_type, "planned_bytes": m.plan.total_bytes,
            "peak_rss_bytes": _peak_rss(),
        }))
    else:
        click.echo()
        _err(_stats_line(last))


@cli.command()
@click.argument("name", default=DEFAULT_MODEL)
@click.option("--force", is_flag=True, help="Download again even when cached.")
def pull(name, force):
    """Download a catalogue model into the cache (default smollm2-135m)."""
    from .store import pull as _pull

    path = _pull(name, progress=True, force=force)
    click.echo(str(path))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List the models in the cache."""
    from .store import CATALOGUE, cache_dir, list_cached

    rows = list_cached()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "path": str(r.path), "size_bytes": r.size_bytes, "quant": r.quant}
                               for r in rows]))
        return
    if not rows:
        _err(f"no models cached in {cache_dir()}; `edgert pull` fetches {', '.join(CATALOGUE)}.")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "file", "size", "quant")
    for r in rows:
        t.add_row(r.name, str(r.path), f"{r.size_bytes / 1e6:.1f} MB", r.quant)
    Console().print(t)


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--json", "as_json", is_flag=True)
def inspect(model, as_json):
    """Architecture, sizes, tensor types, tokenizer and chat template of MODEL."""
    from .info import describe

    info = describe(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{info['path']}[/bold]")
    for k in ("name", "architecture", "parameters", "context_length", "layers", "embedding", "heads", "kv_heads",
              "head_dim", "ffn", "vocab_size", "rope_base", "tied_embeddings", "file_bytes", "tokenizer"):
        con.print(f"  {k:16} {info[k]}")
    t = Table("tensor type", "count", "bytes")
    for row in info["tensor_types"]:
        t.add_row(row["type"], str(row["count"]), f"{row['bytes']:,}")
    con.print(t)
    con.print("chat template:", style="bold")
    click.echo(info["chat_template"] or "(none; ChatML is used)")


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--threads", "-t", type=click.IntRange(min=1), default=None, help="Threads for every backend.")
@click.option("--prompt-tokens", "-p", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--gen-tokens", "-n", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--vs", "versus", default="", help="Comma-separated peers to race: llama.cpp.")
@click.option("--ctx", type=click.IntRange(min=16), default=None, help="Context for every backend [default: 512].")
@click.option("--no-startup", is_flag=True, help="Skip the child-process start-up and memory runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(model, threads, prompt_tokens, gen_tokens, repeat, versus, ctx, no_startup, as_json):
    """Prefill and decode speed, time to first token, start-up and peak memory, beside llama.cpp."""
    from .bench import run_bench
    from .devices.host import physical_cores
    from .store import resolve

    path = resolve(model, progress=True)
    threads = threads or physical_cores()
    peers = [v.strip() for v in versus.split(",") if v.strip()]
    res = run_bench(path, threads, prompt_tokens, gen_tokens, repeat, peers, n_ctx=ctx, starts=not no_startup,
                    progress=lambda msg: _err(f"bench: {msg}"))
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    cols = [("prefill tok/s", "prefill_tps", "{:.1f}"), ("decode tok/s", "decode_tps", "{:.1f}"),
            ("TTFT s", "ttft_s", "{:.3f}"), ("load s", "load_s", "{:.2f}"), ("warm start s", "warm_start_s", "{:.2f}"),
            ("compile s", "compile_s", "{:.1f}"), ("peak RSS MB", "peak_rss_bytes", "{:.0f}")]
    t = Table(title=f"{path.name}: {threads} threads, {prompt_tokens}-token prompt, {gen_tokens} generated, "
                    f"median of {repeat}")
    t.add_column("backend")
    for c in cols:
        t.add_column(c[0], justify="right")
    for r in res["results"]:
        cells = []
        for _, k, fmt in cols:
            v = r.get(k)
            cells.append("-" if v is None else fmt.format(v / 1e6 if k == "peak_rss_bytes" else v))
        t.add_row(r["backend"], *cells)
    if "ratios" in res:
        cells = [f"{res['ratios'][k]:.2f}" if k in res["ratios"] else "" for _, k, _ in cols]
        t.add_row("edgert / llama.cpp", *cells, style="bold")
    Console().print(t)


@cli.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--backend", default="cpu", show_default=True, help="cpu or llama.cpp.")
@click.option("--device", default=None, help="A device profile (see `edgert devices`) [default: this host].")
@click.option("--ctx", type=CTX, default=None, help="Context length or auto [2048].")
@click.option("--kv-type", type=click.Choice(["f32", "f16", "q8_0"]), default=None)
@click.option("--budget", default=None, help="Memory budget, e.g. 1.5GiB [default: the device's usable memory].")
@click.option("--threads", "-t", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True)
def plan(model, backend, device, ctx, kv_type, budget, threads, as_json):
    """Will MODEL fit? Memory it will take, before loading anything, and an estimate of its speed."""
    from .devices.cpu import model_config
    from .devices.plan import MIB, plan_memory
    from .formats.gguf import read_gguf
    from .store import resolve

    g = read_gguf(resolve(model, progress=True))
    kv_type = kv_type or ("f16" if backend == "llama.cpp" else "f32")
    p = plan_memory(g, model_config(g), backend=backend, n_ctx=ctx, kv_type=kv_type, budget=budget, device=device,
                    threads=threads)
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2))
    else:
        lines = [f"{g.path.name} on {backend}, device {p.device}, context {p.n_ctx}, KV {p.kv_type}",
                 f"  weights   {p.weights_bytes / MIB:9.1f} MiB", f"  KV cache  {p.kv_bytes / MIB:9.1f} MiB",
                 f"  scratch   {p.scratch_bytes / MIB:9.1f} MiB", f"  runtime   {p.overhead_bytes / MIB:9.1f} MiB",
                 f"  total     {p.total_bytes / MIB:9.1f} MiB of {p.budget_bytes / MIB:.0f} MiB ({p.budget_source})"
                 f": {'fits' if p.fits else 'does NOT fit'}",
                 f"  largest context that fits: {p.max_ctx}",
                 *(["  unified memory: weights and KV cache offloaded to the GPU count against this same budget"]
                   if p.unified_memory else []),
                 f"  decode: about {p.predicted_decode_tps:.0f} tok/s (an estimate: the memory-bandwidth bound is "
                 f"{p.roofline_decode_tps:.0f} tok/s)"]
        lines += [f"  to fit: {s}" for s in p.suggestions]
        click.echo("\n".join(lines))
    if not p.fits:
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """This host as detected, and the device profiles edgert plans for."""
    from .devices.profiles import format_devices

    click.echo(format_devices(as_json=as_json))


@cli.command()
@click.argument("src")
@click.option("--to", "targets", default="gguf", show_default=True, help="Comma-separated targets: gguf.")
@click.option("--quant", "-q", default="q8_0", show_default=True,
              help="f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k, q4_k_m, or generic q4, q8.")
@click.option("--out", "-o", required=True, help="Output folder (one subfolder per target).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result rows as JSON.")
def convert(src, targets, quant, out, force, as_json):
    """Convert SRC (a .gguf file, a Hugging Face checkpoint folder or a catalogue name) and check
    every artifact against it; parity.json lands beside each artifact."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .converters.convert import convert as _convert
    from .store import resolve

    source = resolve(src, progress=True)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("converting", total=None)
        rows = _convert(source, [t.strip() for t in targets.split(",") if t.strip()], quant, out, force=force,
                        progress=lambda msg: bar.update(task, description=msg))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table("artifact", "size", "quant", "seconds", "top-1 vs source", "max |diff|")
    for r in rows:
        t.add_row(r["artifact"], f"{r['bytes'] / 1e6:.1f} MB", r["quant"], f"{r['seconds']:.1f}", f"{r['top1']:.1%}",
                  f"{r['max_abs_diff']:.3f}")
    Console().print(t)


@functools.wraps(cli)
def main(*args, **kwargs):
    return cli(*args, **kwargs)


if __name__ == "__main__":  # pragma: no cover
    main()
