"""Shared test fixtures: one test body runs on every backend (CuPy-testing style).

``backend`` is parametrized over "numpy", "emulator" and "cuda". The "cuda" case skips with
the reason when CuPy or a GPU is not usable here (and fails instead under CUDECONV_REQUIRE_CUDA=1,
as on the GPU run of scripts/gpu_check.sh); the "emulator" case runs the same CUDA kernels on
the CPU, so every kernel check also runs in CI.
"""
import copy
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from cudeconv import backends
from cudeconv._dtypes import BFLOAT16, LOW_PRECISION, compute_dtype, unit_roundoff

BACKENDS = ("numpy", "emulator", "cuda")


def _load_sass_report():
    """scripts/sass_report.py (a script, not part of the package): nvcc + cuobjdump per kernel."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "sass_report.py"
    spec = importlib.util.spec_from_file_location("sass_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sass_report = _load_sass_report()
_compile_report = sass_report.report


@functools.cache
def _report_once(source, arch, extra_options):
    return _compile_report(source, arch, extra_options)


def _report(source, arch="sm_90", extra_options=()):
    """sass_report.report, compiled once per (source, arch, options) in a test session: several test
    files read the same nvcc build of deconv_gemm.cu (a minute of CPU with every tile); each caller
    gets its own copy of the rows."""
    return copy.deepcopy(_report_once(str(source), arch, tuple(extra_options)))


sass_report.report = _report


def _skip_reason(name):
    if name == "cuda":
        return backends.cuda_unavailable_reason()
    if name == "emulator":
        return backends.emulator_unavailable_reason()
    return None


def skip_unless_kernel_checks_can_run(what, reason):
    """Skip a check of the kernels that cannot run here — or fail it, when
    CUDECONV_REQUIRE_KERNEL_CHECKS=1 (CI sets it): there the emulator and nvcc must work, so a
    broken toolchain cannot turn every kernel test into a silent skip."""
    if reason is None:
        return
    if os.environ.get("CUDECONV_REQUIRE_KERNEL_CHECKS") == "1":
        pytest.fail(f"{what} unavailable although CUDECONV_REQUIRE_KERNEL_CHECKS=1: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")


def require_cuda():
    """Skip a test that needs the cuda backend where it cannot run — or fail it under
    CUDECONV_REQUIRE_CUDA=1 (a GPU run)."""
    _usable("cuda")


def _usable(name):
    if name == "cuda":  # no CI machine has a GPU: a skip, except where a GPU run demands it
        reason = _skip_reason(name)
        if reason is not None and os.environ.get("CUDECONV_REQUIRE_CUDA") == "1":
            pytest.fail(f"backend 'cuda' unavailable although CUDECONV_REQUIRE_CUDA=1 "
                        f"(scripts/gpu_check.sh sets it): {reason}")
        if reason is not None:
            pytest.skip(f"backend 'cuda' unavailable: {reason}")
    else:
        skip_unless_kernel_checks_can_run(f"backend {name!r}", _skip_reason(name))
    return name


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Name of a usable backend; the test skips (with the reason) where it is not usable."""
    return _usable(request.param)


@pytest.fixture(params=("emulator", "cuda"))
def kernel_backend(request):
    """The backends that run the CUDA kernels (on the GPU, or on the CPU through the emulator)."""
    return _usable(request.param)


def to_backend(array, backend):
    """Put a NumPy array where ``backend`` computes (a CuPy array for "cuda")."""
    if backend == "cuda":
        import cupy

        return cupy.asarray(array)
    return array


def to_numpy(array):
    if array is None:
        return None
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def rounding_unit(dtype):
    """Unit roundoff of ``dtype`` (bfloat16 included)."""
    return unit_roundoff(dtype)


