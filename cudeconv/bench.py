"""``cudeconv bench``: every pass of the named cases (:mod:`cudeconv.cases`), checked, then timed.

Passes, per case:

``forward``
    ``y = conv_transpose(x, weight, bias)``.
``grad_input``, ``grad_weight``, ``grad_bias``
    Each gradient alone, where the implementation can compute it alone: the kernel backends'
    ``grad_input``/``grad_weight``/``grad_bias`` methods, PyTorch's ``aten.convolution_backward``
    with one output selected (but ``grad_output.sum`` for the bias gradient: on the CPU that entry
    point computes the weight gradient along with it), the CuPy baseline's steps. The NumPy backend
    computes the three together, so it has no figures for them: their cost is inside ``backward``.
``backward``
    All gradients in one call (grad_input, grad_weight and grad_bias: what a layer's backward runs).
``sgd_step``
    One SGD update with momentum 0.9 on a weight-sized parameter (after the first step).

Every implementation's results are first compared with a float64 run of the NumPy backend on the
same (rounded) inputs: the error is ``max |result - reference| / max |reference|`` per pass, and must
stay within ``8·sqrt(terms)·u`` (u: unit roundoff of the compute precision, terms: the length of the
pass's sums; plus 2⁻¹⁰ for float16's rounding). A wrong implementation is reported, not timed.

Then each pass the benchmarked backend has is timed for it and its baselines together, in
interleaved rounds (:mod:`cudeconv.timing`): at least ``min_samples`` rounds and ``min_seconds`` of
samples, each sample long enough to read (short calls are batched), with CUDA events for work on the
GPU and ``time.perf_counter`` on the CPU. Times are medians with their interquartile range (IQR);
a time whose IQR exceeds 25 % of its median is flagged noisy. A speed-up is the median over rounds
of (baseline's sample / cudeconv's sample of the same round); one whose middle half spans 1 is
flagged unranked: too close or too noisy to say which is faster. TFLOP/s counts the useful
products, 2·N·C_in·(C_out/groups)·∏in·∏kernel per convolution pass (twice that for ``backward``);
GB/s counts the fewest bytes a pass must move (each operand read once, each result written once).

Baselines, each where present (the reason is printed where not): PyTorch's
``conv_transpose{1,2,3}d`` on the benchmarked backend's device (on the GPU twice, cuDNN with TF32
off and on; on the CPU with the same thread count), the NumPy backend (when another backend is
benchmarked), and on the GPU a CuPy GEMM + col2im implementation (Chainer's method).

``--json`` writes ``{"device", "backend", "dtype", "precision", "versions", "quick",
"quick_limits" (null for full-size cases), "timing" (the policy), "timer", "threads", "peaks",
"cases": [{"name", "source", "config" (what ran: the shrunk shape under --quick), "shrunk_from"
(the real layer's config, under --quick), "status" ("ok", "wrong" or "failed"), "ms": {pass: median
ms}, "timing": {pass: {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "samples",
"calls_per_sample"}}, "noisy": [pass, ...], "tflops": {pass: ...}, "gbps": {pass: ...},
"max_rel_error", "rel_errors", "tolerances", "baselines": {name: {"ms", "timing"} or {"skipped":
reason}}, "speedup": {name: {pass: median ratio}}, "speedup_spread": {name: {pass: {"q1", "q3",
"ranked"}}}, and on a GPU "peak_fraction"}]}``; numbers that are not finite are written as null.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from . import __version__, backends
from ._geometry import ConvTransposeGeometry
from ._precision import check_precision
from ._dtypes import BFLOAT16, LOW_PRECISION, compute_dtype, unit_roundoff
from .backends.numpy_backend import NumpyBackend, crop, tap_windows
from .cases import BY_NAME, QUICK, QUICK_EMULATOR, SUITE, Case
from .optim import SGDHyperparameters
from .timing import (NOISY_RELATIVE_IQR, CpuClock, CudaEventClock, Samples, Spread, Timed, TimingPolicy,
                     interleaved_samples, paired_ratios)

PASSES = ("forward", "grad_input", "grad_weight", "grad_bias", "backward", "sgd_step")
# Passes that are convolutions (a TFLOP/s figure makes sense): how many geom.flops() each does.
CONVOLUTIONS = {"forward": 1, "grad_input": 1, "grad_weight": 1, "backward": 2}
SGD_HYPER = SGDHyperparameters(lr=0.01, momentum=0.9, dampening=0.0, weight_decay=0.0,
                               nesterov=False, maximize=False)
# Extra warm-up calls before calibration: none on the CPU (the correctness check and the discarded
# calibration calls warm it up); five on the GPU, where clocks ramp up and memory pools fill.
WARMUP = {False: 0, True: 5}
# Samples per pass at least (``--repeat``), per benchmarked backend: few on the emulator, whose
# times say nothing about a GPU's and whose calls are slow; and seconds of samples per pass at
# least (``--min-time``).
DEFAULT_MIN_SAMPLES = {"numpy": 7, "emulator": 3, "cuda": 20}
DEFAULT_MIN_SECONDS = 0.2
TF32_UNIT = 2.0 ** -11  # TF32 keeps 10 mantissa bits
TF32X3_UNIT = 2.0 ** -21


# -- machine --------------------------------------------------------------------------------------
# cudaDeviceAttr values (stable across CUDA versions; cudaDeviceProp lost the clock fields in CUDA 13).
_ATTR_CLOCK_KHZ, _ATTR_SMS, _ATTR_MEMORY_CLOCK_KHZ, _ATTR_BUS_WIDTH_BITS = 13, 16, 36, 37
# FP32 lanes per SM: 64 on GP100, Volta, Turing and A100; 128 on the other Pascal chips and from
# Ampere GA10x on (Ada, Hopper, Blackwell).
_FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    sms: int
    clock_mhz: float
    memory_gib: float
    fp32_tflops: float  # SMs × clock × FP32 lanes × 2 (an FMA is two flops)
    bandwidth_gbps: float  # memory clock × 2 (double data rate) × bus width


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and theoretical peaks of a CUDA device (needs a working CuPy and GPU)."""
    import cupy

    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(device)
    attr = lambda a: runtime.deviceGetAttribute(a, device)  # noqa: E731
    major, minor = props["major"], props["minor"]
    sms, clock_khz = attr(_ATTR_SMS), attr(_ATTR_CLOCK_KHZ)
    lanes = _FP32_LANES.get((major, minor), 128)
    bandwidth = attr(_ATTR_MEMORY_CLOCK_KHZ) * 1e3 * 2 * attr(_ATTR_BUS_WIDTH_BITS) / 8
    return GpuInfo(
        name=props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        compute_capability=f"{major}.{minor}", sms=sms, clock_mhz=clock_khz / 1e3,
        memory_gib=props["totalGlobalMem"] / 2**30,
        fp32_tflops=sms * clock_khz * 1e3 * lanes * 2 / 1e12, bandwidth_gbps=bandwidth / 1e9,
    )


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> Dict[str, Optional[str]]:
    """Versions of what the benchmark runs on (None: not installed or not usable here; for
    ``cuda_driver``, also: no NVIDIA driver)."""
    import ml_dtypes

    found = {"cudeconv": __version__, "python": platform.python_version(), "numpy": np.__version__,
             "ml_dtypes": ml_dtypes.__version__, "cupy": None, "cuda_runtime": None, "cuda_driver": None,
             "torch": None}
    try:
        import cupy

        found["cupy"] = cupy.__version__
        found["cuda_runtime"] = backends.format_cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        driver = cupy.cuda.runtime.driverGetVersion()  # 0: no NVIDIA driver
        found["cuda_driver"] = backends.format_cuda_version(driver) if driver else None
    except Exception:  # CuPy missing or without a CUDA runtime/driver: those stay None
        pass
    try:
        import torch

        found["torch"] = torch.__version__
    except Exception:  # not installed, or a broken install
        pass
    return found


