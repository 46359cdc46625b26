"""cudeconv.emulator: CUDA C++ kernels compiled with the host compiler and run on the CPU.

Outputs are pre-filled with NaN or sentinels so elements a kernel fails to write show up.
"""

import dataclasses
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cudeconv.emulator import (
    EmulatorCompileError,
    EmulatorKernelNotFoundError,
    EmulatorLaunchError,
    RawModule,
    _kernel,
)

KERNELS = Path(__file__).parent / "emulator_kernels"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def features():
    return RawModule((KERNELS / "features.cu").read_text())


def launch(module, name, grid, block, args, shared_mem=0):
    module.get_function(name)(grid, block, args, shared_mem=shared_mem)


# ---- execution semantics ------------------------------------------------------------------


def test_shared_memory_tree_reduction(features):
    rng = np.random.default_rng(0)
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    out = np.full(4, np.nan, np.float32)
    launch(features, "block_sum", (4,), (256,), (x, out, np.int32(n)))
    expected = np.add.reduceat(np.pad(x, (0, 24)), [0, 256, 512, 768])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_warp_shuffle_reductions(features):
    x = np.arange(128, dtype=np.float32) / 8
    down = np.full(4, np.nan, np.float32)
    butterfly = np.full(128, np.nan, np.float32)
    wide = np.full(128, np.nan, np.float64)
    integer = np.full(128, -1, np.int64)
    launch(features, "warp_sums", (2,), (64,), (x, down, butterfly, wide, integer))
    per_warp = x.reshape(4, 32).sum(1)
    np.testing.assert_allclose(down, per_warp, rtol=1e-6)
    np.testing.assert_allclose(butterfly, np.repeat(per_warp, 32), rtol=1e-6)
    np.testing.assert_allclose(wide, np.repeat(per_warp, 32), rtol=1e-12)
    lane_ints = (x * 1000).astype(np.int64) + (1 << 40)
    np.testing.assert_array_equal(integer, np.repeat(lane_ints.reshape(4, 32).sum(1), 32))


@pytest.mark.parametrize("width", [32, 8])
def test_shuffle_up_idx_and_width(features, width):
    x = np.arange(64, dtype=np.int32) * 3 + 1
    scan = np.full(64, -1, np.int32)
    first = np.full(64, -1, np.int32)
    rotated = np.full(64, np.nan, np.float16)
    launch(features, "warp_scan", (1,), (64,), (x, scan, first, rotated, np.int32(width)))
    segments = x.reshape(-1, width)
    np.testing.assert_array_equal(scan, np.cumsum(segments, axis=1).reshape(-1))
    np.testing.assert_array_equal(first, np.repeat(segments[:, 0], width))
    np.testing.assert_array_equal(rotated, np.roll(x.reshape(2, 32), -1, axis=1).reshape(-1).astype(np.float16))


def test_ballot_any_all_on_full_and_partial_warps(features):
    # 48 threads per block: the second warp of each block has only 16 lanes.
    x = np.full(96, -1.0, np.float32)
    x[[0, 5, 31, 33]] = 1.0  # block 0: warp 0 lanes 0, 5, 31; warp 1 lane 1
    x[48:64] = 2.0  # block 1: warp 0 lanes 0..15
    x[80:96] = 3.0  # block 1: warp 1, all of its 16 lanes
    ballots = np.full(4, 0xDEADBEEF, np.uint32)
    any_ = np.full(4, -1, np.int32)
    all_ = np.full(4, -1, np.int32)
    active = np.full(4, 0xDEADBEEF, np.uint32)
    launch(features, "votes", (2,), (48,), (x, ballots, any_, all_, active))
    np.testing.assert_array_equal(ballots, [(1 << 0) | (1 << 5) | (1 << 31), 1 << 1, 0xFFFF, 0xFFFF])
    np.testing.assert_array_equal(any_, [1, 1, 1, 1])
    np.testing.assert_array_equal(all_, [0, 0, 0, 1])
    np.testing.assert_array_equal(active, [0xFFFFFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFF])


def test_warp_collective_after_lanes_exit_is_reported(features):
    with pytest.raises(EmulatorLaunchError, match="lane 16 has already exited"):
        launch(features, "shuffle_after_exit", (1,), (32,), (np.zeros(32, np.float32),))


