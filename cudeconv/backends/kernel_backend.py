"""The launch layer shared, line for line, by the "cuda" and "emulator" backends.

Both run the kernels of ``kernels/*.cu``; they differ only in the array module (CuPy or NumPy)
and the module class (``cupy.RawModule`` or ``cudeconv.emulator.RawModule``). Everything else —
grid and block sizes, argument order and exact C scalar types, contiguity, output allocation —
is here, once.

On "cuda", launches go on CuPy's current stream and nothing here synchronizes with or copies to
the host, so a whole training step can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import numpy as np

from .._geometry import ConvTransposeGeometry
from .._loader import load_module

BLOCK = 256  # threads per block for every kernel (block reductions need a multiple of 32)
# Register tiles of the kernels (CHANNEL_TILE, TAP_TILE in kernels/deconv_common.cuh), passed to
# the compiler from here because the grids are sized from them.
CHANNEL_TILE = 4
TAP_TILE = 8
COMPILE_OPTIONS = (f"-DCHANNEL_TILE={CHANNEL_TILE}", f"-DTAP_TILE={TAP_TILE}")
INT32_MAX = 2**31 - 1
MAX_GRID_X = INT32_MAX
MAX_GRID_Y = 65535

_SUFFIX = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def geometry_args(geom: ConvTransposeGeometry):
    """The 22 int32 scalars of DECONV_GEOMETRY_PARAMS; fewer than 3 spatial dims are padded in
    front with size-1 dims (kernel 1, stride 1, padding 0, dilation 1)."""
    lead = 3 - geom.ndim

    def three(values, fill):
        return (fill,) * lead + tuple(values)

    values = (
        (geom.batch, geom.in_channels, geom.out_channels, geom.groups)
        + three(geom.in_size, 1) + three(geom.kernel_size, 1) + three(geom.out_size, 1)
        + three(geom.stride, 1) + three(geom.padding, 0) + three(geom.dilation, 1)
    )
    return tuple(np.int32(v) for v in values)


def check_index_limits(geom: ConvTransposeGeometry):
    """Refuse problems whose indices would overflow the kernels' 32-bit ints (see
    kernels/deconv_common.cuh): rows N·C, positions within a channel (plus a block's stride of
    threads), filter elements, and per dim every intermediate ``i·stride + k·dilation ± padding``."""
    limits = {
        "N·C (batch times channels)": geom.batch * max(geom.in_channels, geom.out_channels),
        "spatial size of one channel": max(math.prod(geom.in_size), math.prod(geom.out_size)) + BLOCK,
        "filter elements (C_in·C_out/groups·∏kernel_size)":
            geom.in_channels * geom.out_channels_per_group * geom.taps,
    }
    for dim, (i, k, o, s, p, d) in enumerate(zip(geom.in_size, geom.kernel_size, geom.out_size,
                                                 geom.stride, geom.padding, geom.dilation)):
        limits[f"(in-1)·stride + (k-1)·dilation + padding + out along spatial dim {dim}"] = (
            (i - 1) * s + (k - 1) * d + p + o
        )
    for what, value in limits.items():
        if value > INT32_MAX:
            raise ValueError(
                f"problem too large for the CUDA kernels' 32-bit indices: {what} is {value}, "
                f"above {INT32_MAX}"
            )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tiled_rows(geom: ConvTransposeGeometry, channels_per_group: int) -> int:
    """Rows (n, group, tile of CHANNEL_TILE channels) of the channel-tiled gather kernels."""
    return geom.batch * geom.groups * ceil_div(channels_per_group, CHANNEL_TILE)


def loop_blocks(count: int, threads_per_block: int, limit: int) -> int:
    """Blocks for a grid-stride loop over ``count`` items: enough for one item per thread, at most
    ``limit``, and few enough that an int32 index plus the grid's stride never overflows."""
    wanted = ceil_div(count, threads_per_block)
    headroom = max(1, (INT32_MAX - count) // threads_per_block)
    return max(1, min(wanted, limit, headroom))


def rows_grid(rows: int, positions: int):
    """Grid for a kernel looping over (rows × positions): x over positions, y over rows."""
    return (loop_blocks(positions, BLOCK, MAX_GRID_X), loop_blocks(rows, 1, MAX_GRID_Y), 1)


class KernelBackend:
    """Runs the library's CUDA kernels; ``xp`` is the array module, ``module_class`` the RawModule."""

    def __init__(self, name, xp, module_class, device_key):
        self.name = name
        self.xp = xp
        self._module_class = module_class
        self._device_key = device_key

    # -- arrays ---------------------------------------------------------------------------------
    def check_array(self, array, arg):
        if not isinstance(array, self.xp.ndarray):
            raise TypeError(
                f"{arg} must be a {self.xp.__name__}.ndarray for the {self.name!r} backend, "
                f"got {type(array).__module__}.{type(array).__name__}"
            )

    def asarray(self, array):
        """``array`` (NumPy or CuPy) as this backend's array type."""
        if self.xp is np and not isinstance(array, np.ndarray) and hasattr(array, "get"):
            array = array.get()
        return self.xp.asarray(array)

    def _output(self, shape, dtype):
        """A fresh array every element of which the launching kernel writes."""
        return self.xp.empty(shape, dtype=dtype)

    def momentum_buffer_for(self, param):
        dtype = np.float32 if param.dtype == np.float16 else param.dtype
        return self.xp.empty(param.shape, dtype=dtype)

    def _launch(self, filename, entry, grid, block, args):
        module = load_module(filename, self._module_class, self._device_key(), COMPILE_OPTIONS)
        module.get_function(entry)(grid, block, args)

    # -- convolution ----------------------------------------------------------------------------
    def forward(self, x, weight, bias, geom: ConvTransposeGeometry, algorithm="gather"):
        check_index_limits(geom)
        suffix = _SUFFIX[x.dtype]
        x, weight = self.xp.ascontiguousarray(x), self.xp.ascontiguousarray(weight)
        # The kernels read bias only when has_bias is 1; the weight stands in for a null pointer.
        bias_arg = weight if bias is None else self.xp.ascontiguousarray(bias)
        has_bias = np.int32(bias is not None)
        y = self._output(geom.output_shape, x.dtype)
        rows, out_positions = geom.batch * geom.out_channels, math.prod(geom.out_size)
        if rows == 0:
            return y
        if algorithm == "gather":
            self._launch("deconv_forward.cu", f"deconv_forward_gather_{suffix}",
                         rows_grid(tiled_rows(geom, geom.out_channels_per_group), out_positions),
                         (BLOCK, 1, 1),
                         (x, weight, bias_arg, has_bias, y) + geometry_args(geom))
        elif algorithm == "scatter":
            self._launch("deconv_forward.cu", f"deconv_fill_bias_{suffix}",
                         rows_grid(rows, out_positions), (BLOCK, 1, 1),
                         (y, bias_arg, has_bias, np.int32(rows), np.int32(geom.out_channels),
                          np.int32(out_positions)))
            self._launch("deconv_forward.cu", f"deconv_forward_scatter_{suffix}",
                         rows_grid(rows, math.prod(geom.in_size)), (BLOCK, 1, 1),
                         (x, weight, y) + geometry_args(geom))
        else:
            raise ValueError(f"algorithm must be 'gather' or 'scatter', got {algorithm!r}")
        return y

    def grad_input(self, grad_output, weight, geom: ConvTransposeGeometry):
        check_index_limits(geom)
        grad_output = self.xp.ascontiguousarray(grad_output)
        weight = self.xp.ascontiguousarray(weight)
        grad_input = self._output(geom.input_shape, weight.dtype)
        rows = tiled_rows(geom, geom.in_channels_per_group)
        if rows:
            self._launch("deconv_backward.cu", f"deconv_grad_input_{_SUFFIX[weight.dtype]}",
                         rows_grid(rows, math.prod(geom.in_size)), (BLOCK, 1, 1),
                         (grad_output, weight, grad_input) + geometry_args(geom))
        return grad_input

    def grad_weight(self, grad_output, x, geom: ConvTransposeGeometry):
        check_index_limits(geom)
        grad_output, x = self.xp.ascontiguousarray(grad_output), self.xp.ascontiguousarray(x)
        grad_weight = self._output(geom.weight_shape, x.dtype)
        work_items = geom.in_channels * geom.out_channels_per_group * ceil_div(geom.taps, TAP_TILE)
        self._launch("deconv_backward.cu", f"deconv_grad_weight_{_SUFFIX[x.dtype]}",
                     (loop_blocks(work_items, 1, MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                     (grad_output, x, grad_weight) + geometry_args(geom))
        return grad_weight

    def grad_bias(self, grad_output, geom: ConvTransposeGeometry):
        check_index_limits(geom)
        grad_output = self.xp.ascontiguousarray(grad_output)
        grad_bias = self._output((geom.out_channels,), grad_output.dtype)
        self._launch("deconv_backward.cu", f"deconv_grad_bias_{_SUFFIX[grad_output.dtype]}",
                     (loop_blocks(geom.out_channels, 1, MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                     (grad_output, grad_bias, np.int32(geom.batch), np.int32(geom.out_channels),
                      np.int32(math.prod(geom.out_size))))
        return grad_bias

    def backward(self, grad_output, x, weight, geom: ConvTransposeGeometry, need_bias: bool):
        grad_output = self.xp.ascontiguousarray(grad_output)
        return (
            self.grad_input(grad_output, weight, geom),
            self.grad_weight(grad_output, x, geom),
            self.grad_bias(grad_output, geom) if need_bias else None,
        )

    # -- optimizer ------------------------------------------------------------------------------
    def sgd_step(self, param, grad, momentum_buffer, hyper, first_step):
        """One fused torch.optim.SGD update of ``param`` (and ``momentum_buffer``) in place."""
        if not param.flags.c_contiguous:
            raise ValueError("SGD on the kernel backends needs C-contiguous parameters")
        grad = self.xp.ascontiguousarray(grad)
        math_type = np.float64 if param.dtype == np.float64 else np.float32
        if momentum_buffer is None:
            # The kernel touches buf only when momentum != 0; any array of its type stands in.
            momentum_buffer = param if param.dtype != np.float16 else self._placeholder_float32()
        count = param.size
        if count == 0:
            return
        self._launch("sgd.cu", f"sgd_step_{_SUFFIX[param.dtype]}",
                     (min(ceil_div(count, BLOCK), MAX_GRID_X), 1, 1), (BLOCK, 1, 1),  # 64-bit index
                     (param, grad, momentum_buffer, np.int64(count), math_type(hyper.lr),
                      math_type(hyper.momentum), math_type(1.0 - hyper.dampening),
                      math_type(hyper.weight_decay), np.int32(hyper.nesterov),
                      np.int32(hyper.maximize), np.int32(first_step)))

    def _placeholder_float32(self):
        placeholder = getattr(self, "_float32_placeholder", None)
        if placeholder is None:
            placeholder = self._float32_placeholder = self.xp.zeros(1, dtype=np.float32)
        return placeholder


def make(name: str) -> KernelBackend:
    """The "cuda" backend (CuPy, per-device modules) or the "emulator" backend (NumPy, CPU)."""
    if name == "cuda":
        import cupy

        return KernelBackend("cuda", cupy, cupy.RawModule, lambda: cupy.cuda.runtime.getDevice())
    if name == "emulator":
        from .. import emulator

        return KernelBackend("emulator", np, emulator.RawModule, lambda: "cpu")
    raise ValueError(f"no kernel backend named {name!r}")
