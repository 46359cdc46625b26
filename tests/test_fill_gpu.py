"""Filling the GPU: the device descriptor, split K for the three GEMM passes, and the depthwise
grad_weight kernel.

Oracles: the float64 NumPy reference for every new path (split counts that do not divide K, the
split reduce with and without the forward's bias, depthwise grad_weight over slabs), bitwise
reruns, hand-computed occupancy for the descriptor maths, nvcc's own register and shared-memory
counts for the GEMM resources the heuristic assumes, and the heuristic's choices on real layers
pinned for an H100 SXM and a 46-SM part (grad_weight grids of at least two waves or all the
parallelism the shape allows; conv grids that split only while they fit in one wave; workspaces
within the cap).
"""
import dataclasses
import math

import numpy as np
import pytest

from cudeconv import backends
from cudeconv._dtypes import BFLOAT16
from cudeconv._geometry import make_geometry
from cudeconv._loader import kernels_dir
from cudeconv.backends.device_descriptor import (H100_SXM, KernelResources, launch_bound_registers,
                                                 resident_blocks, wave, with_sm_count)
from cudeconv.backends.gemm_plan import (GEMM_MATHS, GEMM_PASSES, GEMM_TILES, SPLIT_MIN_WAVE_FILL, gemm_min_blocks,
                                         packed_elements)
from cudeconv.backends.kernel_backend import (BLOCK, SPLIT_MIN_K, SPLIT_TARGET_WAVES,
                                              SPLIT_WORKSPACE_CAP, KernelBackend, gemm_dynamic_shared_bytes, gemm_grid,
                                              gemm_k, gemm_resources,
                                              gemm_splits)
from cudeconv.cases import BY_NAME

from conftest import (assert_close, float64_reference, sanitized_emulator_backend, sass_report,
                      skip_unless_kernel_checks_can_run, to_backend, to_numpy)
from test_gemm import check_against_reference

DTYPES = [np.float32, np.float64, np.float16, BFLOAT16]
SMALL_PART = with_sm_count(H100_SXM, 46, "46-SM part")


def _arrays(geom, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in
            (geom.input_shape, geom.weight_shape, (geom.out_channels,), geom.output_shape)]


def _math(dtype):
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16",
            BFLOAT16: "bf16"}[np.dtype(dtype)]


# -- the descriptor ------------------------------------------------------------------------------

def test_occupancy_by_hand():
    # 256 threads of 64 registers: 64·32 = 2048 per warp, 8 warps → 4 blocks in 65536 registers
    assert resident_blocks(H100_SXM, KernelResources(256, 64, 0)) == 4
    # registers round up to 256 per warp: 65 → 72 per thread → 65536 // (2304·8) = 3
    assert resident_blocks(H100_SXM, KernelResources(256, 65, 0)) == 3
    # shared memory: (100 KiB + 1 KiB reserved) per block in 228 KiB → 2
    assert resident_blocks(H100_SXM, KernelResources(128, 32, 100 * 1024)) == 2
    # threads: 2048 per SM / 1024 → 2; blocks: at most 32 of 32 threads
    assert resident_blocks(H100_SXM, KernelResources(1024, 16, 0)) == 2
    assert resident_blocks(H100_SXM, KernelResources(32, 16, 0)) == 32
    assert wave(SMALL_PART, KernelResources(256, 64, 0)) == 46 * 4
    # __launch_bounds__(256, 2) leaves 128 registers, (256, 1) all 255
    assert launch_bound_registers(H100_SXM, 256, 2) == 128
    assert launch_bound_registers(H100_SXM, 256, 1) == 255


# blocks per SM of the widest tile (forward and grad_input, grad_weight): registers decide (the
# launch bounds), shared memory never does on an H100
WIDEST_PER_SM = {"f32": (2, 2), "f64": (2, 2), "tf32": (2, 2), "tf32x3": (1, 1), "f16": (2, 2), "bf16": (2, 2)}