# -- cases ----------------------------------------------------------------------------------------
def select_cases(patterns) -> List[Case]:
    """The suite's cases matching any of ``patterns`` (names or globs; each entry may hold several,
    comma or space separated), in suite order. ValueError names a pattern that matches nothing."""
    if not patterns:
        return list(SUITE)
    wanted = [p for entry in patterns for p in entry.replace(",", " ").split()]
    chosen = set()
    for pattern in wanted:
        matches = fnmatch.filter(BY_NAME, pattern)
        if not matches:
            raise ValueError(f"unknown case {pattern!r}; known cases: {', '.join(BY_NAME)}")
        chosen.update(matches)
    return [case for case in SUITE if case.name in chosen]


@dataclass
class Problem:
    """One case's arrays (NumPy, in the benchmarked dtype) and the float64 reference results."""

    case: Case
    geom: ConvTransposeGeometry
    dtype: np.dtype
    x: np.ndarray
    weight: np.ndarray
    bias: Optional[np.ndarray]
    grad_output: np.ndarray
    param: np.ndarray  # SGD: parameter, gradient and momentum buffer, weight-shaped
    grad: np.ndarray
    momentum: np.ndarray
    reference: Dict[str, object] = field(default_factory=dict)

    @classmethod
    def make(cls, case: Case, dtype, seed=0) -> "Problem":
        dtype = np.dtype(dtype)
        x, weight, bias, grad_output = case.arrays(dtype, seed)
        rng = np.random.default_rng(seed + 1)
        shape = weight.shape
        problem = cls(case, case.geometry(), dtype, x, weight, bias, grad_output,
                      param=weight.copy(), grad=rng.standard_normal(shape).astype(dtype),
                      momentum=rng.standard_normal(shape).astype(compute_dtype(dtype)))
        problem.reference = problem._reference()
        return problem

    def _reference(self):
        ref = NumpyBackend()
        as64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
        x, weight, bias, grad_output = map(as64, (self.x, self.weight, self.bias, self.grad_output))
        grad_input, grad_weight, grad_bias = ref.backward(grad_output, x, weight, self.geom, bias is not None)
        param = as64(self.param)
        ref.sgd_step(param, as64(self.grad), as64(self.momentum), SGD_HYPER, first_step=False)
        results = {"forward": ref.forward(x, weight, bias, self.geom), "grad_input": grad_input,
                   "grad_weight": grad_weight, "sgd_step": param,
                   "backward": tuple(g for g in (grad_input, grad_weight, grad_bias) if g is not None)}
        if bias is not None:
            results["grad_bias"] = grad_bias
        return results

    def terms(self, name: str) -> int:
        """Length of the sums behind one result of pass ``name`` (for the error bound)."""
        g = self.geom
        terms = {
            "forward": g.in_channels_per_group * g.taps, "grad_input": g.out_channels_per_group * g.taps,
            "grad_weight": g.batch * math.prod(g.in_size), "grad_bias": g.batch * math.prod(g.out_size),
            "sgd_step": 1,
        }
        terms["backward"] = max(terms["grad_input"], terms["grad_weight"], terms["grad_bias"])
        return terms[name]

    def min_bytes(self, name: str) -> int:
        g, item = self.geom, self.dtype.itemsize
        x, w, y = math.prod(g.input_shape), math.prod(g.weight_shape), math.prod(g.output_shape)
        b = g.out_channels if self.bias is not None else 0
        elements = {
            "forward": x + w + b + y, "grad_input": y + w + x, "grad_weight": y + x + w,
            "grad_bias": y + b, "backward": y + x + w + x + w + b,
        }
        if name == "sgd_step":  # param read + written, grad read; momentum read + written
            return 3 * w * item + 2 * w * compute_dtype(self.dtype).itemsize
        return elements[name] * item


