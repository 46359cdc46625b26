"""The packed operands of the implicit GEMMs (kernels/deconv_gemm.cu, deconv_gemm_pack_weight_* and
deconv_gemm_pack_activation_*).

Rows padded to whole 32-byte sectors, so the GEMM copies them into shared memory in 16-byte
cp.async chunks: on the tensor-core maths (tf32, tf32x3, f16, bf16) every operand of every pass —
the weight per group as [tap][N channel][K channel] (tf32, tf32x3: n-major B slices) or [tap][K
channel][N channel] (f16, bf16), the activations (x, grad_output) channels-last as
[n][position][group][channel]; tf32 rounds them to TF32. f32 and f64 pack every operand too,
the weight as [tap][K][N] (from compute capability 8.0; below it they read the tensors as they
are). Checked here: the packings against NumPy
transposes (padding zeros and tf32's rounding included, every element written), the workspace the
launch layer counts for them, caller's channels-last arrays read in place, the emulator's
memory-traffic profile (whole sectors per request, no bank conflicts where fragments are read), and
nvcc's SASS (16-byte LDGSTS, no local memory).
"""
import dataclasses
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_unless_kernel_checks_can_run, tf32_round
from cudeconv import backends
from cudeconv._dtypes import BFLOAT16
from cudeconv._geometry import make_geometry
from cudeconv._loader import kernel_source, kernels_dir
from cudeconv.backends.device_descriptor import H100_SXM
from cudeconv.backends.gemm_plan import GEMM_TILES
from cudeconv.backends.kernel_backend import KernelBackend, module_options

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import profile_gemm  # noqa: E402  (a script, not part of the package)

# 2-d, groups 2 (13 input and 19 output channels per group: rows that need padding), 3 × 2 kernel
GROUPED = make_geometry(2, (2, 26, 4, 5), (26, 19, 3, 2), (2, 1), (1, 0), (1, 0), 2, (1, 2))
PACKED_MATHS = [(np.float32, "tf32", "tf32"), (np.float32, "tf32x3", "tf32x3"), (np.float16, "fp32", "f16"),
                (BFLOAT16, "fp32", "bf16")]
SECTOR = 32


def _emulator():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())


N_MAJOR = {"tf32", "tf32x3"}


def _pad_last(array, itemsize):
    """``array`` with its last axis padded with zeros to a whole number of 32-byte sectors."""
    per_row = SECTOR // itemsize
    return np.concatenate([array, np.zeros(array.shape[:-1] + (-array.shape[-1] % per_row,), array.dtype)], axis=-1)


def expected_packing(weight, geom, pass_, math_name):
    """The packed weight from NumPy: per group [tap][K][N], or [tap][N][K] (N_MAJOR), the innermost
    channels padded with zeros to a whole number of 32-byte sectors; TF32-rounded for tf32."""
    groups, cin_g, cout_g = geom.groups, geom.in_channels_per_group, geom.out_channels_per_group
    per_group = weight.reshape(groups, cin_g, cout_g, geom.taps)  # (g, ci, co, tap)
    k_major = per_group.transpose(0, 3, 1, 2) if pass_ == "forward" else per_group.transpose(0, 3, 2, 1)
    packed = _pad_last(k_major.swapaxes(2, 3) if math_name in N_MAJOR else k_major, weight.itemsize)
    return tf32_round(packed) if math_name == "tf32" else packed