@pytest.mark.parametrize("math_name", sorted(WIDEST_PER_SM))
def test_gemm_blocks_per_sm_follow_the_launch_bounds(math_name):
    conv, weight_grad = WIDEST_PER_SM[math_name]
    for pass_, per_sm in {"forward": conv, "grad_input": conv, "grad_weight": weight_grad}.items():
        assert resident_blocks(H100_SXM, gemm_resources(math_name, pass_, H100_SXM)) == per_sm
        assert wave(SMALL_PART, gemm_resources(math_name, pass_, SMALL_PART)) == 46 * per_sm
        for tile in GEMM_TILES[math_name][pass_]:  # every tile: as many as its launch bounds ask
            min_blocks = gemm_min_blocks(math_name, tile)
            assert resident_blocks(H100_SXM, gemm_resources(math_name, pass_, H100_SXM, tile)) == min_blocks


def test_descriptor_refuses_bad_fields_and_backends_refuse_non_descriptors():
    with pytest.raises(ValueError, match="sm_count must be at least 1, got 0"):
        dataclasses.replace(H100_SXM, sm_count=0)
    with pytest.raises(ValueError, match=r"registers_per_sm must be a non-negative int, got -1"):
        dataclasses.replace(H100_SXM, registers_per_sm=-1)
    with pytest.raises(TypeError, match="device must be a DeviceDescriptor, got dict"):
        KernelBackend("emulator", np, None, lambda: "cpu", device={"sm_count": 132})
    assert KernelBackend("emulator", np, None, lambda: "cpu").device_descriptor() == H100_SXM


def test_an_older_gpu_takes_the_direct_kernels_for_the_tensor_core_maths():
    """Compute capability 7.5 runs the FFMA and DFMA GEMMs (register-staged, no cp.async) but not
    the tensor-core ones."""
    turing = dataclasses.replace(H100_SXM, name="sm_75", compute_capability=(7, 5))
    impl = KernelBackend("emulator", np, None, lambda: "cpu", device=turing)
    geom = make_geometry(2, (2, 64, 8, 8), (64, 32, 4, 4), 2, 1, 0, 1, 1)
    assert impl.kernel_path(geom, "forward", "auto", np.float32, "fp32").kind == "gemm"
    assert impl.kernel_path(geom, "forward", "auto", np.float64, "fp32").kind == "gemm"
    assert impl.kernel_path(geom, "forward", "auto", np.float32, "tf32").kind == "direct"
    assert impl.kernel_path(geom, "forward", "auto", np.float16, "fp32").kind == "direct"
    with pytest.raises(ValueError, match=r"compute capability 7\.5; the tf32 GEMM kernels need 8\.0"):
        impl.kernel_path(geom, "forward", "gemm", np.float32, "tf32")
    assert KernelBackend("emulator", np, None, lambda: "cpu").kernel_path(
        geom, "forward", "auto", np.float32, "fp32").kind == "gemm"


def test_cuda_descriptor_is_the_arrays_device():
    """On a GPU: the descriptor holds the device's own attributes, as CuPy names them."""
    import conftest

    conftest._usable("cuda")
    import cupy

    impl = backends.get("cuda")
    descriptor = impl.device_descriptor(cupy.zeros(1))
    attributes = cupy.cuda.Device(0).attributes
    assert descriptor.sm_count == attributes["MultiProcessorCount"]
    assert descriptor.compute_capability == (attributes["ComputeCapabilityMajor"],
                                             attributes["ComputeCapabilityMinor"])
    assert descriptor.shared_memory_per_block_optin == attributes["MaxSharedMemoryPerBlockOptin"]
    assert descriptor.registers_per_sm == attributes["MaxRegistersPerMultiprocessor"]


# -- the heuristic on real layers ----------------------------------------------------------------

