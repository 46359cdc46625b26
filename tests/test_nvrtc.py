"""Every CUDA source compiles with NVRTC — the compiler CuPy runs on the user's machine — exactly as
the launch layer hands it over: headers inlined, the launch layer's own options, one module per
math (``-DCUDECONV_MATH``), for sm_80 and sm_90 (the GEMM also for sm_75 and sm_70). No GPU is needed to compile, so this runs in CI:
inline PTX, headers, C++ or static shared memory that ptxas refuses fail here rather than on a
user's first launch. And a first float32 training step compiles in at most two seconds of CPU time."""
import ctypes
import ctypes.util
import functools
import importlib.util
import re
import resource
from pathlib import Path

import numpy as np
import pytest

from conftest import sass_report, skip_unless_kernel_checks_can_run
from cudeconv._geometry import make_geometry
from cudeconv._loader import kernel_source, kernels_dir, source_with_headers
from cudeconv.backends.kernel_backend import (GEMM_PASSES, GEMM_SUPPORT, GEMM_TILES, MODULE_MATHS, SOURCES,
                                              KernelBackend, gemm_math, module_options, path_modules)
from cudeconv.emulator._compiler import find_cuda_include

TEST_KERNELS = [Path(__file__).parent / "emulator_kernels" / "mma_primitives.cu"]
# The float32 GEMM maths share float32 storage, so their modules also hold the float32 split-K reduce.
STORAGE_OF_MATH = {"f16": "f16", "bf16": "bf16", "f32": "f32", "f64": "f64", "tf32": "f32", "tf32x3": "f32"}
COLD_START_CPU_SECONDS = 2.0


def _nvrtc_library():
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for candidate in sorted(Path(root).glob("cu*/lib/libnvrtc.so*"), reverse=True):
            return ctypes.CDLL(str(candidate))
    found = ctypes.util.find_library("nvrtc")
    return ctypes.CDLL(found) if found else None


NVRTC = _nvrtc_library()


