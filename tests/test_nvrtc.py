"""Every CUDA source compiles with NVRTC — the compiler CuPy runs on the user's machine — as the
loader hands it over (headers inlined), for sm_80 and sm_90. No GPU is needed to compile, so
this runs in CI: inline PTX, headers or C++ that nvcc accepts and NVRTC does not fail here
rather than on a user's first launch."""
import ctypes
import ctypes.util
import importlib.util
from pathlib import Path

import pytest

from conftest import skip_unless_kernel_checks_can_run
from cudeconv._loader import kernels_dir, source_with_headers
from cudeconv.emulator._compiler import find_cuda_include

SOURCES = sorted(kernels_dir().glob("*.cu")) + [Path(__file__).parent / "emulator_kernels" / "mma_primitives.cu"]


def _nvrtc_library():
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for candidate in sorted(Path(root).glob("cu*/lib/libnvrtc.so*"), reverse=True):
            return ctypes.CDLL(str(candidate))
    found = ctypes.util.find_library("nvrtc")
    return ctypes.CDLL(found) if found else None


NVRTC = _nvrtc_library()


def nvrtc_compile(source, name, options):
    """(status, log) of nvrtcCompileProgram; status 0 is NVRTC_SUCCESS."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None) == 0
    try:
        encoded = [option.encode() for option in options]
        status = NVRTC.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        return status, log.value.decode(errors="replace")
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvrtc_compiles(source, arch):
    skip_unless_kernel_checks_can_run("NVRTC", None if NVRTC else "libnvrtc not found (pip wheel nvidia-cuda-nvrtc)")
    include = find_cuda_include()  # cuda_fp16.h, as CuPy's [ctk] headers provide on a GPU machine
    options = [f"--gpu-architecture={arch}", "-std=c++17"] + ([f"-I{include}"] if include else [])
    status, log = nvrtc_compile(source_with_headers(source), source.name, options)
    assert status == 0, f"NVRTC failed on {source.name} for {arch}:\n{log}"
