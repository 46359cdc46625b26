"""Which kernel runs each pass: the one decision (a KernelPath: kernel kind, entry point, grid,
splits or slabs, workspace, module, GEMM tile and packed operands) that the launches follow,
``cudeconv bench`` reports and the autotuner enumerates.

Grids are sized for a DeviceDescriptor (SM count, registers and shared memory per SM,
device_descriptor.py); split counts depend on the shape and that descriptor only, so a given GPU
model always splits a shape the same way.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._dtypes import BFLOAT16, LOW_PRECISION, compute_dtype
from .._geometry import ConvTransposeGeometry
from .._precision import ALGORITHMS, BACKWARD_ALGORITHMS, check_algorithm
from .device_descriptor import DeviceDescriptor, KernelResources, launch_bound_registers, wave
from .gemm_plan import (GEMM_MIN_COMPUTE_CAPABILITY, GEMM_OUTPUT_SHAPE, GEMM_TILES, INT32_MAX, MAX_GRID_Y,
                        SPLIT_TARGET_WAVES, SPLIT_WORKSPACE_CAP, ceil_div, gemm_grid, gemm_packed_operands,
                        gemm_splits, gemm_tile, packed_elements, split_limit)
from .kernel_modules import BLOCK, DEPTHWISE_WEIGHT_TILE

# The GEMM entry points' math per (dtype, precision): float32 honours the precision; float16 and
# bfloat16 always run on tensor cores with float32 accumulation, float64 on FP64 FMA.
GEMM_MATH = {
    (np.dtype(np.float32), "fp32"): "f32", (np.dtype(np.float32), "tf32"): "tf32",
    (np.dtype(np.float32), "tf32x3"): "tf32x3",
}
# The heuristic of algorithm="auto": the GEMM where its K side holds at least GEMM_MIN_K_CHANNELS
# channels per group (grad_weight: its M side, C_in/groups, whose K is N·positions), whatever the N
# side (the narrow tiles serve narrow groups); narrower problems (depthwise, layers of 1-3 input
# channels) take the direct kernels.
GEMM_MIN_K_CHANNELS = 4
# Slabs of the parallel reductions (grad_bias, depthwise grad_weight): at least 16 values per thread.
GRAD_BIAS_MIN_VALUES_PER_THREAD = 16
DEPTHWISE_MIN_BLOCKS = 2    # its __launch_bounds__ (DECONV_BLOCK, 2)
MAX_GRID_X = INT32_MAX

# The entry points' suffix per storage dtype.
SUFFIX = {np.dtype(np.float16): "f16", BFLOAT16: "bf16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


class KernelPath(NamedTuple):
    """The kernel a pass runs: ``kind`` ("gemm", "depthwise", "direct", "scatter", "slabs",
    "per-channel"), its main entry point, the GEMM's or slab kernel's grid, its parts (the GEMM's
    K splits, the depthwise grad_weight's and grad_bias's slabs), the workspace it takes from the
    memory pool, in bytes, and the module its entry points are in: ``source`` (a kernels/ file)
    and ``math`` (a MODULE_MATHS name); a GEMM's ``tile`` (BM, BN), whose module is its
    ``gemm_pass``'s and tile's alone on "cuda" (kernel_modules.module_options), and the operands it reads
    ``packed`` ("x", "weight", "grad_output": gemm_plan.gemm_packed_operands), its layout decision."""
    kind: str
    entry: str
    grid: tuple = ()
    parts: int = 1
    workspace_bytes: int = 0
    source: str = ""
    math: str = ""
    tile: tuple = ()
    gemm_pass: str = ""
    packed: tuple = ()


def gemm_math(dtype, precision: str) -> str:
    """The suffix of the GEMM entry point for ``dtype`` under ``precision``."""
    dtype = np.dtype(dtype)
    if dtype in LOW_PRECISION:  # always tensor cores, float32 accumulation
        return SUFFIX[dtype]
    if dtype == np.float64:
        return "f64"
    return GEMM_MATH[(dtype, precision)]


def loop_blocks(count: int, threads_per_block: int, limit: int) -> int:
    """Blocks for a grid-stride loop over ``count`` items: enough for one item per thread, at most
    ``limit``, and few enough that an int32 index plus the grid's stride never overflows."""
    wanted = ceil_div(count, threads_per_block)
    headroom = max(1, (INT32_MAX - count) // threads_per_block)
    return max(1, min(wanted, limit, headroom))


def reduction_wave(device: DeviceDescriptor) -> int:
    """Blocks of the slab reductions (grad_bias, depthwise grad_weight: BLOCK threads,
    __launch_bounds__(DECONV_BLOCK, 2), a few hundred bytes of shared memory) the GPU runs at once."""
    return wave(device, KernelResources(BLOCK, launch_bound_registers(device, BLOCK, DEPTHWISE_MIN_BLOCKS), 0))


def depthwise_weight_path(geom: ConvTransposeGeometry, dtype, device: DeviceDescriptor, slabs=None) -> KernelPath:
    """grad_weight of a layer with one input channel per group: blocks over (slab of the N·in_spatial
    (sample, position) pairs, group × tile of DEPTHWISE_WEIGHT_TILE filter elements), slabs enough
    for SPLIT_TARGET_WAVES waves, each at least GRAD_BIAS_MIN_VALUES_PER_THREAD pairs per thread,
    their partials (slabs × |grad_weight| accumulators, within SPLIT_WORKSPACE_CAP) added in order.
    ``slabs``: a count to take instead (tests pin it; at most one per pair)."""
    suffix = SUFFIX[np.dtype(dtype)]
    rows = geom.in_channels * ceil_div(geom.out_channels_per_group * geom.taps, DEPTHWISE_WEIGHT_TILE)
    total = geom.batch * math.prod(geom.in_size)
    partial_bytes = math.prod(geom.weight_shape) * compute_dtype(dtype).itemsize
    if slabs is None:
        slabs = max(1, min(ceil_div(SPLIT_TARGET_WAVES * reduction_wave(device), rows),
                           total // (BLOCK * GRAD_BIAS_MIN_VALUES_PER_THREAD), SPLIT_WORKSPACE_CAP // partial_bytes,
                           MAX_GRID_X))
    slabs = ceil_div(total, ceil_div(total, slabs)) if total else 1  # every slab non-empty
    return KernelPath("depthwise", f"deconv_grad_weight_depthwise_{suffix}",
                      (slabs, loop_blocks(rows, 1, MAX_GRID_Y), 1), slabs,
                      slabs * partial_bytes if slabs > 1 else 0, "deconv_depthwise.cu", suffix)


def gemm_path(geom: ConvTransposeGeometry, pass_: str, algorithm: str, dtype, precision: str,
              device: DeviceDescriptor, splits=None, tile=None, backend_name="the kernels"):
    """The implicit GEMM's KernelPath for ``pass_`` when ``algorithm`` picks it, else None (the
    direct kernel): its tile (``tile``, one of the menu's GEMM_TILES, or gemm_tile's choice on
    ``device``), its parts its K splits (``splits``, or gemm_splits for that tile), its workspace
    their partial copies of the output and the packed operands. "auto" takes the
    GEMM where it can run, its K side holds GEMM_MIN_K_CHANNELS channels per group (for
    grad_weight its M side, C_in/groups) and a group has more than one input channel (one is
    the depthwise kernels'); "gemm" insists."""
    if algorithm not in ("auto", "gemm"):
        return None
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1):
        raise ValueError(f"splits must be a positive int, got {splits!r}")
    math_name = gemm_math(dtype, precision)
    menu = GEMM_TILES[math_name][pass_]
    if tile is None:
        tile = gemm_tile(geom, pass_, math_name, device)
    elif tuple(tile) not in menu:
        raise ValueError(f"tile must be one of the {math_name} {pass_} GEMM's {list(menu)}, got {tile!r}")
    tile = tuple(tile)
    if splits is None:
        splits = gemm_splits(geom, pass_, math_name, device, tile)
    grid, reason = gemm_grid(geom, pass_, math_name, splits, tile, device)
    needed = GEMM_MIN_COMPUTE_CAPABILITY[math_name]
    if device.capability < needed:
        reason = (f"the GPU has compute capability {device.compute_capability[0]}.{device.compute_capability[1]}; "
                  f"the {math_name} GEMM kernels need {needed // 10}.{needed % 10} (mma.sync, cp.async)")
    if algorithm == "gemm":
        if reason:
            raise ValueError(f"algorithm='gemm' cannot run this {pass_} on {backend_name!r}: {reason}")
    else:
        k_side = {"forward": geom.in_channels_per_group, "grad_input": geom.out_channels_per_group,
                  "grad_weight": geom.in_channels_per_group}[pass_]
        # one input channel per group is the depthwise kernels' (grad_input's N would be 1)
        if reason or k_side < GEMM_MIN_K_CHANNELS or geom.in_channels_per_group == 1:
            return None
    output = math.prod(getattr(geom, GEMM_OUTPUT_SHAPE[pass_]))
    workspace = splits * output * compute_dtype(dtype).itemsize if splits > 1 else 0
    workspace += packed_elements(geom, pass_, math_name, device) * np.dtype(dtype).itemsize
    return KernelPath("gemm", f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}", grid, splits, workspace,
                      "deconv_gemm.cu", math_name, tile, pass_, gemm_packed_operands(math_name, pass_, device))