def tolerance(dtype, terms: int, unit: Optional[float] = None) -> float:
    """Bound on max|err|/max|ref| for sums of ``terms`` products in the compute precision ``unit``."""
    dtype = np.dtype(dtype)
    if unit is None:
        unit = unit_roundoff(compute_dtype(dtype))
    bound = 8 * math.sqrt(max(terms, 1)) * unit
    # float16 and bfloat16 results also carry their final rounding (twice the unit, for slack)
    return bound + (2 * unit_roundoff(dtype) if dtype in LOW_PRECISION else 0.0)


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch (whose bfloat16 NumPy cannot take: widened, exactly)
        array = array.detach().cpu()
        return (array.float() if str(array.dtype) == "torch.bfloat16" else array).numpy()
    if not isinstance(array, np.ndarray) and hasattr(array, "get"):  # cupy
        return array.get()
    return np.asarray(array)


def relative_error(result, reference) -> float:
    """max |result - reference| / max |reference| (the largest over tuples of results); inf for a
    wrong shape or a NaN."""
    if isinstance(reference, tuple):
        if not isinstance(result, tuple) or len(result) != len(reference):
            return math.inf
        return max(relative_error(r, e) for r, e in zip(result, reference))
    actual = _to_numpy(result).astype(np.float64)
    if actual.shape != reference.shape:
        return math.inf
    scale = max(float(np.max(np.abs(reference), initial=0.0)), np.finfo(np.float64).tiny)
    error = float(np.max(np.abs(actual - reference), initial=0.0)) / scale
    return math.inf if math.isnan(error) else error


# -- contenders -----------------------------------------------------------------------------------
@dataclass
class Contender:
    """An implementation of the passes: the benchmarked backend or a baseline."""

    name: str
    on_gpu: bool
    # Problem -> {pass: callable returning that pass's result(s)}; passes it lacks are left out.
    build: Optional[Callable[[Problem], Dict[str, Callable]]] = None
    skipped: Optional[str] = None  # why it cannot run here; None when it can
    unit: Optional[float] = None  # unit roundoff of its compute precision, when not the dtype's
    context: Callable = contextlib.nullcontext  # entered around its checks and timings

    def timed(self, fn) -> Timed:
        """``fn`` (one of its passes) with the clock and warm-up of its device."""
        return Timed(fn, CudaEventClock() if self.on_gpu else CpuClock(), WARMUP[self.on_gpu],
                     self.context)


def backend_contender(name: str, impl, on_gpu: bool, precision: str = "fp32",
                      unit: Optional[float] = None, algorithm: str = "auto") -> Contender:
    """A cudeconv backend's passes (its per-gradient entry points only where it has them), with
    ``algorithm`` (its default, or "gather": the direct kernels) and the given float32
    ``precision``; ``unit``: the unit roundoff that precision computes with, when not the dtype's."""

    def build(problem: Problem):
        geom, to = problem.geom, impl.asarray
        x, weight, grad_output = to(problem.x), to(problem.weight), to(problem.grad_output)
        bias = None if problem.bias is None else to(problem.bias)
        param, grad = to(problem.param.copy()), to(problem.grad)
        momentum = impl.momentum_buffer_for(param)
        momentum[...] = to(problem.momentum)

        def sgd_step():
            impl.sgd_step(param, grad, momentum, SGD_HYPER, False)
            return param

        passes = {
            "forward": lambda: impl.forward(x, weight, bias, geom, algorithm=algorithm, precision=precision),
            "backward": lambda: tuple(
                g for g in impl.backward(grad_output, x, weight, geom, bias is not None, algorithm=algorithm,
                                         precision=precision)
                if g is not None
            ),
            "sgd_step": sgd_step,
        }
        if hasattr(impl, "grad_input"):
            passes["grad_input"] = lambda: impl.grad_input(grad_output, weight, geom, algorithm=algorithm,
                                                           precision=precision)
        if hasattr(impl, "grad_weight"):
            passes["grad_weight"] = lambda: impl.grad_weight(grad_output, x, geom, algorithm=algorithm,
                                                             precision=precision)
        if hasattr(impl, "grad_bias") and bias is not None:
            passes["grad_bias"] = lambda: impl.grad_bias(grad_output, geom, algorithm=algorithm)
        return passes

    return Contender(name, on_gpu, build, unit=unit)


def _torch_build(device: str):
    def build(problem: Problem):
        import torch
        import torch.nn.functional as F

        case, geom = problem.case, problem.geom
        def to(a):
            if a is None:
                return None
            if a.dtype == BFLOAT16:  # torch.from_numpy has no bfloat16: the same bits as int16
                return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
            return torch.from_numpy(a).to(device)
        x, weight, bias, grad_output = map(to, (problem.x, problem.weight, problem.bias, problem.grad_output))
        conv = getattr(F, f"conv_transpose{case.ndim}d")
        spatial_dims = (0,) + tuple(range(2, 2 + case.ndim))

        def gradients(mask):
            return torch.ops.aten.convolution_backward(
                grad_output, x, weight, None if bias is None else [geom.out_channels],
                list(geom.stride), list(geom.padding), list(geom.dilation), True,
                list(geom.output_padding), geom.groups, mask,
            )

        param = torch.nn.Parameter(to(problem.param.copy()))
        param.grad = to(problem.grad)
        optimizer = torch.optim.SGD([param], lr=SGD_HYPER.lr, momentum=SGD_HYPER.momentum)
        optimizer.state[param]["momentum_buffer"] = to(problem.momentum.astype(problem.dtype))

        def sgd_step():
            optimizer.step()
            return param

        passes = {
            "forward": lambda: conv(x, weight, bias, **case.kwargs()),
            "grad_input": lambda: gradients([True, False, False])[0],
            "grad_weight": lambda: gradients([False, True, False])[1],
            "backward": lambda: tuple(
                g for g in gradients([True, True, bias is not None]) if g is not None
            ),
            "sgd_step": sgd_step,
        }
        if bias is not None:
            passes["grad_bias"] = lambda: grad_output.sum(dim=spatial_dims)
        return passes

    return build


