"""The compiled modules of ``kernels/*.cu``: the sizes the kernels are compiled with, the maths a
source is split into (one module each), which module holds an entry point, compiling ahead, and
what a launch asks of a compiled kernel (dynamic shared memory beyond the default).

Each source is compiled once per math a call needs (``-DCUDECONV_MATH``, kernels/module_select.cuh):
a first float32 step compiles the float32 GEMMs, their support kernels, grad_bias and SGD only,
not every dtype's and precision's instantiation. The emulator builds one module per source
(``module_per_math=False``): fewer host compiles for the test suite, the same entry points.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .gemm_plan import GEMM_MAX_TAPS, GEMM_PACK_ROW_BYTES, gemm_dynamic_shared_bytes

if TYPE_CHECKING:
    from .path_choice import KernelPath

BLOCK = 256  # threads per block for every kernel (block reductions need a multiple of 32)
DEFAULT_DYNAMIC_SHARED_BYTES = 48 * 1024  # what a block may take without opting in, on every GPU
# Register tiles of the kernels (CHANNEL_TILE, TAP_TILE in kernels/deconv_common.cuh) and the
# depthwise grad_weight's tile, passed to the compiler from here because the grids are sized from
# them. (The GEMMs' tiles are template arguments, one entry point each: gemm_plan.GEMM_TILES.)
CHANNEL_TILE = 4
TAP_TILE = 8
DEPTHWISE_WEIGHT_TILE = 16  # filter elements one block of the depthwise grad_weight reduces
COMPILE_OPTIONS = (
    f"-DDECONV_BLOCK={BLOCK}", f"-DCHANNEL_TILE={CHANNEL_TILE}", f"-DTAP_TILE={TAP_TILE}", f"-DGEMM_MAX_TAPS={GEMM_MAX_TAPS}",
    f"-DDEPTHWISE_WEIGHT_TILE={DEPTHWISE_WEIGHT_TILE}", f"-DGEMM_PACK_ROW_BYTES={GEMM_PACK_ROW_BYTES}",
)

# The maths a source can be compiled for, one module each (CUDECONV_MATH_<NAME> in
# kernels/module_select.cuh): the storage dtypes' suffixes and the float32 GEMM's precisions.
MODULE_MATHS = ("f16", "bf16", "f32", "f64", "tf32", "tf32x3")
SOURCES = ("deconv_forward.cu", "deconv_backward.cu", "deconv_grad_bias.cu", "deconv_depthwise.cu",
           "deconv_gemm.cu", "sgd.cu")


# deconv_gemm.cu's module of a math's operand packings and split-K reduce: compiled once per math,
# not once per GEMM kernel (CUDECONV_PASS_SUPPORT, kernels/module_select.cuh).
GEMM_SUPPORT = "support"


def entry_module(path: KernelPath, entry: str):
    """The module, (source, math, gemm_pass, tile), that holds ``entry`` of ``path``: a GEMM's
    packings and split reduce are its math's GEMM_SUPPORT module's, every other entry point is in
    the path's own module."""
    if path.kind == "gemm" and entry != path.entry:
        return path.source, path.math, GEMM_SUPPORT, ()
    return path.source, path.math, path.gemm_pass, path.tile


def path_modules(path: KernelPath):
    """The modules ``path`` launches from: its entry point's, and for a GEMM that packs an operand
    or splits K its math's GEMM_SUPPORT module."""
    modules = [entry_module(path, path.entry)]
    if path.kind == "gemm" and (path.packed or path.parts > 1):
        modules.append(entry_module(path, GEMM_SUPPORT))
    return modules


def module_options(math_name: str, per_math: bool = True, gemm_pass: str = "", tile=()):
    """The compile options of a module for ``math_name``: the launch layer's sizes, and with
    ``per_math`` the -D that keeps only that math's entry points — and, for deconv_gemm.cu's
    ``gemm_pass`` and ``tile``, only that one GEMM kernel (kernels/module_select.cuh), so that a
    menu of tiles costs a first call no compile time; for GEMM_SUPPORT, the packings and split
    reduce every GEMM of the math shares."""
    if math_name not in MODULE_MATHS:
        raise ValueError(f"math must be one of {MODULE_MATHS}, got {math_name!r}")
    if not per_math:
        return COMPILE_OPTIONS
    options = COMPILE_OPTIONS + (f"-DCUDECONV_MATH=CUDECONV_MATH_{math_name.upper()}",)
    if gemm_pass == GEMM_SUPPORT:
        options += ("-DCUDECONV_GEMM_PASS=CUDECONV_PASS_SUPPORT",)
    elif gemm_pass:
        options += (f"-DCUDECONV_GEMM_PASS=CUDECONV_PASS_{gemm_pass.upper()}",
                    f"-DCUDECONV_GEMM_TILE={tile[0] * 1000 + tile[1]}")
    return options


# Kernels opted in to more dynamic shared memory than the default: id → (the kernel, kept alive so
# that its id stays its own; the bytes it may take).
_OPTED_IN = {}


def dynamic_shared(function, path: KernelPath, entry: str) -> int:
    """Bytes of dynamic shared memory ``function`` (``entry`` of ``path``'s module) launches with:
    the GEMM kernel itself its stages' (gemm_dynamic_shared_bytes), every other kernel none. Where
    that is more than a block gets by default the kernel is opted in (cudaFuncSetAttribute, no
    synchronization), once per kernel object — the modules and their kernels are memoized per
    device, so a later launch, one captured into a CUDA graph included, makes no driver call."""
    shared = gemm_dynamic_shared_bytes(path.math, path.tile) if path.kind == "gemm" and entry == path.entry else 0
    if shared > DEFAULT_DYNAMIC_SHARED_BYTES and _OPTED_IN.get(id(function), (None, 0))[1] < shared:
        function.max_dynamic_shared_size_bytes = shared
        _OPTED_IN[id(function)] = (function, shared)
    return shared


def compile_module(backend, module):
    """Compile ``module`` ((source, math, gemm_pass, tile), math None for a module of every math) of
    ``backend`` (a KernelBackend, or the name of one for a worker process) on the current device."""
    if isinstance(backend, str):
        from . import get

        backend = get(backend)
    source, math_name, gemm_pass, tile = module
    compiled = backend.module(source, math_name or "f32", gemm_pass, tile)  # without per-math modules any math names it
    if hasattr(compiled, "compile"):  # cupy.RawModule compiles lazily; the emulator's already has
        compiled.compile()
