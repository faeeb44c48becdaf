"""Host detection (on this machine, and on Jetson, Pi, Android and Mac file trees faked under tmp_path) and the
device profile catalogue."""

from __future__ import annotations

import json
import platform

import pytest

from edgert.devices.host import GIB, KINDS, detect_host, logical_cores, matching_profile, physical_cores
from edgert.devices.profiles import (
    BACKEND_FORMATS,
    PROFILES,
    DeviceProfile,
    devices_report,
    estimate_bandwidth_gbps,
    format_devices,
    get_profile,
    host_profile,
)
from edgert.errors import EdgertError


def _write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _meminfo(total_gib: float, avail_gib: float) -> str:
    total, avail = int(total_gib * 1024 ** 2), int(avail_gib * 1024 ** 2)
    return f"MemTotal: {total} kB\nMemFree: 1000 kB\nMemAvailable: {avail} kB\n"


def _arm_cpuinfo(parts: list[str], features: str) -> str:
    return "\n".join(f"processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                     f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n"
                     for i, part in enumerate(parts))


def _linux(root, **kw):
    kw.setdefault("machine", "aarch64")
    return detect_host(root, system="Linux", env={}, sysctl=_no_sysctl, **kw)


def _no_sysctl(name):
    raise AssertionError(f"sysctl {name} called off macOS")


def test_this_machine():
    h = detect_host()
    assert h.kind in KINDS
    assert 1 <= h.physical_cores <= h.logical_cores
    assert h.total_memory_bytes > 0 and 0 <= h.available_memory_bytes <= h.total_memory_bytes
    assert h.arch and h.python and h.os_name
    if h.arch in ("x86_64", "AMD64"):
        assert {"avx2", "avx", "sse4_2"} & set(h.simd)
    if h.arch in ("aarch64", "arm64"):
        assert "neon" in h.simd
    assert physical_cores() >= 1 and logical_cores() >= physical_cores()
    assert matching_profile(h) is None or matching_profile(h) in PROFILES
    p = host_profile(h)
    assert p.name == "this-host" and p.memory_bytes == h.total_memory_bytes and 0 < p.usable_fraction <= 1