def expected_activation(src, geom, math_name):
    """The packed activation from NumPy: src (N, C, *spatial) as [n][position][group][K channel],
    each group's channels padded to whole sectors; TF32-rounded for tf32."""
    batch, channels = src.shape[:2]
    per_group = src.reshape(batch, geom.groups, channels // geom.groups, -1)  # (n, g, c, position)
    packed = _pad_last(per_group.transpose(0, 3, 1, 2), src.itemsize)
    return tf32_round(packed) if math_name == "tf32" else packed


@pytest.mark.parametrize("pass_", ["forward", "grad_input"])
@pytest.mark.parametrize("math_", PACKED_MATHS, ids=lambda m: m[2])
def test_the_packings_are_the_operands_transposed_and_padded(pass_, math_):
    _emulator()
    dtype, precision, math_name = math_
    impl = backends.get("emulator")
    rng = np.random.default_rng(3)
    # large enough that tf32's rounding changes most values; inf and NaN pass through (cvt.rna keeps them)
    weight = (rng.standard_normal(GROUPED.weight_shape) * 1e3).astype(dtype)
    weight.flat[[5, 77]] = np.inf, np.nan
    src = (rng.standard_normal(GROUPED.input_shape if pass_ == "forward" else GROUPED.output_shape) * 1e3).astype(dtype)
    src.flat[[3, 50]] = -np.inf, np.nan
    originals = weight.copy(), src.copy()
    path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, precision, 1, tile=(128, 128))
    assert path.entry == f"deconv_{pass_}_gemm_{math_name}_128x128"
    packed = impl._gemm_weight(path, weight, GROUPED, pass_)
    expected = expected_packing(weight, GROUPED, pass_, math_name)
    assert packed.tobytes() == expected.tobytes()  # every element, padding included: np.empty holds garbage
    packed_src = impl._gemm_activation(path, src, GROUPED, "x" if pass_ == "forward" else "grad_output")
    expected_src = expected_activation(src, GROUPED, math_name)
    assert packed_src.tobytes() == expected_src.tobytes()
    assert weight.tobytes() == originals[0].tobytes() and src.tobytes() == originals[1].tobytes()
    if math_name == "tf32":  # the rounding shows: most values change
        assert np.count_nonzero(tf32_round(weight).view(np.uint32) != weight.view(np.uint32)) > weight.size // 2
        assert np.count_nonzero(tf32_round(src).view(np.uint32) != src.view(np.uint32)) > src.size // 2
    # unsplit, the packed operands are the pass's whole workspace
    assert path.workspace_bytes == expected.nbytes + expected_src.nbytes


def test_the_workspace_counts_the_packed_operands_and_the_splits():
    impl = KernelBackend("prediction", np, None, lambda: "unused")
    kc, nc = 13, 19  # forward: K = C_in/groups, N = C_out/groups
    in_positions, out_positions = math.prod(GROUPED.in_size), math.prod(GROUPED.out_size)
    for dtype, precision, per_row, n_major in ((np.float32, "tf32", 8, True), (np.float16, "fp32", 16, False)):
        itemsize = np.dtype(dtype).itemsize
        padded = lambda channels: math.ceil(channels / per_row) * per_row  # noqa: E731
        weight = 2 * 6 * (nc * padded(kc) if n_major else kc * padded(nc)) * itemsize
        activation = 2 * in_positions * 2 * padded(kc) * itemsize
        assert impl.kernel_path(GROUPED, "forward", "gemm", dtype, precision, 1).workspace_bytes == weight + activation
        split = 3 * math.prod(GROUPED.output_shape) * (8 if dtype == np.float64 else 4)
        assert (impl.kernel_path(GROUPED, "forward", "gemm", dtype, precision, 3).workspace_bytes
                == weight + activation + split)
        # grad_input: K = C_out/groups, N = C_in/groups, A = grad_output
        weight = 2 * 6 * (kc * padded(nc) if n_major else nc * padded(kc)) * itemsize
        grad_output = 2 * out_positions * 2 * padded(nc) * itemsize
        assert impl.kernel_path(GROUPED, "grad_input", "gemm", dtype, precision, 1).workspace_bytes == weight + grad_output
        # grad_weight packs no weight, but both activations
        assert impl.kernel_path(GROUPED, "grad_weight", "gemm", dtype, precision, 1).workspace_bytes == (activation
                                                                                                        + grad_output)
    # f32 and f64 pack the weight k-major and the activations channels-last on every pass; without
    # cp.async (compute capability 7.5) nothing
    turing = dataclasses.replace(H100_SXM, compute_capability=(7, 5))
    for dtype, per_row in ((np.float32, 8), (np.float64, 4)):
        itemsize = np.dtype(dtype).itemsize
        padded = lambda channels: math.ceil(channels / per_row) * per_row  # noqa: E731
        x = np.zeros(GROUPED.input_shape, dtype)
        activation = {"x": 2 * in_positions * 2 * padded(kc), "grad_output": 2 * out_positions * 2 * padded(nc)}
        for pass_, a_tensor, (k_channels, n_channels) in (("forward", "x", (kc, nc)), ("grad_input", "grad_output", (nc, kc))):
            path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, "fp32", 1)
            assert path.packed == (a_tensor, "weight")
            assert path.workspace_bytes == (2 * 6 * k_channels * padded(n_channels) + activation[a_tensor]) * itemsize
            unpacked = impl.kernel_path(GROUPED, pass_, "gemm", dtype, "fp32", 1, turing)
            assert unpacked.packed == () and unpacked.workspace_bytes == 0
            assert impl._gemm_weight(unpacked, x, GROUPED, pass_) is x
            assert impl._gemm_activation(unpacked, x, GROUPED, "x") is x
        path = impl.kernel_path(GROUPED, "grad_weight", "gemm", dtype, "fp32", 1)
        assert path.packed == ("x", "grad_output")
        assert path.workspace_bytes == (activation["x"] + activation["grad_output"]) * itemsize
        assert impl.kernel_path(GROUPED, "grad_weight", "gemm", dtype, "fp32", 1, turing).workspace_bytes == 0


