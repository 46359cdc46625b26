"""The FFMA/DFMA GEMMs (f32, f64) on compute capability 7.0 and 7.5 (V100, T4), where cp.async and
mma.sync are missing: their operand slices are staged through registers (kernels/gemm_math.cuh,
CUDECONV_NO_CP_ASYNC) and the tensor-core maths stay on 8.0 and newer.

Oracles: the float64 NumPy reference, and the cp.async path's own results — bitwise, since the
register-staged path does the same arithmetic in the same order — for the emulator built with
-DCUDECONV_NO_CP_ASYNC (that path, on the CPU); the launch layer's choices on 7.0 and 7.5
descriptors; and for sm_75, nvcc's own cubin (no cp.async, no tensor cores, no local memory, and
the registers and shared memory the heuristic assumes).
"""
import dataclasses

import numpy as np
import pytest

from cudeconv import backends, emulator
from cudeconv.backends.device_descriptor import H100_SXM, DeviceDescriptor, wave
from cudeconv.backends.gemm_plan import GEMM_MATHS, GEMM_TILES
from cudeconv.backends.kernel_backend import (GEMM_MIN_COMPUTE_CAPABILITY, SPLIT_MIN_K,
                                              KernelBackend, gemm_resources, gemm_splits)
from cudeconv._loader import kernels_dir

from conftest import sass_report, skip_unless_kernel_checks_can_run
from test_gemm import GEOMETRIES, PASSES, _arrays, _geometry, check_against_reference, run_gemm

# T4: 40 SMs, 64 KiB of shared memory per SM (all of it to one block by opt-in, 48 KiB without),
# none reserved per block, 64K registers, 1024 threads and 16 blocks per SM.
T4 = DeviceDescriptor("T4", (7, 5), 40, 48 * 1024, 64 * 1024, 64 * 1024, 0, 65536, 1024, 16)
V100 = dataclasses.replace(T4, name="V100", compute_capability=(7, 0), sm_count=80,
                           shared_memory_per_block_optin=96 * 1024, shared_memory_per_sm=96 * 1024,
                           max_threads_per_sm=2048, max_blocks_per_sm=32)
REGISTER_STAGED = "-DCUDECONV_NO_CP_ASYNC"
LAYER = ((8, 8), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 64, 32, 2)  # a DCGAN layer: wide enough for "auto"


def register_staged_module(code, options=()):
    """The emulator's module of ``code`` with the register-staged GEMM path, checked against a
    T4's launch limits (sm_75)."""
    return emulator.RawModule(code, options=tuple(options) + (REGISTER_STAGED, "-arch=sm_75"))


def _register_staged_backend():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    return KernelBackend("emulator-sm75", np, register_staged_module, lambda: "cpu-register-staged",
                         module_per_math=False, device=T4)


# -- the launch layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", [T4, V100], ids=lambda d: d.name)
def test_an_older_gpu_runs_the_ffma_and_dfma_gemms_only(device):
    impl = KernelBackend("emulator", np, None, lambda: "cpu", device=device)
    geom = _geometry(LAYER)
    for pass_ in PASSES:
        for dtype in (np.float32, np.float64):
            path = impl.kernel_path(geom, pass_, "auto", dtype, "fp32")
            assert (path.kind, path.math) == ("gemm", "f32" if dtype == np.float32 else "f64"), path
            # the split-K rules are the 8.0 GPUs': the descriptor's occupancy decides the count
            assert path.parts == gemm_splits(geom, pass_, path.math, device), path
        for dtype, precision in ((np.float32, "tf32"), (np.float32, "tf32x3"), (np.float16, "fp32")):
            assert impl.kernel_path(geom, pass_, "auto", dtype, precision).kind != "gemm"
            with pytest.raises(ValueError, match=rf"compute capability {device.compute_capability[0]}\."
                                                 rf"{device.compute_capability[1]}; the \w+ GEMM kernels need 8\.0"):
                impl.kernel_path(geom, pass_, "gemm", dtype, precision)
        # the autotuner's candidates: GEMMs for f32, none for tf32
        assert any(p.kind == "gemm" for p in impl.candidate_paths(geom, pass_, np.float32, "fp32"))
        assert not any(p.kind == "gemm" for p in impl.candidate_paths(geom, pass_, np.float32, "tf32"))


