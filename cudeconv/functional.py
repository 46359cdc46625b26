"""Functional API: ``conv_transpose{1,2,3}d`` and their backward passes (PyTorch's semantics).

Shapes (d = 1, 2, 3 spatial dims)::

    x           (N, C_in, *in_size)
    weight      (C_in, C_out // groups, *kernel_size)
    bias        (C_out,) or None
    y           (N, C_out, *out_size)
    out_size[i] = (in_size[i] - 1) * stride[i] - 2 * padding[i]
                  + dilation[i] * (kernel_size[i] - 1) + output_padding[i] + 1

``stride``, ``padding``, ``output_padding`` and ``dilation`` are ints or d-tuples. ``backend=None``
computes where the arrays live (NumPy → "numpy", CuPy → "cuda"); "emulator" runs the CUDA kernels on
the CPU. Arrays of other frameworks (``__dlpack__``, ``__cuda_array_interface__``: PyTorch, JAX, ...)
are taken without copying and results come back in their kind (:mod:`cudeconv._interop`). Inputs
are never modified; outputs are fresh arrays of the input's dtype. The forward's y and the
backward's grad_input take x's memory format: channels-last when x's strides put C innermost
(``torch.channels_last`` / ``channels_last_3d`` as in PyTorch, and an (N, C, L) array over (N, L, C)
memory), else C-contiguous (:mod:`cudeconv._memory_format`); grad_weight is C-contiguous.
"""
from __future__ import annotations

from . import autotune as _autotune
from . import backends
from ._geometry import check_float_dtypes, make_geometry
from ._precision import ALGORITHMS, BACKWARD_ALGORITHMS, check_algorithm, resolve_precision
from ._interop import take_arrays
from ._memory_format import memory_format_of, to_memory_format

__all__ = [
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose1d_backward",
    "conv_transpose2d_backward",
    "conv_transpose3d_backward",
    "forward",
    "backward",
    "ALGORITHMS",
    "BACKWARD_ALGORITHMS",
]



def forward(ndim, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
            dilation=1, *, backend=None, algorithm="auto", precision=None, autotune=None):
    """Transposed convolution over ``ndim`` spatial dims; see the module docstring for shapes.

    As in PyTorch, an unbatched input ``(C_in, *in_size)`` gives an unbatched output.

    ``algorithm`` picks the CUDA forward kernel: "auto" (default: the implicit GEMM by stride
    phase where the layer is wide enough for it, else "gather"; see docs/kernels.md), "gemm" (the
    implicit GEMM, or a ValueError saying why it cannot run), "gather" (the direct kernel: each
    output element sums the input/tap pairs that reach it) — all three without atomics and bitwise
    reproducible — or "scatter" (every input element scatters x·w over its footprint with atomic
    adds; the order of the adds, and so the last bits of the result, may vary from run to run; in
    float16 every atomic add rounds to half, so its error is a few half ulps larger).
    ``precision`` ("fp32", "tf32", "tf32x3"; None: :func:`cudeconv.get_default_precision`) is the
    fastest arithmetic float32 may use on the GPU (:mod:`cudeconv._precision`). The NumPy backend
    computes the same, exact values whatever the algorithm and precision. ``autotune`` (None: the
    global setting, :func:`cudeconv.set_autotune`) times the kernels "auto" may run on the first
    call of a shape and keeps the fastest (:mod:`cudeconv.autotune`).
    """
    (x, weight, bias), give_back = take_arrays(input=x, weight=weight, bias=bias,
                                                 required=("input", "weight"))
    unbatched = x.ndim == ndim + 1
    memory_format = memory_format_of(x, unbatched=unbatched)
    if unbatched:
        x = x[None]
    geom = make_geometry(
        ndim, x.shape, weight.shape, stride, padding, output_padding,
        groups, dilation, bias_shape=None if bias is None else bias.shape,
    )
    check_float_dtypes(input=x, weight=weight, bias=bias)
    check_algorithm(algorithm)
    precision = resolve_precision(precision)
    _autotune.check_autotune(autotune)
    impl = backends.resolve(backend, {"input": x, "weight": weight, "bias": bias})
    y = to_memory_format(_autotune.forward(impl, x, weight, bias, geom, algorithm, precision, memory_format, autotune),
                         memory_format)
    return give_back(y[0] if unbatched else y)


