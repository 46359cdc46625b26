"""Run CUDA C++ kernels on the CPU.

The same kernel source that CuPy compiles with NVRTC is compiled with the host C++ compiler
against a shim header (``cudeconv_emu.h``) that implements the CUDA built-ins, and launched
with real grid/block semantics: the threads of a block run as fibers that meet at
``__syncthreads`` and at warp-synchronous intrinsics, blocks are spread over CPU cores.

    mod = RawModule(code=source, options=("-DTILE=16",))
    kernel = mod.get_function("saxpy")            # an extern "C" __global__ function
    kernel((blocks,), (256,), (np.float32(2.0), x, y, np.int32(n)))

Arrays stand for device pointers (read and written in place); scalars must be NumPy scalars of
exactly the parameter's C type. Builds are cached on disk (``cache_usage()`` reports the
cache). See docs/emulator.md for what is and is not modelled.
"""

from ._cache import CacheUsage, cache_usage
from ._compiler import compiler_description, compiler_unavailable_reason
from ._errors import (
    EmulatorCompileError,
    EmulatorError,
    EmulatorKernelNotFoundError,
    EmulatorLaunchError,
)
from ._kernel import RawKernel, RawModule

__all__ = [
    "CacheUsage",
    "EmulatorCompileError",
    "EmulatorError",
    "EmulatorKernelNotFoundError",
    "EmulatorLaunchError",
    "RawKernel",
    "RawModule",
    "cache_usage",
    "compiler_description",
    "compiler_unavailable_reason",
]
