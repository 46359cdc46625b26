"""The NumPy backend: vectorized reference for transposed convolution and SGD.

Forward (per group g, as one BLAS product plus a col2im scatter):

    cols[g] (C_out/g·∏k, N·∏in) = weight[g]ᵀ (C_out/g·∏k, C_in/g) @ x[g] (C_in/g, N·∏in)
    y[n, co, i·stride + k·dilation - padding] += cols[g][(co, k), (n, i)]     for every tap k

(With one input channel per group, as in depthwise layers, a tap's block is just x times one
weight per output channel, and no column buffer is built.) The scatter is a Python loop over the
∏k kernel taps only; each tap adds a whole block (no loops
over batch, channels or pixels): a stride-spaced comb of the uncropped output. Where the innermost
stride is large, a comb wastes most of every cache line it touches, so there the target is laid out
by stride phase instead: writing k·dilation = m·stride + r, tap k sends input i to uncropped
position (i + m)·stride + r, so in a (phase r, q) layout each tap's block is a contiguous run
q ∈ [m, m + in) of phase r, and one transpose at the end interleaves the phases (measured: FCN's
stride 8 forward 1.8× faster; stride 2 a little slower, so it keeps the combs). Backward is the
adjoint: the zero-padded grad_output in the same layout, one im2col gather per tap into the same
``cols`` layout, then

    grad_input[g]  = weight[g] (C_in/g, C_out/g·∏k) @ cols[g]
    grad_weight[g] = x[g] (C_in/g, N·∏in) @ cols[g]ᵀ

float16 is computed in float32 and rounded once at the end. The column buffer (C_out·∏k·N·∏in
elements) is built for a slice of the batch at a time so that it stays under ``COLUMN_BUDGET``
elements — the peak extra memory is about that plus the padded output.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from .._geometry import ConvTransposeGeometry

# Elements of the column buffer per batch slice (2**25 float32 = 128 MiB).
COLUMN_BUDGET = 1 << 25


def compute_dtype(dtype) -> np.dtype:
    """float16 accumulates in float32; the other dtypes compute in themselves."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _batch_slices(geom: ConvTransposeGeometry):
    """Batch slices whose column buffer fits COLUMN_BUDGET (at least one sample each)."""
    per_sample = geom.out_channels * geom.taps * int(np.prod(geom.in_size))
    step = max(1, COLUMN_BUDGET // max(per_sample, 1))
    if geom.batch == 0:
        return [slice(0, 0)]
    return [slice(start, min(start + step, geom.batch)) for start in range(0, geom.batch, step)]


def tap_windows(geom: ConvTransposeGeometry):
    """For each kernel tap (multi-index), the strided window of the uncropped output it writes."""
    for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
        yield tap, tuple(
            slice(k * d, k * d + s * (i - 1) + 1, s)
            for k, d, s, i in zip(tap, geom.dilation, geom.stride, geom.in_size)
        )


def crop(geom: ConvTransposeGeometry):
    """The output's place inside the uncropped scatter target."""
    return tuple(slice(p, p + o) for p, o in zip(geom.padding, geom.out_size))


# Innermost stride from which the scatter/gather buffer is laid out by stride phase (see above).
PHASE_LAYOUT_MIN_STRIDE = 4


def _tap_phase_blocks(geom: ConvTransposeGeometry):
    """For each kernel tap, its block in a phase-major buffer (…, r_1..r_d, q_1..q_d): phase
    r = (k·dilation) mod stride and the run q ∈ [m, m + in) with m = (k·dilation) div stride."""
    for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
        shifts = [divmod(k * d, s) for k, d, s in zip(tap, geom.dilation, geom.stride)]
        yield tap, tuple(r for _, r in shifts) + tuple(
            slice(m, m + i) for (m, _), i in zip(shifts, geom.in_size)
        )


class _TapLayout:
    """The buffer the forward scatters into (and the backward gathers from), (n, G, C_out/G, *shape),
    with each tap's block in it: the uncropped output itself with stride-spaced combs, or, where the
    innermost stride is at least PHASE_LAYOUT_MIN_STRIDE, a stride-phase-major layout."""

    def __init__(self, geom: ConvTransposeGeometry):
        self.ndim = geom.ndim
        self.phased = geom.stride[-1] >= PHASE_LAYOUT_MIN_STRIDE
        if self.phased:
            counts = tuple(-(-f // s) for f, s in zip(geom.full_extent(), geom.stride))
            self.extent = tuple(c * s for c, s in zip(counts, geom.stride))
            self.shape = geom.stride + counts
            self._split = tuple(a for c, s in zip(counts, geom.stride) for a in (c, s))
            self.blocks = list(_tap_phase_blocks(geom))
        else:
            self.extent = self.shape = geom.full_extent()
            self.blocks = list(tap_windows(geom))

    def to_uncropped(self, buffer):
        """(n, G, c, *shape) -> (n, G, c, *extent), the uncropped output (a copy when phased)."""
        if not self.phased:
            return buffer
        nd = self.ndim
        axes = (0, 1, 2) + tuple(a for j in range(nd) for a in (3 + nd + j, 3 + j))
        return buffer.transpose(axes).reshape(buffer.shape[:3] + self.extent)

    def from_uncropped(self, full):
        """(n, G, c, *extent) -> (n, G, c, *shape), contiguous."""
        if not self.phased:
            return full
        nd = self.ndim
        axes = (0, 1, 2) + tuple(4 + 2 * j for j in range(nd)) + tuple(3 + 2 * j for j in range(nd))
        return np.ascontiguousarray(full.reshape(full.shape[:3] + self._split).transpose(axes))


@functools.lru_cache(maxsize=256)
def _tap_layout(geom: ConvTransposeGeometry) -> _TapLayout:
    return _TapLayout(geom)


def _grouped_columns_of_input(x, geom, dtype):
    """x (n, C_in, *in) -> (G, C_in/G, n·∏in) in ``dtype``, the right operand of the BLAS products."""
    n = x.shape[0]
    positions = int(np.prod(geom.in_size))
    grouped = x.reshape((n, geom.groups, geom.in_channels_per_group, positions))
    out = np.empty(
        (geom.groups, geom.in_channels_per_group, n, grouped.shape[-1]), dtype=dtype
    )
    out[...] = grouped.transpose(1, 2, 0, 3)
    return out.reshape(geom.groups, geom.in_channels_per_group, n * positions)


class NumpyBackend:
    name = "numpy"
    xp = np

    def check_array(self, array, arg):
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"{arg} must be a numpy.ndarray for the numpy backend, got {type(array).__name__}"
            )

    def forward(self, x, weight, bias, geom: ConvTransposeGeometry, algorithm="gather"):
        # One algorithm serves both names: the result does not depend on the order of the adds here.
        dtype = compute_dtype(x.dtype)
        G, cout_g = geom.groups, geom.out_channels_per_group
        if geom.in_channels_per_group > 1:
            # (G, C_out/G·∏k, C_in/G), contiguous: BLAS is much slower on the transposed view.
            weight_t = np.ascontiguousarray(weight.astype(dtype, copy=False).reshape(
                G, geom.in_channels_per_group, cout_g * geom.taps
            ).transpose(0, 2, 1))
        layout = _tap_layout(geom)
        target = np.zeros((geom.batch, G, cout_g) + layout.shape, dtype=dtype)
        for batch in _batch_slices(geom):
            n = batch.stop - batch.start
            out = target[batch]
            if geom.in_channels_per_group == 1:
                # Depthwise-like: a tap's block is x times one weight per output channel, so no
                # column buffer (measured 2× faster than building one by outer product).
                x_g = x[batch].astype(dtype, copy=False).reshape((n, G, 1) + geom.in_size)
                w_g = weight.astype(dtype, copy=False).reshape((1, G, cout_g) + geom.kernel_size)
                product = np.empty((n, G, cout_g) + geom.in_size, dtype=dtype)
                for tap, block in layout.blocks:
                    np.multiply(x_g, w_g[(Ellipsis,) + tap].reshape((1, G, cout_g) + (1,) * geom.ndim),
                                out=product)
                    out[(Ellipsis,) + block] += product
                continue
            cols = np.matmul(weight_t, _grouped_columns_of_input(x[batch], geom, dtype))
            # (G, C_out/G, *k, n, *in) -> per tap a (n, G, C_out/G, *in) block
            cols = cols.reshape((G, cout_g) + geom.kernel_size + (n,) + geom.in_size)
            cols = np.moveaxis(cols, 2 + geom.ndim, 0)
            for tap, block in layout.blocks:
                out[(Ellipsis,) + block] += cols[(slice(None),) * 3 + tap]
        full = layout.to_uncropped(target).reshape((geom.batch, geom.out_channels) + layout.extent)
        y = full[(Ellipsis,) + crop(geom)]
        if bias is not None:
            y = y + bias.astype(dtype, copy=False).reshape((-1,) + (1,) * geom.ndim)
        return np.ascontiguousarray(y, dtype=x.dtype)

    def backward(self, grad_output, x, weight, geom: ConvTransposeGeometry, need_bias: bool):
        dtype = compute_dtype(x.dtype)
        grad_bias = None
        if need_bias:
            axes = (0,) + tuple(range(2, 2 + geom.ndim))
            grad_bias = grad_output.sum(axis=axes, dtype=dtype).astype(x.dtype, copy=False)
        if not (np.isfinite(x).all() and np.isfinite(weight).all()):
            # The fast path multiplies x and weight by the zeros padding grad_output, and a NaN or
            # inf there would leak into gradients it does not touch; this path visits only the
            # (input, tap) pairs that land inside the output.
            grad_input, grad_weight = self._backward_by_taps(grad_output, x, weight, geom, dtype)
            return grad_input, grad_weight, grad_bias
        G, cin_g, cout_g = geom.groups, geom.in_channels_per_group, geom.out_channels_per_group
        weight_g = weight.astype(dtype, copy=False).reshape(G, cin_g, cout_g * geom.taps)
        grad_input = np.empty(geom.input_shape, dtype=x.dtype)
        grad_weight = np.zeros((G, cin_g, cout_g * geom.taps), dtype=dtype)
        layout = _tap_layout(geom)
        for batch in _batch_slices(geom):
            n = batch.stop - batch.start
            # Zero-padded grad_output, in the scatter's layout, so every tap reads a full block.
            padded = np.zeros((n, G, cout_g) + layout.extent, dtype=dtype)
            padded[(Ellipsis,) + crop(geom)] = grad_output[batch].reshape(
                (n, G, cout_g) + geom.out_size
            )
            source = layout.from_uncropped(padded)
            cols = np.empty((G, cout_g) + geom.kernel_size + (n,) + geom.in_size, dtype=dtype)
            cols_by_tap = np.moveaxis(cols, 2 + geom.ndim, 0)  # (n, G, C_out/G, *k, *in) view
            for tap, block in layout.blocks:
                cols_by_tap[(slice(None),) * 3 + tap] = source[(Ellipsis,) + block]
            cols = cols.reshape(G, cout_g * geom.taps, n * int(np.prod(geom.in_size)))
            grad_input_g = np.matmul(weight_g, cols).reshape((G, cin_g, n) + geom.in_size)
            grad_input[batch] = np.moveaxis(grad_input_g, 2, 0).reshape(
                (n, geom.in_channels) + geom.in_size
            )
            x_cols = _grouped_columns_of_input(x[batch], geom, dtype)
            grad_weight += np.matmul(x_cols, cols.transpose(0, 2, 1))
        grad_weight = grad_weight.reshape(geom.weight_shape).astype(x.dtype, copy=False)
        return grad_input, grad_weight, grad_bias

    @staticmethod
    def _backward_by_taps(grad_output, x, weight, geom, dtype):
        """grad_input and grad_weight tap by tap, over each tap's in-range input positions only."""
        n, G = geom.batch, geom.groups
        cin_g, cout_g = geom.in_channels_per_group, geom.out_channels_per_group
        x_g = x.astype(dtype, copy=False).reshape((n, G, cin_g) + geom.in_size)
        gy_g = grad_output.astype(dtype, copy=False).reshape((n, G, cout_g) + geom.out_size)
        w_g = weight.astype(dtype, copy=False).reshape((G, cin_g, cout_g) + geom.kernel_size)
        grad_input = np.zeros((n, G, cin_g) + geom.in_size, dtype=dtype)
        grad_weight = np.zeros((G, cin_g, cout_g) + geom.kernel_size, dtype=dtype)
        spatial = "".join("uvw"[: geom.ndim])
        for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
            in_window, out_window = [], []
            for k, s, d, p, i, o in zip(tap, geom.stride, geom.dilation, geom.padding,
                                        geom.in_size, geom.out_size):
                low = max(0, -(-(p - k * d) // s))
                high = min(i, (o - 1 + p - k * d) // s + 1)
                if low >= high:
                    break
                first = low * s + k * d - p
                in_window.append(slice(low, high))
                out_window.append(slice(first, first + s * (high - low - 1) + 1, s))
            else:
                x_win = x_g[(Ellipsis,) + tuple(in_window)]
                gy_win = gy_g[(Ellipsis,) + tuple(out_window)]
                w_tap = w_g[(Ellipsis,) + tap]
                grad_input[(Ellipsis,) + tuple(in_window)] += np.einsum(
                    f"gcd,ngd{spatial}->ngc{spatial}", w_tap, gy_win, optimize=True)
                grad_weight[(Ellipsis,) + tap] = np.einsum(
                    f"ngc{spatial},ngd{spatial}->gcd", x_win, gy_win, optimize=True)
        return (grad_input.reshape(geom.input_shape).astype(x.dtype, copy=False),
                grad_weight.reshape(geom.weight_shape).astype(x.dtype, copy=False))

    def asarray(self, array):
        """``array`` (NumPy, or CuPy copied to the host) as a NumPy array."""
        if not isinstance(array, np.ndarray) and hasattr(array, "get"):
            array = array.get()
        return np.asarray(array)

    def momentum_buffer_for(self, param):
        return np.empty(param.shape, dtype=compute_dtype(param.dtype))

    def sgd_step(self, param, grad, momentum_buffer, hyper, first_step):
        """One torch.optim.SGD update of ``param`` in place (see :class:`cudeconv.SGD`).

        float16 parameters are updated in float32 math; ``momentum_buffer`` (same shape, in the
        compute dtype) is updated in place when momentum is used.
        """
        dtype = compute_dtype(param.dtype)
        update = grad.astype(dtype, copy=True)
        if hyper.maximize:
            np.negative(update, out=update)
        param_c = param.astype(dtype, copy=False)
        if hyper.weight_decay != 0:
            update += dtype.type(hyper.weight_decay) * param_c
        if hyper.momentum != 0:
            if first_step:
                momentum_buffer[...] = update
            else:
                momentum_buffer *= dtype.type(hyper.momentum)
                momentum_buffer += dtype.type(1 - hyper.dampening) * update
            if hyper.nesterov:
                update += dtype.type(hyper.momentum) * momentum_buffer
            else:
                update = momentum_buffer
        param[...] = param_c - dtype.type(hyper.lr) * update
