"""edgert: edge and on-device LLM inference.

    import edgert
    m = edgert.load("smollm2-135m")
    for r in m.stream([{"role": "user", "content": "Hi"}]):
        print(r.text, end="", flush=True)

`import edgert` stays light: numba, the kernels and every backend load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import EdgertError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .model import Generation, Model


def load(name_or_path=None, backend: str = "auto", device: str | None = None, n_ctx: int | str | None = None,
         budget=None, threads: int | None = None, kv_type: str | None = None, progress: bool = False) -> Model:
    """Load a model by catalogue name (`smollm2-135m`) or .gguf path; see `edgert.model.load`."""
    from .model import load as _load

    return _load(name_or_path, backend=backend, device=device, n_ctx=n_ctx, budget=budget, threads=threads,
                 kv_type=kv_type, progress=progress)


def __getattr__(name: str):
    if name in ("Model", "Generation"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'edgert' has no attribute {name!r}")


__all__ = ["EdgertError", "Generation", "Model", "__version__", "load"]
