"""What this machine is: cores and memory, read from the OS without extra dependencies."""

from __future__ import annotations

import os


def logical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once); the default thread count."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return logical_cores()
    cores, phys, core = set(), None, None
    for line in text.splitlines() + [""]:
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = val.strip()
        elif key == "core id":
            core = val.strip()
        elif not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys = core = None
    n = len(cores) or logical_cores()
    return max(1, min(n, logical_cores()))