def nvrtc_compile(source, name, options):
    """(status, log, ptx) of nvrtcCompileProgram; status 0 is NVRTC_SUCCESS (ptx "" otherwise)."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None) == 0
    try:
        encoded = [option.encode() for option in options]
        status = NVRTC.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        ptx = ""
        if status == 0:
            NVRTC.nvrtcGetPTXSize(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            NVRTC.nvrtcGetPTX(program, buffer)
            ptx = buffer.value.decode()
        return status, log.value.decode(errors="replace"), ptx
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


def entry_points(ptx):
    return set(re.findall(r"^\.visible \.entry (\w+)\(", ptx, flags=re.MULTILINE))


def launch_options(arch, math_name=None, gemm_pass="", tile=()):
    """What CuPy is given by the launch layer, plus what CuPy adds itself (architecture, headers)."""
    include = find_cuda_include()  # cuda_fp16.h, as CuPy's [ctk] headers provide on a GPU machine
    layer = module_options(math_name, True, gemm_pass, tile) if math_name else ()
    return [f"--gpu-architecture={arch}", "-std=c++17", *layer] + ([f"-I{include}"] if include else [])


@functools.cache
def gemm_module_entry_points(arch, math_name, gemm_pass, tile):
    """The entry points of the launch layer's deconv_gemm.cu module of one GEMM kernel (compiled
    once a session: the union test below reuses them)."""
    status, log, ptx = nvrtc_compile(kernel_source("deconv_gemm.cu"), "deconv_gemm.cu",
                                     launch_options(arch, math_name, gemm_pass, tile))
    assert status == 0, f"NVRTC failed on deconv_gemm.cu for {math_name} {gemm_pass} {tile} on {arch}:\n{log}"
    return frozenset(entry_points(ptx))


# Every module the launch layer builds of deconv_gemm.cu: one per (math, pass, tile of the menu).
GEMM_MODULES = [(math_name, pass_, tile) for math_name in MODULE_MATHS for pass_ in GEMM_PASSES
                for tile in GEMM_TILES[math_name][pass_]]


def _require_nvrtc():
    skip_unless_kernel_checks_can_run("NVRTC", None if NVRTC else "libnvrtc not found (pip wheel nvidia-cuda-nvrtc)")


OTHER_SOURCES = [source for source in SOURCES if source != "deconv_gemm.cu"]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("math_name", MODULE_MATHS)
@pytest.mark.parametrize("source", OTHER_SOURCES)
def test_each_module_compiles_with_the_launch_layers_options(source, math_name, arch):
    _require_nvrtc()
    status, log, ptx = nvrtc_compile(kernel_source(source), source, launch_options(arch, math_name))
    assert status == 0, f"NVRTC failed on {source} for {math_name} on {arch}:\n{log}"
    # A module holds its math's entry points only: the others are not compiled at all.
    storage = STORAGE_OF_MATH[math_name]
    for entry in entry_points(ptx):
        assert entry.endswith((f"_{math_name}", f"_{storage}")), f"{entry} compiled into the {math_name} module"


def _widest(module):
    math_name, pass_, tile = module
    return tile == GEMM_TILES[math_name][pass_][0]


# every GEMM module on sm_90; on sm_80 the widest tile of each (math, pass), to keep CI's NVRTC time
@pytest.mark.parametrize("arch, module", [("sm_90", module) for module in GEMM_MODULES]
                         + [("sm_80", module) for module in GEMM_MODULES if _widest(module)],
                         ids=lambda value: value if isinstance(value, str) else "{}-{}-{}x{}".format(*value[:2], *value[2]))
def test_each_gemm_module_holds_its_one_kernel(arch, module):
    """The launch layer's module of one GEMM kernel: that entry point, nothing else."""
    _require_nvrtc()
    math_name, pass_, tile = module
    assert gemm_module_entry_points(arch, *module) == {f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"}


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
@pytest.mark.parametrize("math_name", MODULE_MATHS)
def test_each_math_has_one_module_of_gemm_support_kernels(math_name, arch):
    """The kernels every GEMM of a math shares, compiled once per math: its storage dtype's split
    reduce and, on 8.0+ (cp.async; 7.x reads every operand as it is), its operand packings."""
    _require_nvrtc()
    expected = {f"deconv_gemm_split_reduce_{STORAGE_OF_MATH[math_name]}"}
    if arch != "sm_75":
        expected |= {f"deconv_gemm_pack_weight_{math_name}", f"deconv_gemm_pack_activation_{math_name}"}
    assert gemm_module_entry_points(arch, math_name, GEMM_SUPPORT, ()) == expected


@pytest.mark.parametrize("source", SOURCES)
def test_the_modules_of_a_source_together_hold_every_entry_point(source):
    """No entry point is lost by the per-math (and, for deconv_gemm.cu, per-kernel) split: the union
    of the modules' entry points is what the whole source defines — compiled without
    -DCUDECONV_MATH, as nvcc and the emulator do; for deconv_gemm.cu, as its preprocessor expands it
    (compiling every math and tile at once would take a minute)."""
    _require_nvrtc()
    if source == "deconv_gemm.cu":
        skip_unless_kernel_checks_can_run("a C++ preprocessor", None if sass_report.find_preprocessor() else "no g++")
        everything = set(sass_report.library_entry_points()[source])
        split = set().union(*(gemm_module_entry_points("sm_90", *module) for module in GEMM_MODULES),
                            *(gemm_module_entry_points("sm_90", math_name, GEMM_SUPPORT, ()) for math_name in MODULE_MATHS))
    else:
        everything = entry_points(nvrtc_compile(kernel_source(source), source, launch_options("sm_90"))[2])
        split = set()
        for math_name in MODULE_MATHS:
            split |= entry_points(nvrtc_compile(kernel_source(source), source, launch_options("sm_90", math_name))[2])
    assert everything
    assert split == everything


def nvrtc_architectures():
    """The sm_XY this NVRTC can compile for (CUDA 13 dropped sm_70)."""
    count = ctypes.c_int()
    assert NVRTC.nvrtcGetNumSupportedArchs(ctypes.byref(count)) == 0
    archs = (ctypes.c_int * count.value)()
    assert NVRTC.nvrtcGetSupportedArchs(archs) == 0
    return {f"sm_{arch}" for arch in archs}


@pytest.mark.parametrize("arch", ["sm_70", "sm_75"])
@pytest.mark.parametrize("math_name", MODULE_MATHS)
def test_the_gemm_modules_of_older_gpus_hold_the_ffma_and_dfma_gemms_only(math_name, arch):
    """Compute capability 7.x has no cp.async or mma.sync: deconv_gemm.cu compiles there with the
    f32 and f64 GEMMs (operands staged through registers), and its tensor-core modules hold the
    split reduce only."""
    _require_nvrtc()
    if arch not in nvrtc_architectures():
        pytest.skip(f"this NVRTC cannot compile for {arch}")
    status, log, ptx = nvrtc_compile(kernel_source("deconv_gemm.cu"), "deconv_gemm.cu",
                                     launch_options(arch, math_name))
    assert status == 0, f"NVRTC failed on deconv_gemm.cu for {math_name} on {arch}:\n{log}"
    expected = {f"deconv_gemm_split_reduce_{STORAGE_OF_MATH[math_name]}"}
    if math_name in ("f32", "f64"):
        expected |= {f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"
                     for pass_ in GEMM_PASSES for tile in GEMM_TILES[math_name][pass_]}
    assert entry_points(ptx) == expected


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", TEST_KERNELS, ids=lambda p: p.name)
def test_test_kernels_compile(source, arch):
    _require_nvrtc()
    status, log, _ = nvrtc_compile(source_with_headers(source), source.name, launch_options(arch))
    assert status == 0, f"NVRTC failed on {source.name} for {arch}:\n{log}"


def test_every_source_is_known_to_the_launch_layer():
    assert sorted(SOURCES) == sorted(path.name for path in kernels_dir().glob("*.cu"))


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # NVRTC compiles in this process, on any thread
    return usage.ru_utime + usage.ru_stime


def test_a_first_float32_step_compiles_in_two_seconds_of_cpu():
    """The cold start: everything a float32 fp32 forward + backward + SGD step of a GEMM-sized layer
    needs, as the launch layer asks for it, compiled for sm_90 — CPU time, not wall time, so other
    load on the machine counts little. Each GEMM kernel is a module of its own (its pass and tile),
    so the menu of tiles adds nothing, and the packings and split reduce are one module per math;
    this layer's passes take the 64 × 64 tiles and compile in about 1.1 s at the floor on a 2-core
    machine, single runs scattering ±20 %, hence the least of five.
    """
    _require_nvrtc()
    impl = KernelBackend("cold-start", np, None, lambda: "unused")
    geom = make_geometry(ndim=2, input_shape=(8, 64, 16, 16), weight_shape=(64, 32, 4, 4), stride=2, padding=1,
                         output_padding=0, groups=1, dilation=1)
    paths = impl.kernel_paths(geom, np.float32, precision="fp32").values()
    assert {path.kind for path in paths} == {"gemm", "slabs"}  # the step a real layer takes
    modules = {module for path in paths for module in path_modules(path)} | {("sgd.cu", "f32", "", ())}
    assert all(module[1] == "f32" for module in modules)
    attempts = []
    for _ in range(5):  # the least of five: load and noise only ever add CPU time (caches, SMT, frequency)
        start = _cpu_seconds()
        for source, math_name, gemm_pass, tile in sorted(modules):
            status, log, _ = nvrtc_compile(kernel_source(source), source,
                                           launch_options("sm_90", math_name, gemm_pass, tile))
            assert status == 0, log
        attempts.append(_cpu_seconds() - start)
    spent = min(attempts)
    assert spent <= COLD_START_CPU_SECONDS, (
        f"a first float32 step compiles {sorted(modules)} in {spent:.2f} s of CPU time, above "
        f"{COLD_START_CPU_SECONDS} s")


def test_the_gemm_math_of_each_precision_has_a_module():
    for dtype in (np.float16, np.float32, np.float64):
        for precision in ("fp32", "tf32", "tf32x3"):
            assert gemm_math(dtype, precision) in MODULE_MATHS