# (case, dtype, device, {pass: (tile, split count)}) — forward/grad_input/grad_weight on the GEMM
# (tile from gemm_plan.gemm_tile, checked against its rule in test_gemm_tiles.py), or grad_weight's
# slabs on the depthwise kernel (tile None)
W, HALF_N, HALF_M, QUARTER, NARROW_N, NARROW_M = (128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (32, 128)
PINNED = [
    # 4 × 32 tiles: 5 splits reach two waves of 264 but leave the third 81% full; 6 fill it to 97%
    ("dcgan_g2", np.float32, H100_SXM, {"forward": (W, 1), "grad_input": (W, 2), "grad_weight": (W, 6)}),
    ("dcgan_g2", np.float32, SMALL_PART, {"forward": (W, 1), "grad_input": (W, 1), "grad_weight": (W, 2)}),
    # float16: two blocks per SM as float32, and 256 output channels fill the packed rows: the same
    ("dcgan_g2", np.float16, H100_SXM, {"forward": (W, 1), "grad_input": (W, 2), "grad_weight": (W, 6)}),
    # 3 output channels: the forward on the N-narrow tile; grad_weight's columns, 16 taps × 3
    # channels padded to a 32-byte row of 8 (the packed grad_output's), on one 128 × 128 tile
    ("dcgan_g4", np.float32, H100_SXM, {"forward": (NARROW_N, 1), "grad_weight": (W, 256)}),
    ("dcgan_g4", np.float32, SMALL_PART, {"forward": (NARROW_N, 1), "grad_weight": (W, 184)}),
    ("dcgan_g3", np.float32, H100_SXM, {"forward": (W, 1), "grad_input": (W, 1), "grad_weight": (W, 23)}),
    ("hifigan_up1", np.float32, H100_SXM, {"forward": (W, 1), "grad_input": (W, 4), "grad_weight": (W, 6)}),
    ("unet_up", np.float32, H100_SXM, {"forward": (W, 1), "grad_input": (W, 1), "grad_weight": (W, 64)}),
    ("unet_up", np.float16, SMALL_PART, {"forward": (W, 1), "grad_input": (W, 1), "grad_weight": (W, 23)}),
    ("depthwise_up", np.float32, H100_SXM, {"grad_weight": (None, 3)}),
    ("depthwise_up", np.float32, SMALL_PART, {"grad_weight": (None, 1)}),
    ("deep_4x4", np.float32, H100_SXM, {"forward": (W, 2), "grad_input": (W, 4), "grad_weight": (W, 2)}),
    ("deep_4x4", np.float16, SMALL_PART, {"forward": (W, 1), "grad_input": (W, 1), "grad_weight": (W, 1)}),
    ("hifigan_up4", np.float32, H100_SXM, {"forward": (NARROW_N, 1), "grad_input": (HALF_N, 1),
                                           "grad_weight": (HALF_M, 256)}),
    # 8 channels per group: the narrow tiles on both sides, all on the GEMM
    ("grouped_up3d", np.float32, H100_SXM, {"forward": (NARROW_N, 1), "grad_input": (NARROW_N, 2),
                                            "grad_weight": (NARROW_M, 32)}),
    ("grouped_up3d", np.float32, SMALL_PART, {"forward": (NARROW_N, 1), "grad_input": (NARROW_N, 1),
                                              "grad_weight": (NARROW_M, 23)}),
    # 21 classes: N-narrow for the forward and grad_input, M-narrow for grad_weight
    ("fcn8s_up8", np.float32, H100_SXM, {"forward": (NARROW_N, 1), "grad_input": (NARROW_N, 16),
                                         "grad_weight": (NARROW_M, 16)}),
]


@pytest.mark.parametrize("name, dtype, device, expected", PINNED,
                         ids=[f"{n}-{np.dtype(d).name}-{dev.sm_count}sm" for n, d, dev, _ in PINNED])
def test_split_counts_on_real_layers(name, dtype, device, expected):
    geom = BY_NAME[name].geometry()
    impl = KernelBackend("prediction", np, None, lambda: "unused", device=device)
    math_name = _math(dtype)
    for pass_, (tile, splits) in expected.items():
        path = impl.kernel_path(geom, pass_, "auto", dtype, "fp32")
        assert path.parts == splits, (pass_, path)
        if path.kind != "gemm":
            assert path.kind == "depthwise" and pass_ == "grad_weight" and tile is None, path
            assert path.workspace_bytes <= SPLIT_WORKSPACE_CAP
            continue
        assert path.tile == tile, (pass_, path)
        # the partial copies within the cap (the packed operands come on top)
        partial_bytes = path.workspace_bytes - packed_elements(geom, pass_, math_name, device) * np.dtype(dtype).itemsize
        assert partial_bytes <= SPLIT_WORKSPACE_CAP
        unsplit = math.prod(gemm_grid(geom, pass_, math_name, 1, tile)[0])
        assert math.prod(path.grid) == unsplit * splits
        full_wave = wave(device, gemm_resources(math_name, pass_, device, tile))
        values, slices = gemm_k(geom, pass_, math_name)
        # what the shape allows: splits of SPLIT_MIN_K values at least, partial copies within the cap
        copy_bytes = math.prod(geom.weight_shape if pass_ == "grad_weight" else geom.output_shape
                               if pass_ == "forward" else geom.input_shape) * (8 if dtype == np.float64 else 4)
        shape_limit = min(values // SPLIT_MIN_K, SPLIT_WORKSPACE_CAP // copy_bytes, slices)
        if pass_ == "grad_weight":  # two waves, or all the parallelism the shape has
            least = math.ceil(SPLIT_TARGET_WAVES * full_wave / unsplit)
            if shape_limit <= least:
                assert splits == max(1, shape_limit)
                continue
            assert least <= splits <= min(2 * least, shape_limit)
            assert unsplit * splits >= SPLIT_TARGET_WAVES * full_wave
            # the fewest whose last wave is SPLIT_MIN_WAVE_FILL full (or the best filled of the range)
            fill = {s: unsplit * s / (math.ceil(unsplit * s / full_wave) * full_wave)
                    for s in range(least, min(2 * least, shape_limit) + 1)}
            full_enough = [s for s, f in fill.items() if f >= SPLIT_MIN_WAVE_FILL]
            assert splits == (full_enough[0] if full_enough else max(fill, key=lambda s: (fill[s], -s)))
        else:  # a grid shorter than a wave splits into as many parts as still fit in one
            wanted = full_wave // unsplit if unsplit < full_wave else 1
            assert unsplit * splits <= full_wave or splits == 1
            assert splits == max(1, min(wanted, shape_limit)), (splits, wanted, shape_limit)


def test_workspace_cap_reduces_the_splits():
    """On an H100 two waves never need more than ~35 MB of float32 partials (a tile's share of
    grad_weight times the blocks wanted); on a GPU of 4096 SMs a 3-d layer with 125 taps would want
    132 splits of 8.2 MB: the count stops where the partial copies would pass the cap."""
    geom = make_geometry(3, (64, 128, 8, 8, 8), (128, 128, 5, 5, 5), 1, 2, 0, 1, 1)
    huge = with_sm_count(H100_SXM, 4096)
    per_copy = math.prod(geom.weight_shape) * 4
    blocks = math.prod(gemm_grid(geom, "grad_weight", "f32")[0])
    assert blocks == 125 and math.ceil(2 * 2 * 4096 / blocks) == 132 > SPLIT_WORKSPACE_CAP // per_copy
    splits = gemm_splits(geom, "grad_weight", "f32", huge)
    assert splits == 32 and splits * per_copy <= SPLIT_WORKSPACE_CAP < (splits + 1) * per_copy
    # on an H100: ⌈528 / 125⌉ = 5 splits fill 625 of 792 slots (79%); 6, 750 (95%)
    assert gemm_splits(geom, "grad_weight", "f32", H100_SXM) == 6


# -- split K: parity and reruns ------------------------------------------------------------------

# (in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch): K of 3·3
# taps × 20 channels (forward phases 1-4 taps), 12 × 13 channel·taps for grad_input; M and N below
# a tile, so splitting is what a GPU would do
SPLIT_GEOMETRY = ((3, 4), (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 2, 40, 26, 2)


def _geometry(config):
    in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch = config
    return make_geometry(len(in_size), (batch, cin) + in_size, (cin, cout // groups) + kernel, stride, padding,
                         output_padding, groups, dilation)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_split_k_matches_the_reference_for_every_pass(kernel_backend, poisoned, dtype):
    """Forward (bias added once, in the reduce), grad_input and grad_weight at split counts that do
    not divide K — including more splits than some forward phases have slices — against float64;
    each split count rerun bit for bit."""
    geom = _geometry(SPLIT_GEOMETRY)
    impl = backends.get(kernel_backend)
    arrays = _arrays(geom, dtype, 7)
    x, weight, bias, grad_output = (to_backend(a, kernel_backend) for a in arrays)
    for splits in (2, 3, 7):
        runs = [{
            "forward": to_numpy(impl.forward(x, weight, bias, geom, "gemm", "fp32", splits)),
            "grad_input": to_numpy(impl.grad_input(grad_output, weight, geom, "gemm", "fp32", splits)),
            "grad_weight": to_numpy(impl.grad_weight(grad_output, x, geom, "gemm", "fp32", splits)),
        } for _ in range(2)]
        for name in runs[0]:
            assert runs[0][name].tobytes() == runs[1][name].tobytes(), (name, splits)
        check_against_reference(runs[0], arrays, geom, dtype, "fp32")
    # without bias the reduce adds nothing
    (y_ref, *_), (y_scale, *_) = float64_reference(geom, arrays[0], arrays[1], np.zeros_like(arrays[2]), arrays[3])
    assert_close(impl.forward(x, weight, None, geom, "gemm", "fp32", 3), y_ref, dtype,
                 terms=geom.in_channels_per_group * geom.taps, scale=y_scale, name="forward without bias")


def test_split_k_launches_the_reduce_only_when_split(monkeypatch):
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    impl = backends.get("emulator")
    launched = []
    launch = KernelBackend._launch
    monkeypatch.setattr(KernelBackend, "_launch", lambda self, f, entry, *a: (launched.append(entry), launch(self, f, entry, *a)))
    geom = _geometry(SPLIT_GEOMETRY)
    x, weight, bias, _ = _arrays(geom, np.float32, 1)
    impl.forward(x, weight, bias, geom, "gemm", "fp32", 1, (128, 128))
    packings = ["deconv_gemm_pack_activation_f32", "deconv_gemm_pack_weight_f32"]
    assert launched == packings + ["deconv_forward_gemm_f32_128x128"]
    impl.forward(x, weight, bias, geom, "gemm", "fp32", 2, (128, 128))
    assert launched[3:] == packings + ["deconv_forward_gemm_f32_128x128", "deconv_gemm_split_reduce_f32"]


# -- depthwise grad_weight -----------------------------------------------------------------------

# (in_size, kernel, stride, padding, output_padding, dilation, groups, cin, cout, batch): channel
# multipliers 1 and 2; 2-d k4 s2 (16 taps: one tile for multiplier 1), 1-d k16 s8, 3-d with
# dilation (12 taps: tiles that span two channels for multiplier 2)
DEPTHWISE = [
    ((5, 6), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 3, 3, 3, 2),
    ((5, 6), (4, 4), (2, 2), (1, 1), (1, 0), (1, 1), 3, 3, 6, 2),
    ((9,), (16,), (8,), (4,), (3,), (1,), 2, 2, 4, 3),
    ((3, 3, 2), (2, 3, 2), (2, 1, 2), (0, 1, 1), (1, 0, 0), (1, 2, 1), 2, 2, 4, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("config", DEPTHWISE, ids=lambda c: f"{len(c[0])}d-mult{c[8] // c[6]}")
def test_depthwise_grad_weight_matches_the_reference(kernel_backend, poisoned, monkeypatch, config, dtype):
    """algorithm="auto" runs deconv_grad_weight_depthwise_* on one input channel per group: one slab
    and slab counts that do not divide N·in_spatial (their partials combined in order), each
    against float64 and rerun bit for bit."""
    geom = _geometry(config)
    impl = backends.get(kernel_backend)
    launched = []
    launch = KernelBackend._launch
    monkeypatch.setattr(KernelBackend, "_launch", lambda self, f, entry, *a: (launched.append(entry), launch(self, f, entry, *a)))
    x, weight, bias, grad_output = _arrays(geom, dtype, seed=sum(map(hash, config)) % 2**32)
    (_, _, gw_ref, _), (_, _, gw_scale, _) = float64_reference(geom, x, weight, bias, grad_output)
    xb, gyb = to_backend(x, kernel_backend), to_backend(grad_output, kernel_backend)
    pairs = geom.batch * math.prod(geom.in_size)
    for slabs in (1, 2, 5):
        first = to_numpy(impl.grad_weight(gyb, xb, geom, "auto", "fp32", slabs))
        assert_close(first, gw_ref, dtype, terms=pairs, scale=gw_scale, name=f"grad_weight, {slabs} slabs")
        assert to_numpy(impl.grad_weight(gyb, xb, geom, "auto", "fp32", slabs)).tobytes() == first.tobytes()
    suffix = _math(dtype)
    assert f"deconv_grad_weight_depthwise_{suffix}" in launched
    assert f"deconv_grad_weight_depthwise_combine_{suffix}" in launched


def test_depthwise_grad_weight_tiles_and_slabs():
    impl = KernelBackend("prediction", np, None, lambda: "unused")
    geom = BY_NAME["depthwise_up"].geometry()  # 256 channels, 16 taps, 16·32² pairs
    path = impl.kernel_path(geom, "grad_weight", "auto", np.float32, "fp32")
    # one tile of 16 taps per channel; 2 waves of 264 blocks need 3 slabs of 256 rows
    assert (path.kind, path.grid, path.parts) == ("depthwise", (3, 256, 1), 3)
    assert path.workspace_bytes == 3 * 256 * 16 * 4
    # "gather" keeps the generic per-filter reduction
    assert impl.kernel_path(geom, "grad_weight", "gather", np.float32, "fp32").entry == "deconv_grad_weight_f32"


def test_depthwise_grad_weight_under_the_sanitizer():
    sanitized = sanitized_emulator_backend()
    geom = _geometry(DEPTHWISE[3])
    for dtype in DTYPES:
        x, weight, bias, grad_output = _arrays(geom, dtype, 4)
        (_, _, gw_ref, _), (_, _, gw_scale, _) = float64_reference(geom, x, weight, bias, grad_output)
        for slabs in (1, 3):
            assert_close(sanitized.grad_weight(grad_output, x, geom, "auto", "fp32", slabs), gw_ref, dtype,
                         terms=geom.batch * math.prod(geom.in_size), scale=gw_scale)


# -- SASS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_gemm_resources_match_nvcc(arch):
    """The heuristic's per-block resources are nvcc's: static shared memory (the stages' slices of
    the pipelined GEMMs are dynamic, gemm_dynamic_shared_bytes: the emulator's parity runs, which
    poison what lies past the launch's dynamic bytes, check those) and registers within the
    launch bounds."""
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = {row["kernel"]: row for row in sass_report.report(kernels_dir() / "deconv_gemm.cu", arch)}
    # sm_90 cubins count the 1 KiB the runtime reserves per block in their static shared memory
    reserved = H100_SXM.reserved_shared_memory_per_block if arch == "sm_90" else 0
    for math_name in GEMM_MATHS:
        for pass_ in GEMM_PASSES:
            for tile in GEMM_TILES[math_name][pass_]:
                row = rows[f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"]
                resources = gemm_resources(math_name, pass_, H100_SXM, tile)
                dynamic = gemm_dynamic_shared_bytes(math_name, tile)
                assert row["shared"] == resources.shared_bytes - dynamic + reserved, row
                assert row["registers"] <= resources.registers_per_thread, row
                assert resources.threads == BLOCK


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_new_kernels_do_not_spill(arch):
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = sass_report.report(kernels_dir() / "deconv_depthwise.cu", arch) + [
        row for row in sass_report.report(kernels_dir() / "deconv_gemm.cu", arch)
        if row["kernel"].startswith("deconv_gemm_split_reduce_")]
    names = {row["kernel"] for row in rows}
    for suffix in ("f16", "bf16", "f32", "f64"):
        assert {f"deconv_grad_weight_depthwise_{suffix}", f"deconv_grad_weight_depthwise_combine_{suffix}",
                f"deconv_gemm_split_reduce_{suffix}"} <= names
    for row in rows:
        assert row["spill_stores"] == row["spill_loads"] == row["LDL"] == row["STL"] == row["local"] == 0, row
        if row["kernel"].startswith("deconv_grad_weight_depthwise_") and "combine" not in row["kernel"]:
            assert row["registers"] <= launch_bound_registers(H100_SXM, BLOCK, 2), row
