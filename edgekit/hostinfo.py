"""Facts about the host CPU that no runtime reports the same way on every platform."""

from __future__ import annotations

import functools
import math
import os
import platform


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name; on Arm, where /proc/cpuinfo has none, its implementer and part numbers."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "CPU implementer", "CPU part"):
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        return fields["model name"]
    arm = " ".join(f"{k.split()[1]} {fields[k]}" for k in ("CPU implementer", "CPU part") if k in fields)
    base = platform.processor() or platform.machine() or "CPU"
    return f"{base} ({arm})" if arm else base


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags: x86 ``flags`` (avx512_vnni, avx512_bf16, amx_tile, ...) or Arm ``Features``
    (asimddp, i8mm, ...); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# The features that change how fast a model runs and how its int8 arithmetic rounds. One model name
# covers very different chips: "AMD EPYC" is a Zen 1 with AVX2 and a Zen 4 with AVX-512 VNNI/BF16.
_ISA = frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "bf16",
                  "sve", "sve2"})

# int8 dot-product instructions. Without them, x86 int8 kernels multiply uint8 by int8 with
# vpmaddubsw, whose int16 pair sums saturate: 8-bit weights lose accuracy (OpenVINO's "saturation
# issue"), and int8 is no faster than fp32. Measured on a Zen 1 EPYC (AVX2 only): EfficientNet-Lite0
# static int8 cosine 0.91 on ONNX Runtime and 0.95 on OpenVINO, against 0.99 on a Zen 4 with VNNI.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def has_int8_dot() -> bool | None:
    """Whether this CPU has int8 dot-product instructions (VNNI, AMX, Arm dotprod / i8mm); None where
    its feature flags are unknown (no /proc/cpuinfo: Windows, macOS)."""
    flags = cpu_flags()
    return bool(flags & INT8_DOT_FLAGS) if flags else None


def is_x86() -> bool:
    """Whether this is an x86 CPU (where int8 without VNNI saturates)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cpu_id() -> str:
    """The CPU as measurements depend on it: name, usable cores and inference-relevant ISA features,
    e.g. ``"AMD EPYC; 2 cores; avx2 f16c fma"``. Latencies measured under another id do not apply here.
    Not cached: the usable cores change when the process's affinity does."""
    isa = " ".join(sorted(cpu_flags() & _ISA)) or "no ISA features known"
    return f"{cpu_name()}; {cpu_count()} cores; {isa}"


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask (taskset, a cpuset), capped by a cgroup v2 CPU quota
    (``docker --cpus``) rounded up."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def _cgroup_cpu_quota() -> float | None:
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            limit, period = f.read().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        return None