def torch_contenders(on_gpu: bool, dtype) -> List[Contender]:
    """PyTorch on the benchmarked backend's device: cuDNN without and with TF32 on a GPU."""
    names = ("torch_cudnn", "torch_cudnn_tf32") if on_gpu else ("torch",)
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install
        return [Contender(n, on_gpu, skipped=f"PyTorch is not importable ({exc})") for n in names]
    if not on_gpu:
        return [Contender("torch", False, _torch_build("cpu"))]
    if not torch.cuda.is_available():
        reason = f"PyTorch {torch.__version__} cannot use the GPU"
        return [Contender(n, True, skipped=reason) for n in names]

    @contextlib.contextmanager
    def tf32(allowed):
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = allowed
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved

    build = _torch_build("cuda")
    exact = Contender("torch_cudnn", True, build, context=lambda: tf32(False))
    if np.dtype(dtype) != np.float32:
        return [exact, Contender("torch_cudnn_tf32", True, skipped="TF32 applies to float32 only")]
    return [exact, Contender("torch_cudnn_tf32", True, build, unit=TF32_UNIT, context=lambda: tf32(True))]


# Chainer's method (chainer.functions.deconvolution_2d on the GPU): one GEMM from the input to the
# column buffer, then col2im adds the columns into the output; the gradients go back through im2col.
# Written for any array module ``xp``, so the CPU tests check it with NumPy.
def col2im_forward(xp, x, weight, bias, geom):
    dtype = compute_dtype(x.dtype)
    n, G, cin_g, cout_g = geom.batch, geom.groups, geom.in_channels_per_group, geom.out_channels_per_group
    w = weight.astype(dtype).reshape(G, cin_g, cout_g * geom.taps)
    cols = xp.matmul(w.transpose(0, 2, 1), x.astype(dtype).reshape(n, G, cin_g, -1))
    cols = cols.reshape((n, G, cout_g) + geom.kernel_size + geom.in_size)
    full = xp.zeros((n, G, cout_g) + geom.full_extent(), dtype=dtype)
    for tap, window in tap_windows(geom):
        full[(Ellipsis,) + window] += cols[(slice(None),) * 3 + tap]
    y = full.reshape((n, geom.out_channels) + geom.full_extent())[(Ellipsis,) + crop(geom)]
    if bias is not None:
        y = y + bias.astype(dtype).reshape((-1,) + (1,) * geom.ndim)
    return y.astype(x.dtype)


def _im2col(xp, grad_output, geom):
    """grad_output -> columns (N, G, C_out/G·∏k, ∏in): the adjoint of col2im."""
    n, G, cout_g = geom.batch, geom.groups, geom.out_channels_per_group
    dtype = compute_dtype(grad_output.dtype)
    padded = xp.zeros((n, G, cout_g) + geom.full_extent(), dtype=dtype)
    padded[(Ellipsis,) + crop(geom)] = grad_output.reshape((n, G, cout_g) + geom.out_size)
    cols = xp.empty((n, G, cout_g) + geom.kernel_size + geom.in_size, dtype=dtype)
    for tap, window in tap_windows(geom):
        cols[(slice(None),) * 3 + tap] = padded[(Ellipsis,) + window]
    return cols.reshape(n, G, cout_g * geom.taps, -1)


def col2im_grad_input(xp, grad_output, weight, geom):
    dtype = compute_dtype(weight.dtype)
    w = weight.astype(dtype).reshape(geom.groups, geom.in_channels_per_group, -1)
    return xp.matmul(w, _im2col(xp, grad_output, geom)).reshape(geom.input_shape).astype(weight.dtype)


def col2im_grad_weight(xp, grad_output, x, geom):
    n, G, cin_g = geom.batch, geom.groups, geom.in_channels_per_group
    cols = _im2col(xp, grad_output, geom)
    x_g = x.astype(cols.dtype).reshape(n, G, cin_g, -1)
    # Σ over batch and positions of x (C_in/G, ∏in) @ colsᵀ (∏in, C_out/G·∏k), per group
    grad = xp.matmul(x_g, cols.transpose(0, 1, 3, 2)).sum(axis=0)
    return grad.reshape(geom.weight_shape).astype(x.dtype)


def col2im_grad_bias(grad_output, geom):
    return grad_output.sum(axis=(0,) + tuple(range(2, 2 + geom.ndim)),
                           dtype=compute_dtype(grad_output.dtype)).astype(grad_output.dtype)


