"""The contenders: the benchmarked backend and its baselines (PyTorch, Chainer's GEMM + col2im
in CuPy, the NumPy backend, cudeconv's direct kernels)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import backends
from .._dtypes import BFLOAT16, compute_dtype
from ..backends.numpy_backend import crop, tap_windows
from ..timing import CpuClock, CudaEventClock, Timed
from .problem import SGD_HYPER, Problem

# Extra warm-up calls before calibration: none on the CPU (the correctness check and the discarded
# calibration calls warm it up); five on the GPU, where clocks ramp up and memory pools fill.
WARMUP = {False: 0, True: 5}
TF32_UNIT = 2.0 ** -11  # TF32 keeps 10 mantissa bits
TF32X3_UNIT = 2.0 ** -21

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