def kernel_path(geom: ConvTransposeGeometry, pass_: str, algorithm: str, dtype, precision: str,
                device: DeviceDescriptor, parts=None, tile=None, backend_name="the kernels") -> KernelPath:
    """Which kernel runs ``pass_`` ("forward", "grad_input", "grad_weight", "grad_bias") — the one
    decision the launch layer (kernel_backend.py) follows and ``cudeconv bench`` reports. Forward and grad_input:
    the implicit GEMM where gemm_path takes it, else (under "auto") the depthwise kernels for
    one input channel per group, else the direct gather (or the forward's scatter);
    grad_weight: the split-K GEMM, the depthwise reduction (one input channel per group) or the
    direct per-filter reduction; grad_bias: slabs of N·spatial per channel where more than one
    is worth it, else one block per channel. ``parts``: the GEMM's split count (None chooses);
    ``device``: the descriptor grids are sized for; ``tile``: the GEMM's tile (None chooses);
    ``backend_name``: the backend an error message names."""
    suffix = SUFFIX[np.dtype(dtype)]
    if pass_ == "grad_bias":
        total = geom.batch * math.prod(geom.out_size)
        slabs = max(1, min(ceil_div(reduction_wave(device), geom.out_channels),
                           ceil_div(total, BLOCK * GRAD_BIAS_MIN_VALUES_PER_THREAD)))
        if algorithm == "gather" or slabs == 1 or total > INT32_MAX or geom.out_channels > MAX_GRID_Y:
            return KernelPath("per-channel", f"deconv_grad_bias_{suffix}", source="deconv_grad_bias.cu",
                              math=suffix)
        slabs = ceil_div(total, ceil_div(total, slabs))  # every slab non-empty
        return KernelPath("slabs", f"deconv_grad_bias_slabs_{suffix}", (slabs, geom.out_channels, 1), slabs,
                          geom.out_channels * slabs * compute_dtype(dtype).itemsize, "deconv_grad_bias.cu", suffix)
    check_algorithm(algorithm, ALGORITHMS if pass_ == "forward" else BACKWARD_ALGORITHMS)
    gemm = gemm_path(geom, pass_, algorithm, dtype, precision, device, parts, tile, backend_name)
    if gemm is not None:
        return gemm
    direct_source = "deconv_forward.cu" if pass_ == "forward" else "deconv_backward.cu"
    if pass_ == "grad_weight" and algorithm == "auto" and geom.in_channels_per_group == 1:
        return depthwise_weight_path(geom, dtype, device, parts)
    if pass_ == "grad_weight":
        return KernelPath("direct", f"deconv_grad_weight_{suffix}", source=direct_source, math=suffix)
    if algorithm == "auto" and geom.in_channels_per_group == 1:
        return KernelPath("depthwise", f"deconv_{pass_}_depthwise_{suffix}", source="deconv_depthwise.cu",
                          math=suffix)
    if algorithm == "scatter":
        return KernelPath("scatter", f"deconv_forward_scatter_{suffix}", source=direct_source, math=suffix)
    return KernelPath("direct", f"deconv_forward_gather_{suffix}" if pass_ == "forward"
                      else f"deconv_grad_input_{suffix}", source=direct_source, math=suffix)