def cupy_col2im_contender(on_gpu: bool) -> Contender:
    name = "cupy_col2im"
    if not on_gpu:
        return Contender(name, False, skipped="runs on the GPU only (the benchmarked backend is on the CPU)")
    import cupy

    def build(problem: Problem):
        geom = problem.geom
        x, weight, grad_output = map(cupy.asarray, (problem.x, problem.weight, problem.grad_output))
        bias = None if problem.bias is None else cupy.asarray(problem.bias)
        param, grad = cupy.asarray(problem.param), cupy.asarray(problem.grad)
        momentum = cupy.asarray(problem.momentum)

        def sgd_step():  # torch.optim.SGD's update after the first step, in three elementwise kernels
            cupy.multiply(momentum, SGD_HYPER.momentum, out=momentum)
            cupy.add(momentum, grad, out=momentum)
            cupy.subtract(param, SGD_HYPER.lr * momentum, out=param)
            return param

        passes = {
            "forward": lambda: col2im_forward(cupy, x, weight, bias, geom),
            "grad_input": lambda: col2im_grad_input(cupy, grad_output, weight, geom),
            "grad_weight": lambda: col2im_grad_weight(cupy, grad_output, x, geom),
            "backward": lambda: (col2im_grad_input(cupy, grad_output, weight, geom),
                                 col2im_grad_weight(cupy, grad_output, x, geom))
            + (() if bias is None else (col2im_grad_bias(grad_output, geom),)),
            "sgd_step": sgd_step,
        }
        if bias is not None:
            passes["grad_bias"] = lambda: col2im_grad_bias(grad_output, geom)
        return passes

    return Contender(name, True, build)


def contenders(backend_name: str, dtype, precision: str = "fp32"):
    """The benchmarked backend (at ``precision``) and its baselines; BackendUnavailableError when it
    cannot run here."""
    impl = backends.get(backend_name)
    on_gpu = backend_name == "cuda"
    baselines = torch_contenders(on_gpu, dtype)
    if on_gpu:  # the library's own direct kernels (the plain reference versions) on the same GPU
        baselines.append(backend_contender("cuda_direct", impl, on_gpu, algorithm="gather"))
    if backend_name != "numpy":
        baselines.append(backend_contender("numpy", backends.get("numpy"), on_gpu=False))
    baselines.append(cupy_col2im_contender(on_gpu))
    # TF32 rounds float32 operands to 10 mantissa bits; tf32x3 keeps close to FP32: each product may
    # carry ~12 float32 units from its dropped and rounded parts, so 8 float32 units bound it.
    unit = {"tf32": TF32_UNIT, "tf32x3": TF32X3_UNIT}.get(precision) if np.dtype(dtype) == np.float32 else None
    return backend_contender(backend_name, impl, on_gpu, precision, unit), baselines


# -- running --------------------------------------------------------------------------------------
@dataclass
class Checked:
    """One contender on one problem after the correctness check: its passes (callables), the
    error of each, those over tolerance, or why it could not run."""

    contender: Contender
    passes: Dict[str, Callable] = field(default_factory=dict)
    errors: Dict[str, float] = field(default_factory=dict)
    wrong: Dict[str, float] = field(default_factory=dict)  # pass -> error over its tolerance
    failure: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.wrong

    def why_not_timed(self) -> str:
        return self.failure or "wrong result: max relative error " + ", ".join(
            f"{p} {e:.2g}" for p, e in self.wrong.items())


def check(contender: Contender, problem: Problem, on_step=lambda what: None) -> Checked:
    """Build the contender's passes and compare each one's first result with the reference."""
    checked = Checked(contender)
    try:
        with contender.context():
            passes = contender.build(problem)
            for name, fn in passes.items():
                on_step(f"check {name}")
                error = relative_error(fn(), problem.reference[name])
                checked.errors[name] = error
                if not error <= tolerance(problem.dtype, problem.terms(name), contender.unit):
                    checked.wrong[name] = error
        checked.passes = passes
    except Exception as exc:  # e.g. a dtype PyTorch has no CPU kernel for: report it, go on
        checked.failure = f"{type(exc).__name__}: {exc}"
    return checked


def time_passes(contenders: List[Checked], policy: TimingPolicy, on_step=lambda what: None):
    """Time each pass the first contender (the benchmarked backend) has, for it and every other
    contender that has the pass too, interleaved. Returns ``({name: {pass: Samples}}, {name:
    failure})``; a contender that fails stops being timed."""
    ours = contenders[0].contender.name
    samples = {c.contender.name: {} for c in contenders}
    failures = {}
    for pass_name in PASSES:
        if pass_name not in contenders[0].passes or ours in failures:
            continue
        on_step(f"time {pass_name}")
        timed = {c.contender.name: c.contender.timed(c.passes[pass_name]) for c in contenders
                 if pass_name in c.passes and c.contender.name not in failures}
        got, failed = interleaved_samples(timed, policy)
        failures.update(failed)
        for name, pass_samples in got.items():
            samples[name][pass_name] = pass_samples
    for name in failures:
        samples[name] = {}
    return samples, failures


def _timing_record(samples: Dict[str, Samples]) -> dict:
    record = {}
    for pass_name, pass_samples in samples.items():
        spread = pass_samples.spread()
        record[pass_name] = {
            "median_ms": spread.median * 1e3, "q1_ms": spread.q1 * 1e3, "q3_ms": spread.q3 * 1e3,
            "min_ms": spread.minimum * 1e3, "max_ms": spread.maximum * 1e3,
            "samples": spread.count, "calls_per_sample": pass_samples.calls_per_sample,
        }
    return record