def test_every_math_defines_both_packings():
    sass_report = _sass_report()
    skip_unless_kernel_checks_can_run("a C++ preprocessor", None if sass_report.find_preprocessor() else "no g++")
    defined = sass_report.library_entry_points()["deconv_gemm.cu"]
    for kind in ("weight", "activation"):
        packings = {entry for entry in defined if entry.startswith(f"deconv_gemm_pack_{kind}_")}
        assert packings == {f"deconv_gemm_pack_{kind}_{m}" for m in ("f32", "f64", "tf32", "tf32x3", "f16", "bf16")}


@pytest.mark.parametrize("dtype, math_name", [(np.float32, "f32"), (np.float64, "f64")])
def test_the_ffma_and_dfma_packings(dtype, math_name):
    """FFMA and DFMA pack the forward's and grad_input's weight k-major ([tap][K][N], rows padded)
    and every pass's x and grad_output channels-last, values unchanged."""
    _emulator()
    impl = backends.get("emulator")
    rng = np.random.default_rng(5)
    weight = rng.standard_normal(GROUPED.weight_shape).astype(dtype)
    x = rng.standard_normal(GROUPED.input_shape).astype(dtype)
    grad_output = rng.standard_normal(GROUPED.output_shape).astype(dtype)
    for pass_ in ("forward", "grad_input"):
        path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, "fp32", 1)
        packed = impl._gemm_weight(path, weight, GROUPED, pass_)
        assert packed.tobytes() == expected_packing(weight, GROUPED, pass_, math_name).tobytes()
    for pass_, name, tensor in (("forward", "x", x), ("grad_input", "grad_output", grad_output),
                                ("grad_weight", "x", x), ("grad_weight", "grad_output", grad_output)):
        path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, "fp32", 1)
        packed = impl._gemm_activation(path, tensor, GROUPED, name)
        assert packed.tobytes() == expected_activation(tensor, GROUPED, math_name).tobytes()


# -- the emulator's memory-traffic profile --------------------------------------------------------

GEMM_SOURCE_LINES = (kernels_dir() / "deconv_gemm.cu").read_text().splitlines()


def assert_copy_stores(profile):
    """Every cp.async of the GEMM stores into shared memory without bank conflicts — one wavefront
    per quarter warp's 128 bytes — and the profile names it by its call in kernels/deconv_gemm.cu
    (a line calling cp_async_*, however the CPU compiler split or inlined it)."""
    copy_lines = [place for place, counts in profile["per_line"].items()
                  if "cp_async" in counts and place.startswith("deconv_gemm.cu:")]
    assert copy_lines
    for place in copy_lines:
        assert "cp_async_" in GEMM_SOURCE_LINES[int(place.split(":")[1]) - 1], place
        stores = profile["per_line"][place]["shared_store"]
        assert stores["wavefronts"] * 128 == stores["bytes"], (place, stores)