def test_syncthreads_count_or_and(features):
    x = np.zeros(192, np.int32)
    x[0:64] = 1  # block 0: all
    x[70] = 1  # block 1: one
    count = np.full(3, -1, np.int32)
    any_ = np.full(3, -1, np.int32)
    all_ = np.full(3, -1, np.int32)
    launch(features, "block_votes", (3,), (64,), (x, count, any_, all_))
    np.testing.assert_array_equal(count, [64, 1, 0])
    np.testing.assert_array_equal(any_, [1, 1, 0])
    np.testing.assert_array_equal(all_, [1, 0, 0])


def test_atomics_of_every_type(features):
    n = 256
    values = np.random.default_rng(1).integers(0, 4, n).astype(np.int32)
    i32 = np.array([0, 0, -(10**6), 10**6, 0, -1], np.int32)
    u32 = np.array([0, 0, 0xFFFFFFFF, 0], np.uint32)
    u64 = np.array([0, 0, 2**64 - 1, 0], np.uint64)
    f32 = np.zeros(2, np.float32)
    f64 = np.zeros(1, np.float64)
    f16 = np.zeros(1, np.float16)
    bf16 = np.zeros(1, np.uint16)  # raw bfloat16 bits
    i64 = np.array([-(2**62), 2**62], np.int64)
    u16 = np.zeros(1, np.uint16)
    exchanged = np.full(n, -7, np.int32)
    launch(features, "atomics", (4,), (64,), (values, i32, u32, u64, f32, f64, f16, bf16, i64, u16, exchanged))
    total = int(values.sum())
    np.testing.assert_array_equal(i32[:5], [total, -total, values.max() - 50, values.min() - 50, n])
    assert sorted(exchanged.tolist() + [int(i32[5])]) == [-1] + list(range(n))
    np.testing.assert_array_equal(u32, [total, values.max(), values.min() + 1, 7])
    np.testing.assert_array_equal(
        u64, np.array([total << 33, int(values.max()) << 33, (int(values.min()) + 1) << 33, 3 * n], np.uint64)
    )
    np.testing.assert_array_equal(i64, [-int(values.min()) * 3000000000, -int(values.max()) * 3000000000])
    np.testing.assert_array_equal(f32, [total, 2.5])
    assert f64[0] == total * 0.5
    assert f16[0] == np.float16(total)
    assert (np.uint32(bf16[0]) << 16).view(np.float32) == n
    assert u16[0] == n


def test_dynamic_shared_memory(features):
    x = np.arange(6 * 32, dtype=np.float32)
    y = np.full_like(x, np.nan)
    launch(features, "reverse_blocks", (6,), (32,), (x, y), shared_mem=32 * 4)
    np.testing.assert_array_equal(y, x.reshape(6, 32)[:, ::-1].reshape(-1))


def test_unwritten_dynamic_shared_memory_reads_nan(features):
    y = np.zeros(16, np.float32)
    launch(features, "read_unwritten_shared", (1,), (16,), (y,), shared_mem=64)
    assert np.isnan(y).all()


@pytest.mark.parametrize(
    "grid, block", [((3, 2), (4, 8)), ((2, 3, 2), (4, 2, 3)), (5, 7), ((1, 1, 3), (1, 2, 1))]
)
def test_builtin_indices_in_multidimensional_launches(features, grid, block):
    g = np.array(tuple(grid) + (1,) * (3 - len(grid))) if isinstance(grid, tuple) else np.array([grid, 1, 1])
    b = np.array(tuple(block) + (1,) * (3 - len(block))) if isinstance(block, tuple) else np.array([block, 1, 1])
    out = np.full((g.prod(), b.prod(), 12), 0xFFFFFFFF, np.uint32)
    launch(features, "indices", grid, block, (out,))
    bz, by, bx = np.unravel_index(np.arange(g.prod()), g[::-1])
    tz, ty, tx = np.unravel_index(np.arange(b.prod()), b[::-1])
    expected = np.empty_like(out)
    expected[..., 0], expected[..., 1], expected[..., 2] = tx, ty, tz
    expected[..., 3], expected[..., 4], expected[..., 5] = bx[:, None], by[:, None], bz[:, None]
    expected[..., 6:9] = b
    expected[..., 9:12] = g
    np.testing.assert_array_equal(out, expected)