def _case_record(problem: Problem, mine: Checked, samples: Dict[str, Samples],
                 baselines: Dict[str, object], speedups: Dict[str, Dict[str, Spread]], peaks) -> dict:
    timing = _timing_record(samples)
    ms = {p: t["median_ms"] for p, t in timing.items()}
    case = problem.case
    status = "ok" if mine.ok else "wrong" if mine.wrong else "failed"
    record = {
        "name": case.name, "source": case.source, "config": case.config(),
        "shrunk_from": None if case.shrunk_from is None else case.shrunk_from.config(),
        "status": status,
        "ms": ms,
        "timing": timing,
        "noisy": [p for p, s in samples.items() if s.spread().noisy],
        "tflops": {p: CONVOLUTIONS[p] * problem.geom.flops() / (t * 1e-3) / 1e12
                   for p, t in ms.items() if p in CONVOLUTIONS},
        "gbps": {p: problem.min_bytes(p) / (t * 1e-3) / 1e9 for p, t in ms.items()},
        "max_rel_error": max(mine.errors.values(), default=None),  # None: nothing was checked
        "rel_errors": mine.errors,
        "tolerances": {p: tolerance(problem.dtype, problem.terms(p)) for p in mine.errors},
        "baselines": baselines,
        "speedup": {name: {p: s.median for p, s in by_pass.items()} for name, by_pass in speedups.items()},
        "speedup_spread": {name: {p: {"q1": s.q1, "q3": s.q3, "ranked": s.ranked} for p, s in by_pass.items()}
                           for name, by_pass in speedups.items()},
    }
    if mine.failure:
        record["error"] = mine.failure
    if mine.wrong:
        record["wrong_passes"] = mine.wrong
    if peaks is not None:
        record["peak_fraction"] = {
            "fp32": {p: t / peaks.fp32_tflops for p, t in record["tflops"].items()},
            "bandwidth": {p: g / peaks.bandwidth_gbps for p, g in record["gbps"].items()},
        }
    return record


def kernel_paths(impl, problem: Problem, precision: str):
    """{pass: {"kind", "kernel", "workspace_bytes"}}: which kernel the benchmarked backend ran for
    each pass of this case (None for the NumPy backend, which has no kernels)."""
    if not hasattr(impl, "kernel_paths"):
        return None
    paths = impl.kernel_paths(problem.geom, problem.dtype, precision=precision, need_bias=problem.bias is not None)
    return {p: {"kind": path.kind, "kernel": path.entry, "workspace_bytes": path.workspace_bytes}
            for p, path in paths.items()}


def describe_device(backend_name: str) -> str:
    if backend_name == "cuda":
        gpu = gpu_info()
        return f"{gpu.name} (GPU 0, compute capability {gpu.compute_capability})"
    return f"CPU: {cpu_name()}, {cpu_threads()} threads"


def quick_limits(backend_name: str):
    """How --quick shrinks the cases for ``backend_name``: emulator-sized for the emulator."""
    return QUICK_EMULATOR if backend_name == "emulator" else QUICK


def first_line(backend_name: str, quick: bool = False) -> str:
    """What runs where, whether the cases are shrunk, and why not on the GPU when it does not."""
    command = "cudeconv bench --quick (shrunk cases, not the real layers' sizes)" if quick else "cudeconv bench"
    line = f"{command}: backend {backend_name!r} on {describe_device(backend_name)}"
    reason = backends.cuda_unavailable_reason()
    if backend_name != "cuda":
        line += f" — not on a GPU: {reason}" if reason else " — a GPU is present but not benchmarked"
    return line


def default_policy(backend_name: str, min_samples=None, min_seconds=None) -> TimingPolicy:
    """The timing policy for the benchmarked backend; None takes the default."""
    return TimingPolicy(
        min_samples=DEFAULT_MIN_SAMPLES[backend_name] if min_samples is None else min_samples,
        min_seconds=DEFAULT_MIN_SECONDS if min_seconds is None else min_seconds,
    )


def run(cases: List[Case], backend_name: str = "numpy", dtype="float32", repeat=None, quick=False,
        progress=True, min_seconds=None, precision="fp32") -> dict:
    """Check and time every case; the JSON-able results (see the module docstring). ``repeat`` and
    ``min_seconds``: the least samples and seconds of samples per pass (None: the defaults);
    ``precision``: the float32 arithmetic of the benchmarked backend (``cudeconv._precision``,
    ``--precision``)."""
    from tqdm import tqdm

    mine, baselines = contenders(backend_name, dtype, check_precision(precision))
    mine_impl = backends.get(backend_name)
    policy = default_policy(backend_name, repeat, min_seconds)
    peaks = gpu_info() if mine.on_gpu else None
    runnable = [b for b in baselines if b.skipped is None]
    limits = quick_limits(backend_name) if quick else None
    results = {
        "device": describe_device(backend_name), "backend": backend_name, "dtype": np.dtype(dtype).name,
        "precision": precision, "versions": versions(), "quick": quick,
        "quick_limits": None if limits is None else limits.describe(),
        "timing": {"min_samples": policy.min_samples, "min_seconds": policy.min_seconds,
                   "min_sample_seconds": policy.min_sample_seconds, "interleaved": True},
        "timer": (CudaEventClock if mine.on_gpu else CpuClock).description,
        "threads": cpu_threads(),
        "peaks": None if peaks is None else {"fp32_tflops": peaks.fp32_tflops,
                                             "bandwidth_gbps": peaks.bandwidth_gbps, "gpu": peaks.name},
        "cases": [],
    }
    threads = _same_threads_for_torch(runnable)
    bar = tqdm(total=len(cases), desc="bench", file=sys.stderr, disable=not progress, leave=False)
    try:
        for case in cases:
            problem = Problem.make(case.quick(limits) if quick else case, dtype)
            step = lambda who: lambda what: bar.set_postfix_str(f"{case.name}: {who} {what}")  # noqa: E731
            ours = check(mine, problem, step(mine.name))
            checked, timings = [], {b.name: {"skipped": b.skipped} for b in baselines if b.skipped}
            for baseline in runnable:
                if not ours.ok:  # a wrong (or failed) case is not timed, nor are its baselines
                    verdict = "wrong" if ours.wrong else "failing"
                    timings[baseline.name] = {"skipped": f"not timed: {backend_name} is {verdict} on this case"}
                    continue
                theirs = check(baseline, problem, step(baseline.name))
                if theirs.ok:
                    checked.append(theirs)
                else:
                    timings[baseline.name] = {"skipped": theirs.why_not_timed()}
            samples, failures = time_passes([ours] + checked, policy, step("all")) if ours.ok else ({}, {})
            if mine.name in failures:  # time_passes left its samples empty
                ours.failure = f"failed while timed: {failures[mine.name]}"
            speedups = {}
            for theirs in checked:
                name = theirs.contender.name
                if name in failures or mine.name in failures:
                    timings[name] = {"skipped": failures.get(name, f"not timed: {mine.name} failed")}
                    continue
                timing = _timing_record(samples[name])
                timings[name] = {"ms": {p: t["median_ms"] for p, t in timing.items()}, "timing": timing}
                speedups[name] = {p: ratio for p, s in samples[name].items()
                                  if (ratio := paired_ratios(s, samples[mine.name][p])) is not None}
            ordered = {b.name: timings[b.name] for b in baselines}
            record = _case_record(problem, ours, samples.get(mine.name, {}), ordered, speedups, peaks)
            record["paths"] = kernel_paths(mine_impl, problem, precision)
            results["cases"].append(record)
            bar.update()
    finally:
        bar.close()
        threads.close()
    return results


