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
pass's sums; plus 2⁻¹⁰ for float16's rounding). A wrong implementation is reported, not timed. Then
the median of ``repeat`` runs after warm-up: CUDA events (``cupyx.profiler.benchmark``) for work on
the GPU, ``time.perf_counter`` on the CPU. TFLOP/s counts the useful products,
2·N·C_in·(C_out/groups)·∏in·∏kernel per convolution pass (twice that for ``backward``); GB/s counts
the fewest bytes a pass must move (each operand read once, each result written once).

Baselines, each where present (the reason is printed where not): PyTorch's
``conv_transpose{1,2,3}d`` on the benchmarked backend's device (on the GPU twice, cuDNN with TF32
off and on; on the CPU with the same thread count), the NumPy backend (when another backend is
benchmarked), and on the GPU a CuPy GEMM + col2im implementation (Chainer's method).

``--json`` writes ``{"device", "backend", "dtype", "versions", "quick", "repeat", "timer",
"threads", "peaks", "cases": [{"name", "source", "config", "status" ("ok", "wrong" or "failed"),
"ms": {pass: median ms}, "tflops": {pass: ...}, "gbps": {pass: ...}, "max_rel_error",
"rel_errors", "tolerances", "baselines": {name: {pass: median ms} or {"skipped": reason}},
"speedup": {name: {pass: their ms / our ms}}, and on a GPU "peak_fraction"}]}``; numbers that are
not finite are written as null.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from . import __version__, backends
from ._geometry import ConvTransposeGeometry
from .backends.numpy_backend import NumpyBackend, crop, tap_windows, compute_dtype
from .cases import BY_NAME, SUITE, Case
from .optim import SGDHyperparameters

PASSES = ("forward", "grad_input", "grad_weight", "grad_bias", "backward", "sgd_step")
# Passes that are convolutions (a TFLOP/s figure makes sense): how many geom.flops() each does.
CONVOLUTIONS = {"forward": 1, "grad_input": 1, "grad_weight": 1, "backward": 2}
SGD_HYPER = SGDHyperparameters(lr=0.01, momentum=0.9, dampening=0.0, weight_decay=0.0,
                               nesterov=False, maximize=False)
# Warm-up runs before timing: one on the CPU (the correctness check already ran once); more on
# the GPU, where clocks ramp up and memory pools fill.
WARMUP = {False: 1, True: 5}
DEFAULT_REPEAT = {False: 5, True: 20}
TF32_UNIT = 2.0 ** -11  # TF32 keeps 10 mantissa bits


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


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def versions() -> Dict[str, Optional[str]]:
    """Versions of what the benchmark runs on (None: not installed or not usable here)."""
    found = {"cudeconv": __version__, "python": platform.python_version(), "numpy": np.__version__,
             "cupy": None, "cuda_runtime": None, "cuda_driver": None, "torch": None}
    try:
        import cupy

        found["cupy"] = cupy.__version__
        found["cuda_runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        found["cuda_driver"] = _cuda_version(cupy.cuda.runtime.driverGetVersion())
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
        unit = float(np.finfo(compute_dtype(dtype)).eps) / 2
    bound = 8 * math.sqrt(max(terms, 1)) * unit
    return bound + (2.0 ** -10 if dtype == np.float16 else 0.0)


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch
        return array.detach().cpu().numpy()
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


# -- timers ---------------------------------------------------------------------------------------
def _cpu_times_ms(fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _gpu_times_ms(fn, repeat, warmup):
    # CUDA events on CuPy's current stream (the legacy default stream, which PyTorch uses too).
    from cupyx.profiler import benchmark

    return [float(t) * 1e3 for t in benchmark(fn, n_repeat=repeat, n_warmup=warmup).gpu_times[0]]


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


def backend_contender(name: str, impl, on_gpu: bool) -> Contender:
    """A cudeconv backend's passes (its per-gradient entry points only where it has them)."""

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
            "forward": lambda: impl.forward(x, weight, bias, geom, "gather"),
            "backward": lambda: tuple(
                g for g in impl.backward(grad_output, x, weight, geom, bias is not None) if g is not None
            ),
            "sgd_step": sgd_step,
        }
        if hasattr(impl, "grad_input"):
            passes["grad_input"] = lambda: impl.grad_input(grad_output, weight, geom)
        if hasattr(impl, "grad_weight"):
            passes["grad_weight"] = lambda: impl.grad_weight(grad_output, x, geom)
        if hasattr(impl, "grad_bias") and bias is not None:
            passes["grad_bias"] = lambda: impl.grad_bias(grad_output, geom)
        return passes

    return Contender(name, on_gpu, build)


def _torch_build(device: str):
    def build(problem: Problem):
        import torch
        import torch.nn.functional as F

        case, geom = problem.case, problem.geom
        to = lambda a: None if a is None else torch.from_numpy(a).to(device)  # noqa: E731
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


def contenders(backend_name: str, dtype):
    """The benchmarked backend and its baselines; BackendUnavailableError when it cannot run here."""
    impl = backends.get(backend_name)
    on_gpu = backend_name == "cuda"
    baselines = torch_contenders(on_gpu, dtype)
    if backend_name != "numpy":
        baselines.append(backend_contender("numpy", backends.get("numpy"), on_gpu=False))
    baselines.append(cupy_col2im_contender(on_gpu))
    return backend_contender(backend_name, impl, on_gpu), baselines


# -- running --------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One contender on one problem: errors per pass, then timings (empty when wrong or failed)."""

    errors: Dict[str, float] = field(default_factory=dict)
    ms: Dict[str, float] = field(default_factory=dict)
    wrong: Dict[str, float] = field(default_factory=dict)  # pass -> error over its tolerance
    failure: Optional[str] = None


def measure(contender: Contender, problem: Problem, repeat: int, on_pass=lambda name: None) -> Outcome:
    outcome = Outcome()
    timer = _gpu_times_ms if contender.on_gpu else _cpu_times_ms
    try:
        with contender.context():
            passes = contender.build(problem)
            for name, fn in passes.items():  # correctness first: the first run is the one checked
                on_pass(f"check {name}")
                error = relative_error(fn(), problem.reference[name])
                outcome.errors[name] = error
                if not error <= tolerance(problem.dtype, problem.terms(name), contender.unit):
                    outcome.wrong[name] = error
            if outcome.wrong:
                return outcome
            for name in PASSES:
                if name in passes:
                    on_pass(f"time {name}")
                    outcome.ms[name] = statistics.median(
                        timer(passes[name], repeat, WARMUP[contender.on_gpu])
                    )
    except Exception as exc:  # e.g. a dtype PyTorch has no CPU kernel for: report it, go on
        outcome.failure = f"{type(exc).__name__}: {exc}"
        outcome.ms = {}
    return outcome


def _case_record(problem: Problem, mine: Outcome, baselines: Dict[str, object], peaks) -> dict:
    record = {
        "name": problem.case.name, "source": problem.case.source, "config": problem.case.config(),
        "status": "failed" if mine.failure else "wrong" if mine.wrong else "ok",
        "ms": mine.ms,
        "tflops": {p: CONVOLUTIONS[p] * problem.geom.flops() / (ms * 1e-3) / 1e12
                   for p, ms in mine.ms.items() if p in CONVOLUTIONS},
        "gbps": {p: problem.min_bytes(p) / (ms * 1e-3) / 1e9 for p, ms in mine.ms.items()},
        "max_rel_error": max(mine.errors.values(), default=None),  # None: nothing was checked
        "rel_errors": mine.errors,
        "tolerances": {p: tolerance(problem.dtype, problem.terms(p)) for p in mine.errors},
        "baselines": baselines,
        "speedup": {
            name: {p: timing[p] / mine.ms[p] for p in timing if p in mine.ms}
            for name, timing in baselines.items() if "skipped" not in timing
        },
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


def describe_device(backend_name: str) -> str:
    if backend_name == "cuda":
        gpu = gpu_info()
        return f"{gpu.name} (GPU 0, compute capability {gpu.compute_capability})"
    return f"CPU: {cpu_name()}, {cpu_threads()} threads"


def first_line(backend_name: str) -> str:
    """What runs where, and why not on the GPU when it does not."""
    line = f"cudeconv bench: backend {backend_name!r} on {describe_device(backend_name)}"
    reason = backends.cuda_unavailable_reason()
    if backend_name != "cuda":
        line += f" — not on a GPU: {reason}" if reason else " — a GPU is present but not benchmarked"
    return line


def run(cases: List[Case], backend_name: str = "numpy", dtype="float32", repeat=None, quick=False,
        progress=True) -> dict:
    """Check and time every case; the JSON-able results (see the module docstring)."""
    from tqdm import tqdm

    mine, baselines = contenders(backend_name, dtype)
    repeats = {"cpu": repeat or DEFAULT_REPEAT[False], "gpu": repeat or DEFAULT_REPEAT[True]}
    repeat_for = lambda contender: repeats["gpu" if contender.on_gpu else "cpu"]  # noqa: E731
    peaks = gpu_info() if mine.on_gpu else None
    runnable = [b for b in baselines if b.skipped is None]
    results = {
        "device": describe_device(backend_name), "backend": backend_name, "dtype": np.dtype(dtype).name,
        "versions": versions(), "quick": quick, "repeat": repeats,
        "timer": "CUDA events (cupyx.profiler.benchmark)" if mine.on_gpu else "time.perf_counter",
        "threads": cpu_threads(),
        "peaks": None if peaks is None else {"fp32_tflops": peaks.fp32_tflops,
                                             "bandwidth_gbps": peaks.bandwidth_gbps, "gpu": peaks.name},
        "cases": [],
    }
    threads = _same_threads_for_torch(runnable)
    bar = tqdm(total=len(cases) * (1 + len(runnable)), desc="bench", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for case in cases:
            problem = Problem.make(case.quick() if quick else case, dtype)
            status = lambda who: lambda what: bar.set_postfix_str(f"{case.name}: {who} {what}")  # noqa: E731
            outcome = measure(mine, problem, repeat_for(mine), status(mine.name))
            bar.update()
            timings = {}
            for baseline in baselines:
                if baseline.skipped is not None:
                    timings[baseline.name] = {"skipped": baseline.skipped}
                    continue
                if outcome.ms:
                    theirs = measure(baseline, problem, repeat_for(baseline), status(baseline.name))
                else:  # a wrong (or failed) case is not timed, nor are its baselines
                    verdict = "wrong" if outcome.wrong else "failing"
                    theirs = Outcome(failure=f"not timed: {backend_name} is {verdict} on this case")
                bar.update()
                timings[baseline.name] = theirs.ms if theirs.ms else {"skipped": theirs.failure or (
                    "wrong result: max relative error "
                    + ", ".join(f"{p} {e:.2g}" for p, e in theirs.wrong.items()))}
            results["cases"].append(_case_record(problem, outcome, timings, peaks))
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
def _fmt(value, width, digits=3):
    if value is None:
        return " " * (width - 1) + "—"
    return f"{value:{width}.{digits}g}"


def format_table(results: dict) -> str:
    """The per-case, per-pass table with the speedup over each baseline."""
    ours = results["backend"]
    names = list(dict.fromkeys(
        n for c in results["cases"] for n, t in c["baselines"].items() if "skipped" not in t))
    on_gpu = results["peaks"] is not None
    header = f"{'case':14s} {'pass':12s} {'rel error':>9s} {ours + ' ms':>12s} {'TFLOP/s':>8s} {'GB/s':>8s}"
    if on_gpu:
        header += f" {'%FP32':>6s} {'%BW':>6s}"
    for name in names:
        header += f" │ {name + ' ms':>{max(12, len(name) + 3)}s} {'×' + name:>{max(7, len(name) + 1)}s}"
    lines = [header, "─" * len(header)]
    for case in results["cases"]:
        label = case["name"]
        if case["status"] != "ok":
            detail = case.get("error") or ", ".join(
                f"{p} error {e:.2g} > {case['tolerances'][p]:.2g}" for p, e in case["wrong_passes"].items())
            lines.append(f"{label:14s} {case['status'].upper()}: {detail}")
            continue
        for p in PASSES:
            timed = [case["baselines"][n].get(p) for n in names]
            if p not in case["ms"] and all(t is None for t in timed):
                continue
            mine = case["ms"].get(p)
            row = (f"{label:14s} {p:12s} {_fmt(case['rel_errors'].get(p), 9, 2)} {_fmt(mine, 12)} "
                   f"{_fmt(case['tflops'].get(p), 8)} {_fmt(case['gbps'].get(p), 8)}")
            if on_gpu:
                frac = case["peak_fraction"]
                pct = lambda kind: None if p not in frac[kind] else 100 * frac[kind][p]  # noqa: E731
                row += f" {_fmt(pct('fp32'), 6, 2)} {_fmt(pct('bandwidth'), 6, 2)}"
            for name, theirs in zip(names, timed):
                ratio = case["speedup"].get(name, {}).get(p)
                row += f" │ {_fmt(theirs, max(12, len(name) + 3))} {_fmt(ratio, max(7, len(name) + 1))}"
            lines.append(row)
            label = ""
    lines.append("")
    lines.append(f"rel error: max |{ours} - float64 reference| / max |reference|. "
                 f"×B = B's time / {ours}'s time (above 1: {ours} is faster).")
    lines.append("—: not measured. A gradient without its own entry point is timed only inside "
                 "backward; sgd_step and grad_bias do no convolution, so no TFLOP/s.")
    for name in names:
        ratios = [r for c in results["cases"] for r in c["speedup"].get(name, {}).values()]
        if ratios:
            geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            lines.append(f"geometric mean ×{name}: {geomean:.3g} over {len(ratios)} passes")
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
    """A PNG: per case, each pass's median time for the backend and every timed baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = results["cases"]
    ncols = min(3, len(cases))
    nrows = math.ceil(len(cases) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.6 * nrows), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, case in zip(axes, cases):
        series = {results["backend"]: case["ms"]}
        series.update({n: t for n, t in case["baselines"].items() if "skipped" not in t})
        passes = [p for p in PASSES if any(p in t for t in series.values())]
        width = 0.8 / max(len(series), 1)
        for i, (name, timing) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j, p in enumerate(passes) if p in timing]
            ax.bar(xs, [timing[p] for p in passes if p in timing], width, label=name)
        ax.set_xticks(range(len(passes)))
        ax.set_xticklabels(passes, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (lower is better)")
        status = "" if case["status"] == "ok" else f" — {case['status'].upper()}, not timed"
        ax.set_title(case["name"] + status, fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[len(cases):]:
        ax.set_visible(False)
    fig.suptitle(f"cudeconv bench: {results['backend']} ({results['dtype']}) on {results['device']}")
    fig.savefig(path, dpi=100)
