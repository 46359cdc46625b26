"""The launch layer shared, line for line, by the "cuda" and "emulator" backends.

Both run the kernels of ``kernels/*.cu``; they differ only in the array module (CuPy or NumPy)
and the module class (``cupy.RawModule`` or ``cudeconv.emulator.RawModule``). Everything else —
grid and block sizes, argument order and exact C scalar types, contiguity, output allocation —
is here, once: which kernel runs a pass is path_choice's decision, which module holds it
kernel_modules'.

On "cuda", launches go on CuPy's current stream and nothing here synchronizes with or copies to
the host, so a whole training step can be captured in a CUDA graph. Each call allocates and
launches on the device its arrays live on (whatever device is current), and refuses arrays on
different devices.

Grids are sized for the GPU the arrays live on: a DeviceDescriptor read from the arrays' device on
"cuda", an H100 SXM on the emulator unless ``device=`` says otherwise.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math

import numpy as np

from .._dtypes import LOW_PRECISION, compute_dtype
from .._geometry import ConvTransposeGeometry
from .._loader import load_module
from .._precision import backward_algorithm
from . import path_choice
# The launch layer's names, re-exported: one place to import them from.
from .device_descriptor import H100_SXM, DeviceDescriptor, from_cuda_device
from .gemm_plan import (  # noqa: F401
    GEMM_MAX_TAPS, GEMM_MIN_COMPUTE_CAPABILITY, GEMM_OUTPUT_SHAPE, GEMM_PACK_ROW_BYTES,
    GEMM_PASSES, GEMM_SLICE_K, GEMM_TILES, INT32_MAX, MAX_GRID_Y, SPLIT_MIN_K,
    SPLIT_TARGET_WAVES, SPLIT_WORKSPACE_CAP, ceil_div, gemm_dynamic_shared_bytes, gemm_grid, gemm_k,
    gemm_min_blocks, gemm_packed_operands,
    gemm_resources, gemm_sides, gemm_splits, gemm_tile, packed_elements, packed_tensor_elements,
    packed_weight_elements, split_limit)
from .kernel_modules import (  # noqa: F401
    BLOCK, CHANNEL_TILE, COMPILE_OPTIONS, DEFAULT_DYNAMIC_SHARED_BYTES, DEPTHWISE_WEIGHT_TILE, GEMM_SUPPORT,
    MODULE_MATHS, SOURCES, TAP_TILE, compile_module, dynamic_shared, entry_module, module_options, path_modules)
from .path_choice import (  # noqa: F401
    DEPTHWISE_MIN_BLOCKS, GEMM_MATH, GEMM_MIN_K_CHANNELS, GRAD_BIAS_MIN_VALUES_PER_THREAD, MAX_GRID_X, SUFFIX,
    KernelPath, depthwise_weight_path, gemm_math, loop_blocks, reduction_wave)


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


def tiled_rows(geom: ConvTransposeGeometry, channels_per_group: int) -> int:
    """Rows (n, group, tile of CHANNEL_TILE channels) of the channel-tiled gather kernels."""
    return geom.batch * geom.groups * ceil_div(channels_per_group, CHANNEL_TILE)


def rows_grid(rows: int, positions: int):
    """Grid for a kernel looping over (rows × positions): x over positions, y over rows."""
    return (loop_blocks(positions, BLOCK, MAX_GRID_X), loop_blocks(rows, 1, MAX_GRID_Y), 1)


def on_arrays_device(*names):
    """Decorates a KernelBackend method so that it runs inside ``on_device`` of its arguments
    ``names`` (allocations and launches on their device)."""
    def decorate(method):
        # Where each named argument stands among the positional ones after self, found once: the
        # wrapper runs on every launch-layer call, so it only indexes.
        positions = [list(inspect.signature(method).parameters).index(name) - 1 for name in names]

        @functools.wraps(method)
        def run(self, *args, **kwargs):
            arrays = {name: args[position] if position < len(args) else kwargs.get(name)
                      for name, position in zip(names, positions)}
            with self.on_device(**arrays):
                return method(self, *args, **kwargs)
        return run
    return decorate


class KernelBackend:
    """Runs the library's CUDA kernels; ``xp`` is the array module, ``module_class`` the RawModule.

    ``device_key()`` names the current device (modules are memoized per device); ``device_of(array)``
    the device an array lives on and ``use_device(device)`` a context making it current — each call
    allocates and launches inside ``use_device`` of its arrays' device. ``module_per_math``: compile
    each source once per math (CuPy) rather than once with every entry point (the emulator).
    ``describe_device(device)``: the DeviceDescriptor of a device (``device_key()`` or
    ``device_of(array)``); ``device``: one descriptor for every call instead (tests,
    scripts/predict_perf.py; the emulator's default is an H100 SXM)."""

    def __init__(self, name, xp, module_class, device_key, *, device_of=lambda array: None,
                 use_device=lambda device: contextlib.nullcontext(), module_per_math=True,
                 describe_device=None, device: DeviceDescriptor = None):
        if device is not None and not isinstance(device, DeviceDescriptor):
            raise TypeError(f"device must be a DeviceDescriptor, got {type(device).__name__}")
        self.name = name
        self.xp = xp
        self._module_class = module_class
        self._device_key = device_key
        self._device_of = device_of
        self._use_device = use_device
        self.module_per_math = module_per_math
        self._describe_device = describe_device
        self._device = device if device is not None or describe_device is not None else H100_SXM
        self._float32_placeholders = {}

    def device_descriptor(self, array=None) -> DeviceDescriptor:
        """The descriptor of the device ``array`` lives on (None: the current device), or the one
        given at construction."""
        if self._device is not None:
            return self._device
        device = self._device_of(array) if array is not None else None
        return self._describe_device(self._device_key() if device is None else device)

    def on_device(self, **arrays):
        """A context in which allocations and launches go to the device ``arrays`` (name=array;
        None entries skipped) live on; ValueError naming them when they live on different devices."""
        devices = {arg: self._device_of(array) for arg, array in arrays.items() if array is not None}
        distinct = set(devices.values())
        if len(distinct) > 1:
            where = ", ".join(f"{arg} on device {device}" for arg, device in devices.items())
            raise ValueError(f"arrays must live on one device for the {self.name!r} backend, got {where}")
        return self._use_device(distinct.pop() if distinct else None)

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
        """A fresh array every element of which the launching kernels write (outputs, workspaces)."""
        return self.xp.empty(shape, dtype=dtype)

    def momentum_buffer_for(self, param):
        with self.on_device(param=param):
            return self.xp.empty(param.shape, dtype=compute_dtype(param.dtype))

    def module(self, source: str, math_name: str, gemm_pass: str = "", tile=()):
        """The compiled module of ``source`` holding ``math_name``'s entry points (of deconv_gemm.cu,
        ``gemm_pass``'s GEMM on ``tile`` where given), on the current device."""
        return load_module(source, self._module_class, self._device_key(),
                           module_options(math_name, self.module_per_math, gemm_pass, tile))

    def _launch(self, path: KernelPath, entry, grid, block, args):
        """``entry`` of ``path``'s module (a GEMM's packings and split reduce: its GEMM_SUPPORT
        module) on ``grid`` × ``block`` (with dynamic_shared's memory)."""
        function = self.module(*entry_module(path, entry)).get_function(entry)
        function(grid, block, args, shared_mem=dynamic_shared(function, path, entry))

    def warmup(self, dtypes, precisions=("fp32",), on_progress=lambda source, math_name, gemm_pass, tile: None,
               jobs=1):
        """Compile, for the current device, every module a forward, backward and SGD step of
        ``dtypes`` at ``precisions`` can need (the GEMM's math follows the precision for float32;
        the direct kernels serve every precision): per math, each source's module, one module
        per GEMM pass and tile of the menus (GEMM_TILES) and the GEMMs' GEMM_SUPPORT module. ``jobs`` > 1 compiles in that many
        processes at once (the backends "cuda" and "emulator": each worker fills the same disk
        cache), calling ``on_progress`` as each module is done. Returns the (source, math,
        gemm_pass, tile) modules compiled ("" and () for a module that is not one GEMM kernel's),
        math None for a module of every math (``module_per_math=False``)."""
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be a positive int, got {jobs!r}")
        wanted = []
        for dtype in dtypes:
            suffix = SUFFIX[np.dtype(dtype)]
            wanted += [(source, suffix, "", ()) for source in SOURCES if source != "deconv_gemm.cu"]
            for math_name in dict.fromkeys(gemm_math(dtype, precision) for precision in precisions):
                wanted += [("deconv_gemm.cu", math_name, pass_, tile)
                           for pass_ in GEMM_PASSES for tile in GEMM_TILES[math_name][pass_]]
                wanted.append(("deconv_gemm.cu", math_name, GEMM_SUPPORT, ()))
        if not self.module_per_math:
            wanted = [(source, None, "", ()) for source, *_ in wanted]
        compiled = list(dict.fromkeys(wanted))
        if jobs > 1 and len(compiled) > 1:
            if self.name not in ("cuda", "emulator"):
                raise ValueError(f"jobs > 1 needs the 'cuda' or 'emulator' backend, not {self.name!r}")
            import concurrent.futures
            import multiprocessing

            # spawn: a forked CUDA context is unusable in the child
            with concurrent.futures.ProcessPoolExecutor(min(jobs, len(compiled)),
                                                        mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(compile_module, self.name, module): module for module in compiled}
                for done in concurrent.futures.as_completed(futures):
                    done.result()  # a compile error surfaces here, as in one process
                    on_progress(*futures[done])
            return compiled
        for module in compiled:
            compile_module(self, module)
            on_progress(*module)
        return compiled

    # -- which kernel runs a pass (path_choice), on this backend's device ----------------------------
    def gemm_plan(self, geom: ConvTransposeGeometry, pass_: str, algorithm: str, dtype, precision: str,
                  splits=None, device: DeviceDescriptor = None, tile=None):
        """path_choice.gemm_path on ``device`` (None: the current device's descriptor)."""
        return path_choice.gemm_path(geom, pass_, algorithm, dtype, precision, device or self.device_descriptor(),
                                     splits, tile, self.name)

    def kernel_path(self, geom: ConvTransposeGeometry, pass_: str, algorithm: str, dtype, precision: str,
                    parts=None, device: DeviceDescriptor = None, tile=None) -> KernelPath:
        """path_choice.kernel_path on ``device`` (None: the current device's descriptor)."""
        return path_choice.kernel_path(geom, pass_, algorithm, dtype, precision, device or self.device_descriptor(),
                                       parts, tile, self.name)

    def kernel_paths(self, geom: ConvTransposeGeometry, dtype, algorithm="auto", precision="fp32", need_bias=True,
                     device: DeviceDescriptor = None):
        """{pass: KernelPath} of a forward and backward step (grad_bias when ``need_bias``)."""
        passes = ("forward", "grad_input", "grad_weight") + (("grad_bias",) if need_bias else ())
        return {p: self.kernel_path(geom, p, algorithm if p == "forward" else backward_algorithm(algorithm), dtype,
                                    precision, device=device) for p in passes}

    # -- the autotuner's choices (cudeconv/autotune.py) ------------------------------------------
    def candidate_paths(self, geom: ConvTransposeGeometry, pass_: str, dtype, precision: str,
                        device: DeviceDescriptor = None):
        """path_choice.candidate_paths on ``device`` (None: the current device's descriptor)."""
        return path_choice.candidate_paths(geom, pass_, dtype, precision, device or self.device_descriptor(),
                                           self.name)

    def run_path(self, path: KernelPath, pass_: str, operands, geom: ConvTransposeGeometry, precision: str):
        """``pass_`` on ``operands`` (forward: x, weight, bias; grad_input: grad_output, weight;
        grad_weight: grad_output, x) by ``path``, one of candidate_paths'; ValueError when the
        launch layer would run another kernel for it."""
        algorithm, parts = ("gather", None) if path.kind == "direct" else (
            "gemm" if path.kind == "gemm" else "auto", path.parts)
        tile = path.tile or None
        dtype = operands[1].dtype  # the weight (forward, grad_input) or x (grad_weight)
        if self.kernel_path(geom, pass_, algorithm, dtype, precision, parts,
                            self.device_descriptor(operands[1]), tile) != path:
            raise ValueError(f"the {pass_} of this problem cannot run {path}")
        return getattr(self, pass_)(*operands, geom, algorithm=algorithm, precision=precision, splits=parts,
                                    tile=tile)

    # -- convolution ----------------------------------------------------------------------------
    def _run_gemm(self, path: KernelPath, operands, out, geom: ConvTransposeGeometry, bias=None):
        """The GEMM of ``path`` on ``operands`` (its entry point's arguments before the output),
        writing ``out``. Split in K (path.parts > 1), the tiles go to a workspace of path.parts
        copies of ``out`` in the accumulation type, from the array module's pool, and
        deconv_gemm_split_reduce_* adds them in split order into ``out`` (and the forward's
        ``bias``, once)."""
        workspace = self._partials(path.parts, out)
        self._launch(path, path.entry, path.grid, (BLOCK, 1, 1),
                     tuple(operands) + (out, workspace, np.int32(path.parts)) + geometry_args(geom))
        if path.parts > 1:
            channels, spatial = (out.shape[1], math.prod(out.shape[2:])) if bias is not None else (1, 1)
            self._launch(path, f"deconv_gemm_split_reduce_{SUFFIX[out.dtype]}",
                         (min(ceil_div(out.size, BLOCK), MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                         (workspace, out, np.int32(path.parts), np.int64(out.size), out if bias is None else bias,
                          np.int32(bias is not None), np.int32(channels), np.int32(spatial)))

    def _partials(self, parts: int, out):
        """The workspace of a reduction split into ``parts``: that many copies of ``out`` in its
        accumulation type (float32; float64 for float64), added in order afterwards. One part
        writes ``out`` itself and never reads the workspace argument: any array of its type
        stands in."""
        accumulator = compute_dtype(out.dtype)
        if parts > 1:
            return self._output((parts,) + out.shape, accumulator)
        return out if out.dtype == accumulator else self._placeholder_float32()

    def _gemm_weight(self, path: KernelPath, weight, geom: ConvTransposeGeometry, pass_: str):
        """The weight as the forward's or grad_input's GEMM of ``path`` reads it: packed by
        deconv_gemm_pack_weight_* (the layout its 16-byte copies read; a workspace from the array
        module's pool) where ``path`` packs it, else ``weight`` itself."""
        if "weight" not in path.packed:
            return weight
        packed = self._output(packed_weight_elements(geom, pass_, path.math), weight.dtype)
        self._launch(path, f"deconv_gemm_pack_weight_{path.math}", (loop_blocks(packed.size, BLOCK, MAX_GRID_X), 1, 1),
                     (BLOCK, 1, 1), (weight, packed, np.int32(pass_ == "grad_input")) + geometry_args(geom))
        return packed

    def _gemm_activation(self, path: KernelPath, src, geom: ConvTransposeGeometry, tensor: str):
        """``src``, the activation ``tensor`` ("x" or "grad_output") as the GEMM of ``path`` reads it:
        where ``path`` packs it, packed channels-last by deconv_gemm_pack_activation_* (a workspace
        from the array module's pool), or ``src``'s own memory viewed so where it is laid out so
        already (reads_packed_in_place); else ``src`` in NCHW."""
        if tensor not in path.packed:
            return self.xp.ascontiguousarray(src)
        if reads_packed_in_place(path, src, geom, tensor):
            return self.xp.moveaxis(src, 1, -1)  # its C-innermost view: a dense (N, *spatial, C) array
        src = self.xp.ascontiguousarray(src)
        packed = self._output(packed_tensor_elements(geom, tensor, path.math), src.dtype)
        self._launch(path, f"deconv_gemm_pack_activation_{path.math}",
                     (loop_blocks(packed.size, BLOCK, MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                     (src, packed, np.int32(tensor == "grad_output")) + geometry_args(geom))
        return packed

    @on_arrays_device("x", "weight", "bias")
    def forward(self, x, weight, bias, geom: ConvTransposeGeometry, algorithm="auto", precision="fp32",
                splits=None, tile=None):
        """The forward by the kernel kernel_path picks; ``splits`` and ``tile``: the GEMM's K splits
        and tile (None chooses; tests and the autotuner pin them)."""
        check_index_limits(geom)
        suffix = SUFFIX[x.dtype]
        path = self.kernel_path(geom, "forward", algorithm, x.dtype, precision, splits, self.device_descriptor(x), tile)
        weight = self.xp.ascontiguousarray(weight)
        # The kernels read bias only when has_bias is 1; the weight stands in for a null pointer.
        bias_arg = weight if bias is None else self.xp.ascontiguousarray(bias)
        has_bias = np.int32(bias is not None)
        y = self._output(geom.output_shape, x.dtype)
        rows, out_positions = geom.batch * geom.out_channels, math.prod(geom.out_size)
        if rows == 0:
            return y
        if path.kind == "gemm":  # x as the caller laid it out: _gemm_activation may read it in place
            self._run_gemm(path, (self._gemm_activation(path, x, geom, "x"), self._gemm_weight(path, weight, geom, "forward"),
                                  bias_arg, has_bias), y, geom, bias)
            return y
        x = self.xp.ascontiguousarray(x)
        conv_args = (x, weight, bias_arg, has_bias, y) + geometry_args(geom)
        if path.kind == "depthwise":
            self._launch(path, path.entry, rows_grid(rows, out_positions), (BLOCK, 1, 1), conv_args)
        elif path.kind == "direct":
            self._launch(path, path.entry,
                         rows_grid(tiled_rows(geom, geom.out_channels_per_group), out_positions), (BLOCK, 1, 1),
                         conv_args)
        else:  # scatter: the bias (or zeros), then atomic adds
            self._launch(path, f"deconv_fill_bias_{suffix}",
                         rows_grid(rows, out_positions), (BLOCK, 1, 1),
                         (y, bias_arg, has_bias, np.int32(rows), np.int32(geom.out_channels),
                          np.int32(out_positions)))
            self._launch(path, path.entry,
                         rows_grid(rows, math.prod(geom.in_size)), (BLOCK, 1, 1),
                         (x, weight, y) + geometry_args(geom))
        return y

    @on_arrays_device("grad_output", "weight")
    def grad_input(self, grad_output, weight, geom: ConvTransposeGeometry, algorithm="auto", precision="fp32",
                   splits=None, tile=None):
        """grad_input by the kernel kernel_path picks; ``splits`` and ``tile``: the GEMM's K splits
        and tile (None chooses; tests and the autotuner pin them)."""
        check_index_limits(geom)
        weight = self.xp.ascontiguousarray(weight)
        grad_input = self._output(geom.input_shape, weight.dtype)
        path = self.kernel_path(geom, "grad_input", algorithm, weight.dtype, precision, splits,
                                self.device_descriptor(weight), tile)
        positions = math.prod(geom.in_size)
        if not geom.batch * geom.in_channels * positions:
            return grad_input
        if path.kind == "gemm":
            self._run_gemm(path, (self._gemm_activation(path, grad_output, geom, "grad_output"),
                                  self._gemm_weight(path, weight, geom, "grad_input")), grad_input, geom)
            return grad_input
        grad_output = self.xp.ascontiguousarray(grad_output)
        args = (grad_output, weight, grad_input) + geometry_args(geom)
        if path.kind == "depthwise":
            self._launch(path, path.entry, rows_grid(geom.batch * geom.in_channels, positions),
                         (BLOCK, 1, 1), args)
        else:
            self._launch(path, path.entry,
                         rows_grid(tiled_rows(geom, geom.in_channels_per_group), positions), (BLOCK, 1, 1), args)
        return grad_input

    @on_arrays_device("grad_output", "x")
    def grad_weight(self, grad_output, x, geom: ConvTransposeGeometry, algorithm="auto", precision="fp32",
                    splits=None, tile=None):
        """grad_weight by the split-K GEMM (``splits``, ``tile``: None chooses; tests pin them), the depthwise
        slab reduction or the direct kernel. The workspaces (split or slab partials of grad_weight
        in the accumulation type: float32, float64 for float64) come from the array module's pool,
        only where there is more than one part."""
        check_index_limits(geom)
        grad_weight = self._output(geom.weight_shape, x.dtype)
        path = self.kernel_path(geom, "grad_weight", algorithm, x.dtype, precision, splits, self.device_descriptor(x),
                                tile)
        if path.kind == "gemm":
            self._run_gemm(path, (self._gemm_activation(path, x, geom, "x"),
                                  self._gemm_activation(path, grad_output, geom, "grad_output")), grad_weight, geom)
            return grad_weight
        grad_output, x = self.xp.ascontiguousarray(grad_output), self.xp.ascontiguousarray(x)
        if path.kind == "depthwise":
            self._depthwise_grad_weight(path, grad_output, x, grad_weight, geom)
        else:
            work_items = geom.in_channels * geom.out_channels_per_group * ceil_div(geom.taps, TAP_TILE)
            self._launch(path, path.entry, (loop_blocks(work_items, 1, MAX_GRID_X), 1, 1),
                         (BLOCK, 1, 1), (grad_output, x, grad_weight) + geometry_args(geom))
        return grad_weight

    def _depthwise_grad_weight(self, path: KernelPath, grad_output, x, grad_weight, geom: ConvTransposeGeometry):
        """Blocks (slab, row) sum their slab of (sample, position) pairs for DEPTHWISE_WEIGHT_TILE
        filter elements; with several slabs into partial[slab] (then added in slab order)."""
        suffix, slabs = SUFFIX[x.dtype], path.parts
        total = geom.batch * math.prod(geom.in_size)
        partial = self._partials(slabs, grad_weight)
        self._launch(path, path.entry, path.grid, (BLOCK, 1, 1),
                     (grad_output, x, grad_weight, partial, np.int32(slabs), np.int32(ceil_div(total, slabs)))
                     + geometry_args(geom))
        if slabs > 1:
            self._launch(path, f"deconv_grad_weight_depthwise_combine_{suffix}",
                         (min(ceil_div(grad_weight.size, BLOCK), MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                         (partial, grad_weight, np.int32(slabs), np.int64(grad_weight.size)))

    @on_arrays_device("grad_output")
    def grad_bias(self, grad_output, geom: ConvTransposeGeometry, algorithm="auto"):
        """grad_bias over slabs of N·out_spatial per channel (enough blocks to fill the GPU, partial
        sums in a C_out × slabs workspace added in order), or one block per channel ("gather",
        or where one slab suffices)."""
        check_index_limits(geom)
        grad_output = self.xp.ascontiguousarray(grad_output)
        grad_bias = self._output((geom.out_channels,), grad_output.dtype)
        suffix, out_spatial = SUFFIX[grad_output.dtype], math.prod(geom.out_size)
        path = self.kernel_path(geom, "grad_bias", algorithm, grad_output.dtype, "fp32",
                                device=self.device_descriptor(grad_output))
        if path.kind == "per-channel":
            self._launch(path, path.entry,
                         (loop_blocks(geom.out_channels, 1, MAX_GRID_X), 1, 1), (BLOCK, 1, 1),
                         (grad_output, grad_bias, np.int32(geom.batch), np.int32(geom.out_channels),
                          np.int32(out_spatial)))
            return grad_bias
        slabs = path.parts
        partial = self._output((geom.out_channels, slabs), compute_dtype(grad_output.dtype))
        self._launch(path, path.entry, path.grid, (BLOCK, 1, 1),
                     (grad_output, partial, np.int32(geom.batch), np.int32(geom.out_channels),
                      np.int32(out_spatial), np.int32(slabs), np.int32(ceil_div(geom.batch * out_spatial, slabs))))
        self._launch(path, f"deconv_grad_bias_combine_{suffix}",
                     (ceil_div(geom.out_channels, BLOCK), 1, 1), (BLOCK, 1, 1),
                     (partial, grad_bias, np.int32(geom.out_channels), np.int32(slabs)))
        return grad_bias

    @on_arrays_device("grad_output", "x", "weight")
    def backward(self, grad_output, x, weight, geom: ConvTransposeGeometry, need_bias: bool, algorithm="auto",
                 precision="fp32"):
        """grad_input, grad_weight and (``need_bias``) grad_bias. A channels-last grad_output that a
        GEMM of grad_input or grad_weight reads in place (reads_packed_in_place) reaches them as it
        is; any other is made NCHW once, here, for all three. (The usual NCHW grad_output skips the
        question: the paths are chosen once more by each pass, and a backward should not pay twice.)"""
        if not grad_output.flags.c_contiguous and not any(
                reads_packed_in_place(self.kernel_path(geom, pass_, algorithm, weight.dtype, precision,
                                                       device=self.device_descriptor(weight)),
                                      grad_output, geom, "grad_output")
                for pass_ in ("grad_input", "grad_weight")):
            grad_output = self.xp.ascontiguousarray(grad_output)
        return (
            self.grad_input(grad_output, weight, geom, algorithm, precision),
            self.grad_weight(grad_output, x, geom, algorithm, precision),
            self.grad_bias(grad_output, geom, algorithm) if need_bias else None,
        )

    # -- optimizer ------------------------------------------------------------------------------
    @on_arrays_device("param", "grad", "momentum_buffer")
    def sgd_step(self, param, grad, momentum_buffer, hyper, first_step):
        """One fused torch.optim.SGD update of ``param`` (and ``momentum_buffer``) in place."""
        if not param.flags.c_contiguous:
            raise ValueError("SGD on the kernel backends needs C-contiguous parameters")
        grad = self.xp.ascontiguousarray(grad)
        math_type = np.float64 if param.dtype == np.float64 else np.float32
        if momentum_buffer is None:
            # The kernel touches buf only when momentum != 0; any array of its type stands in.
            momentum_buffer = param if param.dtype not in LOW_PRECISION else self._placeholder_float32()
        count = param.size
        if count == 0:
            return
        suffix = SUFFIX[param.dtype]
        path = KernelPath("elementwise", f"sgd_step_{suffix}", source="sgd.cu", math=suffix)
        self._launch(path, path.entry,
                     (min(ceil_div(count, BLOCK), MAX_GRID_X), 1, 1), (BLOCK, 1, 1),  # 64-bit index
                     (param, grad, momentum_buffer, np.int64(count), math_type(hyper.lr),
                      math_type(hyper.momentum), math_type(1.0 - hyper.dampening),
                      math_type(hyper.weight_decay), np.int32(hyper.nesterov),
                      np.int32(hyper.maximize), np.int32(first_step)))

    def _placeholder_float32(self):
        """A float32 array on the current device standing in for a pointer a kernel never reads."""
        device = self._device_key()
        placeholder = self._float32_placeholders.get(device)
        if placeholder is None:
            placeholder = self._float32_placeholders[device] = self.xp.zeros(1, dtype=np.float32)
        return placeholder


def reads_packed_in_place(path: KernelPath, src, geom: ConvTransposeGeometry, tensor: str) -> bool:
    """Whether the GEMM of ``path`` reads ``src``, the activation ``tensor`` ("x" or "grad_output"),
    in place as its packed operand: a dense channels-last array is [n][position][group][channel]
    already, the packing's layout, where a group's channels fill whole GEMM_PACK_ROW_BYTES rows (no
    padding) and the math does not round in the packing (tf32 does: its main loop takes TF32
    values) — so a caller's channels-last x or grad_output costs neither the NCHW copy nor the
    packing, and the values read are the same. (The path packs ``tensor`` at all: every GEMM pass,
    FFMA and DFMA from compute capability 8.0.)"""
    if path.kind != "gemm" or tensor not in path.packed or path.math == "tf32":
        return False
    channels = geom.in_channels_per_group if tensor == "x" else geom.out_channels_per_group
    if channels % (GEMM_PACK_ROW_BYTES // src.dtype.itemsize):
        return False
    shape, itemsize = tuple(src.shape), src.dtype.itemsize
    outer = [itemsize * shape[1]]  # dense C-innermost strides, built outwards: the last spatial dim's first
    for size in reversed(shape[2:]):
        outer.insert(0, outer[0] * size)  # ends with N's stride in front
    expected = (outer[0], itemsize, *outer[1:])  # N, C, the spatial dims
    return all(stride == want for stride, want, size in zip(src.strides, expected, shape) if size > 1)


def make(name: str) -> KernelBackend:
    """The "cuda" backend (CuPy, per-device modules) or the "emulator" backend (NumPy, CPU)."""
    if name == "cuda":
        import cupy

        return KernelBackend("cuda", cupy, cupy.RawModule, lambda: cupy.cuda.runtime.getDevice(),
                             device_of=lambda array: array.device.id,
                             use_device=lambda device: contextlib.nullcontext() if device is None
                             else cupy.cuda.Device(device), describe_device=from_cuda_device)
    if name == "emulator":
        from .. import emulator

        return KernelBackend("emulator", np, emulator.RawModule, lambda: "cpu", module_per_math=False)
    raise ValueError(f"no kernel backend named {name!r}")