def _same_threads_for_torch(runnable):
    """PyTorch on the CPU gets as many threads as NumPy's BLAS (all cores given to this process);
    the previous setting comes back when the returned object is closed."""
    restore = contextlib.ExitStack()
    if any(c.name == "torch" for c in runnable):
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(cpu_threads())
        restore.callback(torch.set_num_threads, saved)
    return restore


# -- reporting ------------------------------------------------------------------------------------
NOISY_MARK, UNRANKED_MARK = "~", "?"


def _fmt(value, width, digits=3):
    if value is None:
        return " " * (width - 1) + "—"
    return f"{value:{width}.{digits}g}"


def _fmt_spread(timing, width=6):
    """IQR as a percentage of the median, marked when noisy."""
    if timing is None:
        return " " * (width - 1) + "—"
    relative = (timing["q3_ms"] - timing["q1_ms"]) / timing["median_ms"] if timing["median_ms"] > 0 else math.inf
    mark = NOISY_MARK if not relative <= NOISY_RELATIVE_IQR else " "
    return f"{min(relative * 100, 999):{width - 2}.0f}%{mark}"


def _fmt_ratio(ratio, spread, width):
    if ratio is None:
        return " " * (width - 1) + "—"
    mark = " " if spread["ranked"] else UNRANKED_MARK
    return f"{ratio:{width - 1}.3g}{mark}"


def headline(results: dict) -> List[str]:
    """What was run and how it was timed: the lines above the table (and the plot's title)."""
    policy = results["timing"]
    size = (f"QUICK RUN (--quick): every case shrunk ({results['quick_limits']}) — smoke-test sizes, "
            "not the real layers" if results["quick"] else "full-size cases (the real layers)")
    return [
        f"{results['backend']} on {results['device']}, {results['dtype']}, precision {results['precision']}; {size}",
        f"times: median of ≥ {policy['min_samples']} samples per pass and ≥ {policy['min_seconds']:g} s "
        f"of samples, cudeconv and baselines interleaved ({results['timer']})",
    ]


def _geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt_paths(paths: dict) -> str:
    """'forward gemm (deconv_forward_gemm_tf32), ...', with any workspace."""
    parts = []
    for p, path in paths.items():
        text = f"{p} {path['kind']}"
        if path["workspace_bytes"]:
            text += f" ({path['workspace_bytes'] / 2**20:.3g} MiB workspace)"
        parts.append(text)
    return ", ".join(parts)


