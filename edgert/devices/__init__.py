"""Backends, device profiles, host detection and the memory planner.

Backends are chosen from an ordered list and imported when first used, never at
`import edgert`. Each backend module has `NAME`, `EXTRA` (the pip extra that installs it, or
None), `available() -> (bool, reason)` and `load(gguf, n_ctx, n_slots, threads, **options)`.
"""

from __future__ import annotations

import importlib
import logging

from ..errors import EdgertError

log = logging.getLogger(__name__)

BACKENDS = {"cpu": "edgert.devices.cpu", "llama.cpp": "edgert.devices.llamacpp", "onnxruntime": "edgert.devices.onnxrt",
            "litert": "edgert.devices.litert", "coreml": "edgert.devices.coreml"}
FOLDER_BACKENDS = ("onnxruntime", "litert", "coreml")  # they run a converted folder, never a GGUF file


def _module(name: str):
    return importlib.import_module(BACKENDS[name])


def available_backends() -> list[str]:
    return [n for n in BACKENDS if _module(n).available()[0]]


def get_backend(name: str, device: str | None = None):
    """The backend module called `name`, checked to be usable; 'auto' picks the first usable
    one in the order the device profile (or this host's kind) prefers, and logs the choice."""
    if name == "auto":
        order = _preferred_order(device)
        usable = [n for n in order if n in BACKENDS and n not in FOLDER_BACKENDS and _module(n).available()[0]]
        if not usable:
            raise EdgertError("no backend is usable on this machine; reinstall edgert with its dependencies.")
        skipped = [n for n in order if n in BACKENDS and n not in FOLDER_BACKENDS and n not in usable]
        log.info("backend auto: chose %s (preferred order %s%s)", usable[0], ", ".join(order),
                 f"; not installed: {', '.join(skipped)}" if skipped else "")
        return _module(usable[0])
    if name not in BACKENDS:
        raise EdgertError(f"unknown backend {name!r}; edgert has {', '.join(BACKENDS)} (usable here: "
                          f"{', '.join(available_backends())}).")
    mod = _module(name)
    ok, why = mod.available()
    if not ok:
        raise EdgertError(f"the {name} backend is not usable here: {why.rstrip('.')}; usable backends: "
                          f"{', '.join(available_backends())}.")
    return mod


def _preferred_order(device: str | None) -> tuple[str, ...]:
    """On a profile (or this host) whose accelerator llama.cpp drives, llama.cpp first: a CUDA or
    Metal build uses the GPU; elsewhere edgert's own CPU kernels."""
    from .host import detect_host
    from .profiles import KIND_BACKENDS, get_profile

    if device:
        return get_profile(device).backends
    return KIND_BACKENDS.get(detect_host().kind, ("cpu", "llama.cpp"))
