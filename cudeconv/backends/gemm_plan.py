"""How the implicit GEMMs (kernels/deconv_gemm.cu) are laid out on a GPU: tiles, grids, what one
block holds on an SM, and how many parts K is split into (docs/kernels.md, "Filling the GPU").

The split count is a function of the problem's shape and the DeviceDescriptor only — never of free
memory — so a given GPU model always splits a given shape the same way, and its results are
bitwise reproducible.
"""
from __future__ import annotations

import math

from .._geometry import ConvTransposeGeometry
from .device_descriptor import (H100_SXM, DeviceDescriptor, KernelResources, launch_bound_registers, resident_blocks,
                                wave)

GEMM_THREADS = 256  # kThreads of deconv_gemm.cu
GEMM_MAX_TAPS = 256  # taps of one stride phase the GEMM's shared tap table holds
GEMM_MATHS = ("f32", "f64", "tf32", "tf32x3", "f16", "bf16")
GEMM_PASSES = ("forward", "grad_input", "grad_weight")
# The menus of C tiles (rows BM × columns BN) per math and pass, as kernels/gemm_math.cuh and
# deconv_gemm.cu instantiate them (entry points deconv_<pass>_gemm_<math>_<BM>x<BN>): the forward's
# and grad_input's columns are the output channels of a group, so their narrow tile is narrow in
# N; grad_weight's rows are C_in/groups, so its narrow tile is narrow in M. The first is the widest.
_MAIN_MENU = {"forward": ((128, 128), (128, 64), (64, 64), (128, 32)),
              "grad_input": ((128, 128), (128, 64), (64, 64), (128, 32)),
              "grad_weight": ((128, 128), (64, 128), (64, 64), (32, 128))}
_DFMA_MENU = {"forward": ((64, 64), (64, 32)), "grad_input": ((64, 64), (64, 32)),
              "grad_weight": ((64, 64), (32, 64))}
GEMM_TILES = {math_name: (_DFMA_MENU if math_name == "f64" else _MAIN_MENU) for math_name in GEMM_MATHS}
# What one GEMM block holds on an SM (docs/kernels.md, "Filling the GPU"), from gemm_math.cuh: K
# per shared-memory slice (BK), and the (A, B) slices' shapes in elements (gemm_slice_bytes) —
# k-major BK × (side + pad), or rows of K, side × (BK + pad) — GEMM_STAGES of them; the forward
# and grad_input add their tap table (16-byte TapEntry × GEMM_MAX_TAPS). Registers: the most
# __launch_bounds__(256, MinBlocks) allows (gemm_min_blocks; the SASS test checks both against nvcc).
GEMM_SLICE_K = {"f32": 8, "f64": 8, "tf32": 16, "tf32x3": 16, "f16": 32, "bf16": 32}
# Slices in shared memory at once (M::kStages): FFMA and DFMA double-buffer in static shared memory;
# the tensor cores pipeline three stages (two slices in flight while one is multiplied) in dynamic
# shared memory, more than the 48 KiB a block gets without opting in on the widest tiles
# (gemm_dynamic_shared_bytes; the launch layer opts in).
GEMM_STAGES = {"f32": 2, "f64": 2, "tf32": 3, "tf32x3": 3, "f16": 3, "bf16": 3}
# The operands a GEMM reads packed, each row padded to GEMM_PACK_ROW_BYTES (one 32-byte sector)
# so that it arrives in aligned 16-byte cp.async chunks (gemm_packed_operands): the weight
# (deconv_gemm_pack_weight_*: per group taps × (K channels) rows of the N channels, or N-major on
# GEMM_PACKED_N_MAJOR_MATHS) and the activations x and grad_output
# (deconv_gemm_pack_activation_*: channels-last, [n][position][group][channels]; TF32-rounded for
# tf32). Every math packs every operand of every pass — FFMA and DFMA from compute capability
# GEMM_CP_ASYNC_CAPABILITY; below it (no cp.async) they read the tensors as they are. ELEMENT_BYTES:
# the storage type.
GEMM_TENSOR_CORE_MATHS = ("tf32", "tf32x3", "f16", "bf16")
GEMM_CP_ASYNC_CAPABILITY = 80
GEMM_PACKED_TENSORS = {"forward": ("x", "weight"), "grad_input": ("grad_output", "weight"),
                       "grad_weight": ("x", "grad_output")}