# Where the fragments leave shared memory (a snippet of their lines in gemm_math.cuh), by math and
# pass, and what one warp-level request of each costs without bank conflicts: ldmatrix reads one
# wavefront per 8 × 16-byte matrix — tf32's A x4 (four) and its n-major B x2 (two), f16's A x4 and
# B x4.trans (four); grad_weight's k-major tf32 fragments one 4-byte load per register (one).
FRAGMENT_READS = {
    ("tf32", "conv"): {"ldmatrix_x4(a_big[i], a + a_packed_offset(": 4, "ldmatrix_x2(b_big[j], b + b_packed_offset(": 2},
    ("f16", "conv"): {"ldmatrix_x4(a_frag[i], a + a_packed_offset(": 4, "ldmatrix_x4_trans(pair, b + b_offset(": 4},
    ("tf32", "grad_weight"): {"__float_as_uint(a0[": 1, "__float_as_uint(b0[": 1},
    ("f16", "grad_weight"): {"ldmatrix_x4_trans(a_frag[i], a + a_offset(": 4, "ldmatrix_x4_trans(pair, b + b_offset(": 4},
}
PROFILED_MATHS = pytest.mark.parametrize("dtype, precision, math_name",
                                         [(np.float32, "tf32", "tf32"), (np.float16, "fp32", "f16")], ids=["tf32", "f16"])


def assert_fragment_reads(profile, reads):
    """Each line of gemm_math.cuh holding a snippet of ``reads`` ran, at its wavefronts per request."""
    source = (kernels_dir() / "gemm_math.cuh").read_text().splitlines()
    for snippet, per_request in reads.items():
        places = [f"gemm_math.cuh:{n}" for n, line in enumerate(source, 1) if snippet in line]
        assert places, snippet
        for place in places:
            (kind, count), = profile["per_line"][place].items()
            assert count["requests"] > 0 and count["wavefronts"] == per_request * count["requests"], (place, count)


@PROFILED_MATHS
def test_the_packed_operands_are_read_in_whole_sectors(dtype, precision, math_name):
    """A DCGAN-like layer (2 × 32 × 8 × 8, 32 → 32 channels, k4 s2 p1) on the 128 × 128 tile: the
    forward and grad_input read both packed operands by cp.async only, at most 1.25 sectors per
    sector of bytes asked for (1.00 where the array starts on a sector; NumPy's 16-byte alignment
    adds one sector per 128-byte run at most; the weight's own layout took 8 in float32, 16 in
    float16), and the fragment reads are free of bank conflicts."""
    _emulator()
    geom = make_geometry(2, (2, 32, 8, 8), (32, 32, 4, 4), 2, 1, 0, 1, 1)
    rng = np.random.default_rng(0)
    x, weight = (rng.standard_normal(shape).astype(dtype) for shape in (geom.input_shape, geom.weight_shape))
    grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
    impl = profile_gemm.ProfilingBackend()
    impl.forward(x, weight, None, geom, "gemm", precision, 1, (128, 128))
    impl.grad_input(grad_output, weight, geom, "gemm", precision, 1, (128, 128))
    entries = [entry for entry, _ in impl.profiles]
    packs = [f"deconv_gemm_pack_activation_{math_name}", f"deconv_gemm_pack_weight_{math_name}"]
    assert entries == packs + [f"deconv_forward_gemm_{math_name}_128x128"] + packs + [
        f"deconv_grad_input_gemm_{math_name}_128x128"]
    for entry, profile in impl.profiles:
        if "_pack_" in entry:
            continue
        for position in (0, 1):  # the packed activation, the packed weight
            traffic = profile["per_argument"][position]
            assert set(traffic) == {"cp_async", "dram_sectors", "parameter"}, (entry, position, traffic)
            copies = traffic["cp_async"]
            assert copies["sectors"] <= 1.25 * copies["bytes"] / SECTOR, (entry, position, copies)
        assert profile["per_argument"][1]["cp_async"]["bytes"] == weight.nbytes, entry  # once: one M tile per phase
        assert_fragment_reads(profile, FRAGMENT_READS[math_name, "conv"])
        assert_copy_stores(profile)  # a quarter warp: one chunk of 8 m-major 80-byte rows