def test_a_pascal_gpu_runs_no_gemm():
    pascal = dataclasses.replace(T4, name="sm_61", compute_capability=(6, 1))
    impl = KernelBackend("emulator", np, None, lambda: "cpu", device=pascal)
    assert impl.kernel_path(_geometry(LAYER), "forward", "auto", np.float32, "fp32").kind == "direct"
    with pytest.raises(ValueError, match=r"compute capability 6\.1; the f64 GEMM kernels need 7\.0"):
        impl.kernel_path(_geometry(LAYER), "forward", "gemm", np.float64, "fp32")


def test_the_split_count_follows_the_older_gpus_occupancy():
    """A T4 holds 2 f32 GEMM blocks per SM (256 threads at the launch bounds' 128 registers fill its
    64K registers twice) on 40 SMs: 80 slots. grad_weight of 64 samples at 16 × 16 (K = 16384,
    4 blocks of 128 × 128 for 64 × 512) splits until the grid holds two full waves, 160 blocks: 40
    parts, where an H100 (264 slots) stops at the 64 that SPLIT_MIN_K allows."""
    assert wave(T4, gemm_resources("f32", "grad_weight", T4)) == 80
    geom = _geometry(((16, 16),) + LAYER[1:-1] + (64,))
    assert gemm_splits(geom, "grad_weight", "f32", T4) == 2 * 80 // 4
    assert gemm_splits(geom, "grad_weight", "f32", H100_SXM) == 16384 // SPLIT_MIN_K


# -- the register-staged path on the emulator ----------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", [GEOMETRIES[1], GEOMETRIES[6]], ids=["groups-dilation", "multi-tile"])
@pytest.mark.parametrize("splits", [1, 3])
def test_register_staged_gemm_matches_reference_and_the_cp_async_path(config, dtype, splits):
    staged = _register_staged_backend()
    assert REGISTER_STAGED in staged.module("deconv_gemm.cu", "f32").options
    geom = _geometry(config)
    arrays = _arrays(geom, dtype, seed=17)
    results = run_gemm(staged, geom, arrays, "emulator", "fp32", splits)
    check_against_reference(results, arrays, geom, dtype, "fp32")
    cp_async = run_gemm(backends.get("emulator"), geom, arrays, "emulator", "fp32", splits)
    for name in PASSES:
        assert results[name].dtype == cp_async[name].dtype == dtype, name
        assert results[name].tobytes() == cp_async[name].tobytes(), name


# -- SASS ----------------------------------------------------------------------------------------

def test_sm75_gemm_sass():
    """nvcc's sm_75 cubin of deconv_gemm.cu: the f32 and f64 GEMMs without cp.async (LDGSTS) or
    local memory, with the static shared memory and at most the registers the heuristic assumes;
    no tensor-core entry point."""
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = {row["kernel"]: row for row in sass_report.report(kernels_dir() / "deconv_gemm.cu", "sm_75")}
    older = {name for name, needed in GEMM_MIN_COMPUTE_CAPABILITY.items() if needed <= 75}
    assert older == {"f32", "f64"}
    for math_name in GEMM_MATHS:
        for pass_ in PASSES:
            for tile in GEMM_TILES[math_name][pass_]:
                entry = f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"
                if math_name not in older:
                    assert entry not in rows
                    continue
                row = rows[entry]
                resources = gemm_resources(math_name, pass_, T4, tile)
                assert row["LDGSTS"] == row["HMMA"] == 0, row
                assert row["LDL"] == row["STL"] == row["local"] == row["spill_stores"] == row["spill_loads"] == 0, row
                assert row["shared"] == resources.shared_bytes, row
                assert row["registers"] <= resources.registers_per_thread, row
                assert row["loop_fma"] > 0, row
