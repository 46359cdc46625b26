"""The CUDA kernels, entry point by entry point, on the "emulator" backend (and "cuda" on a GPU).

Each kernel's output array is poisoned with NaN before the launch (``KernelBackend._output`` is
patched), so an element the kernel fails to write shows up. Results are compared with a float64
computation of the same inputs (the NumPy backend on upcast arrays) within the dtype's bound, with
Σ|a·b| per element as the scale. Also: both forward algorithms, bitwise reproducibility of the
deterministic kernels, a sanitized (AddressSanitizer) run of every entry point, the loader, the
32-bit index limits, and nvcc builds of every kernels/*.cu for sm_80 and sm_90 with no spills.
"""
import math
import re

import numpy as np
import pytest

from cudeconv import backends
from cudeconv._geometry import make_geometry
from cudeconv._loader import kernel_source, kernels_dir
from cudeconv.backends.kernel_backend import KernelBackend, check_index_limits, geometry_args, loop_blocks
from cudeconv.backends.numpy_backend import NumpyBackend
from cudeconv._dtypes import BFLOAT16, LOW_PRECISION, compute_dtype
from cudeconv.optim import SGDHyperparameters

from conftest import (assert_close, float64_reference, rounding_unit, sanitized_emulator_backend, sass_report,
                      skip_unless_kernel_checks_can_run, to_backend, to_numpy)

DTYPES = (np.float16, BFLOAT16, np.float32, np.float64)
REFERENCE = NumpyBackend()

# Tiny configurations: (in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch)
CONFIGS = [
    ((5,), (3,), (2,), (1,), (1,), (1,), 1, 2, 3, 2),
    ((4,), (2,), (1,), (0,), (0,), (2,), 2, 4, 2, 1),
    ((3, 4), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2), 1, 3, 2, 2),
    ((3, 3), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 2, 2, 4, 1),   # DCGAN-like k4 s2 p1
    ((2, 3), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 3, 3, 3, 2),   # depthwise, U-Net-like k2 s2
    ((2, 2, 2), (2, 3, 2), (2, 1, 3), (0, 1, 1), (1, 0, 2), (1, 2, 1), 1, 2, 2, 1),
    ((2, 2), (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 1, 1, 1, 1),   # the textbook 2x2 -> 4x4
    # Channel counts that leave partial register tiles (CHANNEL_TILE) and taps spanning partial
    # TAP_TILEs, grouped and not.
    ((3, 2), (3, 3), (2, 1), (1, 1), (0, 0), (1, 1), 1, 6, 10, 2),
    ((4,), (11,), (3,), (2,), (1,), (1,), 2, 10, 6, 1),
]


