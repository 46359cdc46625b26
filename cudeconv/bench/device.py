"""The machine the bench runs on: GPU peaks, CPU name and threads, library versions."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from .. import __version__, backends
from .accuracy import arithmetic

# cudaDeviceAttr values (stable across CUDA versions; cudaDeviceProp lost the clock fields in CUDA 13).
_ATTR_CLOCK_KHZ, _ATTR_SMS, _ATTR_MEMORY_CLOCK_KHZ, _ATTR_BUS_WIDTH_BITS = 13, 16, 36, 37
# FP32 lanes per SM: 64 on GP100, Volta, Turing and A100; 128 on the other Pascal chips and from
# Ampere GA10x on (Ada, Hopper, Blackwell).
_FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
# Dense flops per SM per clock of the other arithmetics (an FMA is two flops): FP64 on its own
# units, and the tensor cores with FP32 accumulation, from NVIDIA's whitepapers and data-center
# datasheets (V100, T4, A100, A40, L40S, H100: SMs × boost clock × these give their figures). The
# tensor rates are those of the full-rate parts; GeForce cards accumulate in FP32 at half of them.
# A compute capability not listed has no peak for these: no fraction of it is claimed.
_FLOPS_PER_SM_CLOCK = {
    (7, 0): {"fp64": 64, "fp16": 1024},
    (7, 5): {"fp64": 4, "fp16": 1024},
    (8, 0): {"fp64": 64, "fp16": 2048, "bf16": 2048, "tf32": 1024},
    (8, 6): {"fp64": 4, "fp16": 1024, "bf16": 1024, "tf32": 512},
    (8, 9): {"fp64": 4, "fp16": 1024, "bf16": 1024, "tf32": 512},
    (9, 0): {"fp64": 128, "fp16": 4096, "bf16": 4096, "tf32": 2048},
}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    sms: int
    clock_mhz: float
    memory_gib: float
    fp32_tflops: float  # SMs × clock × FP32 lanes × 2 (an FMA is two flops)
    bandwidth_gbps: float  # memory clock × 2 (double data rate) × bus width
    l2_bytes: int = 0
    # TFLOP/s per arithmetic (see ARITHMETICS): fp32 always, the others where the table knows them
    peaks_tflops: Dict[str, float] = field(default_factory=dict)


def peaks_tflops(compute_capability: Tuple[int, int], sms: int, clock_hz: float) -> Dict[str, float]:
    """Peak TFLOP/s of each arithmetic the GPU has (see ``_FLOPS_PER_SM_CLOCK``)."""
    per_clock = {"fp32": 2 * _FP32_LANES.get(compute_capability, 128),
                 **_FLOPS_PER_SM_CLOCK.get(compute_capability, {})}
    return {arithmetic: sms * clock_hz * flops / 1e12 for arithmetic, flops in per_clock.items()}


def peak_tflops(peaks: Dict[str, float], arithmetic: str) -> Optional[float]:
    """The peak of one arithmetic (an ARITHMETICS name, or two joined by "+": a pass whose halves
    ran on each, equal flops apiece, whose peak is their harmonic mean); None where unknown. 3×TF32
    does three TF32 products per multiply-add: a third of the TF32 peak."""
    parts = arithmetic.split("+")
    each = [peaks.get("tf32", 0) / 3 if part == "tf32x3" else peaks.get(part, 0) for part in parts]
    if not all(each):
        return None
    return len(each) / sum(1 / peak for peak in each)


def pass_arithmetic(kind: str, dtype, precision: str) -> str:
    """The arithmetic a kernel of ``kind`` (``KernelPath.kind``) runs for ``dtype`` at
    ``precision``: the implicit GEMM takes the tensor cores for float16, bfloat16 and TF32 (FFMA for
    precision "fp32", DFMA for float64); every other kernel computes on FFMA (DFMA for float64)."""
    dtype = np.dtype(dtype)
    if kind == "gemm":
        return arithmetic(dtype, precision)
    return "fp64" if dtype == np.float64 else "fp32"


def gpu_info(device: int = 0) -> GpuInfo:
    """Name, L2 size and theoretical peaks of a CUDA device (needs a working CuPy and GPU); peaks
    at the device's maximum clock."""
    import cupy

    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(device)
    attr = lambda a: runtime.deviceGetAttribute(a, device)  # noqa: E731
    major, minor = props["major"], props["minor"]
    sms, clock_khz = attr(_ATTR_SMS), attr(_ATTR_CLOCK_KHZ)
    peaks = peaks_tflops((major, minor), sms, clock_khz * 1e3)
    bandwidth = attr(_ATTR_MEMORY_CLOCK_KHZ) * 1e3 * 2 * attr(_ATTR_BUS_WIDTH_BITS) / 8
    return GpuInfo(
        name=props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        compute_capability=f"{major}.{minor}", sms=sms, clock_mhz=clock_khz / 1e3,
        memory_gib=props["totalGlobalMem"] / 2**30,
        fp32_tflops=peaks["fp32"], bandwidth_gbps=bandwidth / 1e9,
        l2_bytes=int(props["l2CacheSize"]), peaks_tflops=peaks,
    )


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> Dict[str, Optional[str]]:
    """Versions of what the benchmark runs on (None: not installed or not usable here; for
    ``cuda_driver``, also: no NVIDIA driver)."""
    import ml_dtypes

    found = {"cudeconv": __version__, "python": platform.python_version(), "numpy": np.__version__,
             "ml_dtypes": ml_dtypes.__version__, "cupy": None, "cuda_runtime": None, "cuda_driver": None,
             "torch": None}
    try:
        import cupy

        found["cupy"] = cupy.__version__
        found["cuda_runtime"] = backends.format_cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        driver = cupy.cuda.runtime.driverGetVersion()  # 0: no NVIDIA driver
        found["cuda_driver"] = backends.format_cuda_version(driver) if driver else None
    except Exception:  # CuPy missing or without a CUDA runtime/driver: those stay None
        pass
    try:
        import torch

        found["torch"] = torch.__version__
    except Exception:  # not installed, or a broken install
        pass
    return found


def describe_device(backend_name: str) -> str:
    if backend_name == "cuda":
        gpu = gpu_info()
        return f"{gpu.name} (GPU 0, compute capability {gpu.compute_capability})"
    return f"CPU: {cpu_name()}, {cpu_threads()} threads"