def assert_close(actual, expected, dtype, terms, scale=None, factor=8.0, name="result",
                 extra_half_roundings=0):
    """Compare with a float64 reference within a bound derived from the reference's own rounding.

    A sum of ``terms`` products in a precision with unit roundoff u has error at most about
    terms·u·Σ|a·b| (Higham); we use sqrt(terms) (the statistical bound for random signs, on which
    blocked and pairwise sums also sit) times ``factor``, relative to ``scale`` = Σ|a·b| per output
    (or the max |expected| when not given). float16 and bfloat16 outputs (accumulated in float32)
    also carry the final rounding to their type,
    and ``extra_half_roundings`` roundings of partial sums to half (each at most u16·scale), as
    when atomics accumulate in half precision.
    """
    actual = to_numpy(actual).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    u = rounding_unit(compute_dtype(dtype))
    if scale is None:
        scale = np.max(np.abs(expected), initial=1.0)
    bound = factor * max(np.sqrt(max(terms, 1)), 1.0) * u * np.asarray(scale, dtype=np.float64)
    if np.dtype(dtype) in LOW_PRECISION:
        bound = bound + rounding_unit(dtype) * (
            2 * np.abs(expected) + extra_half_roundings * np.asarray(scale, dtype=np.float64)
        )
    bound = np.maximum(bound, np.finfo(np.float64).tiny)
    err = np.abs(actual - expected)
    bad = ~(err <= bound)  # NaN counts as bad
    assert not bad.any(), (
        f"{name} ({np.dtype(dtype)}): {int(bad.sum())} of {bad.size} elements off; "
        f"worst |err| {np.nanmax(err) if err.size else 0:.3g} vs bound {np.min(bound):.3g}; "
        f"first bad index {np.argwhere(bad)[0].tolist()}"
    )


@pytest.fixture
def poisoned(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernel does not write is caught."""
    from cudeconv.backends.kernel_backend import KernelBackend

    def nan_output(self, shape, dtype):
        return self.xp.full(shape, np.nan, dtype=dtype)

    monkeypatch.setattr(KernelBackend, "_output", nan_output)


def float64_reference(geom, x, weight, bias, grad_output):
    """NumPy-backend results in float64 for forward, grad_input, grad_weight, grad_bias, and their
    Σ|a·b| scales (the same passes on absolute values), for assert_close."""
    from cudeconv.backends.numpy_backend import NumpyBackend

    reference = NumpyBackend()
    up = [a.astype(np.float64) for a in (x, weight, bias, grad_output)]
    ab = [np.abs(a) for a in up]
    y = reference.forward(up[0], up[1], up[2], geom)
    gi, gw, gb = reference.backward(up[3], up[0], up[1], geom, True)
    y_scale = reference.forward(ab[0], ab[1], ab[2], geom)
    gi_scale, gw_scale, gb_scale = reference.backward(ab[3], ab[0], ab[1], geom, True)
    return (y, gi, gw, gb), (y_scale, gi_scale, gw_scale, gb_scale)


def tf32_round(x):
    """cvt.rna.tf32.f32: round to nearest with ties away from zero at 10 mantissa bits (add half
    an ulp to the magnitude, truncate); inf stays inf, NaN stays NaN."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    return rounded.astype(np.uint32).view(np.float32)


class ScriptedClock:
    """A fake clock for the bench's timing: each ``seconds`` call (calibration, then the rounds, then
    the solo samples) runs the calls and reports ``cost × load[k]`` seconds per call for its k-th
    timing."""

    def __init__(self, cost, load):
        self.cost, self.load, self.count = cost, load, 0

    def seconds(self, fn, calls):
        for _ in range(calls):
            fn()
        load = self.load[min(self.count, len(self.load) - 1)]
        self.count += 1
        return calls * self.cost * load


def sanitized_emulator_backend():
    """The emulator backend with its modules built under AddressSanitizer and UBSan (each launch
    in a child process): out-of-bounds and misaligned accesses of the kernels fail the launch."""
    import functools

    from cudeconv import emulator
    from cudeconv.backends.kernel_backend import KernelBackend

    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    return KernelBackend("emulator", np, functools.partial(emulator.RawModule, sanitize=True),
                         lambda: "cpu-sanitized")

