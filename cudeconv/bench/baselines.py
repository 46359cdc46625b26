"""The contenders: the benchmarked backend and its baselines.

:data:`BASELINES` names every baseline, the device it runs on and the float32 arithmetic it may
use; :func:`select_baselines` picks them (``--baselines``): by default those on the benchmarked
backend's device — a GPU run leaves the CPU baselines out, they are slow and say nothing about the
GPU — and in a TF32 run only the TF32 ones (the FP32 ones were timed in the FP32 run).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

from .. import autotune as tuning
from .. import backends
from .._dtypes import BFLOAT16, compute_dtype
from ..backends.numpy_backend import crop, tap_windows
from ..timing import CpuClock, CudaEventClock, Timed
from .accuracy import arithmetic
from .problem import SGD_HYPER, Problem

# Extra warm-up calls before calibration: none on the CPU (the correctness check and the discarded
# calibration calls warm it up); five on the GPU, where clocks ramp up and memory pools fill.
WARMUP = {False: 0, True: 5}


@dataclass
class Contender:
    """An implementation of the passes: the benchmarked backend or a baseline."""

    name: str
    on_gpu: bool
    # Problem -> {pass: callable returning that pass's result(s)}; passes it lacks are left out.
    build: Optional[Callable[[Problem], Dict[str, Callable]]] = None
    skipped: Optional[str] = None  # why it cannot run here; None when it can
    precision: str = "fp32"  # the float32 arithmetic it may use ("fp32", "tf32", "tf32x3")
    context: Callable = contextlib.nullcontext  # entered around its checks and timings
    settings: Callable[[], dict] = field(default=dict)  # its library's settings in force (in context)

    def timed(self, fn) -> Timed:
        """``fn`` (one of its passes) with the clock and warm-up of its device."""
        return Timed(fn, CudaEventClock() if self.on_gpu else CpuClock(), WARMUP[self.on_gpu],
                     self.context)


def backend_contender(name: str, impl, on_gpu: bool, precision: str = "fp32",
                      algorithm: str = "auto") -> Contender:
    """A cudeconv backend's passes (its per-gradient entry points only where it has them), with
    ``algorithm`` (its default, or "gather": the direct kernels) and the given float32
    ``precision``."""

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

    return Contender(name, on_gpu, build, precision=precision,
                     settings=lambda: {"precision": precision, "algorithm": algorithm})


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


def torch_settings() -> dict:
    """PyTorch's settings in force now that decide its speed and arithmetic (a setting PyTorch
    refuses to read, e.g. after the old and new TF32 switches were mixed, is recorded as such)."""
    import torch

    def read(getter):
        try:
            return getter()
        except Exception as exc:  # torch raises RuntimeError for an ambiguous TF32 state
            return f"unreadable ({type(exc).__name__}: {exc})"

    cudnn = torch.backends.cudnn
    found = {
        "num_threads": torch.get_num_threads(),
        "cudnn.allow_tf32": read(lambda: cudnn.allow_tf32),
        "cudnn.benchmark": read(lambda: cudnn.benchmark),
        "cudnn.deterministic": read(lambda: cudnn.deterministic),
        "cuda.matmul.allow_tf32": read(lambda: torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": read(torch.get_float32_matmul_precision),
    }
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):  # the newer switch, where present
        found["cudnn.conv.fp32_precision"] = read(lambda: cudnn.conv.fp32_precision)
    return found


def _torch_contender(name: str, on_gpu: bool, tf32: bool = False, tuned: bool = False, dtype=np.float32):
    """PyTorch's conv_transpose on the CPU, or on the GPU through cuDNN with TF32 on or off and its
    algorithm tuned (``torch.backends.cudnn.benchmark``: each shape's algorithms are timed on its
    first call, the correctness check, before any timing) or chosen by its heuristics."""
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install
        return Contender(name, on_gpu, skipped=f"PyTorch is not importable ({exc})")
    if not on_gpu:
        return Contender(name, False, _torch_build("cpu"), settings=torch_settings)
    if not torch.cuda.is_available():
        return Contender(name, True, skipped=f"PyTorch {torch.__version__} cannot use the GPU")
    if tf32 and np.dtype(dtype) != np.float32:
        return Contender(name, True, skipped="TF32 applies to float32 only")

    @contextlib.contextmanager
    def cudnn_settings():
        cudnn = torch.backends.cudnn
        saved = cudnn.allow_tf32, cudnn.benchmark
        cudnn.allow_tf32, cudnn.benchmark = tf32, tuned
        try:
            yield
        finally:
            cudnn.allow_tf32, cudnn.benchmark = saved

    return Contender(name, True, _torch_build("cuda"), precision="tf32" if tf32 else "fp32",
                     context=cudnn_settings, settings=torch_settings)


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


def cupy_col2im_contender() -> Contender:
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

    return Contender("cupy_col2im", True, build)


class Baseline(NamedTuple):
    on_gpu: bool
    precision: str  # the float32 arithmetic it may use
    description: str  # for --help
    make: Callable  # dtype -> Contender


BASELINES = {
    "torch": Baseline(False, "fp32", "PyTorch on the CPU, at the bench's thread count",
                      lambda dtype: _torch_contender("torch", False)),
    "torch_cudnn": Baseline(True, "fp32", "PyTorch on cuDNN, TF32 off, cuDNN's heuristic algorithm",
                            lambda dtype: _torch_contender("torch_cudnn", True, dtype=dtype)),
    "torch_cudnn_tuned": Baseline(True, "fp32", "the same with cudnn.benchmark: algorithms tuned before timing",
                                  lambda dtype: _torch_contender("torch_cudnn_tuned", True, tuned=True, dtype=dtype)),
    "torch_cudnn_tf32": Baseline(True, "tf32", "PyTorch on cuDNN with TF32 on, heuristic algorithm",
                                 lambda dtype: _torch_contender("torch_cudnn_tf32", True, tf32=True, dtype=dtype)),
    "torch_cudnn_tf32_tuned": Baseline(True, "tf32", "PyTorch on cuDNN with TF32 on, algorithms tuned",
                                       lambda dtype: _torch_contender("torch_cudnn_tf32_tuned", True, tf32=True,
                                                                      tuned=True, dtype=dtype)),
    "cuda_direct": Baseline(True, "fp32", "cudeconv's own direct kernels, algorithm='gather'",
                            lambda dtype: backend_contender("cuda_direct", backends.get("cuda"), True,
                                                            algorithm="gather")),
    "cupy_col2im": Baseline(True, "fp32", "Chainer's GEMM + col2im in CuPy",
                            lambda dtype: cupy_col2im_contender()),
    "numpy": Baseline(False, "fp32", "cudeconv's NumPy backend",
                      lambda dtype: backend_contender("numpy", backends.get("numpy"), on_gpu=False)),
}


def select_baselines(spec: Optional[str], backend_name: str, dtype, precision: str) -> List[str]:
    """The baselines to run: ``spec`` is None (the defaults, see the module docstring), "all",
    "none" or a comma-separated list of :data:`BASELINES` names. ValueError names an unknown one."""
    others = [name for name in BASELINES if name != backend_name]
    if spec is None:
        on_gpu = backend_name == "cuda"
        chosen = [name for name in others if BASELINES[name].on_gpu == on_gpu]
        if arithmetic(dtype, precision) == "tf32":
            chosen = [name for name in chosen if BASELINES[name].precision == "tf32"]
        return chosen
    if not isinstance(spec, str):
        raise TypeError(f"baselines must be a string, got {type(spec).__name__} {spec!r}")
    words = [word.strip() for word in spec.split(",") if word.strip()]
    if words == ["all"]:
        return others
    if words == ["none"]:
        return []
    known = ", ".join(BASELINES)
    for word in words:
        if word not in BASELINES:
            raise ValueError(f"baselines: unknown baseline {word!r} in {spec!r}; choose from {known}, "
                             f"or all or none")
        if word == backend_name:
            raise ValueError(f"baselines: {word!r} is the benchmarked backend itself")
    if not words:
        raise ValueError(f"baselines: no baseline named in {spec!r}; choose from {known}, or all or none")
    return list(dict.fromkeys(words))


def autotuned_contender(name: str, impl, on_gpu: bool, precision: str) -> Contender:
    """A kernel backend's forward, grad_input, grad_weight and backward by their autotuned kernels
    (:mod:`cudeconv.autotune`): the warm-up's first call of each pass tunes it, untimed."""

    def build(problem: Problem):
        geom, to, tuner = problem.geom, impl.asarray, tuning.default_tuner()
        x, weight, grad_output = to(problem.x), to(problem.weight), to(problem.grad_output)
        bias = None if problem.bias is None else to(problem.bias)
        return {
            "forward": lambda: tuning.forward(impl, x, weight, bias, geom, "auto", precision, "contiguous", True),
            "grad_input": lambda: tuner.run(impl, "grad_input", (grad_output, weight), geom, precision),
            "grad_weight": lambda: tuner.run(impl, "grad_weight", (grad_output, x), geom, precision),
            "backward": lambda: tuple(g for g in tuning.backward(impl, grad_output, x, weight, geom, bias is not None,
                                                                 "auto", precision, "contiguous", True)
                                      if g is not None),
        }

    return Contender(name, on_gpu, build, precision=precision,
                     settings=lambda: {"precision": precision, "algorithm": "auto", "autotune": True})


def contenders(backend_name: str, dtype, precision: str = "fp32", baseline_names: Optional[List[str]] = None,
               autotune: bool = False):
    """The benchmarked backend (at ``precision``) and the baselines named (None: the defaults of
    :func:`select_baselines`), each ready or skipped with the reason, then with ``autotune`` the
    backend's autotuned kernels (``<backend>_autotuned``); BackendUnavailableError when the
    benchmarked backend cannot run here."""
    impl = backends.get(backend_name)
    on_gpu = backend_name == "cuda"
    if baseline_names is None:
        baseline_names = select_baselines(None, backend_name, dtype, precision)
    baselines = []
    for name in baseline_names:
        baseline = BASELINES[name]
        if baseline.on_gpu and not on_gpu:
            baselines.append(Contender(name, True, skipped="runs on the GPU only (the benchmarked backend is on "
                                                           "the CPU)"))
        else:
            baselines.append(baseline.make(dtype))
    if autotune:
        baselines.append(autotuned_contender(f"{backend_name}_autotuned", impl, on_gpu, precision))
    return backend_contender(backend_name, impl, on_gpu, precision), baselines
