"""What this machine is: cores, memory, SIMD features and the kind of device, read from the OS without extra
dependencies.

Every file is read under `root`, so a test can fake a Jetson, a phone or a Raspberry Pi by writing files into a
temporary folder. macOS facts come from `sysctl`, run only when the system is Darwin (and injectable for tests).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge page-aligned number

# /proc/cpuinfo "flags" (x86) worth reporting for the kernels, in this order.
_X86_SIMD = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
# /proc/cpuinfo "Features" (Arm) -> the name edgert reports.
_ARM_SIMD = {"asimd": "neon", "neon": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm",
             "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme"}
# macOS machdep.cpu.features tokens that differ from the Linux names.
_MAC_X86_NAMES = {"sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}
# Arm "CPU part" numbers (implementer 0x41) -> core names, for cpuinfo that only says "ARMv8 Processor".
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
              "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78",
              "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
              "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520",
              "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1"}
KINDS = ("jetson", "android", "ios", "apple-silicon", "raspberry-pi", "generic")


@dataclass(frozen=True)
class HostInfo:
    """One machine as detected. `kind` is one of KINDS; `unified_memory` means the accelerator edgert's backends
    use shares main memory with the CPU (Jetson, Apple Silicon, phones), so one budget covers both."""

    kind: str
    model_name: str
    cpu_model: str
    arch: str
    system: str
    os_name: str
    python: str
    physical_cores: int
    logical_cores: int
    simd: tuple[str, ...]
    total_memory_bytes: int
    available_memory_bytes: int
    memory_limit_bytes: int | None  # a cgroup limit below the physical memory, when one applies
    unified_memory: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["simd"] = list(self.simd)
        return d


def logical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once); the default thread count."""
    text = _read("/", "proc/cpuinfo")
    n = _count_physical(_cpuinfo_blocks(text)) if text else 0
    return max(1, min(n or logical_cores(), logical_cores()))


def _read(root: str | os.PathLike, rel: str) -> str | None:
    try:
        return (Path(root) / rel.lstrip("/")).read_text(errors="replace").replace("\x00", " ").strip()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    import subprocess  # only macOS needs it

    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _cpuinfo_blocks(text: str | None) -> list[dict[str, str]]:
    blocks, cur = [], {}
    for line in (text or "").splitlines() + [""]:
        key, sep, val = line.partition(":")
        if sep:
            cur[key.strip()] = val.strip()
        elif not line.strip() and cur:
            blocks.append(cur)
            cur = {}
    return blocks


def _count_physical(blocks: list[dict[str, str]]) -> int:
    return len({(b.get("physical id"), b["core id"]) for b in blocks if "core id" in b})


def _count_logical(blocks: list[dict[str, str]]) -> int:
    return sum(1 for b in blocks if b.get("processor", "").isdigit())


def _cpu_model(blocks: list[dict[str, str]]) -> str:
    parts = [_ARM_PARTS.get(b.get("CPU part", "").lower()) for b in blocks if b.get("CPU implementer") == "0x41"]
    parts = [p for p in parts if p]
    if parts:  # Arm: name the cores, big.LITTLE clusters included ("4x Cortex-A76", "1x Cortex-X4 + 5x ...")
        return " + ".join(f"{parts.count(p)}x {p}" for p in dict.fromkeys(parts))
    for b in blocks:
        for key in ("model name", "Hardware", "cpu model", "Processor"):
            if b.get(key) and not b[key].isdigit():
                return b[key]
    return ""


def _simd_from_flags(flags: set[str]) -> tuple[str, ...]:
    found = [f for f in _X86_SIMD if f in flags]
    found += [name for feat, name in _ARM_SIMD.items() if feat in flags]
    return tuple(dict.fromkeys(found))


def _meminfo(root) -> tuple[int, int] | None:
    text = _read(root, "proc/meminfo")
    if not text:
        return None
    kb = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if val.split() and val.split()[0].isdigit():
            kb[key.strip()] = int(val.split()[0]) * 1024
    if "MemTotal" not in kb:
        return None
    avail = kb.get("MemAvailable", kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0))
    return kb["MemTotal"], avail


