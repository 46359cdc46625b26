"""The machine the bench runs on: GPU peaks, CPU name and threads, library versions."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .. import __version__, backends

# cudaDeviceAttr values (stable across CUDA versions; cudaDeviceProp lost the clock fields in CUDA 13).
_ATTR_CLOCK_KHZ, _ATTR_SMS, _ATTR_MEMORY_CLOCK_KHZ, _ATTR_BUS_WIDTH_BITS = 13, 16, 36, 37
# FP32 lanes per SM: 64 on GP100, Volta, Turing and A100; 128 on the other Pascal chips and from
# Ampere GA10x on (Ada, Hopper, Blackwell).
_FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    sms: int
    clock_mhz: float
    memory_gib: float
    fp32_tflops: float  # SMs × clock × FP32 lanes × 2 (an FMA is two flops)
    bandwidth_gbps: float  # memory clock × 2 (double data rate) × bus width


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and theoretical peaks of a CUDA device (needs a working CuPy and GPU)."""
    import cupy

    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(device)
    attr = lambda a: runtime.deviceGetAttribute(a, device)  # noqa: E731
    major, minor = props["major"], props["minor"]
    sms, clock_khz = attr(_ATTR_SMS), attr(_ATTR_CLOCK_KHZ)
    lanes = _FP32_LANES.get((major, minor), 128)
    bandwidth = attr(_ATTR_MEMORY_CLOCK_KHZ) * 1e3 * 2 * attr(_ATTR_BUS_WIDTH_BITS) / 8
    return GpuInfo(
        name=props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        compute_capability=f"{major}.{minor}", sms=sms, clock_mhz=clock_khz / 1e3,
        memory_gib=props["totalGlobalMem"] / 2**30,
        fp32_tflops=sms * clock_khz * 1e3 * lanes * 2 / 1e12, bandwidth_gbps=bandwidth / 1e9,
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
