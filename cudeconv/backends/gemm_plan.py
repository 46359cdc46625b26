"""How the implicit GEMMs (kernels/deconv_gemm.cu) are laid out on a GPU: tiles, grids, what one
block holds on an SM, and how many parts K is split into (docs/kernels.md, "Filling the GPU").

The split count is a function of the problem's shape and the DeviceDescriptor only — never of free
memory — so a given GPU model always splits a given shape the same way, and its results are
bitwise reproducible.
"""
from __future__ import annotations

import math

from .._geometry import ConvTransposeGeometry
from .device_descriptor import DeviceDescriptor, KernelResources, launch_bound_registers, wave

GEMM_THREADS = 256  # kThreads of deconv_gemm.cu
GEMM_MAX_TAPS = 256  # taps of one stride phase the GEMM's shared tap table holds
GEMM_TILE_FFMA, GEMM_TILE_DFMA, GEMM_TILE_MMA = 128, 64, 128  # square C tiles (rows = columns)
GEMM_TILE = {"f32": GEMM_TILE_FFMA, "f64": GEMM_TILE_DFMA, "tf32": GEMM_TILE_MMA, "tf32x3": GEMM_TILE_MMA,
             "f16": GEMM_TILE_MMA, "bf16": GEMM_TILE_MMA}
# What one GEMM block holds on an SM (docs/kernels.md, "Filling the GPU"), from deconv_gemm.cu:
# K per shared-memory slice (BK), the bytes of the (A, B) slices (k-major BK × (tile + pad) for
# f32 8 × 136 floats, f64 8 × 68 doubles, f16/bf16 32 × 136 halves, and tf32/tf32x3's B 16 × 136
# floats; m-major tile × (BK + pad) for tf32/tf32x3's A, 128 × 20 floats), each double-buffered;
# the forward and grad_input add their tap table (16-byte TapEntry × GEMM_MAX_TAPS). Registers:
# the most __launch_bounds__(256, kMinBlocks) allows (kMinBlocks per math below; the SASS test
# checks both against nvcc).
GEMM_SLICE_K = {"f32": 8, "f64": 8, "tf32": 16, "tf32x3": 16, "f16": 32, "bf16": 32}
GEMM_SLICE_BYTES = {"f32": (8 * 136 * 4,) * 2, "f64": (8 * 68 * 8,) * 2, "tf32": (128 * 20 * 4, 16 * 136 * 4),
                    "tf32x3": (128 * 20 * 4, 16 * 136 * 4), "f16": (32 * 136 * 2,) * 2, "bf16": (32 * 136 * 2,) * 2}
# On the tensor-core maths the forward's and grad_input's B is the weight packed per pass
# (deconv_gemm_pack_weight_*): per group, taps × (K channels) rows of the N channels, each row
# padded to GEMM_PACK_ROW_BYTES (one 32-byte sector) so the GEMM reads it in aligned 16-byte
# chunks. ELEMENT_BYTES: the storage type.
GEMM_PACKED_MATHS = ("tf32", "tf32x3", "f16", "bf16")
GEMM_PACK_ROW_BYTES = 32
GEMM_ELEMENT_BYTES = {"f32": 4, "f64": 8, "tf32": 4, "tf32x3": 4, "f16": 2, "bf16": 2}
GEMM_MIN_BLOCKS = {"f32": 2, "f64": 2, "tf32": 2, "tf32x3": 1, "f16": 1, "bf16": 1}
GEMM_TAP_TABLE_BYTES = 16 * GEMM_MAX_TAPS
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


def gemm_sides(geom: ConvTransposeGeometry, pass_: str):
    """(rows, columns) of the GEMM's C per group — of the largest stride phase for the forward."""
    if pass_ == "forward":
        return (geom.batch * math.prod(ceil_div(o, s) for o, s in zip(geom.out_size, geom.stride)),
                geom.out_channels_per_group)
    if pass_ == "grad_input":
        return geom.batch * math.prod(geom.in_size), geom.in_channels_per_group
    return geom.in_channels_per_group, geom.out_channels_per_group * geom.taps