def _cgroup_memory(root) -> tuple[int, int | None] | None:
    """(limit, usage) of this process's cgroup (v2 memory.max, or v1 memory.limit_in_bytes), the tightest
    limit on the path up to the cgroup root; None when there is no limit."""
    v2, v1 = "/", "/"
    for line in (_read(root, "proc/self/cgroup") or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            v2 = path or "/"
        elif "memory" in controllers.split(","):
            v1 = path or "/"
    best = None
    for base, path, lim_name, use_name in (("sys/fs/cgroup", v2, "memory.max", "memory.current"),
                                           ("sys/fs/cgroup/memory", v1, "memory.limit_in_bytes",
                                            "memory.usage_in_bytes")):
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts), -1, -1):
            folder = "/".join([base] + parts[:i])
            raw = _read(root, f"{folder}/{lim_name}")
            if raw is None or not raw.isdigit() or int(raw) >= _UNLIMITED:
                continue
            usage = _read(root, f"{folder}/{use_name}")
            if best is None or int(raw) < best[0]:
                best = (int(raw), int(usage) if usage and usage.isdigit() else None)
    return best


def _props(root) -> dict[str, str]:
    props = {}
    for rel in ("system/build.prop", "vendor/build.prop", "product/etc/build.prop"):
        for line in (_read(root, rel) or "").splitlines():
            key, sep, val = line.partition("=")
            if sep and not key.startswith("#"):
                props.setdefault(key.strip(), val.strip())
    return props