def test_template_behind_two_entry_points(features):
    x32 = np.arange(10, dtype=np.float32)
    x64 = np.arange(10, dtype=np.float64) / 3
    launch(features, "scale_f32", (1,), (16,), (x32, np.float32(2), np.int32(10)))
    launch(features, "scale_f64", (1,), (16,), (x64, np.float64(0.5), np.int32(10)))
    np.testing.assert_array_equal(x32, np.arange(10) * 2 + 1)
    np.testing.assert_allclose(x64, np.arange(10) / 3 * 0.5 + 1, rtol=1e-15)
    assert [p.c_type for p in features.get_function("scale_f64").parameters] == ["double*", "double", "int"]


def test_half_arrays_in_and_out(features):
    x = np.linspace(-2, 2, 50).astype(np.float16)
    y = np.linspace(1, 3, 50).astype(np.float16)
    expected = (np.float32(np.float16(1.5)) * x.astype(np.float32) + y.astype(np.float32)).astype(np.float16)
    launch(features, "half_axpy", (2,), (32,), (np.float16(1.5), x, y, np.int32(50)))
    np.testing.assert_array_equal(y, expected)


def test_bfloat16_rounding(features):
    x = np.random.default_rng(2).standard_normal(100).astype(np.float32)
    bits = np.zeros(100, np.uint16)
    launch(features, "to_bfloat16", (1,), (128,), (x, bits, np.int32(100)))
    raw = x.view(np.uint32).astype(np.uint64)
    np.testing.assert_array_equal(bits, ((raw + 0x7FFF + ((raw >> 16) & 1)) >> 16).astype(np.uint16))


def test_struct_passed_by_value(features):
    affine = np.dtype([("n", "<i4"), ("scale", "<f4"), ("shift", "<f8")])
    params = np.array((5, 2.0, 0.25), affine)[()]
    x = np.arange(8, dtype=np.float32)
    y = np.full(8, np.nan)
    launch(features, "affine", (1,), (8,), (params, x, y))
    np.testing.assert_array_equal(y[:5], np.arange(5) * 2 + 0.25)
    assert np.isnan(y[5:]).all()


def test_fast_math_intrinsics_and_min_max_overloads(features):
    x = np.linspace(0, 2, 8).astype(np.float32)
    y = np.full(32, np.nan, np.float32)
    launch(features, "fast_math", (1,), (8,), (x, y))
    i = np.arange(8)
    expected = np.stack(
        [
            np.exp(x) + np.log(x + 2),
            x / 3 + 1 / np.sqrt(x + 1),
            x * 2 + 1 + np.minimum(x, 0.5) + np.maximum(x, 0.5),
            np.minimum(i, 3) + np.maximum(i, 3) + np.minimum(i, 3) + np.maximum(x, 0.25),
        ],
        axis=1,
    ).reshape(-1)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_failed_assert_raises_and_the_process_survives(features):
    x = np.ones(32, np.float32)
    x[7] = -1
    with pytest.raises(EmulatorLaunchError, match=r"cudeconv_kernel\.cu:\d+: void checked\(const float\*\): Assertion `x\[threadIdx.x\] >= 0.0f` failed.*thread \(7,0,0\)"):
        launch(features, "checked", (1,), (32,), (x,))
    launch(features, "checked", (1,), (32,), (np.ones(32, np.float32),))


def test_printf(features, capfd):
    launch(features, "hello", (2,), (4,), (np.int32(42),))
    assert capfd.readouterr().out == "hello from block 1 thread 1, tag 42\n"


def test_launch_configuration_checks(features):
    x = np.zeros(128, np.int32)
    with pytest.raises(EmulatorLaunchError, match="exceed the kernel's limit of 64"):
        launch(features, "small_blocks_only", (1,), (128,), (x,))
    assert not x.any()
    with pytest.raises(EmulatorLaunchError, match="block dimension z=65"):
        launch(features, "small_blocks_only", (1,), (1, 1, 65), (x,))
    with pytest.raises(EmulatorLaunchError, match="grid dimension x=0"):
        launch(features, "small_blocks_only", (0,), (1,), (x,))
    with pytest.raises(EmulatorLaunchError, match="shared_mem"):
        launch(features, "small_blocks_only", (1,), (1,), (x,), shared_mem=10**6)
    with pytest.raises(TypeError, match="grid must be"):
        launch(features, "small_blocks_only", 1.0, (1,), (x,))


