"""Backend dispatch.

Three backends compute the same operations:

``"numpy"``
    The vectorized NumPy reference (``numpy_backend``): the oracle the kernels are checked against
    and the CPU path for machines without a GPU.
``"cuda"``
    The hand-written CUDA kernels in ``kernels/*.cu``, compiled and launched through CuPy.
``"emulator"``
    The same kernels, compiled for the CPU by :mod:`cudeconv.emulator` and run on NumPy arrays.

``cuda`` and ``emulator`` share one launch layer (``kernel_backend``) and differ only in array
module and module class.
"""
from __future__ import annotations

import contextlib
import functools

NAMES = ("numpy", "cuda", "emulator")
MIN_COMPUTE_CAPABILITY = 70  # Volta: the float16 scatter forward uses atomicAdd on __half


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run on this machine; the message says why."""


@functools.lru_cache(maxsize=None)
def cuda_unavailable_reason():
    """None when CuPy can compile and launch kernels on a GPU here, else why not (a sentence)."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc}); install cudeconv[cuda12] or cudeconv[cuda13]"
    except Exception as exc:  # a broken CuPy install raises all sorts at import
        return f"CuPy failed to import: {type(exc).__name__}: {exc}"
    reason = cuda_device_unavailable_reason(cupy.cuda.runtime)
    if reason is not None:
        return reason
    try:
        capability = int(cupy.cuda.Device().compute_capability)
    except Exception as exc:
        return f"the current CUDA device cannot be queried ({type(exc).__name__}: {exc})"
    if capability < MIN_COMPUTE_CAPABILITY:
        return (
            f"the current GPU has compute capability {capability // 10}.{capability % 10}; the "
            f"kernels need {MIN_COMPUTE_CAPABILITY // 10}.{MIN_COMPUTE_CAPABILITY % 10} or newer "
            f"(atomicAdd on half)"
        )
    try:  # the kernels include cuda_fp16.h, which NVRTC finds only with the CUDA headers installed
        cupy.RawModule(code=_PROBE_KERNEL).get_function("cudeconv_probe")
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"CuPy cannot compile a kernel that includes cuda_fp16.h ({type(exc).__name__}: "
            f"{first_line}); install cudeconv[cuda12] or cudeconv[cuda13], which bring CuPy's "
            f"[ctk] CUDA components, or a CUDA toolkit"
        )
    return None


def format_cuda_version(number: int) -> str:
    """CUDA's version integers (1000·major + 10·minor) as "major.minor"."""
    return f"{number // 1000}.{number % 1000 // 10}"


_CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice


def cuda_device_unavailable_reason(runtime):
    """None when ``runtime`` (``cupy.cuda.runtime``) sees a CUDA device, else why not: no NVIDIA
    driver, a driver older than the CUDA runtime (with both versions), no device, or the error."""
    try:
        count = runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, insufficient driver, no device, ...
        try:  # the runtime answers these without a device (the driver version is 0 without a driver)
            driver, cuda_runtime = runtime.driverGetVersion(), runtime.runtimeGetVersion()
        except Exception:
            driver = cuda_runtime = None
        if driver == 0:
            return (f"no NVIDIA driver found (CuPy's CUDA runtime is {format_cuda_version(cuda_runtime)}): "
                    f"install the NVIDIA driver, or use the numpy backend")
        if driver is not None and cuda_runtime is not None and driver < cuda_runtime:
            return (
                f"the NVIDIA driver (CUDA {format_cuda_version(driver)}) is older than CuPy's CUDA "
                f"runtime (CUDA {format_cuda_version(cuda_runtime)}): update the driver, or install "
                f"the extra that matches it (cudeconv[cuda12] for a CUDA 12 driver)"
            )
        if getattr(exc, "status", None) == _CUDA_ERROR_NO_DEVICE:
            return "no CUDA device found (the NVIDIA driver is installed but sees no GPU)"
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if count == 0:
        return "no CUDA device found (the NVIDIA driver is installed but sees no GPU)"
    return None


_PROBE_KERNEL = r"""
#include <cuda_fp16.h>
extern "C" __global__ void cudeconv_probe(__half* out) { out[0] = __float2half(1.0f); }
"""


@functools.lru_cache(maxsize=None)
def emulator_unavailable_reason():
    """None when the CPU emulator can compile kernels here, else why not."""
    try:
        from ..emulator import compiler_unavailable_reason
    except ImportError as exc:
        return f"the emulator is not available: {exc}"
    return compiler_unavailable_reason()


def _is_cupy_array(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


def infer_name(*arrays) -> str:
    """"cuda" when any of ``arrays`` is a CuPy array, else "numpy"."""
    return "cuda" if any(_is_cupy_array(a) for a in arrays if a is not None) else "numpy"


def default_name() -> str:
    """What a layer with ``backend=None`` uses: "cuda" where it works, else "numpy"."""
    return "cuda" if cuda_unavailable_reason() is None else "numpy"


def check_name(name) -> str:
    if name not in NAMES:
        raise ValueError(f"backend must be None or one of {NAMES}, got {name!r}")
    return name


@functools.lru_cache(maxsize=None)
def get(name: str):
    """The backend object for ``name``; BackendUnavailableError when it cannot run here."""
    check_name(name)
    if name == "numpy":
        from . import numpy_backend

        return numpy_backend.NumpyBackend()
    reason = cuda_unavailable_reason() if name == "cuda" else emulator_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
    from . import kernel_backend

    return kernel_backend.make(name)


@contextlib.contextmanager
def substituted(name: str, impl):
    """Within the block, ``get(name)`` (so the functional API, the layers and SGD) returns ``impl``
    — e.g. an emulator backend whose modules are built for profiling or race checking."""
    global get
    original = get

    def substitute(requested):
        return impl if requested == name else original(requested)

    get = substitute
    try:
        yield impl
    finally:
        get = original


def resolve(backend, arrays: dict):
    """The backend object for a call: ``backend`` by name, or inferred from the arrays when None.

    ``arrays`` maps argument names to arrays (None entries are skipped); each must live where the
    backend computes (NumPy arrays for "numpy" and "emulator", CuPy arrays for "cuda").
    """
    name = infer_name(*arrays.values()) if backend is None else check_name(backend)
    impl = get(name)
    for arg, array in arrays.items():
        if array is not None:
            impl.check_array(array, arg)
    return impl
