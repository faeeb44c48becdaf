"""Target device profiles: how much memory a model may really use on each kind of device people own, how fast that
memory streams (decode speed is bounded by bandwidth / bytes of weights read per token), and which edgert backends
and artifact formats suit it. The memory planner and `edgert devices` read these.

Bandwidths are theoretical peaks from vendor specifications (or bus width x transfer rate where the vendor gives
only the memory type); sustained bandwidth is lower, often 60-80 % of peak. Usable fractions are what an app can
count on after the OS and its services, not what the OS reports as free at one moment; where no vendor publishes a
figure, the comment says it is an assumption.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ..errors import EdgertError
from .host import GIB, HostInfo, detect_host, matching_profile

# The artifact format each backend loads.
BACKEND_FORMATS = {"cpu": "gguf", "llama.cpp": "gguf", "onnxruntime": "onnx", "litert": "tflite", "coreml": "coreml"}
# Backends that suit a detected kind of host, best first.
KIND_BACKENDS = {
    "jetson": ("llama.cpp", "onnxruntime", "cpu"),  # CUDA builds of llama.cpp / onnxruntime use the GPU
    "android": ("litert", "llama.cpp", "onnxruntime", "cpu"),
    "ios": ("coreml", "llama.cpp", "cpu"),
    "apple-silicon": ("llama.cpp", "coreml", "cpu"),  # llama.cpp runs on the GPU through Metal
    "raspberry-pi": ("cpu", "llama.cpp", "onnxruntime", "litert"),
    "generic": ("cpu", "llama.cpp", "onnxruntime"),
}


@dataclass(frozen=True)
class DeviceProfile:
    """A target device. `memory_bytes` is the installed memory; `usable_fraction` the share of it one app can use;
    `memory_bandwidth_gbps` the peak in GB/s (10^9 bytes/s); `unified_memory`: the accelerator shares main memory."""

    name: str
    title: str
    memory_bytes: int
    usable_fraction: float
    memory_bandwidth_gbps: float
    cpu_cores: int
    accelerators: tuple[str, ...]
    unified_memory: bool
    formats: tuple[str, ...]
    backends: tuple[str, ...]
    notes: str = ""

    def __post_init__(self):
        if self.memory_bytes <= 0 or not 0 < self.usable_fraction <= 1 or self.memory_bandwidth_gbps <= 0:
            raise ValueError(f"device profile {self.name!r}: memory, usable fraction or bandwidth out of range")
        unknown = [b for b in self.backends if b not in BACKEND_FORMATS]
        if not self.backends or unknown:
            raise ValueError(f"device profile {self.name!r}: no backends or unknown ones {unknown}")

    @property
    def usable_bytes(self) -> int:
        """Memory a model (weights, KV cache, scratch) may take on this device."""
        return int(self.memory_bytes * self.usable_fraction)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("accelerators", "formats", "backends"):
            d[key] = list(d[key])
        d["usable_bytes"] = self.usable_bytes
        return d


def _formats(backends: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(BACKEND_FORMATS[b] for b in backends))


def _profile(name: str, title: str, gib: float, usable: float, gbps: float, cores: int, accelerators: tuple[str, ...],
             unified: bool, backends: tuple[str, ...], notes: str = "") -> DeviceProfile:
    return DeviceProfile(name, title, int(gib * GIB), usable, gbps, cores, accelerators, unified, _formats(backends),
                         backends, notes)


_CATALOGUE = (
    # 8 GB usually sits in one SO-DIMM or one LPDDR package set: one 64-bit DDR4-3200 channel, 3200 MT/s x 8 bytes
    # = 25.6 GB/s (JEDEC JESD79-4 speed bin). Usable 0.7: the desktop OS and a browser hold the rest (assumption).
    _profile("generic-laptop-8gb", "Laptop, 8 GB (x86, single-channel DDR4-3200)", 8, 0.70, 25.6, 4, (), False,
             ("cpu", "llama.cpp", "onnxruntime"), "integrated GPU not used; usable share is an assumption"),
    # Two 64-bit DDR4-3200 channels: 2 x 25.6 = 51.2 GB/s (JEDEC JESD79-4). Usable 0.75: assumption, as above.
    _profile("generic-laptop-16gb", "Laptop, 16 GB (x86, dual-channel DDR4-3200)", 16, 0.75, 51.2, 8, (), False,
             ("cpu", "llama.cpp", "onnxruntime"), "integrated GPU not used; usable share is an assumption"),
    # Apple M2 / M3: 8-core CPU (4P + 4E), up to 10-core GPU, 16-core Neural Engine, 100 GB/s unified memory
    # (Apple's M2 and M3 product specifications). Usable 2/3: Metal's recommendedMaxWorkingSetSize is 10922.67 MB
    # on a 16 GB Mac and 5461.34 MB on 8 GB (llama.cpp ggml_metal_init logs, e.g. llama-cpp-python issue #687).
    _profile("apple-silicon-laptop-8gb", "MacBook Air, Apple M2/M3, 8 GB", 8, 0.66, 100.0, 8,
             ("8-10 core GPU (Metal)", "16-core Neural Engine"), True, ("llama.cpp", "coreml", "cpu"),
             "GPU working set limited to about 2/3 of memory by Metal"),
    _profile("apple-silicon-laptop-16gb", "MacBook Air/Pro, Apple M2/M3, 16 GB", 16, 0.66, 100.0, 8,
             ("8-10 core GPU (Metal)", "16-core Neural Engine"), True, ("llama.cpp", "coreml", "cpu"),
             "GPU working set limited to about 2/3 of memory by Metal"),
    # Raspberry Pi 5 product brief: BCM2712, 4x Cortex-A76 at 2.4 GHz, LPDDR4X-4267 on a 32-bit bus:
    # 4267 MT/s x 4 bytes = 17.1 GB/s. Usable 0.85: Raspberry Pi OS Lite, headless (assumption).
    _profile("raspberry-pi-5-8gb", "Raspberry Pi 5, 8 GB", 8, 0.85, 17.1, 4, (), False,
             ("cpu", "llama.cpp", "onnxruntime", "litert"), "VideoCore VII GPU has no compute backend; CPU only"),
    # NVIDIA Jetson Orin Nano Series data sheet: 6x Cortex-A78AE, 1024-core Ampere GPU with 32 Tensor Cores, no
    # DLA, 8 GB 128-bit LPDDR5 at 68 GB/s (102 GB/s in the JetPack 6.1+ "Super" 25 W mode; 68 is the safe figure).
    # Usable 0.70: the kernel's carve-outs and the Ubuntu desktop take ~2 GB (CUDA deviceQuery on an Orin NX 16 GB
    # reports 14486 MB of 16384); headless boards get about 0.8.
    _profile("jetson-orin-nano-8gb", "NVIDIA Jetson Orin Nano 8 GB", 8, 0.70, 68.0, 6,
             ("Ampere GPU, 1024 CUDA cores, 32 Tensor Cores",), True, ("llama.cpp", "onnxruntime", "cpu"),
             "CPU and GPU share the 8 GB; desktop on"),
    # NVIDIA Jetson AGX Orin Series data sheet / technical brief: the 32 GB module has 8x Cortex-A78AE, a 1792-core
    # Ampere GPU with 56 Tensor Cores and 2 NVDLA v2; 256-bit LPDDR5 at 204.8 GB/s. Usable 0.85: L4T + desktop.
    _profile("jetson-agx-orin-32gb", "NVIDIA Jetson AGX Orin 32 GB", 32, 0.85, 204.8, 8,
             ("Ampere GPU, 1792 CUDA cores, 56 Tensor Cores", "2x NVDLA v2"), True,
             ("llama.cpp", "onnxruntime", "cpu")),
    # Same sources: the 64 GB module has 12x Cortex-A78AE, a 2048-core GPU with 64 Tensor Cores, 204.8 GB/s.
    _profile("jetson-agx-orin-64gb", "NVIDIA Jetson AGX Orin 64 GB", 64, 0.90, 204.8, 12,
             ("Ampere GPU, 2048 CUDA cores, 64 Tensor Cores", "2x NVDLA v2"), True,
             ("llama.cpp", "onnxruntime", "cpu")),
    # iPhone 15 Pro, A17 Pro: 6-core CPU (2P + 4E), 6-core GPU, 16-core Neural Engine (Apple's tech specs); 8 GB
    # LPDDR5 (Xcode 15 device data, reported by Appleosophy, Sept 2023). Apple publishes no bandwidth: 64-bit
    # LPDDR5-6400 = 51.2 GB/s is the usual estimate. Usable 0.5: jetsam's per-app limit (raised on some models by
    # the com.apple.developer.kernel.increased-memory-limit entitlement; os_proc_available_memory() tells) - an
    # assumption, Apple gives no figure.
    _profile("iphone-8gb", "iPhone 15 Pro (A17 Pro), 8 GB", 8, 0.50, 51.2, 6,
             ("6-core GPU (Metal)", "16-core Neural Engine"), True, ("coreml", "llama.cpp", "cpu"),
             "jetsam ends an app that passes its limit; bandwidth is an estimate"),
    # Snapdragon 8 Gen 3 (Qualcomm product brief): 1x Cortex-X4 + 5x A720 + 2x A520, Adreno 750, Hexagon NPU,
    # LPDDR5X up to 4800 MHz = 9600 MT/s x 64-bit = 76.8 GB/s. Usable 0.55: the low-memory killer and the
    # other apps held in memory (assumption).
    _profile("android-8gb", "Android flagship (Snapdragon 8 Gen 3), 8 GB", 8, 0.55, 76.8, 8,
             ("Adreno 750 GPU", "Hexagon NPU"), True, ("litert", "llama.cpp", "onnxruntime", "cpu"),
             "low-memory killer; usable share is an assumption"),
    # Snapdragon 7 Gen 1 (Qualcomm product brief): 4x Cortex-A710 + 4x A510, Adreno GPU, Hexagon, LPDDR5 up to
    # 3200 MHz; 25.6 GB/s as listed by nanoreview.net. Usable 0.5 (assumption).
    _profile("android-6gb", "Android mid-range (Snapdragon 7 Gen 1), 6 GB", 6, 0.50, 25.6, 8,
             ("Adreno GPU", "Hexagon NPU"), True, ("litert", "llama.cpp", "onnxruntime", "cpu"),
             "low-memory killer; usable share is an assumption"),
)
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in _CATALOGUE}


def get_profile(name: str) -> DeviceProfile:
    """The catalogue profile called `name`; 'this-host' detects the machine it runs on."""
    if name == "this-host":
        return host_profile(detect_host())
    try:
        return PROFILES[name]
    except KeyError:
        raise EdgertError(f"unknown device profile {name!r}; known profiles: this-host, "
                          f"{', '.join(PROFILES)}.") from None


# Apple chip tiers by memory bus: M2/M3 base 100 GB/s, Pro 200 (M3 Pro 150), Max 400, Ultra 800 (Apple's product
# specifications); M1 68.25 (128-bit LPDDR4X-4266). An unknown chip counts as a base one.
_APPLE_TIERS = (("ultra", 800.0), ("max", 400.0), ("pro", 200.0))


def estimate_bandwidth_gbps(host: HostInfo) -> float:
    """A rough peak bandwidth for `host`: the matching profile's figure for a recognised device, otherwise by
    kind and memory size (x86: 25.6 GB/s per DDR4-3200 channel, two channels assumed from 12 GiB). An estimate,
    not a measurement; `edgert bench` measures."""
    name = matching_profile(host)
    if host.kind == "apple-silicon":
        chip = host.cpu_model.lower()
        tier = next((bw for key, bw in _APPLE_TIERS if key in chip), None)
        return tier or (68.25 if "m1" in chip else 100.0)
    if host.kind != "generic" and name in PROFILES:
        return PROFILES[name].memory_bandwidth_gbps
    return 25.6 if host.total_memory_bytes < 12 * GIB else 51.2


def host_profile(host: HostInfo) -> DeviceProfile:
    """A profile of the detected machine itself: memory as measured (usable = what is available now, and no more
    than a phone's app limit), bandwidth estimated (see estimate_bandwidth_gbps), backends by kind."""
    name = matching_profile(host)
    ref = PROFILES.get(name) if name else None
    total = max(1, host.total_memory_bytes)
    usable = min(1.0, max(0.01, host.available_memory_bytes / total))
    if ref is not None and host.kind in ("android", "ios"):
        usable = min(usable, ref.usable_fraction)
    backends = KIND_BACKENDS.get(host.kind, KIND_BACKENDS["generic"])
    accelerators = ref.accelerators if ref is not None and host.kind != "generic" else ()
    what = host.model_name or host.cpu_model or host.arch or "unknown machine"
    closest = f"; closest catalogue profile: {name}" if name else ""
    return DeviceProfile("this-host", f"This machine ({what})", total, round(usable, 3),
                         estimate_bandwidth_gbps(host), host.physical_cores, accelerators, host.unified_memory,
                         _formats(backends), backends, f"measured memory, estimated bandwidth{closest}")


def devices_report(host: HostInfo | None = None) -> dict:
    """What `edgert devices --json` prints: the host (with its own profile and closest match) and the catalogue."""
    host = host or detect_host()
    return {"host": {**host.to_dict(), "matching_profile": matching_profile(host),
                     "profile": host_profile(host).to_dict()},
            "profiles": [p.to_dict() for p in PROFILES.values()]}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def format_devices(host: HostInfo | None = None, profiles: Iterable[DeviceProfile] | None = None,
                   as_json: bool = False) -> str:
    """The text `edgert devices` prints: this host, then a table of profiles (the closest one starred)."""
    host = host or detect_host()
    if as_json:
        report = devices_report(host)
        if profiles is not None:
            report["profiles"] = [p.to_dict() for p in profiles]
        return json.dumps(report, indent=2)
    match = matching_profile(host)
    own = host_profile(host)
    lines = [
        f"host        {host.model_name or '-'} ({host.kind})",
        f"cpu         {host.cpu_model or '-'}, {host.physical_cores} cores / {host.logical_cores} threads, {host.arch}",
        f"simd        {' '.join(host.simd) or '-'}",
        f"memory      {_gib(host.total_memory_bytes)} total, {_gib(host.available_memory_bytes)} available"
        + (" (cgroup limit)" if host.memory_limit_bytes else "") + (", unified" if host.unified_memory else ""),
        f"bandwidth   ~{own.memory_bandwidth_gbps:g} GB/s (estimate)",
        f"os          {host.os_name}, Python {host.python}",
        f"backends    {', '.join(own.backends)}",
        f"closest     {match or '-'}",
        "",
    ]
    rows = [("  profile", "memory", "usable", "GB/s", "cores", "unified", "backends")]
    for p in (PROFILES.values() if profiles is None else profiles):
        rows.append((("* " if p.name == match else "  ") + p.name, _gib(p.memory_bytes), _gib(p.usable_bytes),
                     f"{p.memory_bandwidth_gbps:g}", str(p.cpu_cores), "yes" if p.unified_memory else "no",
                     ", ".join(p.backends)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