# tf32's packed weight is N-major (per group [tap][N channel][K channels padded]), so that B's
# slices are n-major like A's and ldmatrix reads both; the others keep [tap][K channel][N channels
# padded] (k-major slices: ldmatrix.trans for f16/bf16, vector loads for FFMA and DFMA).
GEMM_PACKED_N_MAJOR_MATHS = ("tf32", "tf32x3")
GEMM_PACK_ROW_BYTES = 32
GEMM_ELEMENT_BYTES = {"f32": 4, "f64": 8, "tf32": 4, "tf32x3": 4, "f16": 2, "bf16": 2}
GEMM_TAP_TABLE_BYTES = 16 * GEMM_MAX_TAPS
# FFMA's and DFMA's forward keeps its phase's output grid for the epilogue in shared memory (its
# 128 × 128 loop needs every register; deconv_gemm.cu, OutputGrid): 16 ints.
GEMM_OUTPUT_GRID_BYTES = 64
GEMM_REGISTER_BOUND_MATHS = ("f32", "f64")
# The compute capability (10·major + minor) each math's GEMM needs: FFMA and DFMA run from 7.0,
# staging their operands through registers where cp.async is missing (kernels/gemm_math.cuh); the
# tensor-core maths need mma.sync and cp.async, 8.0.
GEMM_MIN_COMPUTE_CAPABILITY = {"f32": 70, "f64": 70, "tf32": 80, "tf32x3": 80, "f16": 80, "bf16": 80}
# Split K (forward, grad_input, grad_weight): grad_weight's K (N·input positions) is long and its
# grid short, so it splits until the grid holds SPLIT_TARGET_WAVES waves, and on (up to twice that
# count) until its last wave is SPLIT_MIN_WAVE_FILL full — 544 blocks on 264 slots would leave the
# third wave nearly empty; the forward and grad_input split only a grid shorter than one wave, into
# as many parts as still fit in one. Every split sums at least SPLIT_MIN_K values of K, and the
# partial copies of the output fit in SPLIT_WORKSPACE_CAP bytes.
SPLIT_TARGET_WAVES = 2
SPLIT_MIN_WAVE_FILL = 0.9
SPLIT_MIN_K = 256
SPLIT_WORKSPACE_CAP = 256 * 2**20
# The tile heuristic's balance of arithmetic and operand traffic: how many multiply-adds an SM does
# in the time it receives one operand element (from L2), per math, for an H100-class part — FFMA
# 67 TFLOPS against about 5.5 TB/s of L2 for 132 SMs: ~24 per 4-byte element; DFMA half the rate
# on twice the bytes; TF32 tensor cores about 7× FFMA's rate, 3×TF32 a third of that; FP16/BF16
# twice TF32's rate on half the bytes. A block's time is then BM·BN·K / ratio + (BM + BN)·K.
GEMM_FMA_PER_OPERAND = {"f32": 24, "f64": 6, "tf32": 180, "tf32x3": 60, "f16": 720, "bf16": 720}
GEMM_OUTPUT_SHAPE = {"forward": "output_shape", "grad_input": "input_shape", "grad_weight": "weight_shape"}
INT32_MAX = 2**31 - 1
MAX_GRID_Y = 65535  # grid y and z


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _taps_per_phase_bound(geom: ConvTransposeGeometry, pass_: str) -> int:
    """At most how many taps one block of the GEMM walks through its tap table: all of them for
    grad_input; per stride phase, ⌈k / (stride / gcd(stride, dilation))⌉ per dim for the forward;
    none for grad_weight (taps are its columns)."""
    if pass_ == "grad_weight":
        return 0
    if pass_ == "grad_input":
        return geom.taps
    return math.prod(ceil_div(k, s // math.gcd(s, d)) for k, s, d in zip(geom.kernel_size, geom.stride, geom.dilation))


def gemm_packed_operands(math_name: str, pass_: str, device: DeviceDescriptor = None) -> tuple:
    """The operands ("x", "weight", "grad_output") the GEMM of ``pass_`` reads packed on ``device``
    (None: an H100's descriptor): see GEMM_PACKED_TENSORS."""
    if math_name not in GEMM_TENSOR_CORE_MATHS and (device or H100_SXM).capability < GEMM_CP_ASYNC_CAPABILITY:
        return ()
    return GEMM_PACKED_TENSORS[pass_]


def gemm_sides(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor = None):
    """(rows, columns) of the GEMM's C per group — of the largest stride phase for the forward. The
    columns of grad_weight are (output channel, tap) pairs; where it reads the activations packed
    (gemm_packed_operands on ``device``) they go tap by tap, each tap's output channels padded to
    whole GEMM_PACK_ROW_BYTES as the packed grad_output's rows are."""
    if pass_ == "forward":
        return (geom.batch * math.prod(ceil_div(o, s) for o, s in zip(geom.out_size, geom.stride)),
                geom.out_channels_per_group)
    if pass_ == "grad_input":
        return geom.batch * math.prod(geom.in_size), geom.in_channels_per_group
    if gemm_packed_operands(math_name, pass_, device):
        return geom.in_channels_per_group, geom.taps * packed_channels(geom.out_channels_per_group, math_name)
    return geom.in_channels_per_group, geom.out_channels_per_group * geom.taps


def packed_channels(channels: int, math_name: str) -> int:
    """``channels`` padded to whole GEMM_PACK_ROW_BYTES of ``math_name``'s elements: a packed row."""
    per_row = GEMM_PACK_ROW_BYTES // GEMM_ELEMENT_BYTES[math_name]
    return ceil_div(channels, per_row) * per_row


def gemm_slice_bytes(math_name: str, tile) -> tuple:
    """Bytes of one (A, B) shared-memory slice of ``math_name``'s GEMM on ``tile`` (BM, BN)."""
    rows, columns = tile
    slice_k, element = GEMM_SLICE_K[math_name], GEMM_ELEMENT_BYTES[math_name]
    if math_name in ("tf32", "tf32x3"):  # k-major for grad_weight, rows of K for the others; the larger
        return (max(slice_k * (rows + 8), rows * (slice_k + 4)) * element,
                max(slice_k * (columns + 8), columns * (slice_k + 4)) * element)
    if math_name in ("f16", "bf16"):  # A: k-major for grad_weight, m-major for the others; the larger
        return max(slice_k * (rows + 8), rows * (slice_k + 8)) * element, slice_k * (columns + 8) * element
    # FFMA, DFMA: k-major rows padded by 32 bytes; A m-major (forward, grad_input) by 16; the larger
    pad, row_pad = 32 // element, 16 // element
    return max(slice_k * (rows + pad), rows * (slice_k + row_pad)) * element, slice_k * (columns + pad) * element


def gemm_dynamic_shared_bytes(math_name: str, tile) -> int:
    """Bytes of dynamic shared memory the GEMM of ``math_name`` on ``tile`` launches with: its
    stages' slices where it pipelines more than two (GEMM_STAGES), else 0 (static slices)."""
    stages = GEMM_STAGES[math_name]
    return stages * sum(gemm_slice_bytes(math_name, tile)) if stages > 2 else 0


def gemm_min_blocks(math_name: str, tile) -> int:
    """The blocks per SM the tile's __launch_bounds__ asks the registers to allow (gemm_math.cuh):
    by accumulators per thread (BM·BN / 256) — FFMA 2 from 32, 4 below; DFMA 2; tf32 2 from 32, else
    3; tf32x3 1, 2 (32), 3; FP16/BF16 2."""
    accumulators = tile[0] * tile[1] // GEMM_THREADS
    if math_name == "f32":
        return 2 if accumulators >= 32 else 4
    if math_name == "f64":
        return 2
    if math_name == "tf32":
        return 2 if accumulators >= 32 else 3
    if math_name == "tf32x3":
        return 1 if accumulators >= 64 else 2 if accumulators >= 32 else 3
    return 2


def gemm_resources(math_name: str, pass_: str, device: DeviceDescriptor, tile=None) -> KernelResources:
    """Threads, registers per thread (the launch bounds' most) and shared memory (static and
    dynamic) of one block of ``math_name``'s GEMM for ``pass_`` on ``tile`` (None: the menu's
    widest): GEMM_STAGES slices, the forward's and grad_input's tap table, and on
    GEMM_REGISTER_BOUND_MATHS the forward's output grid."""
    tile = tile or GEMM_TILES[math_name][pass_][0]
    shared = (GEMM_STAGES[math_name] * sum(gemm_slice_bytes(math_name, tile))
              + (0 if pass_ == "grad_weight" else GEMM_TAP_TABLE_BYTES)
              + (GEMM_OUTPUT_GRID_BYTES if pass_ == "forward" and math_name in GEMM_REGISTER_BOUND_MATHS else 0))
    return KernelResources(GEMM_THREADS,
                           launch_bound_registers(device, GEMM_THREADS, gemm_min_blocks(math_name, tile)), shared)


def gemm_k(geom: ConvTransposeGeometry, pass_: str, math_name: str):
    """(values, slices) of the GEMM's K per block: grad_weight N·in_spatial (sample, position)
    pairs in slices of BK; the forward (largest phase) and grad_input taps × channels, in slices of
    BK channels of one tap."""
    slice_k = GEMM_SLICE_K[math_name]
    if pass_ == "grad_weight":
        values = geom.batch * math.prod(geom.in_size)
        return values, ceil_div(values, slice_k)
    taps = _taps_per_phase_bound(geom, pass_)
    channels = geom.in_channels_per_group if pass_ == "forward" else geom.out_channels_per_group
    return taps * channels, taps * ceil_div(channels, slice_k)




def packed_weight_elements(geom: ConvTransposeGeometry, pass_: str, math_name: str) -> int:
    """Elements of the weight packed for the forward's or grad_input's GEMM: groups × taps × K
    channels rows of the N channels, or (N-major, GEMM_PACKED_N_MAJOR_MATHS) groups × taps × N
    channels rows of the K channels, rows padded to whole GEMM_PACK_ROW_BYTES."""
    k_channels, n_channels = ((geom.in_channels_per_group, geom.out_channels_per_group) if pass_ == "forward"
                              else (geom.out_channels_per_group, geom.in_channels_per_group))
    rows, row = (n_channels, k_channels) if math_name in GEMM_PACKED_N_MAJOR_MATHS else (k_channels, n_channels)
    return geom.groups * geom.taps * rows * packed_channels(row, math_name)


def packed_tensor_elements(geom: ConvTransposeGeometry, tensor: str, math_name: str) -> int:
    """Elements of ``tensor`` ("x" or "grad_output") packed channels-last by
    deconv_gemm_pack_activation_*: N × positions × groups × channels per group padded to whole
    GEMM_PACK_ROW_BYTES."""
    channels, positions = ((geom.in_channels_per_group, math.prod(geom.in_size)) if tensor == "x"
                           else (geom.out_channels_per_group, math.prod(geom.out_size)))
    return geom.batch * positions * geom.groups * packed_channels(channels, math_name)


def packed_elements(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor = None) -> int:
    """Elements of every operand the GEMM of ``pass_`` packs on ``device`` (gemm_packed_operands)."""
    return sum(packed_weight_elements(geom, pass_, math_name) if operand == "weight"
               else packed_tensor_elements(geom, operand, math_name)
               for operand in gemm_packed_operands(math_name, pass_, device))


def wave_fill(blocks: int, full_wave: int) -> float:
    """The fraction of the waves a grid of ``blocks`` occupies that its blocks fill."""
    return blocks / (ceil_div(blocks, full_wave) * full_wave)


def split_limit(geom: ConvTransposeGeometry, pass_: str, math_name: str, grid_z: int) -> int:
    """The most parts K may be split into, whatever the GPU: each at least SPLIT_MIN_K values of K,
    the workspace (splits × the output in the accumulation type) within SPLIT_WORKSPACE_CAP,
    splits × grid z within the grid's limit, at most one split per slice of K (the kernel gives
    split s the slices from ⌊s·slices/splits⌋: none empty)."""
    values, slices = gemm_k(geom, pass_, math_name)
    accumulator_bytes = 8 if math_name == "f64" else 4
    output_bytes = math.prod(getattr(geom, GEMM_OUTPUT_SHAPE[pass_])) * accumulator_bytes
    return max(1, min(values // SPLIT_MIN_K, SPLIT_WORKSPACE_CAP // output_bytes, MAX_GRID_Y // grid_z, slices))


def gemm_splits(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor, tile=None) -> int:
    """How many parts the GEMM of ``pass_`` on ``tile`` (None: the menu's widest) splits K into on
    ``device`` (within split_limit): grad_weight the fewest from which its grid holds
    SPLIT_TARGET_WAVES waves with its last wave SPLIT_MIN_WAVE_FILL full (looking up to twice the
    count that first reaches the waves; else the best filled); the forward and grad_input, when
    their grid is shorter than one wave, into as many parts as still fit in one (⌊wave / blocks⌋:
    every block runs at once)."""
    grid, _ = gemm_grid(geom, pass_, math_name, 1, tile, device)
    blocks = math.prod(grid) if grid else 0
    if not blocks:
        return 1
    full_wave = wave(device, gemm_resources(math_name, pass_, device, tile))
    limit = split_limit(geom, pass_, math_name, grid[2])
    if pass_ != "grad_weight":
        return max(1, min(full_wave // blocks, limit))
    least = ceil_div(SPLIT_TARGET_WAVES * full_wave, blocks)
    if least >= limit:
        return limit
    candidates = range(least, min(2 * least, limit) + 1)
    filled = [splits for splits in candidates if wave_fill(blocks * splits, full_wave) >= SPLIT_MIN_WAVE_FILL]
    return filled[0] if filled else max(candidates, key=lambda splits: (wave_fill(blocks * splits, full_wave),
                                                                         -splits))


def gemm_time(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor, tile,
              splits: int) -> float:
    """The tile heuristic's estimate of the GEMM's time, in the time an SM takes to receive one
    operand element: a block's BM·BN·Kb multiply-adds at GEMM_FMA_PER_OPERAND per element received
    plus its (BM + BN)·Kb operand elements (Kb: its share of K, padded to whole slices); the full
    waves each cost the blocks an SM holds at once (they share its throughput), the last partial
    wave the most blocks it puts on one SM. Padding (partial tiles, slices) is counted as work.
    None where the GEMM cannot run the problem on ``tile``."""
    grid, _ = gemm_grid(geom, pass_, math_name, splits, tile, device)
    if grid is None:
        return None
    blocks = math.prod(grid)
    resident = resident_blocks(device, gemm_resources(math_name, pass_, device, tile))
    full_wave = device.sm_count * resident
    k_per_block = ceil_div(gemm_k(geom, pass_, math_name)[1], splits) * GEMM_SLICE_K[math_name]
    rows, columns = tile
    block_time = rows * columns * k_per_block / GEMM_FMA_PER_OPERAND[math_name] + (rows + columns) * k_per_block
    return (blocks // full_wave * resident + ceil_div(blocks % full_wave, device.sm_count)) * block_time


def gemm_tile(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor):
    """The tile of the pass's menu for ``device``: among the tiles whose grid (at their own split
    count) gives every SM a block, the least gemm_time, the wider on a tie; where none does, the
    one with the most blocks (the least time on a tie) — an SM left idle is lost whatever the model
    says of the others, and one block of 8 warps per SM hides latency worse than it assumes. The
    widest where none can run (gemm_grid then says why)."""
    menu = GEMM_TILES[math_name][pass_]
    candidates = []
    for order, tile in enumerate(menu):
        splits = gemm_splits(geom, pass_, math_name, device, tile)
        time = gemm_time(geom, pass_, math_name, device, tile, splits)
        if time is not None:
            blocks = math.prod(gemm_grid(geom, pass_, math_name, splits, tile, device)[0])
            candidates.append((blocks, time, order, tile))
    if not candidates:
        return menu[0]
    filling = [(time, order, tile) for blocks, time, order, tile in candidates if blocks >= device.sm_count]
    if filling:
        return min(filling)[2]
    return min(candidates, key=lambda c: (-c[0], c[1], c[2]))[3]


def gemm_grid(geom: ConvTransposeGeometry, pass_: str, math_name: str, splits: int = 1, tile=None,
              device: DeviceDescriptor = None):
    """(grid, None) for the implicit GEMM of ``pass_`` ("forward", "grad_input", "grad_weight") on
    ``tile`` (BM, BN; None: the menu's widest), or (None, why) where the GEMM cannot run this
    problem. Forward: grid z = splits × stride phases × groups, x over the rows of the largest phase
    (phase 0: ⌈out/stride⌉ positions per dim); grad_input: z = splits × groups; grad_weight: z =
    groups × splits (of K)."""
    tile_rows, tile_columns = tile or GEMM_TILES[math_name][pass_][0]
    rows, columns = gemm_sides(geom, pass_, math_name, device)
    phases = math.prod(geom.stride) if pass_ == "forward" else 1
    taps = _taps_per_phase_bound(geom, pass_)
    if taps > GEMM_MAX_TAPS:
        return None, f"{taps} kernel taps per stride phase, above the GEMM's {GEMM_MAX_TAPS}"
    if splits * phases * geom.groups > MAX_GRID_Y:
        what = "splits × stride phases" if pass_ == "forward" else "splits"
        return None, f"{what} × groups = {splits * phases * geom.groups}, above {MAX_GRID_Y} (grid z)"
    spatial = max(math.prod(geom.in_size), math.prod(geom.out_size))
    if geom.batch * spatial + max(tile_rows, tile_columns) > INT32_MAX:
        return None, f"N·spatial size = {geom.batch * spatial}, above the GEMM's 32-bit row index"
    grid = (ceil_div(rows, tile_rows), ceil_div(columns, tile_columns), splits * phases * geom.groups)
    if grid[1] > MAX_GRID_Y:
        return None, f"{columns} GEMM columns per group: {grid[1]} tiles, above {MAX_GRID_Y} (grid y)"
    return grid, None
