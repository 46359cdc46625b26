"""Shape rules for transposed convolution: the one place every backend gets its sizes from.

A transposed convolution over ``d`` spatial dims (d = 1, 2, 3) maps

    x      (N, C_in, *in_size)
    weight (C_in, C_out // groups, *kernel_size)          # PyTorch's layout
    bias   (C_out,)

to ``y (N, C_out, *out_size)`` with, per spatial dim,

    out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1

Input element ``i`` meets kernel tap ``k`` at output position ``o = i * stride + k * dilation - padding``
(positions outside ``[0, out)`` are cropped away). ``output_padding`` only lengthens the output at the
far end, and must be smaller than ``stride`` or ``dilation`` (PyTorch's rule), so that it never adds
positions that the same output size could not have come from.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ._dtypes import FLOAT_DTYPES, NAMES as FLOAT_NAMES


def is_int(value) -> bool:
    """An integer scalar: Python or NumPy int, or a 0-d integer array — never a bool or a float."""
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def spatial_tuple(value, name: str, ndim: int) -> Tuple[int, ...]:
    """``value`` (an int, or a sequence of ``ndim`` ints) as a tuple of ``ndim`` Python ints.

    Integer NumPy arrays count as such, 0-d as an int and 1-d as a sequence (PyTorch's layers
    take them too); bool and float arrays do not.
    """
    if is_int(value):
        return (int(value),) * ndim
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(
                f"{name} must be an int or a sequence of {ndim} ints for a {ndim}-d transposed "
                f"convolution, got {value!r} (length {len(value)})"
            )
        if not all(is_int(v) for v in value):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")


def check_float_dtypes(**arrays) -> np.dtype:
    """The common floating dtype of the named arrays (None entries are skipped); TypeError otherwise."""
    dtypes = {name: np.dtype(a.dtype) for name, a in arrays.items() if a is not None}
    for name, dtype in dtypes.items():
        if dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {dtype}; cudeconv computes in {', '.join(FLOAT_NAMES)}"
            )
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name}={dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"dtypes must all be the same, got {listing}")
    return next(iter(dtypes.values()))


@dataclass(frozen=True)
class ConvTransposeGeometry:
    """Every size a transposed-convolution kernel or reference needs (spatial tuples have ``ndim`` entries)."""

    ndim: int
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    out_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    output_padding: Tuple[int, ...]
    dilation: Tuple[int, ...]

    @property
    def in_channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_channels_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.in_channels) + self.in_size

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.in_channels, self.out_channels_per_group) + self.kernel_size

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.out_channels) + self.out_size

    @property
    def taps(self) -> int:
        return math.prod(self.kernel_size)

    def full_extent(self) -> Tuple[int, ...]:
        """Per dim, the length of the uncropped scatter target: every ``i*stride + k*dilation`` plus the
        output_padding tail. The output is ``[padding, padding + out)`` of it."""
        return tuple(
            (i - 1) * s + d * (k - 1) + 1 + op
            for i, s, d, k, op in zip(
                self.in_size, self.stride, self.dilation, self.kernel_size, self.output_padding
            )
        )

    def output_position(self, dim: int, i: int, k: int) -> int:
        """Where input ``i`` and kernel tap ``k`` meet along spatial dim ``dim`` (may be outside the output)."""
        return i * self.stride[dim] + k * self.dilation[dim] - self.padding[dim]

    def tap_reach(self, dim: int, k: int) -> Tuple[int, int]:
        """The inputs ``[low, high)`` along spatial dim ``dim`` whose product with kernel tap ``k``
        lands inside the output; empty (``low >= high``) when none does."""
        s, shift = self.stride[dim], k * self.dilation[dim] - self.padding[dim]
        low = max(0, -(shift // s))  # ceil(-shift / s): the first i with i·s + shift >= 0
        high = min(self.in_size[dim], (self.out_size[dim] - 1 - shift) // s + 1)
        return low, high

    def reaching_inputs(self, dim: int) -> Tuple[int, int]:
        """The smallest range ``[low, high)`` along spatial dim ``dim`` holding every input that
        reaches the output through some tap; ``(0, 0)`` when none does. Inputs outside it only
        meet taps that land in the padding or beyond the output."""
        reaches = [r for r in (self.tap_reach(dim, k) for k in range(self.kernel_size[dim])) if r[0] < r[1]]
        if not reaches:
            return 0, 0
        return min(low for low, _ in reaches), max(high for _, high in reaches)

    def flops(self) -> int:
        """Useful floating-point operations of one pass: 2·N·C_in·(C_out/groups)·∏in·∏k."""
        return (
            2 * self.batch * self.in_channels * self.out_channels_per_group
            * math.prod(self.in_size) * self.taps
        )


def output_size(in_size, kernel_size, stride, padding, output_padding, dilation) -> Tuple[int, ...]:
    """PyTorch's output-size rule, per spatial dim (may be non-positive; callers check)."""
    return tuple(
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, k, s, p, op, d in zip(in_size, kernel_size, stride, padding, output_padding, dilation)
    )


def check_hyperparameters(ndim, stride, padding, output_padding, dilation):
    """Normalise and validate stride/padding/output_padding/dilation to ``ndim``-tuples."""
    stride = spatial_tuple(stride, "stride", ndim)
    padding = spatial_tuple(padding, "padding", ndim)
    output_padding = spatial_tuple(output_padding, "output_padding", ndim)
    dilation = spatial_tuple(dilation, "dilation", ndim)
    if any(s <= 0 for s in stride):
        raise ValueError(f"stride must be positive, got stride={stride}")
    if any(d <= 0 for d in dilation):
        raise ValueError(f"dilation must be positive, got dilation={dilation}")
    if any(p < 0 for p in padding):
        raise ValueError(f"padding must be non-negative, got padding={padding}")
    if any(op < 0 for op in output_padding):
        raise ValueError(f"output_padding must be non-negative, got output_padding={output_padding}")
    for op, s, d in zip(output_padding, stride, dilation):
        if not (op < s or op < d):
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation, got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
    return stride, padding, output_padding, dilation