def backward(ndim, grad_output, x, weight, stride=1, padding=0, output_padding=0, groups=1,
             dilation=1, *, bias=True, backend=None, algorithm="auto", precision=None, autotune=None):
    """Gradients of a transposed convolution: ``(grad_input, grad_weight, grad_bias)``.

    ``grad_output`` has the forward's output shape; ``grad_bias`` is None when ``bias`` is False.
    An unbatched input ``(C_in, *in_size)`` takes an unbatched grad_output. ``algorithm`` ("auto",
    "gemm", "gather") and ``precision`` choose the kernels as in :func:`forward`: the implicit
    GEMMs for grad_input and grad_weight (split K) where the heuristic takes them, and grad_bias over
    slabs of the batch; "gather" takes the direct kernels for all three (docs/kernels.md).
    ``autotune`` tunes grad_input and grad_weight as :func:`forward` does its pass.
    """
    (grad_output, x, weight), give_back = take_arrays(grad_output=grad_output, input=x, weight=weight,
                                                        required=("grad_output", "input", "weight"))
    unbatched = x.ndim == ndim + 1
    memory_format = memory_format_of(x, unbatched=unbatched)
    if unbatched:
        x = x[None]
        if grad_output.ndim == ndim + 1:
            grad_output = grad_output[None]
    geom = make_geometry(
        ndim, x.shape, weight.shape, stride, padding, output_padding,
        groups, dilation,
    )
    if tuple(grad_output.shape) != geom.output_shape:
        raise ValueError(
            f"grad_output must have the forward output's shape {geom.output_shape}, "
            f"got {tuple(grad_output.shape)}"
        )
    check_float_dtypes(grad_output=grad_output, input=x, weight=weight)
    check_algorithm(algorithm, BACKWARD_ALGORITHMS)
    precision = resolve_precision(precision)
    _autotune.check_autotune(autotune)
    impl = backends.resolve(backend, {"grad_output": grad_output, "input": x, "weight": weight})
    # grad_output in either format: the backends read a channels-last one in place where their
    # kernels can (a tensor-core GEMM's packed operand), else make it NCHW — the same values either way
    grad_input, grad_weight, grad_bias = _autotune.backward(impl, grad_output, x, weight, geom, bool(bias), algorithm,
                                                            precision, memory_format, autotune)
    grad_input = to_memory_format(grad_input, memory_format)
    return give_back(((grad_input[0] if unbatched else grad_input), grad_weight, grad_bias))


def _make_pair(ndim):
    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                       dilation=1, *, backend=None, algorithm="auto", precision=None, autotune=None):
        return forward(ndim, x, weight, bias, stride, padding, output_padding, groups, dilation,
                       backend=backend, algorithm=algorithm, precision=precision, autotune=autotune)

    def conv_transpose_backward(grad_output, x, weight, stride=1, padding=0, output_padding=0,
                                groups=1, dilation=1, *, bias=True, backend=None, algorithm="auto", precision=None,
                                autotune=None):
        return backward(ndim, grad_output, x, weight, stride, padding, output_padding, groups,
                        dilation, bias=bias, backend=backend, algorithm=algorithm, precision=precision,
                        autotune=autotune)

    spatial = {1: "L", 2: "H, W", 3: "D, H, W"}[ndim]
    conv_transpose.__name__ = conv_transpose.__qualname__ = f"conv_transpose{ndim}d"
    conv_transpose.__doc__ = f"""{ndim}-d transposed convolution (PyTorch's ``conv_transpose{ndim}d``).

    x (N, C_in, {spatial}), weight (C_in, C_out // groups, *kernel_size), bias (C_out,) or None
    -> y (N, C_out, *out_size) with out = (in - 1)*stride - 2*padding + dilation*(k - 1)
    + output_padding + 1 per spatial dim. ``backend``: None (infer from the arrays), "numpy",
    "cuda" or "emulator". ``algorithm``: "auto" (default), "gemm", "gather" (all deterministic)
    or "scatter" (atomics). ``precision``: "fp32", "tf32", "tf32x3" or None (the default
    precision), for float32 on the GPU. ``autotune``: None (the global setting), True or False.
    """
    conv_transpose_backward.__name__ = conv_transpose_backward.__qualname__ = (
        f"conv_transpose{ndim}d_backward"
    )
    conv_transpose_backward.__doc__ = f"""Gradients of :func:`conv_transpose{ndim}d`.

    Returns ``(grad_input, grad_weight, grad_bias)`` shaped like x, weight and (C_out,);
    grad_bias is None when ``bias`` is False. grad_output has the forward output's shape.
    ``algorithm`` ("auto", "gemm", "gather") and ``precision`` pick the gradients' kernels.
    """
    return conv_transpose, conv_transpose_backward


conv_transpose1d, conv_transpose1d_backward = _make_pair(1)
conv_transpose2d, conv_transpose2d_backward = _make_pair(2)
conv_transpose3d, conv_transpose3d_backward = _make_pair(3)
