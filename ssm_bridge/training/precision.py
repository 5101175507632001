"""Which training precision a device runs fastest: `choose_precision(device)`.

bf16 autocast only pays where the hardware computes in bf16. On a CPU without native
bf16 (AVX2, or AVX-512 without AVX512-BF16 / AMX) torch emulates it, and a bf16 matmul
there is tens of times slower than fp32 (AMD EPYC, AVX2: 60 vs 0.9 GFLOP/s at 1024²;
the shapes-tiny training step 0.23 s vs 4.4 s). "auto" therefore picks bf16 only on
CUDA devices that support it and on CPUs that report native bf16; where the CPU's
capabilities are unknown it times a short matmul of each dtype once per process.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_bf16_support() -> tuple[bool | None, str]:
    """(native bf16?, what torch reports). None: torch does not say (another
    architecture, or an older torch without the capability query)."""
    level = (torch.backends.cpu.get_cpu_capability()
             if hasattr(torch.backends.cpu, "get_cpu_capability") else "unknown")
    if hasattr(torch.cpu, "get_capabilities"):  # newer torch: every flag cpuinfo reads
        caps = dict(torch.cpu.get_capabilities())
    else:  # older torch: the private probes, where they exist
        probe = getattr(torch._C, "_cpu", None)
        caps = {flag: bool(getattr(probe, fn, lambda: False)()) for flag, fn in (
            ("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))}
        caps["architecture"] = "x86_64" if level.startswith("AVX") else ""
    native = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if native:
        return True, f"{level} with {' and '.join(n.upper().replace('_', '-') for n in native)}"
    if caps.get("architecture", "").startswith(("x86", "i386", "i686", "AMD64")):
        return False, level
    return None, level


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what platform knows."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """CPU model, its vector capability and whether it computes bf16 natively: the line
    every published speed figure is measured beside (bf16 figures flip between kinds)."""
    native, level = cpu_bf16_support()
    bf16 = {True: "native bf16", False: "no native bf16", None: "bf16 support unknown"}[native]
    return f"{cpu_model()} ({level}; {bf16})"


def matmul_seconds(dtype: torch.dtype, device: torch.device, n: int = 256,
                   reps: int = 5) -> float:
    """Fastest seconds of one n x n matmul in `dtype` (after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:])  # the least disturbed run: other processes only add time


@functools.cache
def bf16_slowdown(device_type: str) -> float:
    """How many times slower a 256² bf16 matmul is than fp32 on this device (measured
    once per process; ~0.2 s where bf16 is emulated)."""
    device = torch.device(device_type)
    threads = torch.get_num_threads()
    if device.type == "cpu":  # one thread: a busy core stalls a multi-thread matmul's barrier
        torch.set_num_threads(1)
    try:
        return matmul_seconds(torch.bfloat16, device) / matmul_seconds(torch.float32, device)
    finally:
        torch.set_num_threads(threads)


def choose_precision(device: str | torch.device) -> tuple[str, str]:
    """("bf16" | "fp32", why) for precision="auto" on `device` (decided once per process
    and device type)."""
    return _choose(torch.device(device).type)


def _cuda_native_bf16() -> bool:
    try:  # torch >= 2.3 counts emulated bf16 as supported unless told otherwise
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


@functools.cache
def _choose(device_type: str) -> tuple[str, str]:
    if device_type == "cuda":
        if _cuda_native_bf16():
            return "bf16", "this CUDA device computes bf16 natively"
        return "fp32", "this CUDA device has no native bf16"
    native, level = cpu_bf16_support()
    if native:
        return "bf16", f"this CPU computes bf16 natively ({level})"
    if native is False:
        return "fp32", f"this CPU has no native bf16 ({level}): bf16 would be emulated"
    slowdown = bf16_slowdown(device_type)
    if slowdown < 1.0:
        return "bf16", f"a bf16 matmul ran {1 / slowdown:.1f}x faster than fp32 here ({level})"
    return "fp32", f"a bf16 matmul ran {slowdown:.1f}x slower than fp32 here ({level})"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str, str | None]:
    """(precision to train in, why, warning or None) for TrainConfig.precision."""
    if requested == "auto":
        precision, reason = choose_precision(device)
        return precision, f"auto: {reason}", None
    if requested == "bf16" and device.type == "cpu":
        native, level = cpu_bf16_support()
        if not native:
            slowdown = bf16_slowdown(device.type)
            if slowdown > 1.0:
                return "bf16", "requested", (
                    f"--precision=bf16 on a CPU without native bf16 ({level}): a bf16 matmul "
                    f"ran {slowdown:.1f}x slower than fp32 here, so training will be slower "
                    "too; --precision=auto (or fp32) trains in fp32")
    return requested, "requested", None
