"""The NumPy backend: vectorized reference for transposed convolution and SGD.

Forward (per group g, as one BLAS product plus a col2im scatter):

    cols[g] (C_out/g·∏k, N·∏in) = weight[g]ᵀ (C_out/g·∏k, C_in/g) @ x[g] (C_in/g, N·∏in)
    y[n, co, i·stride + k·dilation - padding] += cols[g][(co, k), (n, i)]     for every tap k

(With one input channel per group, as in depthwise layers, a tap's block is just x times one
weight per output channel, and no column buffer is built.) The scatter is a Python loop over the
∏k kernel taps only; each tap adds a whole block (no loops over batch, channels or pixels): the
inputs whose products with that tap land inside the output (the geometry's ``tap_reach``) go to a
stride-spaced comb of the output itself. Nothing is computed for the padded canvas around it: x is
first cut to the inputs that reach the output at all, so work and memory follow the output and
the taps that reach it, even where a huge padding crops almost everything away. Where the
innermost stride is large, a comb wastes most of every cache line it touches, so there the target
is laid out by stride phase instead: writing k·dilation = m·stride + r, tap k sends input i to
canvas position (i + m)·stride + r, so in a (phase r, q) layout of the stride-aligned window around
the output each tap's block is a contiguous run of phase r, and one transpose at the end
interleaves the phases (measured: FCN's stride 8 forward 1.8× faster; stride 2 a little slower, so
it keeps the combs). Backward is the adjoint: grad_output in the same layout, one im2col gather per
tap into the same ``cols`` layout (zeros for the pairs that land outside the output), then

    grad_input[g]  = weight[g] (C_in/g, C_out/g·∏k) @ cols[g]
    grad_weight[g] = x[g] (C_in/g, N·∏in) @ cols[g]ᵀ

float16 and bfloat16 are computed in float32 and rounded once at the end. The column buffer (C_out·∏k·N·∏in
elements) is built for a slice of the batch at a time so that it stays under ``COLUMN_BUDGET``
elements — the peak extra memory is about that plus the output.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .._geometry import ConvTransposeGeometry
from .._dtypes import compute_dtype

# Elements of the column buffer per batch slice (2**25 float32 = 128 MiB).
COLUMN_BUDGET = 1 << 25




def _batch_slices(geom: ConvTransposeGeometry, positions: int):
    """Batch slices whose column buffer (``positions`` input positions per sample) fits
    COLUMN_BUDGET (at least one sample each)."""
    per_sample = geom.out_channels * geom.taps * positions
    step = max(1, COLUMN_BUDGET // max(per_sample, 1))
    if geom.batch == 0:
        return [slice(0, 0)]
    return [slice(start, min(start + step, geom.batch)) for start in range(0, geom.batch, step)]


def tap_windows(geom: ConvTransposeGeometry):
    """For each kernel tap (multi-index), the strided window of the uncropped output it writes
    (the textbook col2im over the padded canvas; the benchmark's Chainer baseline uses it)."""
    for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
        yield tap, tuple(
            slice(k * d, k * d + s * (i - 1) + 1, s)
            for k, d, s, i in zip(tap, geom.dilation, geom.stride, geom.in_size)
        )


def crop(geom: ConvTransposeGeometry):
    """The output's place inside the uncropped scatter target of :func:`tap_windows`."""
    return tuple(slice(p, p + o) for p, o in zip(geom.padding, geom.out_size))


# Innermost stride from which the scatter/gather buffer is laid out by stride phase (see above).
PHASE_LAYOUT_MIN_STRIDE = 4


def _reaching_taps(geom: ConvTransposeGeometry):
    """Each kernel tap that reaches the output, with per spatial dim the inputs ``(low, high)``
    whose products with it land there."""
    for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
        ranges = tuple(geom.tap_reach(dim, k) for dim, k in enumerate(tap))
        if all(low < high for low, high in ranges):
            yield tap, ranges


def _output_comb(geom: ConvTransposeGeometry, tap, ranges):
    """The output positions that inputs ``ranges`` meet through ``tap``: one strided slice per dim."""
    comb = []
    for dim, (k, (low, high)) in enumerate(zip(tap, ranges)):
        first, s = geom.output_position(dim, low, k), geom.stride[dim]
        comb.append(slice(first, first + s * (high - low - 1) + 1, s))
    return tuple(comb)


def _outside(window, size):
    """Disjoint boxes (tuples of slices) covering the cells of a ``size`` box outside ``window``
    (a tuple of unit-step slices inside it)."""
    for j, (w, n) in enumerate(zip(window, size)):
        inside_before, all_after = window[:j], (slice(None),) * (len(size) - j - 1)
        if w.start > 0:
            yield inside_before + (slice(0, w.start),) + all_after
        if w.stop < n:
            yield inside_before + (slice(w.stop, n),) + all_after


class _TapPlan:
    """Where each kernel tap's products go, visiting only the (input, tap) pairs that land in the
    output, so that memory and work follow the output and the taps that reach it, never the padded
    canvas (with a padding of 10¹¹ the canvas would not fit in memory; the output may hold 3 values).

    ``reach``: per dim, the slice of inputs that reach the output at all (x is cut to it first);
    ``reach_size`` its length. The target buffer, (n, G, C_out/G, *shape), is the output itself
    (stride-spaced combs), or, where the innermost stride is at least PHASE_LAYOUT_MIN_STRIDE and
    no stride exceeds its output size, a stride-phase-major layout of the stride-aligned window
    around the output (at most output + 2·stride per dim). ``taps``: for each tap that reaches
    the output, its (tap, input window inside the reach, block in the target, boxes of the reach
    outside the input window); ``idle_taps``: the taps that reach nothing.
    """

    def __init__(self, geom: ConvTransposeGeometry):
        self.ndim = geom.ndim
        reaching = [geom.reaching_inputs(dim) for dim in range(geom.ndim)]
        self.reach = tuple(slice(low, high) for low, high in reaching)
        self.reach_size = tuple(high - low for low, high in reaching)
        self.whole_input = self.reach_size == geom.in_size
        self.phased = geom.stride[-1] >= PHASE_LAYOUT_MIN_STRIDE and all(
            s <= o for s, o in zip(geom.stride, geom.out_size)
        )
        if self.phased:
            # The window starts at the multiple of the stride at or below the output's first
            # position: canvas position (q + first_row)·stride + r is buffer cell (r, q).
            first_row = tuple(p // s for p, s in zip(geom.padding, geom.stride))
            counts = tuple(-(-(p + o) // s) - f for p, o, s, f in
                           zip(geom.padding, geom.out_size, geom.stride, first_row))
            self.shape = geom.stride + counts
            self._extent = tuple(c * s for c, s in zip(counts, geom.stride))
            self._split = tuple(a for c, s in zip(counts, geom.stride) for a in (c, s))
            self._crop = tuple(slice(p % s, p % s + o) for p, s, o in
                               zip(geom.padding, geom.stride, geom.out_size))
        else:
            self.shape = geom.out_size
        self.taps, self.idle_taps = [], []
        reaching_taps = dict(_reaching_taps(geom))
        for tap in itertools.product(*(range(k) for k in geom.kernel_size)):
            ranges = reaching_taps.get(tap)
            if ranges is None:
                self.idle_taps.append(tap)
                continue
            window = tuple(slice(low - r.start, high - r.start) for (low, high), r in zip(ranges, self.reach))
            if self.phased:
                shifts = [divmod(k * d, s) for k, d, s in zip(tap, geom.dilation, geom.stride)]
                block = tuple(r for _, r in shifts) + tuple(
                    slice(low + m - f, high + m - f)
                    for (m, _), (low, high), f in zip(shifts, ranges, first_row)
                )
            else:
                block = _output_comb(geom, tap, ranges)
            self.taps.append((tap, window, block, tuple(_outside(window, self.reach_size))))

    def to_output(self, target):
        """(n, G, c, *shape) target -> (n, G, c, *out_size), a view (a copy's view when phased)."""
        if not self.phased:
            return target
        nd = self.ndim
        axes = (0, 1, 2) + tuple(a for j in range(nd) for a in (3 + nd + j, 3 + j))
        full = target.transpose(axes).reshape(target.shape[:3] + self._extent)
        return full[(Ellipsis,) + self._crop]

    def from_output(self, grad_output, dtype):
        """(n, G, c, *out_size) -> the target's layout (grad_output itself when not phased)."""
        if not self.phased:
            return grad_output
        nd = self.ndim
        # Cells outside the output are never read (the taps' blocks only cover pairs that land
        # inside it); zeros keep them harmless all the same.
        full = np.zeros(grad_output.shape[:3] + self._extent, dtype=dtype)
        full[(Ellipsis,) + self._crop] = grad_output
        axes = (0, 1, 2) + tuple(4 + 2 * j for j in range(nd)) + tuple(3 + 2 * j for j in range(nd))
        return np.ascontiguousarray(full.reshape(full.shape[:3] + self._split).transpose(axes))


@functools.lru_cache(maxsize=256)
def _tap_plan(geom: ConvTransposeGeometry) -> _TapPlan:
    return _TapPlan(geom)


def _grouped_columns_of_input(x, geom, dtype):
    """x (n, C_in, *spatial) -> (G, C_in/G, n·∏spatial) in ``dtype``, the right operand of the BLAS products."""
    n = x.shape[0]
    positions = int(np.prod(x.shape[2:]))
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

    def forward(self, x, weight, bias, geom: ConvTransposeGeometry, algorithm="auto", precision="fp32"):
        # One computation serves every algorithm and precision: BLAS in the input's dtype (float32
        # for float16), never TF32, whatever the kernels would do.
        dtype = compute_dtype(x.dtype)
        G, cout_g = geom.groups, geom.out_channels_per_group
        plan = _tap_plan(geom)
        if not plan.whole_input:
            x = x[(slice(None), slice(None)) + plan.reach]
        if geom.in_channels_per_group > 1:
            # (G, C_out/G·∏k, C_in/G), contiguous: BLAS is much slower on the transposed view.
            weight_t = np.ascontiguousarray(weight.astype(dtype, copy=False).reshape(
                G, geom.in_channels_per_group, cout_g * geom.taps
            ).transpose(0, 2, 1))
        target = np.zeros((geom.batch, G, cout_g) + plan.shape, dtype=dtype)
        for batch in _batch_slices(geom, math.prod(plan.reach_size)):
            n = batch.stop - batch.start
            out = target[batch]
            if geom.in_channels_per_group == 1:
                # Depthwise-like: a tap's block is x times one weight per output channel, so no
                # column buffer (measured 2× faster than building one by outer product).
                x_g = x[batch].astype(dtype, copy=False).reshape((n, G, 1) + plan.reach_size)
                w_g = weight.astype(dtype, copy=False).reshape((1, G, cout_g) + geom.kernel_size)
                product = np.empty((n, G, cout_g) + plan.reach_size, dtype=dtype)
                for tap, window, block, _ in plan.taps:
                    w_tap = w_g[(Ellipsis,) + tap].reshape((1, G, cout_g) + (1,) * geom.ndim)
                    np.multiply(x_g, w_tap, out=product)
                    out[(Ellipsis,) + block] += product[(Ellipsis,) + window]
                continue
            cols = np.matmul(weight_t, _grouped_columns_of_input(x[batch], geom, dtype))
            # (G, C_out/G, *k, n, *reach) -> per tap a (n, G, C_out/G, *reach) block
            cols = cols.reshape((G, cout_g) + geom.kernel_size + (n,) + plan.reach_size)
            cols = np.moveaxis(cols, 2 + geom.ndim, 0)
            for tap, window, block, _ in plan.taps:
                out[(Ellipsis,) + block] += cols[(slice(None),) * 3 + tap + window]
        y = plan.to_output(target).reshape(geom.output_shape)
        if bias is not None:
            y += bias.astype(dtype, copy=False).reshape((-1,) + (1,) * geom.ndim)
        return np.ascontiguousarray(y, dtype=x.dtype)

    def backward(self, grad_output, x, weight, geom: ConvTransposeGeometry, need_bias: bool, algorithm="auto",
                 precision="fp32"):
        # NCHW whatever its format: the sums then add in one order, so every gradient is bitwise
        # independent of grad_output's layout
        grad_output = np.ascontiguousarray(grad_output)
        dtype = compute_dtype(x.dtype)
        grad_bias = None
        if need_bias:
            axes = (0,) + tuple(range(2, 2 + geom.ndim))
            grad_bias = grad_output.sum(axis=axes, dtype=dtype).astype(x.dtype, copy=False)
        if not (np.isfinite(x).all() and np.isfinite(weight).all()):
            # The fast path multiplies x and weight by the zeros standing for the pairs that land
            # outside the output, and a NaN or inf there would leak into gradients it does not
            # touch; this path visits only the (input, tap) pairs that land inside the output.
            grad_input, grad_weight = self._backward_by_taps(grad_output, x, weight, geom, dtype)
            return grad_input, grad_weight, grad_bias
        G, cin_g, cout_g = geom.groups, geom.in_channels_per_group, geom.out_channels_per_group
        weight_g = weight.astype(dtype, copy=False).reshape(G, cin_g, cout_g * geom.taps)
        plan = _tap_plan(geom)
        # Inputs outside the reach meet only pairs that land outside the output: zero gradient.
        grad_input = (np.empty if plan.whole_input else np.zeros)(geom.input_shape, dtype=x.dtype)
        grad_input_reach = grad_input[(slice(None), slice(None)) + plan.reach]
        x_reach = x[(slice(None), slice(None)) + plan.reach]
        grad_weight = np.zeros((G, cin_g, cout_g * geom.taps), dtype=dtype)
        positions = math.prod(plan.reach_size)
        for batch in _batch_slices(geom, positions):
            n = batch.stop - batch.start
            source = plan.from_output(
                grad_output[batch].reshape((n, G, cout_g) + geom.out_size), dtype
            )
            # im2col: per tap, the grad_output values its in-range inputs met; zeros elsewhere.
            cols = np.empty((G, cout_g) + geom.kernel_size + (n,) + plan.reach_size, dtype=dtype)
            cols_by_tap = np.moveaxis(cols, 2 + geom.ndim, 0)  # (n, G, C_out/G, *k, *reach) view
            for tap in plan.idle_taps:
                cols_by_tap[(slice(None),) * 3 + tap] = 0
            for tap, window, block, outside in plan.taps:
                at_tap = (slice(None),) * 3 + tap
                cols_by_tap[at_tap + window] = source[(Ellipsis,) + block]
                for box in outside:
                    cols_by_tap[at_tap + box] = 0
            cols = cols.reshape(G, cout_g * geom.taps, n * positions)
            grad_input_g = np.matmul(weight_g, cols).reshape((G, cin_g, n) + plan.reach_size)
            grad_input_reach[batch] = np.moveaxis(grad_input_g, 2, 0).reshape(
                (n, geom.in_channels) + plan.reach_size
            )
            x_cols = _grouped_columns_of_input(x_reach[batch], geom, dtype)
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
        for tap, ranges in _reaching_taps(geom):
            in_window = tuple(slice(low, high) for low, high in ranges)
            x_win = x_g[(Ellipsis,) + in_window]
            gy_win = gy_g[(Ellipsis,) + _output_comb(geom, tap, ranges)]
            w_tap = w_g[(Ellipsis,) + tap]
            grad_input[(Ellipsis,) + in_window] += np.einsum(
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

        float16 and bfloat16 parameters are updated in float32 math; ``momentum_buffer`` (same shape, in the
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