@PROFILED_MATHS
def test_grad_weight_reads_both_packed_activations_in_whole_sectors(dtype, precision, math_name):
    """grad_weight of the same layer on the 128 × 128 tile: x and grad_output packed channels-last
    (one packing each), copied by cp.async only at most 1.25 sectors per sector of bytes asked for,
    and the k-major fragment reads free of bank conflicts."""
    _emulator()
    geom = make_geometry(2, (2, 32, 8, 8), (32, 32, 4, 4), 2, 1, 0, 1, 1)
    rng = np.random.default_rng(0)
    x, grad_output = (rng.standard_normal(shape).astype(dtype) for shape in (geom.input_shape, geom.output_shape))
    impl = profile_gemm.ProfilingBackend()
    impl.grad_weight(grad_output, x, geom, "gemm", precision, 1, (128, 128))
    entries = [entry for entry, _ in impl.profiles]
    assert entries == [f"deconv_gemm_pack_activation_{math_name}"] * 2 + [f"deconv_grad_weight_gemm_{math_name}_128x128"]
    profile = impl.profiles[-1][1]
    for position in (0, 1):  # packed x, packed grad_output
        traffic = profile["per_argument"][position]
        assert set(traffic) == {"cp_async", "dram_sectors", "parameter"}, (position, traffic)
        copies = traffic["cp_async"]
        assert copies["requests"] > 0 and copies["sectors"] <= 1.25 * copies["bytes"] / SECTOR, (position, copies)
    assert_copy_stores(profile)  # a quarter warp: 8 consecutive chunks of a k-major row
    assert_fragment_reads(profile, FRAGMENT_READS[math_name, "grad_weight"])


def profile_dcgan_like_pass(pass_, dtype, precision, math_name, tile):
    """The emulator's profile of ``pass_``'s GEMM on ``tile`` for a DCGAN-like layer (2 × 32 × 8 × 8,
    32 → 32 channels, k4 s2 p1), fresh random operands."""
    geom = make_geometry(2, (2, 32, 8, 8), (32, 32, 4, 4), 2, 1, 0, 1, 1)
    rng = np.random.default_rng()
    x, weight = (rng.standard_normal(shape).astype(dtype) for shape in (geom.input_shape, geom.weight_shape))
    grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
    impl = profile_gemm.ProfilingBackend()
    if pass_ == "forward":
        impl.forward(x, weight, None, geom, "gemm", precision, 1, tile)
    elif pass_ == "grad_input":
        impl.grad_input(grad_output, weight, geom, "gemm", precision, 1, tile)
    else:
        impl.grad_weight(grad_output, x, geom, "gemm", precision, 1, tile)
    entry, profile = impl.profiles[-1]
    assert entry == f"deconv_{pass_}_gemm_{math_name}_{tile[0]}x{tile[1]}"
    return profile