def candidate_paths(geom: ConvTransposeGeometry, pass_: str, dtype, precision: str, device: DeviceDescriptor,
                    backend_name="the kernels"):
    """The deterministic kernels that can run ``pass_`` ("forward", "grad_input", "grad_weight")
    of this problem, the heuristic's ("auto", kernel_path) first: the GEMM where it can run on
    the heuristic's tile at its split count, half and double that and 1 (within split_limit),
    and on each other tile of the menu at its own split count; the direct kernel, and (through
    the heuristic) the depthwise kernel for one input channel per group. Never the forward's
    atomic scatter."""
    paths = [kernel_path(geom, pass_, "auto", dtype, precision, device, backend_name=backend_name)]
    math_name = gemm_math(dtype, precision)
    chosen = gemm_tile(geom, pass_, math_name, device)
    grid, _ = gemm_grid(geom, pass_, math_name, 1, chosen, device)
    if grid is not None and device.capability >= GEMM_MIN_COMPUTE_CAPABILITY[math_name]:
        heuristic = gemm_splits(geom, pass_, math_name, device, chosen)
        limit = split_limit(geom, pass_, math_name, grid[2])
        paths += [kernel_path(geom, pass_, "gemm", dtype, precision, device, splits, chosen, backend_name)
                  for splits in (heuristic, heuristic // 2, 2 * heuristic, 1) if 1 <= splits <= limit]
        paths += [kernel_path(geom, pass_, "gemm", dtype, precision, device, None, tile, backend_name)
                  for tile in GEMM_TILES[math_name][pass_] if gemm_grid(geom, pass_, math_name, 1, tile, device)[0]]
    paths.append(kernel_path(geom, pass_, "gather", dtype, precision, device, backend_name=backend_name))
    return list(dict.fromkeys(paths))