def make_geometry(
    ndim: int,
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride,
    padding,
    output_padding,
    groups,
    dilation,
    bias_shape: Optional[Sequence[int]] = None,
    input_name: str = "input",
) -> ConvTransposeGeometry:
    """Validate a transposed convolution's arguments and compute its sizes.

    Raises ValueError/TypeError naming the offending argument and its value. Valid argument sets
    are remembered: a training loop calls this with the same arguments at every step, and the
    checks would otherwise cost more than a small layer's arithmetic.
    """
    args = (ndim, input_shape, weight_shape, stride, padding, output_padding, groups, dilation,
            bias_shape, input_name)
    # Keyed by repr, which tells 1 from True, 2 from 2.0 and np.int64(2): equal under ==, but
    # not all of them valid. Arrays are keyed by dtype and values, since their repr follows
    # NumPy's print options and may elide elements (the substring test keeps the usual call fast).
    key = repr(args)
    if "array(" in key:
        key = repr(tuple(_array_free(a) for a in args))
    geometry = _valid_geometries.get(key)
    if geometry is None:
        geometry = _make_geometry(*args)
        if len(_valid_geometries) >= 1024:
            _valid_geometries.clear()
        _valid_geometries[key] = geometry
    return geometry


_valid_geometries = {}


def _array_free(value):
    """``value`` with NumPy arrays (also inside tuples and lists) replaced by their dtype and values."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tolist())
    if isinstance(value, (tuple, list)) and any(isinstance(v, np.ndarray) for v in value):
        return (type(value).__name__,) + tuple(_array_free(v) for v in value)
    return value


def _make_geometry(ndim, input_shape, weight_shape, stride, padding, output_padding, groups,
                   dilation, bias_shape, input_name) -> ConvTransposeGeometry:
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if len(input_shape) != ndim + 2:
        raise ValueError(
            f"{input_name} must be {ndim + 2}-d (N, C_in, {', '.join('LHW'[3 - ndim:] if ndim < 3 else 'DHW')}) "
            f"for conv_transpose{ndim}d, got shape {input_shape}"
        )
    if len(weight_shape) != ndim + 2:
        raise ValueError(
            f"weight must be {ndim + 2}-d (C_in, C_out/groups, *kernel_size) for conv_transpose{ndim}d, "
            f"got shape {weight_shape}"
        )
    if not is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"groups must be positive, got groups={groups}")
    stride, padding, output_padding, dilation = check_hyperparameters(
        ndim, stride, padding, output_padding, dilation
    )
    batch, in_channels = input_shape[:2]
    in_size = input_shape[2:]
    kernel_size = weight_shape[2:]
    if weight_shape[0] != in_channels:
        raise ValueError(
            f"weight.shape[0] ({weight_shape[0]}) must equal the input's channels ({in_channels}); "
            f"got {input_name} shape {input_shape}, weight shape {weight_shape}"
        )
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({in_channels})")
    if any(k <= 0 for k in kernel_size) or weight_shape[1] <= 0:
        raise ValueError(f"weight shape {weight_shape} must have positive C_out/groups and kernel size")
    if any(i <= 0 for i in in_size) or in_channels <= 0:
        raise ValueError(f"{input_name} shape {input_shape} must have positive channels and spatial size")
    out_channels = weight_shape[1] * groups
    out_size = output_size(in_size, kernel_size, stride, padding, output_padding, dilation)
    if any(o <= 0 for o in out_size):
        raise ValueError(
            f"output size {out_size} is not positive: input size {in_size}, kernel_size {kernel_size}, "
            f"stride {stride}, padding {padding}, output_padding {output_padding}, dilation {dilation}"
        )
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},) (C_out), got {tuple(bias_shape)}")
    return ConvTransposeGeometry(
        ndim=ndim,
        batch=batch,
        in_channels=in_channels,
        out_channels=out_channels,
        groups=groups,
        in_size=tuple(in_size),
        kernel_size=tuple(kernel_size),
        out_size=out_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )


def output_padding_for(output_size_arg, ndim, in_size, kernel_size, stride, padding, dilation,
                       leading_dims=2):
    """The output_padding that yields the requested ``output_size`` (PyTorch's ``_output_padding``).

    ``output_size`` may list the spatial sizes only or the full shape (``leading_dims`` = 2 for
    (N, C, *spatial), 1 for an unbatched (C, *spatial)). Each spatial size must lie in
    ``[min, min + stride - 1]`` where ``min`` is the size with output_padding 0.
    """
    requested = tuple(output_size_arg)
    if len(requested) == ndim + leading_dims:
        requested = requested[leading_dims:]
    if len(requested) != ndim or not all(is_int(v) for v in requested):
        raise ValueError(
            f"output_size must have {ndim} or {ndim + leading_dims} ints, got {tuple(output_size_arg)!r}"
        )
    smallest = output_size(in_size, kernel_size, stride, padding, (0,) * ndim, dilation)
    result = []
    for want, low, s in zip(requested, smallest, stride):
        high = low + s - 1
        if not (low <= want <= high):
            raise ValueError(
                f"requested output_size {tuple(int(v) for v in requested)} is not in the valid range: "
                f"each size must lie between {smallest} and "
                f"{tuple(lo + st - 1 for lo, st in zip(smallest, stride))} for input size {tuple(in_size)}"
            )
        result.append(int(want) - low)
    return tuple(result)