def _os_release(root) -> str:
    for line in (_read(root, "etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def _l4t(release_line: str) -> str:
    """'# R36 (release), REVISION: 3.0, ...' -> 'L4T R36.3.0'."""
    fields = release_line.lstrip("# ").split(",")
    major = fields[0].split()[0] if fields and fields[0].split() else ""
    rev = next((f.split(":", 1)[1].strip() for f in fields if "REVISION" in f), "")
    return f"L4T {major}.{rev}" if major and rev else (f"L4T {major}" if major else "")


def detect_host(root: str | os.PathLike = "/", *, system: str | None = None, machine: str | None = None,
                env: Mapping[str, str] | None = None, sysctl: Callable[[str], str | None] | None = None) -> HostInfo:
    """Detect this machine (or the file tree under `root`). `system`, `machine`, `env` and `sysctl` default to
    platform.system(), platform.machine(), os.environ and running `sysctl -n NAME`; tests pass their own."""
    system = system if system is not None else platform.system()
    machine = machine if machine is not None else platform.machine()
    env = os.environ if env is None else env
    darwin = system == "Darwin"
    ctl = (sysctl or _sysctl) if darwin else (lambda name: None)
    real = Path(root).resolve() == Path("/").resolve()

    blocks = _cpuinfo_blocks(_read(root, "proc/cpuinfo"))
    flags = {f for b in blocks for key in ("flags", "Features") for f in b.get(key, "").lower().split()}
    cpu_model = _cpu_model(blocks)
    logical = _count_logical(blocks) or logical_cores()
    physical = min(_count_physical(blocks) or logical, logical)
    if real and blocks:  # the affinity mask (taskset, containers) bounds what this process may use
        logical = min(logical, logical_cores())
        physical = min(physical, logical)
    simd = _simd_from_flags(flags)

    dt_model = _read(root, "proc/device-tree/model") or ""
    dt_compat = (_read(root, "proc/device-tree/compatible") or "").lower()
    tegra = _read(root, "etc/nv_tegra_release")
    os_name = _os_release(root)
    model_name = dt_model

    android = bool(env.get("ANDROID_ROOT") or env.get("ANDROID_DATA")) or system == "Android"
    if android or (Path(root) / "system/build.prop").exists():
        kind = "android"
        props = _props(root)
        maker = props.get("ro.product.manufacturer") or props.get("ro.product.vendor.manufacturer", "")
        model = props.get("ro.product.model") or props.get("ro.product.vendor.model", "")
        model_name = " ".join(x for x in (maker, model) if x) or dt_model
        os_name = f"Android {props['ro.build.version.release']}" if "ro.build.version.release" in props else "Android"
        cpu_model = cpu_model or props.get("ro.soc.model", "") or props.get("ro.board.platform", "")
    elif tegra is not None or "nvidia jetson" in dt_model.lower() or "nvidia,tegra" in dt_compat:
        kind = "jetson"
        l4t = _l4t(tegra.splitlines()[0]) if tegra else ""
        model_name = dt_model or "NVIDIA Jetson"
        os_name = f"{os_name} ({l4t})" if os_name and l4t else (os_name or l4t)
    elif system in ("iOS", "iPadOS"):
        kind = "ios"
    elif darwin and machine.lower() in ("arm64", "aarch64"):
        kind = "apple-silicon"
    elif "raspberry pi" in dt_model.lower():
        kind = "raspberry-pi"
    else:
        kind = "generic"
        if not model_name:
            dmi = [_read(root, f"sys/devices/virtual/dmi/id/{k}") or "" for k in ("sys_vendor", "product_name")]
            model_name = " ".join(x for x in dmi if x)

    limit, mem, memsize = None, _meminfo(root), ctl("hw.memsize") or ""
    if mem is not None:
        total, avail = mem
        cg = _cgroup_memory(root)
        if cg is not None and cg[0] < total:
            limit = cg[0]
            total, avail = limit, min(avail, max(0, limit - cg[1]) if cg[1] is not None else limit)
    elif memsize.isdigit():
        total = int(memsize)
        level = ctl("kern.memorystatus_level")  # percent of memory free or reclaimable
        avail = total * int(level) // 100 if level and level.isdigit() else total
    else:
        total, avail = _sysconf_memory() if real else (0, 0)

    if darwin:
        cpu_model = ctl("machdep.cpu.brand_string") or cpu_model
        model_name = model_name or ctl("hw.model") or ""
        version = ctl("kern.osproductversion") or platform.mac_ver()[0]
        os_name = f"macOS {version}".strip()
        phys, log = ctl("hw.physicalcpu"), ctl("hw.logicalcpu")
        logical = int(log) if log and log.isdigit() else logical
        physical = int(phys) if phys and phys.isdigit() else min(physical, logical)
        simd = _mac_simd(ctl, kind == "apple-silicon") or simd

    return HostInfo(kind=kind, model_name=model_name, cpu_model=cpu_model, arch=machine,
                    system=system, os_name=os_name or f"{system} {platform.release()}".strip(),
                    python=sys.version.split()[0], physical_cores=max(1, physical), logical_cores=max(1, logical),
                    simd=simd, total_memory_bytes=total, available_memory_bytes=min(avail, total),
                    memory_limit_bytes=limit, unified_memory=kind in ("jetson", "android", "ios", "apple-silicon"))


def _mac_simd(ctl: Callable[[str], str | None], arm: bool) -> tuple[str, ...]:
    if arm:
        found = ["neon"]
        for key, name in (("FEAT_FP16", "fp16"), ("FEAT_DotProd", "dotprod"), ("FEAT_I8MM", "i8mm"),
                          ("FEAT_BF16", "bf16"), ("FEAT_SME", "sme")):
            if ctl(f"hw.optional.arm.{key}") == "1":
                found.append(name)
        return tuple(found)
    tokens = f"{ctl('machdep.cpu.features') or ''} {ctl('machdep.cpu.leaf7_features') or ''}".lower().split()
    return _simd_from_flags({_MAC_X86_NAMES.get(t, t) for t in tokens})


def _sysconf_memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0, 0
    try:
        return total, page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return total, total


def matching_profile(host: HostInfo) -> str | None:
    """The catalogue profile (edgert.devices.profiles.PROFILES) closest to `host`, or None when none is close."""
    gib = host.total_memory_bytes / GIB
    model = host.model_name.lower()
    if host.kind == "jetson":
        if "orin nano" in model:
            return "jetson-orin-nano-8gb"
        if "agx orin" in model:
            return "jetson-agx-orin-64gb" if gib > 40 else "jetson-agx-orin-32gb"
        return None
    if host.kind == "android":
        return "android-6gb" if gib < 6.5 else "android-8gb"
    if host.kind == "ios":
        return "iphone-8gb"
    if host.kind == "apple-silicon":
        return "apple-silicon-laptop-8gb" if gib < 12 else "apple-silicon-laptop-16gb"
    if host.kind == "raspberry-pi":
        return "raspberry-pi-5-8gb" if "raspberry pi 5" in model else None
    return "generic-laptop-8gb" if gib < 12 else "generic-laptop-16gb"


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory: Linux VmHWM (which, unlike ru_maxrss, does not count a
    forked parent's pages from before exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return None