def test_fake_jetson_orin_nano(tmp_path):
    _write(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, "
                                             "EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n")
    _write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    _write(tmp_path, "proc/device-tree/compatible", "nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00")
    _write(tmp_path, "proc/meminfo", _meminfo(7.4, 5.9))
    _write(tmp_path, "proc/cpuinfo", _arm_cpuinfo(["0xd42"] * 6, "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                                                                  "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"))
    _write(tmp_path, "etc/os-release", 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n')
    h = _linux(tmp_path)
    assert h.kind == "jetson" and h.unified_memory
    assert h.model_name == "NVIDIA Jetson Orin Nano Developer Kit"
    assert h.os_name == "Ubuntu 22.04.4 LTS (L4T R36.3.0)"
    assert h.cpu_model == "6x Cortex-A78AE" and h.logical_cores == 6 and h.physical_cores == 6
    assert {"neon", "fp16", "dotprod"} <= set(h.simd) and "i8mm" not in h.simd
    assert h.total_memory_bytes == int(7.4 * 1024 ** 2) * 1024 and h.memory_limit_bytes is None
    assert matching_profile(h) == "jetson-orin-nano-8gb"
    p = host_profile(h)
    assert p.memory_bandwidth_gbps == 68.0 and p.backends[0] == "llama.cpp" and p.unified_memory
    assert p.accelerators == PROFILES["jetson-orin-nano-8gb"].accelerators


def test_fake_jetson_agx_orin_from_device_tree_only(tmp_path):
    _write(tmp_path, "proc/device-tree/model", "Jetson AGX Orin\x00")
    _write(tmp_path, "proc/device-tree/compatible", "nvidia,p3737-0000+p3701-0000\x00nvidia,tegra234\x00")
    _write(tmp_path, "proc/meminfo", _meminfo(61.4, 55))
    h = _linux(tmp_path)
    assert h.kind == "jetson" and matching_profile(h) == "jetson-agx-orin-64gb"
    _write(tmp_path, "proc/meminfo", _meminfo(30.6, 28))
    assert matching_profile(_linux(tmp_path)) == "jetson-agx-orin-32gb"


def test_fake_raspberry_pi_5(tmp_path):
    _write(tmp_path, "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    _write(tmp_path, "proc/meminfo", _meminfo(7.9, 7.2))
    _write(tmp_path, "proc/cpuinfo", _arm_cpuinfo(["0xd0b"] * 4, "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                                                                  "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"))
    h = _linux(tmp_path)
    assert h.kind == "raspberry-pi" and not h.unified_memory
    assert h.cpu_model == "4x Cortex-A76" and h.logical_cores == 4
    assert matching_profile(h) == "raspberry-pi-5-8gb"
    assert host_profile(h).memory_bandwidth_gbps == 17.1
    _write(tmp_path, "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    assert matching_profile(_linux(tmp_path)) is None


def test_fake_android(tmp_path):
    _write(tmp_path, "system/build.prop", "# begin build properties\nro.build.version.release=14\n"
                                          "ro.product.manufacturer=Google\nro.product.model=Pixel 8\n")
    _write(tmp_path, "proc/meminfo", _meminfo(7.5, 3.0))
    _write(tmp_path, "proc/cpuinfo", _arm_cpuinfo(["0xd82", "0xd81", "0xd81", "0xd80"], "fp asimd asimddp i8mm bf16"))
    h = _linux(tmp_path)
    assert h.kind == "android" and h.unified_memory
    assert h.model_name == "Google Pixel 8" and h.os_name == "Android 14"
    assert h.cpu_model == "1x Cortex-X4 + 2x Cortex-A720 + 1x Cortex-A520"
    assert {"neon", "dotprod", "i8mm", "bf16"} <= set(h.simd)
    assert matching_profile(h) == "android-8gb"
    p = host_profile(h)
    assert p.backends[0] == "litert" and "tflite" in p.formats
    assert p.usable_fraction <= PROFILES["android-8gb"].usable_fraction
    # Termux: no readable build.prop, but the environment says Android.
    (tmp_path / "system" / "build.prop").unlink()
    _write(tmp_path, "proc/meminfo", _meminfo(5.5, 2.0))
    h = detect_host(tmp_path, system="Linux", machine="aarch64", env={"ANDROID_ROOT": "/system"})
    assert h.kind == "android" and matching_profile(h) == "android-6gb"


def test_cgroup_v2_limit_lower_than_memtotal_is_honoured(tmp_path):
    _write(tmp_path, "proc/meminfo", _meminfo(16, 14))
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/memory.max", f"{4 * GIB}\n")
    _write(tmp_path, "sys/fs/cgroup/memory.current", f"{1 * GIB}\n")
    h = _linux(tmp_path, machine="x86_64")
    assert h.total_memory_bytes == 4 * GIB and h.available_memory_bytes == 3 * GIB
    assert h.memory_limit_bytes == 4 * GIB and h.kind == "generic"
    assert matching_profile(h) == "generic-laptop-8gb"
    _write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    h = _linux(tmp_path, machine="x86_64")
    assert h.total_memory_bytes == 16 * GIB and h.memory_limit_bytes is None


def test_cgroup_v1_limit_on_the_process_path(tmp_path):
    _write(tmp_path, "proc/meminfo", _meminfo(32, 30))
    _write(tmp_path, "proc/self/cgroup", "5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    _write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    _write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", f"{8 * GIB}\n")
    _write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", f"{2 * GIB}\n")
    h = _linux(tmp_path, machine="x86_64")
    assert h.total_memory_bytes == 8 * GIB and h.available_memory_bytes == 6 * GIB
    # A limit above the physical memory changes nothing.
    _write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", f"{64 * GIB}\n")
    assert _linux(tmp_path, machine="x86_64").total_memory_bytes == 32 * GIB


def _fake_sysctl(values: dict[str, str]):
    return lambda name: values.get(name)


def test_macos_apple_silicon_with_fake_sysctl(tmp_path):
    values = {"hw.memsize": str(16 * GIB), "kern.memorystatus_level": "60", "machdep.cpu.brand_string": "Apple M2",
              "hw.model": "Mac14,2", "kern.osproductversion": "14.5", "hw.physicalcpu": "8", "hw.logicalcpu": "8",
              "hw.optional.arm.FEAT_DotProd": "1", "hw.optional.arm.FEAT_FP16": "1", "hw.optional.arm.FEAT_I8MM": "0"}
    h = detect_host(tmp_path, system="Darwin", machine="arm64", env={}, sysctl=_fake_sysctl(values))
    assert h.kind == "apple-silicon" and h.unified_memory
    assert h.cpu_model == "Apple M2" and h.model_name == "Mac14,2" and h.os_name == "macOS 14.5"
    assert h.total_memory_bytes == 16 * GIB and h.available_memory_bytes == 16 * GIB * 60 // 100
    assert h.physical_cores == 8 and h.simd == ("neon", "fp16", "dotprod")
    assert matching_profile(h) == "apple-silicon-laptop-16gb"
    assert estimate_bandwidth_gbps(h) == 100.0 and host_profile(h).backends[0] == "llama.cpp"
    values.update({"hw.memsize": str(8 * GIB), "machdep.cpu.brand_string": "Apple M2 Max"})
    h = detect_host(tmp_path, system="Darwin", machine="arm64", env={}, sysctl=_fake_sysctl(values))
    assert matching_profile(h) == "apple-silicon-laptop-8gb" and estimate_bandwidth_gbps(h) == 400.0


def test_macos_intel_with_fake_sysctl(tmp_path):
    values = {"hw.memsize": str(16 * GIB), "machdep.cpu.brand_string": "Intel(R) Core(TM) i7-9750H",
              "machdep.cpu.features": "FPU SSE4.2 FMA AVX1.0 F16C", "machdep.cpu.leaf7_features": "BMI1 AVX2"}
    h = detect_host(tmp_path, system="Darwin", machine="x86_64", env={}, sysctl=_fake_sysctl(values))
    assert h.kind == "generic" and not h.unified_memory
    assert h.simd == ("sse4_2", "avx", "avx2", "fma", "f16c")
    assert h.available_memory_bytes == h.total_memory_bytes == 16 * GIB


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_is_sane(name):
    p = PROFILES[name]
    assert p.name == name and p.title
    assert p.memory_bytes > 0 and 0 < p.usable_fraction <= 1 and 0 < p.usable_bytes <= p.memory_bytes
    assert p.memory_bandwidth_gbps > 0 and p.cpu_cores >= 1
    assert p.backends and set(p.backends) <= set(BACKEND_FORMATS)
    assert set(p.formats) == {BACKEND_FORMATS[b] for b in p.backends}
    assert get_profile(name) is p
    assert json.loads(json.dumps(p.to_dict()))["usable_bytes"] == p.usable_bytes


def test_catalogue_names():
    assert {"generic-laptop-8gb", "generic-laptop-16gb", "apple-silicon-laptop-16gb", "raspberry-pi-5-8gb",
            "jetson-orin-nano-8gb", "jetson-agx-orin-32gb", "jetson-agx-orin-64gb", "iphone-8gb", "android-8gb",
            "android-6gb"} <= set(PROFILES)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(EdgertError) as err:
        get_profile("jetson-nano-2gb")
    msg = str(err.value)
    assert "jetson-nano-2gb" in msg and "jetson-orin-nano-8gb" in msg and "android-6gb" in msg


def test_bad_profile_is_refused():
    with pytest.raises(ValueError):
        DeviceProfile("x", "x", GIB, 1.5, 10.0, 4, (), False, ("gguf",), ("cpu",))
    with pytest.raises(ValueError):
        DeviceProfile("x", "x", GIB, 0.5, 10.0, 4, (), False, ("gguf",), ("tensorrt",))


def test_report_and_table(tmp_path):
    _write(tmp_path, "proc/meminfo", _meminfo(7.6, 5.0))
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5\nflags\t\t: fpu sse4_2 avx "
                                     "avx2 fma f16c\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: "
                                     "Intel(R) Core(TM) i5\nflags\t\t: fpu\nphysical id\t: 0\ncore id\t\t: 0\n")
    h = _linux(tmp_path, machine="x86_64")
    assert h.physical_cores == 1 and h.logical_cores == 2 and h.simd == ("sse4_2", "avx", "avx2", "fma", "f16c")
    assert matching_profile(h) == "generic-laptop-8gb" and host_profile(h).memory_bandwidth_gbps == 25.6
    report = devices_report(h)
    assert set(report) == {"host", "profiles"} and report["host"]["matching_profile"] == "generic-laptop-8gb"
    assert len(report["profiles"]) == len(PROFILES) and all("usable_bytes" in p for p in report["profiles"])
    assert json.loads(format_devices(h, as_json=True)) == json.loads(json.dumps(report))
    text = format_devices(h)
    assert "* generic-laptop-8gb" in text and "Intel(R) Core(TM) i5" in text and "jetson-agx-orin-64gb" in text


def test_real_platform_is_default():
    h = detect_host()
    assert h.system == platform.system() and h.arch == platform.machine()