def test_large_grid_elementwise_and_reduction(features):
    """4096 blocks of 256 threads: every block runs, with its own shared memory."""
    n = 1 << 20
    x = np.random.default_rng(3).random(n, dtype=np.float32)
    y = np.ones(n, np.float32)
    sums = np.full(n // 256, np.nan, np.float32)
    axpy, block_sum = features.get_function("axpy"), features.get_function("block_sum")
    axpy((n // 256,), (256,), (np.float32(2), x, y, np.int32(n)))
    block_sum((n // 256,), (256,), (x, sums, np.int32(n)))
    np.testing.assert_allclose(y, 1 + 2 * x, rtol=1e-6)
    np.testing.assert_allclose(sums, x.reshape(-1, 256).sum(1), rtol=1e-4)


UNWRITTEN_SHARED_SOURCE = r"""
extern __shared__ float file_scope_dynamic[];  // file scope: fine with sanitize=True too

// Reads static shared memory no thread has written in this block, then writes it, so the next
// block on the same core would see that if shared memory were not poisoned per block.
extern "C" __global__ void read_unwritten_static_shared(int* seen, float* seen_tile) {
    __shared__ int never_written;
    __shared__ float tile[4];
    __syncthreads();
    if (threadIdx.x == 0) seen[blockIdx.x] = never_written;
    seen_tile[blockIdx.x * 4 + threadIdx.x] = tile[threadIdx.x];
    __syncthreads();
    never_written = blockIdx.x;
    tile[threadIdx.x] = 0.0f;
}

extern "C" __global__ void reverse_through_file_scope_buffer(float* x) {
    file_scope_dynamic[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    x[threadIdx.x] = file_scope_dynamic[blockDim.x - 1 - threadIdx.x];
}
"""


@pytest.mark.parametrize("sanitize", [False, True])
def test_unwritten_static_shared_memory_is_poisoned_in_every_block(sanitize):
    # A fresh module: its first launch is the first use of its shared memory on every core.
    module = RawModule(UNWRITTEN_SHARED_SOURCE + f"// {sanitize}\n", sanitize=sanitize)
    seen = np.zeros(64, np.int32)
    seen_tile = np.zeros(64 * 4, np.float32)
    module.get_function("read_unwritten_static_shared")((64,), (4,), (seen, seen_tile))
    np.testing.assert_array_equal(seen, -1)
    assert np.isnan(seen_tile).all()


@pytest.mark.parametrize("sanitize", [False, True])
def test_file_scope_extern_shared(sanitize):
    module = RawModule(UNWRITTEN_SHARED_SOURCE, sanitize=sanitize)
    x = np.arange(8, dtype=np.float32)
    module.get_function("reverse_through_file_scope_buffer")((1,), (8,), (x,), shared_mem=32)
    np.testing.assert_array_equal(x, np.arange(8)[::-1])


# ---- argument checking --------------------------------------------------------------------


def _axpy_args():
    return np.float32(2), np.arange(4, dtype=np.float32), np.full(4, 5.0, np.float32), np.int32(4)


@pytest.mark.parametrize(
    "index, replacement, message",
    [
        (0, 2.0, r"argument 0: parameter type is 'float', which takes numpy\.float32.*got a Python float"),
        (3, 4, r"argument 3: parameter type is 'int', which takes numpy\.int32.*got a Python int"),
        (0, np.float64(2), r"argument 0: parameter type is 'float'.*got a numpy\.float64 scalar"),
        (3, np.int64(4), r"argument 3: parameter type is 'int'.*got a numpy\.int64 scalar"),
        (3, np.array([4], np.int32), r"argument 3: parameter type is 'int'.*got a numpy array"),
        (1, np.float32(1), r"argument 1: parameter type is 'float const\*', which takes a C-contiguous numpy array; got a numpy\.float32"),
        (1, np.arange(8, dtype=np.float32)[::2], r"argument 1: .*non-contiguous"),
        (1, np.arange(4, dtype=np.float64), r"argument 1: .*elements are 4 bytes.*float64"),
    ],
)
def test_argument_type_errors(features, index, replacement, message):
    args = list(_axpy_args())
    y = args[2]
    args[index] = replacement
    with pytest.raises(TypeError, match=message):
        features.get_function("axpy")((1,), (4,), tuple(args))
    np.testing.assert_array_equal(y, 5.0)  # nothing ran


POINTERS_SOURCE = r"""
struct Pair { int a; float b; };
extern "C" __global__ void takes_pointers(float* f, const char* c, void* v, Pair* p) {}
"""


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("objects", [np.array([1.5, None, "x", 4], object), np.zeros(4, [("a", object)])])
def test_arrays_of_python_objects_are_refused(index, objects):
    args = [np.zeros(4, np.float32), np.zeros(4, np.uint8), np.zeros(4, np.uint8), np.zeros(4, [("a", "<i4"), ("b", "<f4")])]
    args[index] = objects
    with pytest.raises(TypeError, match=rf"argument {index}: .*holds Python object references"):
        RawModule(POINTERS_SOURCE).get_function("takes_pointers")((1,), (1,), tuple(args))


def test_wrong_argument_count(features):
    with pytest.raises(TypeError, match=r"takes 4 arguments \(float, float const\*, float\*, int\), got 3"):
        features.get_function("axpy")((1,), (4,), _axpy_args()[:3])


def test_read_only_array_for_writable_pointer(features):
    a, x, y, n = _axpy_args()
    y.flags.writeable = False
    with pytest.raises(TypeError, match="argument 2.*read-only"):
        features.get_function("axpy")((1,), (4,), (a, x, y, n))
    x.flags.writeable = False  # fine for a const pointer
    y = np.zeros(4, np.float32)
    features.get_function("axpy")((1,), (4,), (a, x, y, n))
    np.testing.assert_array_equal(y, 2 * x)


def test_unknown_entry_point(features):
    with pytest.raises(EmulatorKernelNotFoundError, match="no extern \"C\" __global__ function named 'nope'.*axpy") as info:
        features.get_function("nope")
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        features.get_function("scale_impl")  # a template, not an entry point


# ---- compilation --------------------------------------------------------------------------


def test_compile_error_carries_diagnostics():
    source = "extern \"C\" __global__ void broken(float* x) {\n    x[0] = undeclared_name;\n}\n"
    with pytest.raises(EmulatorCompileError, match=r"cudeconv_kernel\.cu:2:\d+: error: 'undeclared_name' was not declared"):
        RawModule(source)


def test_compile_error_honours_line_directives():
    source = '#line 40 "kernels/some_kernel.cu"\nextern "C" __global__ void broken(float* x) {\n    x[0] = 1.0f\n}\n'
    with pytest.raises(EmulatorCompileError, match=r"kernels/some_kernel\.cu:41:\d+: error: expected ';'"):
        RawModule(source)


def test_entry_point_discovery():
    source = r"""
#define DEFINE_FILL(NAME, VALUE) extern "C" __global__ void NAME(int* x) { x[threadIdx.x] = VALUE; }
DEFINE_FILL(fill_seven, 7)
#if 0
extern "C" __global__ void disabled(int* x) {}
#endif
// extern "C" __global__ void in_a_comment(int* x) {}
extern "C" {
__global__ void declared_first(int* x);
__global__ void __launch_bounds__(32, 1) in_block(int* x) { x[threadIdx.x] = 1; }
__device__ int not_a_kernel(int v) { return v; }
}
template <class T> __global__ void templated(T* x) {}
extern "C" __global__ void declared_first(int* x) { x[threadIdx.x] = not_a_kernel(2); }
"""
    module = RawModule(source)
    assert sorted(module.kernel_names) == ["declared_first", "fill_seven", "in_block"]
    assert module.get_function("in_block").max_threads_per_block == 32
    x = np.zeros(4, np.int32)
    module.get_function("fill_seven")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 7)
    module.get_function("declared_first")((1,), (4,), (x,))
    np.testing.assert_array_equal(x, 2)


def test_options_defines_includes_and_ignored_nvrtc_flags(tmp_path):
    (tmp_path / "helper.cuh").write_text("__device__ inline int helper(int v) { return v * FACTOR + OFFSET; }\n")
    source = '#include "helper.cuh"\nextern "C" __global__ void k(int* x) { x[threadIdx.x] = helper(threadIdx.x); }\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = RawModule(
            source, options=("-DFACTOR=3", "--define-macro=OFFSET=10", f"-I{tmp_path}", "--use_fast_math", "-arch=sm_80", "--std=c++14")
        )
    x = np.full(8, -1, np.int32)
    module.get_function("k")((1,), (8,), (x,))
    np.testing.assert_array_equal(x, np.arange(8) * 3 + 10)
    with pytest.warns(UserWarning, match="ignoring unsupported compiler option '--frobnicate'"):
        RawModule(source, options=("-DFACTOR=3", "-DOFFSET=10", f"-I{tmp_path}", "--frobnicate"))


@pytest.mark.parametrize("name", ["div", "index"])
def test_kernel_named_like_a_c_library_function(name):
    with pytest.raises(EmulatorCompileError, match=rf"kernel name '{name}' is also the name of a C library function"):
        RawModule(f'extern "C" __global__ void {name}(float* x) {{ x[0] = 1.0f; }}\n')


UCONTEXT_SOURCE = r"""
extern "C" __global__ void sums(const float* x, float* block_total, float* warp_total) {
    __shared__ float partial[64];
    const unsigned t = threadIdx.x;
    float v = x[blockIdx.x * 64 + t];
    partial[t] = v;
    __syncthreads();
    for (unsigned half = 32; half > 0; half /= 2) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (t == 0) block_total[blockIdx.x] = partial[0];
    if (t % 32 == 0) warp_total[blockIdx.x * 2 + t / 32] = v;
}
"""


def test_ucontext_fiber_fallback():
    """The portable context switch (used off x86-64) gives the same results as the assembly one."""
    module = RawModule(UCONTEXT_SOURCE, options=("-DCUDECONV_EMU_UCONTEXT",))
    x = np.arange(256, dtype=np.float32)
    block_total = np.full(4, np.nan, np.float32)
    warp_total = np.full(8, np.nan, np.float32)
    module.get_function("sums")((4,), (64,), (x, block_total, warp_total))
    np.testing.assert_array_equal(block_total, x.reshape(4, 64).sum(1))
    np.testing.assert_array_equal(warp_total, x.reshape(8, 32).sum(1))


def test_without_cuda_toolkit_headers(monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_CUDA_INCLUDE", "")
    source = 'extern "C" __global__ void k(float4* v) { v[threadIdx.x] = make_float4(threadIdx.x, 1.f, 2.f, 3.f); }\n'
    v = np.full((3, 4), np.nan, np.float32)
    RawModule(source).get_function("k")((1,), (3,), (v,))
    np.testing.assert_array_equal(v, [[0, 1, 2, 3], [1, 1, 2, 3], [2, 1, 2, 3]])
    with pytest.raises(EmulatorCompileError, match="no CUDA toolkit headers were found"):
        RawModule("#include <cuda_fp16.h>\n" + source)


# ---- sanitizer ----------------------------------------------------------------------------

SANITIZED_SOURCE = r"""
extern "C" __global__ void add_one(float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}
extern "C" __global__ void write_past_end(float* x) {
    x[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;  // no bounds check: the grid overshoots
}
extern "C" __global__ void shared_past_end(float* x) {
    __shared__ float tile[32];
    tile[threadIdx.x] = x[threadIdx.x];  // launched with more than 32 threads
    __syncthreads();
    x[threadIdx.x] = tile[0];
}
extern "C" __global__ void dynamic_shared_past_end(float* x) {
    extern __shared__ float staged[];
    staged[threadIdx.x] = x[threadIdx.x];  // launched with too little shared_mem
}
extern "C" __global__ void in_place(const float* a, float* b) {
    b[threadIdx.x] += 1.0f;
    b[threadIdx.x] += a[threadIdx.x];
}
extern "C" __global__ void add_from(const float* a, float* b) {
    b[threadIdx.x] += a[threadIdx.x];
}
"""


@pytest.fixture(scope="module")
def sanitized():
    return RawModule(SANITIZED_SOURCE, sanitize=True)


def test_sanitized_launch_copies_results_back(sanitized):
    x = np.arange(100, dtype=np.float32)
    sanitized.get_function("add_one")((4,), (32,), (x, np.int32(100)))
    np.testing.assert_array_equal(x, np.arange(100) + 1)


def test_sanitizer_catches_out_of_bounds_write_and_process_survives(sanitized, features):
    x = np.zeros(100, np.float32)
    with pytest.raises(EmulatorLaunchError, match=r"heap-buffer-overflow") as info:
        sanitized.get_function("write_past_end")((4,), (32,), (x,))
    assert "WRITE of size 4" in info.value.report
    assert re.search(r"cudeconv_kernel\.cu:7", info.value.report)
    # The parent process is intact and both kinds of module still launch.
    x = np.zeros(128, np.float32)
    sanitized.get_function("write_past_end")((4,), (32,), (x,))
    np.testing.assert_array_equal(x, 1.0)
    y = np.zeros(4, np.float32)
    features.get_function("axpy")((1,), (4,), (np.float32(1), np.ones(4, np.float32), y, np.int32(4)))
    np.testing.assert_array_equal(y, 1.0)


def test_sanitizer_catches_shared_memory_overflows(sanitized):
    with pytest.raises(EmulatorLaunchError, match=r"index 32 out of bounds for type 'float \[32\]'"):
        sanitized.get_function("shared_past_end")((1,), (40,), (np.zeros(40, np.float32),))
    # Bytes past the launch's dynamic shared memory are poisoned by hand (they are not a heap block).
    with pytest.raises(EmulatorLaunchError, match=r"use-after-poison[\s\S]*cudeconv_kernel\.cu:17"):
        sanitized.get_function("dynamic_shared_past_end")((1,), (16,), (np.zeros(16, np.float32),), shared_mem=60)
    sanitized.get_function("dynamic_shared_past_end")((1,), (16,), (np.zeros(16, np.float32),), shared_mem=64)


def test_sanitized_launch_with_the_same_array_twice(sanitized):
    # The kernel reads a[i] after writing b[i]: only one shared buffer for both gives 2x + 2.
    x = np.arange(8, dtype=np.float32)
    sanitized.get_function("in_place")((1,), (8,), (x, x))
    np.testing.assert_array_equal(x, np.arange(8) * 2 + 2)


def test_sanitized_launch_writes_back_through_a_read_only_alias_first(sanitized):
    x = np.arange(8, dtype=np.float32)
    read_only = x.view()
    read_only.flags.writeable = False
    sanitized.get_function("in_place")((1,), (8,), (read_only, x))
    np.testing.assert_array_equal(x, np.arange(8) * 2 + 2)


@pytest.mark.parametrize("a, b", [(slice(0, 12), slice(4, 8)), (slice(0, 8), slice(4, 12)), (slice(4, 8), slice(0, 12))])
def test_sanitized_launch_with_arrays_inside_or_overlapping_others(sanitized, a, b):
    """One buffer per stretch of memory: writes through one view are seen through the others."""
    source = np.arange(12, dtype=np.float32)
    expected = source.copy()
    RawModule(SANITIZED_SOURCE).get_function("add_from")((1,), (4,), (expected[a], expected[b]))
    sanitized.get_function("add_from")((1,), (4,), (source[a], source[b]))
    np.testing.assert_array_equal(source, expected)


# ---- time limit ---------------------------------------------------------------------------

HANGING_SOURCE = r"""
// Threads 0-15 wait at barriers for a flag that threads 16.. spin on: on a GPU this deadlocks
// too; here a spinning thread never yields to the others.
extern "C" __global__ void deadlock(int* out) {
    __shared__ volatile int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    if (threadIdx.x < 16) {
        while (!flag) __syncthreads();
    } else {
        while (!flag) {}
    }
    out[blockIdx.x] = 1;
}
extern "C" __global__ void barriers_forever(int* out) {
    __shared__ volatile int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    while (!flag) __syncthreads();
    out[blockIdx.x] = 1;
}
extern "C" __global__ void fill(int* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = 7; }
"""

_HANG_CHECK = f"""
import time
import numpy as np
from cudeconv.emulator import EmulatorLaunchError, RawModule
module = RawModule({HANGING_SOURCE!r})
for name, grid in [("deadlock", 1), ("deadlock", 6), ("barriers_forever", 1), ("barriers_forever", 6)]:
    start = time.monotonic()
    try:
        module.get_function(name)((grid,), (32,), (np.zeros(grid, np.int32),))
    except EmulatorLaunchError as exc:
        print(f"{{name}} grid={{grid}} after {{time.monotonic() - start:.1f}} s: {{exc}}")
    else:
        print(f"{{name}} grid={{grid}}: no error")
out = np.zeros(64, np.int32)
module.get_function("fill")((2,), (32,), (out,))
print("afterwards:", (out == 7).all())
"""


def test_hanging_launches_are_stopped_and_the_process_carries_on():
    # In a child process, so that a watchdog that fails to stop a launch fails the test
    # instead of hanging the test run.
    env = dict(os.environ, CUDECONV_EMULATOR_TIMEOUT="2", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", _HANG_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5, result.stdout
    for line in lines[:4]:
        assert re.search(r"after [2-5]\.\d s: kernel '\w+' failed: timed out: it did not finish within 2 s \(CUDECONV_EMULATOR_TIMEOUT\)", line), line
        assert "spin-wait or a deadlock" in line
    assert "block (0,0,0): thread (16,0,0) was running without reaching a barrier; 16 threads waiting at __syncthreads, 0 in a warp-synchronous call, 15 not yet run since the last barrier, 0 exited" in lines[0]
    assert re.search(r"block \(\d,0,0\): thread \(16,0,0\) was running without reaching a barrier", lines[1])
    assert re.search(r"block \(0,0,0\): its threads were still meeting at barriers \(\d+ __syncthreads so far\)", lines[2])
    assert lines[4] == "afterwards: True"


def test_sanitized_hanging_launch_is_stopped(monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_TIMEOUT", "2")
    module = RawModule(HANGING_SOURCE, sanitize=True)
    with pytest.raises(
        EmulatorLaunchError,
        match=r"kernel 'deadlock' failed: cudeconv emulator: kernel 'deadlock' did not finish within 2 s "
        r"\(CUDECONV_EMULATOR_TIMEOUT\) and could not be stopped; block \(0,0,0\) thread \(16,0,0\) is still running;",
    ):
        module.get_function("deadlock")((1,), (32,), (np.zeros(1, np.int32),))
    with pytest.raises(EmulatorLaunchError, match=r"timed out: .*block \(0,0,0\): its threads were still meeting at barriers"):
        module.get_function("barriers_forever")((1,), (32,), (np.zeros(1, np.int32),))


def test_sanitizer_child_that_hangs_is_killed(sanitized, tmp_path, monkeypatch):
    """The parent's own limit, for a child that hangs where its watchdog cannot see it."""
    hanging = tmp_path / "hanging-runner"
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    compiled = dataclasses.replace(sanitized._compiled, path=hanging)
    kernel = _kernel.RawKernel(compiled, compiled.kernels["add_one"])
    monkeypatch.setenv("CUDECONV_EMULATOR_TIMEOUT", "1")
    monkeypatch.setattr(_kernel, "_CHILD_TIMEOUT_MARGIN_SECONDS", 0.5)
    with pytest.raises(EmulatorLaunchError, match=r"kernel 'add_one' timed out under the sanitizer: .* within 1\.5 s .*killed; likely a deadlock or a spin-wait"):
        kernel((1,), (1,), (np.zeros(1, np.float32), np.int32(1)))


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_invalid_timeout_setting(features, monkeypatch, value):
    monkeypatch.setenv("CUDECONV_EMULATOR_TIMEOUT", value)
    with pytest.raises(ValueError, match="CUDECONV_EMULATOR_TIMEOUT must be a number of seconds"):
        launch(features, "axpy", (1,), (4,), _axpy_args())