@pytest.mark.parametrize("pass_", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("dtype, precision, math_name", [(np.float32, "tf32", "tf32"), (np.float16, "fp32", "f16"),
                                                         (np.float32, "fp32", "f32"), (np.float64, "fp32", "f64")],
                         ids=["tf32", "f16", "f32", "f64"])
def test_every_tile_copies_without_bank_conflicts(dtype, precision, math_name, pass_):
    """Every tile of the menu (a 32-wide side's 4-chunk rows, the narrow tiles' idle threads, zero-
    filled chunks past N = 32 channels and at the padding): each cp.async's shared-memory stores in
    one wavefront per 128 bytes, and whole sectors on the global side (at most 1.25 per sector of
    bytes asked for: NumPy's 16-byte alignment)."""
    _emulator()
    for tile in GEMM_TILES[math_name][pass_]:
        profile = profile_dcgan_like_pass(pass_, dtype, precision, math_name, tile)
        assert_copy_stores(profile)
        for place, counts in profile["per_line"].items():
            copies = counts.get("cp_async")
            if copies and "cp_async_16" in GEMM_SOURCE_LINES[int(place.split(":")[1]) - 1]:
                assert copies["sectors"] <= 1.25 * copies["bytes"] / SECTOR, (tile, place, copies)


# -- SASS ------------------------------------------------------------------------------------------

def _sass_report():
    import sass_report  # a script (scripts/ is on the path, above)

    return sass_report


def module_sass(math_name, arch="sm_90"):
    """(ptxas's report, {function: [(opcode with modifiers)]}) of the launch layer's modules of
    ``math_name`` on the 128 × 128 tile (one nvcc compile for all their passes), compiled by nvcc."""
    sass_report = _sass_report()
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    cuobjdump, tool_dir = sass_report.find_cuobjdump()
    env = None
    if tool_dir:
        import os

        env = dict(os.environ, PATH=tool_dir + os.pathsep + os.environ.get("PATH", ""))
    options = [option for option in module_options(math_name, True, "forward", (128, 128)) if "GEMM_PASS" not in option]
    with tempfile.TemporaryDirectory() as scratch:
        source, cubin = Path(scratch) / "deconv_gemm.cu", Path(scratch) / "module.cubin"
        source.write_text(kernel_source("deconv_gemm.cu"))  # headers inlined, as CuPy gets it
        compiled = subprocess.run([sass_report.find_nvcc(), "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v",
                                   *options, str(source), "-o", str(cubin)],
                                  capture_output=True, text=True, timeout=600)
        assert compiled.returncode == 0, compiled.stderr[-4000:]
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env,
                              timeout=600, check=True).stdout
    functions, current = {}, None
    for line in sass.splitlines():
        found = re.match(r"^\s*Function : (\S+)", line)
        if found:
            current = functions.setdefault(found.group(1), [])
            continue
        instruction = re.match(r"^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if current is not None and instruction and (instruction.group(1) or "").strip() != "@!PT":
            current.append(instruction.group(2))
    return compiled.stderr, functions


@pytest.mark.parametrize("math_name", ["tf32", "f16"])
def test_the_operands_are_copied_in_16_byte_ldgsts(math_name):
    """nvcc's SASS of the launch layer's modules: the forward and grad_input copy both operands with
    16-byte LDGSTS and no other; nothing spills or uses local memory."""
    ptxas, functions = module_sass(math_name)
    for pass_ in ("forward", "grad_input"):
        ops = functions[f"deconv_{pass_}_gemm_{math_name}_128x128"]
        copies = [op for op in ops if op.startswith("LDGSTS")]
        assert copies and all(op.endswith(".128") for op in copies), (pass_, sorted(set(copies)))
    assert {f"deconv_gemm_pack_weight_{math_name}", f"deconv_gemm_pack_activation_{math_name}"} <= set(functions)
    for name, ops in functions.items():
        assert not [op for op in ops if op.split(".")[0] in ("LDL", "STL")], name
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    assert len(frames) == len(functions) and all(frame == ("0", "0", "0") for frame in frames), ptxas


# -- a caller's channels-last x and grad_output, read in place ---------------------------------------

def _channels_last(array):
    return np.ascontiguousarray(np.moveaxis(array, 1, -1)).transpose(0, array.ndim - 1, *range(1, array.ndim - 1))


# each pass's activations (the packed operands of its GEMM), on a tile of its menu
IN_PLACE_PASSES = {"forward": (("x",), (128, 32)), "grad_input": (("grad_output",), (128, 32)),
                   "grad_weight": (("x", "grad_output"), (32, 128))}


@pytest.mark.parametrize("pass_", sorted(IN_PLACE_PASSES))
@pytest.mark.parametrize("dtype, precision, channels, in_place", [
    (np.float16, "fp32", 16, True), (BFLOAT16, "fp32", 32, True), (np.float32, "tf32x3", 8, True),
    (np.float32, "fp32", 8, True), (np.float64, "fp32", 4, True),
    (np.float32, "tf32", 8, False),    # tf32 rounds in the packing: its loop takes TF32 values
    (np.float16, "fp32", 12, False),   # 12 halves per group do not fill whole 32-byte rows
    (np.float64, "fp32", 6, False),    # nor do 6 doubles
], ids=["f16", "bf16", "tf32x3", "f32", "f64", "tf32-packs", "f16-padded-packs", "f64-padded-packs"])
def test_channels_last_activations_are_the_packed_operands_in_place(monkeypatch, pass_, dtype, precision, channels,
                                                                   in_place):
    """A pass given dense channels-last activations (x, grad_output) on the packing maths: where a
    group's channels fill whole sector rows and the packing would not round, the array's own memory
    is the packed layout — no NCHW copy, no packing launch — and the result is bitwise the NCHW
    arrays'."""
    _emulator()
    impl = backends.get("emulator")
    launched = []
    launch = type(impl)._launch
    monkeypatch.setattr(type(impl), "_launch", lambda self, path, entry, *a: (launched.append(entry),
                                                                              launch(self, path, entry, *a)))
    geom = make_geometry(2, (2, 2 * channels, 5, 4), (2 * channels, channels, 3, 3), 2, 1, 1, 2, 1)
    rng = np.random.default_rng(7)
    arrays = {"x": rng.standard_normal(geom.input_shape).astype(dtype),
              "weight": rng.standard_normal(geom.weight_shape).astype(dtype),
              "bias": rng.standard_normal(geom.out_channels).astype(dtype),
              "grad_output": rng.standard_normal(geom.output_shape).astype(dtype)}
    tensors, tile = IN_PLACE_PASSES[pass_]
    if dtype == np.float64:  # DFMA's menu: its narrowest tile
        tile = GEMM_TILES["f64"][pass_][-1]

    def run(given):
        if pass_ == "forward":
            return impl.forward(given["x"], given["weight"], given["bias"], geom, "gemm", precision, 1, tile)
        if pass_ == "grad_input":
            return impl.grad_input(given["grad_output"], given["weight"], geom, "gemm", precision, 1, tile)
        return impl.grad_weight(given["grad_output"], given["x"], geom, "gemm", precision, 1, tile)

    def packings():
        return sum(entry.startswith("deconv_gemm_pack_activation_") for entry in launched)

    reference = run(arrays)
    assert packings() == len(tensors), launched  # NCHW: each packed
    launched.clear()
    channels_last = dict(arrays, **{name: _channels_last(arrays[name]) for name in tensors})
    for name in tensors:
        assert np.array_equal(channels_last[name], arrays[name]) and not channels_last[name].flags.c_contiguous
    result = run(channels_last)
    assert packings() == (0 if in_place else len(tensors)), launched
    assert result.tobytes() == reference.tobytes()


@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize("dtype, math_name", [(np.float32, "f32"), (np.float64, "f64")])
def test_ffma_and_dfma_grad_input_read_packed_grad_output_in_whole_sectors(dtype, math_name, stride):
    """grad_input on FFMA and DFMA reads grad_output packed channels-last: NCHW put consecutive rows
    of its A `stride` elements apart (2 to 4 sectors per sector used); packed, each row's K channels
    are one 16-byte chunk after another, at most 1.25 sectors per sector of bytes asked for (NumPy's
    16-byte alignment), like the packed weight."""
    _emulator()
    geom = make_geometry(2, (2, 16, 6, 6), (16, 16, 2 * stride, 2 * stride), stride, stride // 2, 0, 1, 1)
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(geom.weight_shape).astype(dtype)
    grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
    impl = profile_gemm.ProfilingBackend()
    impl.grad_input(grad_output, weight, geom, "gemm", "fp32", 1, None)
    entries = [entry for entry, _ in impl.profiles]
    assert entries[:2] == [f"deconv_gemm_pack_activation_{math_name}", f"deconv_gemm_pack_weight_{math_name}"]
    profile = impl.profiles[2][1]
    for position in (0, 1):  # the packed grad_output, the packed weight
        copies = profile["per_argument"][position]["cp_async"]
        assert copies["requests"] > 0 and copies["sectors"] <= 1.25 * copies["bytes"] / SECTOR, (position, copies)
    assert_copy_stores(profile)


@pytest.mark.parametrize("pass_", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("dtype, math_name, tile", [(np.float32, "f32", (128, 128)), (np.float64, "f64", (64, 64))],
                         ids=["f32", "f64"])
def test_ffma_and_dfma_read_their_slices_without_bank_conflicts(dtype, math_name, tile, pass_):
    """The FFMA and DFMA multiplies' shared-memory reads (gemm_math.cuh): 16-byte loads of a
    thread's B columns — in 16-byte groups striped across the tile, so a quarter warp's 8 loads are
    consecutive chunks — and of its m-major A rows (a quarter warp shares its rows: a broadcast),
    and grad_weight's 4- or 8-byte k-major A loads: every request in the fewest wavefronts its
    bytes need (one per 128 bytes the lanes ask for)."""
    _emulator()
    profile = profile_dcgan_like_pass(pass_, dtype, "fp32", math_name, tile)
    reads = {place: counts["shared_load"] for place, counts in profile["per_line"].items()
             if place.startswith("gemm_math.cuh:") and "shared_load" in counts}
    assert reads and any("ld_shared_16" in _math_line(place) or "load_16_bytes" in _math_line(place) for place in reads)
    for place, count in reads.items():
        assert count["wavefronts"] * 128 == count["bytes"], (place, count)


def _math_line(place):
    return (kernels_dir() / "gemm_math.cuh").read_text().splitlines()[int(place.split(":")[1]) - 1]