def gemm_resources(math_name: str, pass_: str, device: DeviceDescriptor) -> KernelResources:
    """Threads, registers per thread (the launch bounds' most) and static shared memory of one
    block of ``math_name``'s GEMM for ``pass_``."""
    shared = 2 * sum(GEMM_SLICE_BYTES[math_name]) + (0 if pass_ == "grad_weight" else GEMM_TAP_TABLE_BYTES)
    return KernelResources(GEMM_THREADS, launch_bound_registers(device, GEMM_THREADS, GEMM_MIN_BLOCKS[math_name]), shared)


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


GEMM_OUTPUT_SHAPE = {"forward": "output_shape", "grad_input": "input_shape", "grad_weight": "weight_shape"}


def packed_weight_elements(geom: ConvTransposeGeometry, pass_: str, math_name: str) -> int:
    """Elements of the weight packed for the forward's or grad_input's GEMM: groups × taps × K
    channels rows of the N channels, padded to whole GEMM_PACK_ROW_BYTES; 0 for grad_weight, which
    reads no weight, and for the maths that read it unpacked (not in GEMM_PACKED_MATHS)."""
    if pass_ == "grad_weight" or math_name not in GEMM_PACKED_MATHS:
        return 0
    k_channels, n_channels = ((geom.in_channels_per_group, geom.out_channels_per_group) if pass_ == "forward"
                              else (geom.out_channels_per_group, geom.in_channels_per_group))
    per_row = GEMM_PACK_ROW_BYTES // GEMM_ELEMENT_BYTES[math_name]
    return geom.groups * geom.taps * k_channels * ceil_div(n_channels, per_row) * per_row


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


def gemm_splits(geom: ConvTransposeGeometry, pass_: str, math_name: str, device: DeviceDescriptor) -> int:
    """How many parts the GEMM of ``pass_`` splits K into on ``device`` (within split_limit):
    grad_weight the fewest from which its grid holds SPLIT_TARGET_WAVES waves with its last wave
    SPLIT_MIN_WAVE_FILL full (looking up to twice the count that first reaches the waves; else the
    best filled); the forward and grad_input, when their grid is shorter than one wave, into as many
    parts as still fit in one (⌊wave / blocks⌋: every block runs at once)."""
    grid, _ = gemm_grid(geom, pass_, math_name)
    blocks = math.prod(grid) if grid else 0
    if not blocks:
        return 1
    full_wave = wave(device, gemm_resources(math_name, pass_, device))
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


def gemm_grid(geom: ConvTransposeGeometry, pass_: str, math_name: str, splits: int = 1):
    """(grid, None) for the implicit GEMM of ``pass_`` ("forward", "grad_input", "grad_weight"), or
    (None, why) where the GEMM cannot run this problem. Forward: grid z = splits × stride phases ×
    groups, x over the rows of the largest phase (phase 0: ⌈out/stride⌉ positions per dim);
    grad_input: z = splits × groups; grad_weight: z = groups × splits (of K)."""
    tile = GEMM_TILE[math_name]
    rows, columns = gemm_sides(geom, pass_)
    phases = math.prod(geom.stride) if pass_ == "forward" else 1
    taps = _taps_per_phase_bound(geom, pass_)
    if taps > GEMM_MAX_TAPS:
        return None, f"{taps} kernel taps per stride phase, above the GEMM's {GEMM_MAX_TAPS}"
    if splits * phases * geom.groups > MAX_GRID_Y:
        what = "splits × stride phases" if pass_ == "forward" else "splits"
        return None, f"{what} × groups = {splits * phases * geom.groups}, above {MAX_GRID_Y} (grid z)"
    spatial = max(math.prod(geom.in_size), math.prod(geom.out_size))
    if geom.batch * spatial + tile > INT32_MAX:
        return None, f"N·spatial size = {geom.batch * spatial}, above the GEMM's 32-bit row index"
    grid = (ceil_div(rows, tile), ceil_div(columns, tile), splits * phases * geom.groups)
    if grid[1] > MAX_GRID_Y:
        return None, f"{columns} GEMM columns per group: {grid[1]} tiles, above {MAX_GRID_Y} (grid y)"
    return grid, None