def _geometry(config):
    in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch = config
    nd = len(in_size)
    return make_geometry(nd, (batch, cin) + in_size, (cin, cout // groups) + kernel, stride,
                         padding, output_padding, groups, dilation)


def _arrays(geom, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(geom.input_shape).astype(dtype)
    weight = rng.standard_normal(geom.weight_shape).astype(dtype)
    bias = rng.standard_normal((geom.out_channels,)).astype(dtype)
    grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
    return x, weight, bias, grad_output


def _config_id(config):
    return f"{len(config[0])}d-" + "-".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in config)


def _max_reaching_taps(geom):
    """At most how many taps reach one output position (atomic adds per element in scatter)."""
    return math.prod(-(-k * d // s) for k, d, s in zip(geom.kernel_size, geom.dilation, geom.stride))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_entry_points_match_reference(kernel_backend, poisoned, config, dtype):
    geom = _geometry(config)
    impl = backends.get(kernel_backend)
    x, weight, bias, grad_output = _arrays(geom, dtype, seed=hash(config) % 2**32)
    (y_ref, gi_ref, gw_ref, gb_ref), scales = float64_reference(geom, x, weight, bias, grad_output)
    xb, wb, bb, gyb = (to_backend(a, kernel_backend) for a in (x, weight, bias, grad_output))
    cin_g, cout_g = geom.in_channels_per_group, geom.out_channels_per_group
    positions_in, positions_out = math.prod(geom.in_size), math.prod(geom.out_size)

    for algorithm in ("gather", "scatter"):
        for with_bias in (True, False):
            y = impl.forward(xb, wb, bb if with_bias else None, geom, algorithm)
            expected = y_ref if with_bias else y_ref - bias.astype(np.float64).reshape((-1,) + (1,) * geom.ndim)
            extra = _max_reaching_taps(geom) + 1 if algorithm == "scatter" else 0
            assert_close(y, expected, dtype, terms=cin_g * geom.taps + 1, scale=scales[0],
                         name=f"forward ({algorithm}, bias={with_bias})", extra_half_roundings=extra)
    assert_close(impl.grad_input(gyb, wb, geom), gi_ref, dtype, terms=cout_g * geom.taps,
                 scale=scales[1], name="grad_input")
    assert_close(impl.grad_weight(gyb, xb, geom), gw_ref, dtype, terms=geom.batch * positions_in,
                 scale=scales[2], name="grad_weight")
    assert_close(impl.grad_bias(gyb, geom), gb_ref, dtype, terms=geom.batch * positions_out,
                 scale=scales[3], name="grad_bias")


def test_deterministic_kernels_are_bitwise_reproducible(kernel_backend):
    geom = _geometry(CONFIGS[3])
    impl = backends.get(kernel_backend)
    x, weight, bias, grad_output = (to_backend(a, kernel_backend) for a in _arrays(geom, np.float32, 7))
    first = [to_numpy(a) for a in (impl.forward(x, weight, bias, geom, "gather"),
                                   *impl.backward(grad_output, x, weight, geom, True))]
    second = [to_numpy(a) for a in (impl.forward(x, weight, bias, geom, "gather"),
                                    *impl.backward(grad_output, x, weight, geom, True))]
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_zero_batch_and_noncontiguous_inputs(kernel_backend, poisoned):
    impl = backends.get(kernel_backend)
    geom0 = _geometry(((3, 3), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, 2, 2, 0))
    x, weight, bias, grad_output = (to_backend(a, kernel_backend) for a in _arrays(geom0, np.float32, 3))
    assert impl.forward(x, weight, bias, geom0).shape == geom0.output_shape
    gi, gw, gb = impl.backward(grad_output, x, weight, geom0, True)
    assert gi.shape == geom0.input_shape
    assert not np.any(to_numpy(gw)) and not np.any(to_numpy(gb))  # zeros, and no NaN left

    geom = _geometry(CONFIGS[2])
    x, weight, bias, _ = _arrays(geom, np.float64, 5)
    flipped = np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]  # a negatively strided view of x's values
    assert not flipped.flags.c_contiguous
    y = impl.forward(to_backend(flipped, kernel_backend), to_backend(weight, kernel_backend),
                     to_backend(bias, kernel_backend), geom)
    np.testing.assert_allclose(to_numpy(y), REFERENCE.forward(x, weight, bias, geom), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sgd_kernel_matches_numpy(kernel_backend, dtype):
    impl = backends.get(kernel_backend)
    rng = np.random.default_rng(11)
    options = [
        SGDHyperparameters(0.1, 0.0, 0.0, 0.0, False, False),
        SGDHyperparameters(0.05, 0.9, 0.0, 0.01, True, False),
        SGDHyperparameters(0.05, 0.8, 0.3, 0.0, False, True),
    ]
    for hyper in options:
        param = rng.standard_normal((3, 5, 7)).astype(dtype)
        ref_param, ref_buf = param.copy(), REFERENCE.momentum_buffer_for(param)
        dev_param = to_backend(param.copy(), kernel_backend)
        dev_buf = impl.momentum_buffer_for(dev_param) if hyper.momentum else None
        for step in range(3):
            grad = rng.standard_normal(param.shape).astype(dtype)
            REFERENCE.sgd_step(ref_param, grad, ref_buf if hyper.momentum else None, hyper, step == 0)
            impl.sgd_step(dev_param, to_backend(grad, kernel_backend), dev_buf, hyper, step == 0)
        # Same formulas; only rounding differs (FMA contraction on the GPU): a few ulps of the math type.
        u = rounding_unit(compute_dtype(dtype))
        tol = 64 * u * (1 + np.abs(ref_param.astype(np.float64)))
        if dtype in LOW_PRECISION:
            tol = tol + 2 * rounding_unit(dtype) * np.abs(ref_param.astype(np.float64))
        err = np.abs(to_numpy(dev_param).astype(np.float64) - ref_param.astype(np.float64))
        assert np.all(err <= tol), (hyper, float(err.max()))


def test_every_entry_point_under_the_sanitizer():
    """AddressSanitizer + UBSan builds of every kernel file, each entry point launched once."""
    sanitized = sanitized_emulator_backend()
    for config, dtype in ((CONFIGS[3], np.float32), (CONFIGS[5], np.float16), (CONFIGS[1], np.float64),
                          (CONFIGS[0], BFLOAT16),
                          (CONFIGS[7], np.float32), (CONFIGS[8], np.float64)):
        geom = _geometry(config)
        x, weight, bias, grad_output = _arrays(geom, dtype, 1)
        (y_ref, gi_ref, gw_ref, gb_ref), scales = float64_reference(geom, x, weight, bias, grad_output)
        for algorithm in ("gather", "scatter"):
            extra = _max_reaching_taps(geom) + 1 if algorithm == "scatter" else 0
            assert_close(sanitized.forward(x, weight, bias, geom, algorithm), y_ref, dtype,
                         terms=geom.in_channels_per_group * geom.taps + 1, scale=scales[0],
                         name=f"sanitized forward ({algorithm})", extra_half_roundings=extra)
        gi, gw, gb = sanitized.backward(grad_output, x, weight, geom, True)
        assert_close(gi, gi_ref, dtype, terms=geom.out_channels_per_group * geom.taps, scale=scales[1])
        assert_close(gw, gw_ref, dtype, terms=geom.batch * math.prod(geom.in_size), scale=scales[2])
        assert_close(gb, gb_ref, dtype, terms=geom.batch * math.prod(geom.out_size), scale=scales[3])
        param = weight.copy()
        hyper = SGDHyperparameters(0.1, 0.9, 0.0, 0.01, True, False)
        ref_param, ref_buf = param.copy(), REFERENCE.momentum_buffer_for(param)
        REFERENCE.sgd_step(ref_param, gw_ref.astype(dtype), ref_buf, hyper, True)
        sanitized.sgd_step(param, gw_ref.astype(dtype), sanitized.momentum_buffer_for(param), hyper, True)
        np.testing.assert_allclose(param.astype(np.float64), ref_param.astype(np.float64),
                                   rtol=4 * rounding_unit(dtype if dtype in LOW_PRECISION else np.float32),
                                   atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("values_per_thread", [1, 16], ids=["many-slabs", "default"])
def test_parallel_grad_bias(kernel_backend, poisoned, monkeypatch, dtype, values_per_thread):
    """grad_bias over slabs (3 channels, 5040 values each: 20 slabs with one value per thread),
    against the reference and the one-block-per-channel kernel, bitwise reproducible."""
    from cudeconv.backends import path_choice

    monkeypatch.setattr(path_choice, "GRAD_BIAS_MIN_VALUES_PER_THREAD", values_per_thread)
    geom = _geometry(((20, 21), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, 4, 3, 3))
    impl = backends.get(kernel_backend)
    x, weight, bias, grad_output = _arrays(geom, dtype, 8)
    (_, _, _, gb_ref), (_, _, _, gb_scale) = float64_reference(geom, x, weight, bias, grad_output)
    gy = to_backend(grad_output, kernel_backend)
    slabs, again, per_channel = (to_numpy(impl.grad_bias(gy, geom, a)) for a in ("auto", "auto", "gather"))
    assert slabs.tobytes() == again.tobytes()
    terms = geom.batch * math.prod(geom.out_size)
    for got, name in ((slabs, "slabs"), (per_channel, "one block per channel")):
        assert_close(got, gb_ref, dtype, terms=terms, scale=gb_scale, name=name)


def test_parallel_grad_bias_under_the_sanitizer(monkeypatch):
    from cudeconv.backends import path_choice

    monkeypatch.setattr(path_choice, "GRAD_BIAS_MIN_VALUES_PER_THREAD", 1)
    sanitized = sanitized_emulator_backend()
    geom = _geometry(((9, 10), (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 1, 2, 5, 3))
    for dtype in DTYPES:
        x, weight, bias, grad_output = _arrays(geom, dtype, 9)
        (_, _, _, gb_ref), (_, _, _, gb_scale) = float64_reference(geom, x, weight, bias, grad_output)
        assert_close(sanitized.grad_bias(grad_output, geom), gb_ref, dtype,
                     terms=geom.batch * math.prod(geom.out_size), scale=gb_scale)


DEPTHWISE = [  # one input channel per group; channel multipliers 1 and 2
    ((6, 7), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 4, 4, 4, 2),
    ((5, 4), (3, 3), (3, 2), (1, 0), (2, 1), (2, 1), 3, 3, 6, 1),
    ((9,), (16,), (8,), (4,), (3,), (1,), 2, 2, 4, 2),
    ((3, 2, 3), (2, 3, 2), (2, 1, 2), (0, 1, 1), (1, 0, 0), (1, 2, 1), 2, 2, 2, 0),
    ((5, 6), (3, 4), (2, 4), (1, 2), (1, 1), (2, 2), 2, 2, 4, 1),  # gcd(stride, dilation) = 2
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", DEPTHWISE, ids=_config_id)
def test_depthwise_kernels(kernel_backend, poisoned, monkeypatch, config, dtype):
    """algorithm="auto" on layers with one input channel per group runs the depthwise kernels
    (forward, grad_input), which match the reference; reruns are bitwise identical."""
    geom = _geometry(config)
    impl = backends.get(kernel_backend)
    launched = []
    launch = KernelBackend._launch
    monkeypatch.setattr(KernelBackend, "_launch", lambda self, f, entry, *a: (launched.append(entry), launch(self, f, entry, *a)))
    x, weight, bias, grad_output = _arrays(geom, dtype, seed=hash(config) % 2**32)
    (y_ref, gi_ref, _, _), scales = float64_reference(geom, x, weight, bias, grad_output)
    xb, wb, bb, gyb = (to_backend(a, kernel_backend) for a in (x, weight, bias, grad_output))
    for with_bias in (True, False):
        y = impl.forward(xb, wb, bb if with_bias else None, geom, "auto")
        expected = y_ref if with_bias else y_ref - bias.astype(np.float64).reshape((-1,) + (1,) * geom.ndim)
        assert_close(y, expected, dtype, terms=geom.taps + 1, scale=scales[0], name=f"forward (bias={with_bias})")
    grad_input = to_numpy(impl.grad_input(gyb, wb, geom, "auto"))
    assert_close(grad_input, gi_ref, dtype, terms=geom.out_channels_per_group * geom.taps, scale=scales[1],
                 name="grad_input")
    assert to_numpy(impl.grad_input(gyb, wb, geom, "auto")).tobytes() == grad_input.tobytes()
    if geom.batch:
        suffix = {np.dtype(np.float16): "f16", BFLOAT16: "bf16", np.dtype(np.float32): "f32",
                  np.dtype(np.float64): "f64"}[np.dtype(dtype)]
        assert f"deconv_forward_depthwise_{suffix}" in launched and f"deconv_grad_input_depthwise_{suffix}" in launched


def test_depthwise_kernels_under_the_sanitizer():
    sanitized = sanitized_emulator_backend()
    geom = _geometry(DEPTHWISE[1])
    for dtype in DTYPES:
        x, weight, bias, grad_output = _arrays(geom, dtype, 4)
        (y_ref, gi_ref, _, _), scales = float64_reference(geom, x, weight, bias, grad_output)
        assert_close(sanitized.forward(x, weight, bias, geom), y_ref, dtype, terms=geom.taps + 1, scale=scales[0])
        assert_close(sanitized.grad_input(grad_output, weight, geom), gi_ref, dtype,
                     terms=geom.out_channels_per_group * geom.taps, scale=scales[1])


def test_geometry_args_pad_to_three_dims():
    geom = _geometry(CONFIGS[0])
    args = geometry_args(geom)
    assert all(type(a) is np.int32 for a in args) and len(args) == 22
    # (N, C_in, C_out, groups, in, k, out, stride, pad, dil) with 1-d padded in front by size-1 dims
    assert [int(a) for a in args] == [2, 2, 3, 1, 1, 1, 5, 1, 1, 3, 1, 1, 10, 1, 1, 2, 0, 0, 1, 1, 1, 1]


def test_index_limits_are_refused():
    huge = make_geometry(2, (2**16, 2**16, 1, 1), (2**16, 1, 1, 1), 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="32-bit.*N·C"):
        check_index_limits(huge)
    # A tiny output whose intermediate positions i·stride + k·dilation pass 2^31.
    far = make_geometry(1, (1, 1, 3), (1, 1, 2), 2**30, 2**31 - 101, 0, 1, 2**31 - 100)
    with pytest.raises(ValueError, match="32-bit.*spatial dim 0"):
        check_index_limits(far)
    with pytest.raises(ValueError, match="32-bit"):
        kernel_backend_for_limits = KernelBackend("emulator", np, None, lambda: "unused")
        kernel_backend_for_limits.forward(np.ones((1, 1, 3)), np.ones((1, 1, 2)), None, far)
    check_index_limits(_geometry(CONFIGS[3]))


@pytest.mark.parametrize("count", [1, 255, 256, 2**20 + 1, 2**30 + 1, 2**31 - 1 - 256])
@pytest.mark.parametrize("threads", [1, 256])
def test_grid_stride_loops_never_overflow_int32(count, threads):
    """Each thread's last index plus the grid's stride stays a valid int32, and threads cover count."""
    blocks = loop_blocks(count, threads, 2**31 - 1)
    stride = blocks * threads
    assert blocks >= 1
    last_index_below_count = count - 1
    assert last_index_below_count + stride <= 2**31 - 1
    if count <= 2**30:
        assert stride >= count  # one item per thread where the headroom allows


def test_loader_inlines_headers_with_line_marks():
    source = kernel_source("deconv_forward.cu")
    assert '#include "deconv_common.cuh"' not in source
    assert "struct Geometry" in source
    marks = re.findall(r'#line (\d+) "([^"]+)"', source)
    files = [name.rsplit("/", 1)[-1] for _, name in marks]
    # deconv_common.cuh includes module_select.cuh: nested headers are inlined too.
    assert files[:5] == ["deconv_forward.cu", "deconv_common.cuh", "module_select.cuh", "deconv_common.cuh",
                         "deconv_forward.cu"]
    # After each header, the numbering resumes on the line after its #include.
    for position, (includer, header) in ((3, ("deconv_common.cuh", "module_select.cuh")),
                                         (4, ("deconv_forward.cu", "deconv_common.cuh"))):
        include_line = next(i for i, line in enumerate((kernels_dir() / includer).read_text().splitlines(), 1)
                            if line.startswith(f'#include "{header}"'))
        assert int(marks[position][0]) == include_line + 1


def test_compile_errors_point_at_the_real_file(tmp_path, monkeypatch):
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    from cudeconv import _loader, emulator

    (tmp_path / "helper.cuh").write_text("#pragma once\n__device__ int ok() { return 1; }\n")
    (tmp_path / "broken.cu").write_text(
        '#include "helper.cuh"\n\nextern "C" __global__ void broken(int* out) {\n    out[0] = undefined_name;\n}\n'
    )
    monkeypatch.setattr(_loader, "kernels_dir", lambda: tmp_path)
    _loader.kernel_source.cache_clear()
    try:
        with pytest.raises(emulator.EmulatorCompileError, match=r"broken\.cu:4"):
            emulator.RawModule(code=_loader.kernel_source("broken.cu"))
    finally:
        _loader.kernel_source.cache_clear()


def test_cuda_backend_unavailable_says_why():
    reason = backends.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here; the unavailable path cannot be exercised")
    with pytest.raises(backends.BackendUnavailableError, match="cannot run here"):
        backends.get("cuda")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(p.name for p in kernels_dir().glob("*.cu")))
def test_nvcc_builds_without_spills_or_local_memory(source, arch):
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = sass_report.report(kernels_dir() / source, arch)
    print("\n" + sass_report.format_table(rows, f"{source} ({arch})"))  # the per-kernel table in the log
    assert rows, f"no entry points found in {source}"
    for row in rows:
        assert row["spill_stores"] == row["spill_loads"] == 0, f"{source} spills on {arch}: {row}"
        assert row["LDL"] == row["STL"] == row["local"] == 0, f"{source} uses local memory on {arch}: {row}"
