"""Layers: ``ConvTranspose{1,2,3}d`` with explicit forward/backward, and ``Parameter``.

A layer keeps its weight ``(C_in, C_out // groups, *kernel_size)`` and bias ``(C_out,)`` as
:class:`Parameter` objects on its backend (CuPy arrays for "cuda", NumPy arrays otherwise).
``forward`` caches the input for ``backward``; ``backward`` returns grad_input and *accumulates*
(+=) into ``weight.grad`` / ``bias.grad``, as PyTorch's autograd does.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import backends
from ._geometry import check_hyperparameters, output_padding_for, spatial_tuple
from .functional import ALGORITHMS, backward as _backward, forward as _forward


class Parameter:
    """A trainable array and its gradient (``grad`` is None until a backward pass sets it)."""

    def __init__(self, data):
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            raise TypeError(f"Parameter data must be an array, got {type(data).__name__}")
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self, set_to_none=True):
        if set_to_none:
            self.grad = None
        elif self.grad is not None:
            self.grad.fill(0)

    def accumulate_grad(self, grad):
        """``grad`` += the given gradient (the first gradient is stored as is)."""
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, grad={'set' if self.grad is not None else None})"


def _positive_int(value, name):
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {name}={value}")
    return int(value)


class _ConvTransposeNd:
    ndim = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, dtype="float32",
                 backend=None, seed=None, algorithm="gather"):
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.kernel_size = spatial_tuple(kernel_size, "kernel_size", self.ndim)
        if any(k <= 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be positive, got kernel_size={self.kernel_size}")
        self.stride, self.padding, self.output_padding, self.dilation = check_hyperparameters(
            self.ndim, stride, padding, output_padding, dilation
        )
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"dtype must be float16, float32 or float64, got {dtype!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.backend = backends.default_name() if backend is None else backends.check_name(backend)
        self._impl = backends.get(self.backend)

        # PyTorch's reset_parameters: kaiming_uniform_(a=sqrt(5)) gives bound
        # gain·sqrt(3/fan_in) = sqrt(2/(1+5))·sqrt(3/fan_in) = 1/sqrt(fan_in), with fan_in taken from
        # the weight tensor's dim 1 (C_out/groups) times the kernel; the bias uses the same bound.
        weight_shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        fan_in = weight_shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        rng = np.random.default_rng(seed)
        self.weight = Parameter(self._to_backend(rng.uniform(-bound, bound, weight_shape)))
        self.bias = (
            Parameter(self._to_backend(rng.uniform(-bound, bound, (self.out_channels,))))
            if bias else None
        )
        self._saved = None

    # -- arrays ---------------------------------------------------------------------------------
    def _to_backend(self, array):
        return self._impl.asarray(np.asarray(array).astype(self.dtype))

    def parameters(self):
        return [p for p in (self.weight, self.bias) if p is not None]

    def zero_grad(self, set_to_none=True):
        """Forget the accumulated gradients: set them to None (PyTorch's default), or with
        ``set_to_none=False`` fill them with zeros in place (keeps their memory, e.g. in a CUDA graph)."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def state_dict(self):
        """``{"weight": array, "bias": array}`` (bias only when the layer has one), copies."""
        state = {"weight": self.weight.data.copy()}
        if self.bias is not None:
            state["bias"] = self.bias.data.copy()
        return state

    def load_state_dict(self, state):
        """Load ``{"weight", "bias"}`` arrays (NumPy or CuPy, e.g. from a PyTorch state_dict)."""
        expected = {"weight"} | ({"bias"} if self.bias is not None else set())
        if set(state) != expected:
            raise ValueError(f"state_dict must have keys {sorted(expected)}, got {sorted(state)}")
        for name in sorted(expected):
            param = getattr(self, name)
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)}, the layer's {name} "
                    f"has shape {tuple(param.shape)}"
                )
            param.data = self._impl.asarray(value).astype(self.dtype, order="C", copy=True)

    def save(self, path):
        """Write the state_dict to an ``.npz`` file."""
        state = {
            k: (v.get() if hasattr(v, "get") else v) for k, v in self.state_dict().items()
        }
        np.savez(path, **state)

    def load(self, path):
        """Read an ``.npz`` written by :meth:`save` (never unpickles)."""
        with np.load(path, allow_pickle=False) as archive:
            self.load_state_dict({k: archive[k] for k in archive.files})

    # -- passes ---------------------------------------------------------------------------------
    def _output_padding(self, x, output_size):
        if output_size is None:
            return self.output_padding
        leading_dims = x.ndim - self.ndim
        return output_padding_for(
            output_size, self.ndim, tuple(x.shape[leading_dims:]), self.kernel_size, self.stride,
            self.padding, self.dilation, leading_dims,
        )

    def forward(self, x, output_size=None):
        """y = conv_transpose(x); ``output_size`` (spatial, or full N, C, *spatial) picks among the
        sizes a strided layer can produce, as in PyTorch. Caches x for :meth:`backward`."""
        if getattr(x, "ndim", None) not in (self.ndim + 1, self.ndim + 2):
            raise ValueError(
                f"input must be {self.ndim + 2}-d (N, C_in, *spatial) or {self.ndim + 1}-d "
                f"(C_in, *spatial), got shape {getattr(x, 'shape', type(x).__name__)}"
            )
        output_padding = self._output_padding(x, output_size)
        y = _forward(
            self.ndim, x, self.weight.data, None if self.bias is None else self.bias.data,
            self.stride, self.padding, output_padding, self.groups, self.dilation,
            backend=self.backend, algorithm=self.algorithm,
        )
        self._saved = (x, output_padding)
        return y

    __call__ = forward

    def backward(self, grad_output):
        """grad_input for the last forward's input; accumulates into weight.grad and bias.grad."""
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        x, output_padding = self._saved
        grad_input, grad_weight, grad_bias = _backward(
            self.ndim, grad_output, x, self.weight.data, self.stride, self.padding,
            output_padding, self.groups, self.dilation, bias=self.bias is not None,
            backend=self.backend,
        )
        self.weight.accumulate_grad(grad_weight)
        if self.bias is not None:
            self.bias.accumulate_grad(grad_bias)
        return grad_input

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
            f"groups={self.groups}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"dtype={self.dtype}, backend={self.backend!r}"
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution layer: x (N, C_in, L) -> (N, C_out, L_out)."""

    ndim = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution layer: x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    ndim = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution layer: x (N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out)."""

    ndim = 3
