"""The implicit-GEMM kernels (kernels/deconv_gemm.cu): forward by stride phase, grad_input and
grad_weight, each unsplit and split in K, in every math (f32 FFMA, f64, tf32, tf32x3, f16, bf16),
against the float64 NumPy reference.

Geometries cover 1/2/3-d, strides 1-8, dilation, output_padding, groups, channel counts that
leave partial tiles in M, N and K (and a slice pipeline of several taps × channel slices), phases
no tap reaches, batch 0 and 1. Outputs are poisoned (NaN) before the kernels write them.
Tolerances come from the reference's own rounding: exact-math paths use the float32/float64
bound of assert_close; tf32 is checked against a reference computed from tf32-rounded inputs
(products exact, float32 accumulation), and against float64 within twice that reference's own
error (flash-attention style).
"""
import functools
import math

import numpy as np
import pytest

from cudeconv import backends
from cudeconv._dtypes import BFLOAT16
from cudeconv._geometry import make_geometry
from cudeconv.backends.gemm_plan import GEMM_MATHS, GEMM_TILES
from cudeconv.backends.kernel_backend import GEMM_MAX_TAPS, KernelBackend, gemm_grid

from conftest import (assert_close, float64_reference, sass_report, skip_unless_kernel_checks_can_run, tf32_round,
                      to_backend, to_numpy)
from cudeconv._loader import kernels_dir