def format_table(results: dict) -> str:
    """The per-case, per-pass table: medians, spread, speedup over each baseline."""
    ours = results["backend"]
    names = list(dict.fromkeys(
        n for c in results["cases"] for n, t in c["baselines"].items() if "skipped" not in t))
    on_gpu = results["peaks"] is not None
    header = (f"{'case':14s} {'pass':12s} {'rel error':>9s} {ours + ' ms':>12s} {'±IQR':>6s} "
              f"{'TFLOP/s':>8s} {'GB/s':>8s}")
    if on_gpu:
        header += f" {'%FP32':>6s} {'%BW':>6s}"
    widths = {name: (max(12, len(name) + 3), max(8, len(name) + 2)) for name in names}
    for name in names:
        header += f" │ {name + ' ms':>{widths[name][0]}s} {'±IQR':>6s} {'×' + name:>{widths[name][1]}s}"
    lines = headline(results) + ["", header, "─" * len(header)]
    for case in results["cases"]:
        label = case["name"]
        if case["status"] != "ok":
            detail = case.get("error") or ", ".join(
                f"{p} error {e:.2g} > {case['tolerances'][p]:.2g}" for p, e in case["wrong_passes"].items())
            lines.append(f"{label:14s} {case['status'].upper()}: {detail}")
            continue
        for p in PASSES:
            if p not in case["ms"]:
                continue
            row = (f"{label:14s} {p:12s} {_fmt(case['rel_errors'].get(p), 9, 2)} {_fmt(case['ms'][p], 12)} "
                   f"{_fmt_spread(case['timing'][p])} {_fmt(case['tflops'].get(p), 8)} "
                   f"{_fmt(case['gbps'].get(p), 8)}")
            if on_gpu:
                frac = case["peak_fraction"]
                pct = lambda kind: None if p not in frac[kind] else 100 * frac[kind][p]  # noqa: E731
                row += f" {_fmt(pct('fp32'), 6, 2)} {_fmt(pct('bandwidth'), 6, 2)}"
            for name in names:
                theirs = case["baselines"].get(name, {})
                timing = theirs.get("timing", {}).get(p)
                ratio = case["speedup"].get(name, {}).get(p)
                spread = case["speedup_spread"].get(name, {}).get(p)
                row += (f" │ {_fmt(None if timing is None else timing['median_ms'], widths[name][0])} "
                        f"{_fmt_spread(timing)} {_fmt_ratio(ratio, spread, widths[name][1])}")
            lines.append(row)
        if case.get("paths"):
            lines.append(f"{'':14s} kernels: " + _fmt_paths(case["paths"]))
            label = ""
    lines += [
        "",
        f"rel error: max |{ours} - float64 reference| / max |reference|. ±IQR: interquartile range "
        f"as a % of the median; {NOISY_MARK}: over {NOISY_RELATIVE_IQR:.0%}, a noisy time.",
        f"×B: B's time / {ours}'s time, the median over rounds of samples taken side by side (above 1: "
        f"{ours} is faster); {UNRANKED_MARK}: the middle half of those ratios spans 1 — too close or "
        f"too noisy to rank.",
        "—: not measured. Only the passes the benchmarked backend has are timed; a gradient without "
        "its own entry point is inside backward. sgd_step and grad_bias do no convolution: no TFLOP/s.",
    ]
    for name in names:
        ratios = [(r, c["speedup_spread"][name][p]["ranked"])
                  for c in results["cases"] for p, r in c["speedup"].get(name, {}).items()]
        if ratios:
            unranked = sum(1 for _, ranked in ratios if not ranked)
            lines.append(f"geometric mean ×{name}: {_geometric_mean([r for r, _ in ratios]):.3g} over "
                         f"{len(ratios)} passes ({unranked} of them unranked {UNRANKED_MARK})")
    skipped = {}
    for case in results["cases"]:
        for name, timing in case["baselines"].items():
            if "skipped" in timing:
                skipped.setdefault((name, timing["skipped"]), []).append(case["name"])
    every = len(results["cases"])
    for (name, reason), which in skipped.items():
        where = "all cases" if len(which) == every else ", ".join(which)
        lines.append(f"{name}: skipped ({where}): {reason}")
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    """A PNG of speed-ups: one panel per pass; per case, a bar per baseline at (baseline's time /
    cudeconv's time) with its value written beside it and its IQR as a whisker, on a log axis with
    the 1× line marked. Unranked ratios are drawn hatched and pale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ours = results["backend"]
    cases = [c for c in results["cases"] if c["speedup"]]
    names = list(dict.fromkeys(n for c in cases for n in c["speedup"]))
    passes = [p for p in PASSES if any(p in c["speedup"][n] for c in cases for n in c["speedup"])]
    title = f"cudeconv bench: {ours} vs baselines\n" + "\n".join(headline(results)).replace(" — ", "\n")
    not_timed = [f"{c['name']} ({c['status']})" for c in results["cases"] if c["status"] != "ok"]
    if not passes:
        fig = Figure(figsize=(9, 3.5), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.axis("off")
        reasons = sorted({t["skipped"] for c in results["cases"] for t in c["baselines"].values() if "skipped" in t})
        ax.text(0.5, 0.5, "no baseline was timed, nothing to compare:\n" + "\n".join(reasons),
                ha="center", va="center", wrap=True, fontsize=9)
        fig.suptitle(title, fontsize=9)
        fig.savefig(path, dpi=100)
        return
    ncols = min(3, len(passes))
    nrows = math.ceil(len(passes) / ncols)
    panel_height = 0.8 + 0.2 * len(cases) * len(names)
    fig = Figure(figsize=(5.4 * ncols, panel_height * nrows + 1.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    bar_height = 0.8 / len(names)
    for ax, pass_name in zip(axes, passes):
        for i, name in enumerate(names):
            rows = [(j, c["speedup"][name][pass_name], c["speedup_spread"][name][pass_name])
                    for j, c in enumerate(cases) if pass_name in c["speedup"].get(name, {})]
            for j, ratio, spread in rows:
                y = j + (i - (len(names) - 1) / 2) * bar_height
                ax.barh(y, ratio, bar_height * 0.9, color=f"C{i}", alpha=1 if spread["ranked"] else 0.45,
                        hatch=None if spread["ranked"] else "//",
                        xerr=[[ratio - spread["q1"]], [spread["q3"] - ratio]],
                        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"})
                ax.annotate(f"{ratio:.2g}×" + ("" if spread["ranked"] else UNRANKED_MARK),
                            (max(ratio, spread["q3"]), y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ax.axvline(1, color="black", lw=1.2)
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        low, high = min(low, 0.5), max(high, 2) * 2  # 1× in view, room for the labels
        ax.set_xlim(low, high)
        # ticks at 1, 2, 5 × 10^k over a short range; at powers of ten only over a long one
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high / low < 10**2.5 else (1,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels([c["name"] for c in cases], fontsize=8)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.set_title(pass_name, fontsize=10)
        ax.set_xlabel(f"{ours} speed-up: baseline time / {ours} time (right of the 1× line: {ours} faster)",
                      fontsize=7)
        if ax is axes[0]:
            ax.legend(handles=[Patch(color=f"C{i}", label=f"vs {name}") for i, name in enumerate(names)],
                      fontsize=7, loc="best")
    for ax in axes[len(passes):]:
        ax.set_visible(False)
    notes = (f"pale and hatched, {UNRANKED_MARK}: the middle half of the per-round ratios spans 1 "
             f"(unranked); whiskers: interquartile range")
    if not_timed:
        notes += "; not timed: " + ", ".join(not_timed)
    fig.suptitle(title + "\n" + notes, fontsize=9)
    fig.savefig(path, dpi=100)
