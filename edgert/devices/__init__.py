"""Backends (and, later, device profiles and the memory planner).

Backends are chosen from an ordered list and imported when first used, never at
`import edgert`. Each module has `NAME`, `available() -> (bool, reason)` and `load(...)`.
"""

from __future__ import annotations

import importlib

from ..errors import EdgertError

BACKENDS = {"cpu": "edgert.devices.cpu"}
ORDER = ("cpu",)


def get_backend(name: str):
    """The backend module called `name` ('auto' picks the first available), checked to be usable."""
    if name == "auto":
        for cand in ORDER:
            mod = importlib.import_module(BACKENDS[cand])
            if mod.available()[0]:
                return mod
        raise EdgertError("no backend is usable on this machine; reinstall edgert with its dependencies.")
    if name not in BACKENDS:
        raise EdgertError(f"unknown backend {name!r}; available backends: {', '.join(ORDER)}.")
    mod = importlib.import_module(BACKENDS[name])
    ok, why = mod.available()
    if not ok:
        raise EdgertError(f"the {name} backend is not usable here: {why}")
    return mod