# (in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch)
GEOMETRIES = [
    ((5, 6), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 16, 32, 2),          # DCGAN k4 s2 p1
    ((4, 5), (3, 3), (3, 2), (1, 0), (2, 1), (2, 1), 2, 26, 38, 1),          # groups, dilation, output_padding
    ((9,), (16,), (8,), (4,), (3,), (1,), 2, 24, 20, 3),                     # HiFi-GAN-like s8 k16
    ((3, 4, 3), (2, 3, 2), (2, 1, 2), (0, 1, 0), (1, 0, 1), (1, 2, 1), 1, 13, 19, 1),  # 3-d, odd channels
    ((3, 3), (2, 2), (4, 4), (0, 0), (3, 0), (1, 1), 1, 40, 17, 2),          # phases no tap reaches
    ((4, 5), (3, 4), (2, 4), (1, 2), (1, 1), (2, 2), 1, 12, 20, 1),          # gcd(stride, dilation) = 2
    ((12, 11), (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, 40, 136, 2),       # M and N over one tile, 5+ K slices
    ((3, 2), (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 1, 8, 16, 0),           # batch 0
]
MATHS = [  # (dtype, precision)
    (np.float32, "fp32"), (np.float32, "tf32"), (np.float32, "tf32x3"), (np.float16, "fp32"), (BFLOAT16, "fp32"),
    (np.float64, "fp32"),
]


def _geometry(config):
    in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch = config
    return make_geometry(len(in_size), (batch, cin) + in_size, (cin, cout // groups) + kernel, stride, padding,
                         output_padding, groups, dilation)


def _arrays(geom, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in
            (geom.input_shape, geom.weight_shape, (geom.out_channels,), geom.output_shape)]


def _config_id(config):
    return f"{len(config[0])}d-" + "-".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in config)


def _math_id(math_):
    return f"{np.dtype(math_[0]).name}-{math_[1]}"


PASSES = ("forward", "grad_input", "grad_weight")


def check_against_reference(results, arrays, geom, dtype, precision):
    """results: {pass: NumPy array} of one GEMM run (forward with bias, grad_input, grad_weight)."""
    x, weight, bias, grad_output = arrays
    (y_ref, gi_ref, gw_ref, _), (y_scale, gi_scale, gw_scale, _) = float64_reference(geom, x, weight, bias,
                                                                                     grad_output)
    terms = {"forward": geom.in_channels_per_group * geom.taps + 1, "grad_input": geom.out_channels_per_group * geom.taps,
             "grad_weight": geom.batch * math.prod(geom.in_size)}
    references = {"forward": (y_ref, y_scale), "grad_input": (gi_ref, gi_scale), "grad_weight": (gw_ref, gw_scale)}
    if precision == "tf32" and dtype == np.float32:
        # the kernel's operands are the tf32 roundings of x, grad_output and weight: with those,
        # products are exact and only the float32 accumulation differs
        rounded_results, _ = float64_reference(geom, tf32_round(x), tf32_round(weight), bias, tf32_round(grad_output))
        rounded_results = dict(zip(PASSES, rounded_results))
        for name, result in results.items():
            rounded = rounded_results[name]
            expected, scale = references[name]
            assert_close(result, rounded, dtype, terms=terms[name], scale=scale, name=f"{name} vs tf32 inputs")
            own_error = np.max(np.abs(rounded - expected), initial=0.0)
            accumulation = 8 * math.sqrt(terms[name]) * 2.0**-24 * np.max(scale, initial=0.0)
            error = np.max(np.abs(to_numpy(result).astype(np.float64) - expected), initial=0.0)
            assert error <= 2 * own_error + accumulation, (name, error, own_error)
        return
    # tf32x3: each product carries up to ~12 float32 units of relative error from the dropped
    # small·small term and the rounding of the small parts, on top of the accumulation
    factor = 20.0 if precision == "tf32x3" and dtype == np.float32 else 8.0
    for name, result in results.items():
        expected, scale = references[name]
        assert_close(result, expected, dtype, terms=terms[name], scale=scale, factor=factor, name=name)


def run_gemm(impl, geom, arrays, backend, precision, splits=None):
    """The three GEMM passes at ``splits`` of K each (None: the heuristic's)."""
    x, weight, bias, grad_output = (to_backend(a, backend) for a in arrays)
    return {
        "forward": to_numpy(impl.forward(x, weight, bias, geom, "gemm", precision, splits)),
        "grad_input": to_numpy(impl.grad_input(grad_output, weight, geom, "gemm", precision, splits)),
        "grad_weight": to_numpy(impl.grad_weight(grad_output, x, geom, "gemm", precision, splits)),
    }


@pytest.mark.parametrize("math_", MATHS, ids=_math_id)
@pytest.mark.parametrize("config", GEOMETRIES, ids=_config_id)
def test_gemm_matches_reference(kernel_backend, poisoned, config, math_):
    dtype, precision = math_
    geom = _geometry(config)
    impl = backends.get(kernel_backend)
    arrays = _arrays(geom, dtype, seed=hash(config) % 2**32)
    check_against_reference(run_gemm(impl, geom, arrays, kernel_backend, precision), arrays, geom, dtype, precision)


def test_gemm_forward_without_bias(kernel_backend, poisoned):
    geom = _geometry(GEOMETRIES[1])
    impl = backends.get(kernel_backend)
    x, weight, bias, grad_output = _arrays(geom, np.float32, 3)
    (y_ref, *_), (y_scale, *_) = float64_reference(geom, x, weight, np.zeros_like(bias), grad_output)
    y = impl.forward(to_backend(x, kernel_backend), to_backend(weight, kernel_backend), None, geom, "gemm", "fp32")
    assert_close(y, y_ref, np.float32, terms=geom.in_channels_per_group * geom.taps, scale=y_scale)


@pytest.mark.parametrize("math_", MATHS, ids=_math_id)
def test_gemm_is_bitwise_reproducible(kernel_backend, math_):
    dtype, precision = math_
    geom = _geometry(GEOMETRIES[1])
    impl = backends.get(kernel_backend)
    arrays = _arrays(geom, dtype, 11)
    first, second = (run_gemm(impl, geom, arrays, kernel_backend, precision) for _ in range(2))
    for name in first:
        assert first[name].tobytes() == second[name].tobytes(), name


@pytest.mark.parametrize("math_", [(np.float32, "fp32"), (np.float16, "fp32"), (np.float32, "tf32")], ids=_math_id)
def test_grad_weight_split_counts(kernel_backend, poisoned, math_):
    """Split counts that do not divide K (126 (sample, position) pairs in slices of 8-32), each
    correct and bitwise reproducible on its own reruns."""
    dtype, precision = math_
    geom = _geometry(((7, 9), (3, 2), (2, 3), (1, 0), (1, 2), (1, 1), 2, 10, 36, 2))
    impl = backends.get(kernel_backend)
    arrays = _arrays(geom, dtype, 21)
    x, _, _, grad_output = (to_backend(a, kernel_backend) for a in arrays)
    for splits in (1, 2, 3, 5, 16):
        first = to_numpy(impl.grad_weight(grad_output, x, geom, "gemm", precision, splits))
        again = to_numpy(impl.grad_weight(grad_output, x, geom, "gemm", precision, splits))
        assert first.tobytes() == again.tobytes(), splits
        check_against_reference({"grad_weight": first}, arrays, geom, dtype, precision)


def test_weight_grad_splits_fill_the_gpu():
    """grad_weight splits until its grid holds two waves of the device (tests/test_fill_gpu.py pins
    the heuristic on real layers); a K too short for two splits stays whole."""
    from cudeconv.backends.device_descriptor import H100_SXM, with_sm_count
    from cudeconv.backends.kernel_backend import gemm_splits

    dcgan_g3 = _geometry(((16, 16), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 256, 128, 64))
    # 2 × 16 tiles; 2 blocks/SM for tf32: ⌈2·264 / 32⌉ = 17 splits reach two waves on an H100 but
    # fill 544 of 792 slots; 23 fill 736 (93%). On 46 SMs ⌈2·92 / 32⌉ = 6: 192 of 276; 8: 256 (93%)
    assert gemm_splits(dcgan_g3, "grad_weight", "tf32", H100_SXM) == 23
    assert gemm_splits(dcgan_g3, "grad_weight", "tf32", with_sm_count(H100_SXM, 46)) == 8
    # f16: two blocks per SM as tf32, so the same count
    assert gemm_splits(dcgan_g3, "grad_weight", "f16", H100_SXM) == 23
    tiny = _geometry(((3, 3), (2, 2), (1, 1), (0, 0), (0, 0), (1, 1), 1, 8, 8, 1))
    assert gemm_splits(tiny, "grad_weight", "f32", H100_SXM) == 1  # 9 positions: nothing to split


def test_every_gemm_entry_point_under_the_sanitizer():
    """AddressSanitizer + UBSan: every GEMM entry point — every tile of every math's menu, with its
    packings and the split reduce — once, on a geometry with partial tiles in M, N and K, padding
    that sends taps outside the input, and output_padding."""
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    from cudeconv import emulator
    from cudeconv.backends.kernel_backend import gemm_math

    # one sanitized module of the whole source (the emulator's layout), not one per kernel
    sanitized = KernelBackend("emulator", np, functools.partial(emulator.RawModule, sanitize=True),
                              lambda: "cpu-sanitized", module_per_math=False)
    geom = _geometry(((3, 4), (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 1, 9, 19, 2))
    for dtype, precision in MATHS:
        arrays = _arrays(geom, dtype, 5)
        x, weight, bias, grad_output = arrays
        tiles = GEMM_TILES[gemm_math(dtype, precision)]
        # three splits of K in every pass: the split reduce runs too (with the forward's bias)
        for forward, grad_input, grad_weight in zip(tiles["forward"], tiles["grad_input"], tiles["grad_weight"]):
            results = {
                "forward": sanitized.forward(x, weight, bias, geom, "gemm", precision, 3, forward),
                "grad_input": sanitized.grad_input(grad_output, weight, geom, "gemm", precision, 3, grad_input),
                "grad_weight": sanitized.grad_weight(grad_output, x, geom, "gemm", precision, 3, grad_weight),
            }
            check_against_reference(results, arrays, geom, dtype, precision)


def test_auto_picks_the_gemm_for_wide_layers_and_the_direct_kernels_for_narrow_ones():
    impl = KernelBackend("emulator", np, None, lambda: "cpu")

    def entry(geom, pass_, dtype, precision, algorithm="auto"):
        path = impl.gemm_plan(geom, pass_, algorithm, dtype, precision)
        return path and path.entry.rsplit("_", 1)[0]  # without the tile (test_gemm_tiles.py)

    wide = _geometry(((8, 8), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 64, 32, 2))
    assert entry(wide, "forward", np.float32, "fp32") == "deconv_forward_gemm_f32"
    assert entry(wide, "grad_input", np.float16, "tf32") == "deconv_grad_input_gemm_f16"
    assert entry(wide, "forward", np.float32, "tf32x3") == "deconv_forward_gemm_tf32x3"
    # 3 output channels: the forward's K side (64) is wide, its N side takes a narrow tile; grad_input's
    # K side (3) is too narrow
    rgb = _geometry(((8, 8), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 64, 3, 2))
    assert entry(rgb, "forward", np.float32, "fp32") == "deconv_forward_gemm_f32"
    assert entry(rgb, "grad_input", np.float32, "fp32") is None
    depthwise = _geometry(((8, 8), (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 32, 32, 32, 2))
    assert entry(depthwise, "forward", np.float32, "fp32") is None
    assert entry(wide, "forward", np.float32, "fp32", "gather") is None
    # grad_weight: rows C_in/groups (64 here), any number of columns C_out/groups·taps
    assert entry(rgb, "grad_weight", np.float32, "fp32") == "deconv_grad_weight_gemm_f32"
    assert entry(depthwise, "grad_weight", np.float32, "fp32") is None
    # "gemm" insists, and says why it cannot
    assert entry(rgb, "grad_input", np.float32, "tf32", "gemm") == "deconv_grad_input_gemm_tf32"
    huge_kernel = _geometry(((4, 4), (17, 17), (1, 1), (0, 0), (0, 0), (1, 1), 1, 8, 8, 1))
    assert 17 * 17 > GEMM_MAX_TAPS
    with pytest.raises(ValueError, match=r"algorithm='gemm' cannot run this forward.*289 kernel taps per stride phase"):
        impl.gemm_plan(huge_kernel, "forward", "gemm", np.float32, "fp32")
    assert impl.gemm_plan(huge_kernel, "forward", "auto", np.float32, "fp32") is None


def test_gemm_limits_that_a_grid_cannot_exceed():
    """grad_weight's columns (C_out/groups·taps) can exceed 65535 tiles (grid y): "auto" then takes
    the direct kernel, "gemm" says why it cannot; a split count must be a positive int."""
    impl = KernelBackend("emulator", np, None, lambda: "cpu")
    wide_3d = make_geometry(3, (1, 4, 2, 2, 2), (4, 1024, 16, 16, 16), 1, 0, 0, 1, 1)
    assert impl.kernel_path(wide_3d, "grad_weight", "auto", np.float64, "fp32").kind == "direct"
    with pytest.raises(ValueError, match=r"grid y"):
        impl.kernel_path(wide_3d, "grad_weight", "gemm", np.float64, "fp32")
    small = _geometry(GEOMETRIES[0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="splits must be a positive int"):
            impl.kernel_path(small, "grad_weight", "gemm", np.float32, "fp32", bad)


def test_gemm_grid_covers_every_phase_and_tile():
    geom = _geometry(((5, 6), (4, 4), (2, 3), (1, 1), (1, 2), (1, 1), 2, 16, 300, 3))
    grid, reason = gemm_grid(geom, "forward", "f32")
    assert reason is None
    rows = 3 * math.ceil(geom.out_size[0] / 2) * math.ceil(geom.out_size[1] / 3)
    assert grid == (math.ceil(rows / 128), math.ceil(150 / 128), 2 * 3 * 2)
    assert gemm_grid(geom, "grad_input", "f64")[0] == (math.ceil(3 * 30 / 64), math.ceil(8 / 64), 2)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gemm_sass(arch):
    """Every tile of every math: tensor-core entry points hold HMMA and (but tf32's grad_weight,
    whose k-major fragments ldmatrix cannot transpose) ldmatrix, every one fills shared memory with
    cp.async, nothing touches local memory, and in the FP32 main loop of the 128 × 128 tile at least
    half of the instructions are FFMA (its targets: test_gemm_main_loop.py)."""
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = {row["kernel"]: row for row in sass_report.report(kernels_dir() / "deconv_gemm.cu", arch)}
    for pass_ in PASSES:
        for math_name in GEMM_MATHS:
            for tile in GEMM_TILES[math_name][pass_]:
                row = rows[f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"]
                assert row["LDL"] == row["STL"] == row["local"] == row["spill_stores"] == row["spill_loads"] == 0, row
                if math_name in ("tf32", "tf32x3", "f16", "bf16"):
                    assert row["HMMA"] > 0, row
                    assert (row["LDSM"] > 0) != (math_name.startswith("tf32") and pass_ == "grad_weight"), row
                assert row["LDGSTS"] > 0, row
                assert row["loop_fma"] > 0, row  # the main loop is found
                if math_name == "f32" and tile == (128, 128):  # 4 × 4 outputs per thread issue less FFMA: 27-52%
                    assert row["loop_fma"] >= row["loop"] / 2, row
