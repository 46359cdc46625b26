"""The packed weight of the implicit GEMMs (kernels/deconv_gemm.cu, deconv_gemm_pack_weight_*).

On the tensor-core maths (tf32, tf32x3, f16, bf16) the forward's and grad_input's B operand is the
weight, packed once per pass into per group [tap][K channel][N channel] rows padded to whole
32-byte sectors, so the GEMM copies it into shared memory in 16-byte cp.async chunks; f32 and f64
read the weight as it is. Checked here: the packing itself against a NumPy transpose of
the weight (padding zeros and tf32's rounding included, every element written), the workspace the
launch layer counts for it, the emulator's memory-traffic profile (whole sectors per request for
the weight, no bank conflicts where B's fragments are read), and nvcc's SASS (16-byte LDGSTS, no
local memory).
"""
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


def expected_packing(weight, geom, pass_, rounds_to_tf32):
    """The packed layout from NumPy: weight (C_in, C_out/groups, *kernel) as per group [tap][K][N],
    N padded with zeros to a whole number of 32-byte sectors."""
    groups, cin_g, cout_g = geom.groups, geom.in_channels_per_group, geom.out_channels_per_group
    per_group = weight.reshape(groups, cin_g, cout_g, geom.taps)  # (g, ci, co, tap)
    packed = per_group.transpose(0, 3, 1, 2) if pass_ == "forward" else per_group.transpose(0, 3, 2, 1)
    per_row = SECTOR // weight.itemsize
    n = packed.shape[-1]
    packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (-n % per_row,), weight.dtype)], axis=-1)
    return tf32_round(packed) if rounds_to_tf32 else packed


@pytest.mark.parametrize("pass_", ["forward", "grad_input"])
@pytest.mark.parametrize("math_", PACKED_MATHS, ids=lambda m: m[2])
def test_the_packing_is_the_weight_transposed_and_padded(pass_, math_):
    _emulator()
    dtype, precision, math_name = math_
    impl = backends.get("emulator")
    # large enough that tf32's rounding changes most values; inf and NaN pass through (cvt.rna keeps them)
    weight = (np.random.default_rng(3).standard_normal(GROUPED.weight_shape) * 1e3).astype(dtype)
    weight.flat[[5, 77]] = np.inf, np.nan
    original = weight.copy()
    path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, precision, 1)
    assert path.entry == f"deconv_{pass_}_gemm_{math_name}"
    packed = impl._gemm_weight(path, weight, GROUPED, pass_)
    expected = expected_packing(weight, GROUPED, pass_, math_name == "tf32")
    assert packed.tobytes() == expected.tobytes()  # every element, padding included: np.empty holds garbage
    assert weight.tobytes() == original.tobytes()
    if math_name == "tf32":  # the rounding shows: most values change
        assert np.count_nonzero(tf32_round(weight).view(np.uint32) != weight.view(np.uint32)) > weight.size // 2
    # unsplit, the packed weight is the pass's whole workspace
    assert path.workspace_bytes == expected.nbytes


def test_the_workspace_counts_the_packed_weight_and_the_splits():
    impl = KernelBackend("prediction", np, None, lambda: "unused")
    kc, nc = 13, 19  # forward: K = C_in/groups, N = C_out/groups
    for dtype, precision, per_row in ((np.float32, "tf32", 8), (np.float16, "fp32", 16)):
        itemsize = np.dtype(dtype).itemsize
        packed = 2 * 6 * kc * math.ceil(nc / per_row) * per_row * itemsize
        assert impl.kernel_path(GROUPED, "forward", "gemm", dtype, precision, 1).workspace_bytes == packed
        split = 3 * math.prod(GROUPED.output_shape) * (8 if dtype == np.float64 else 4)
        assert impl.kernel_path(GROUPED, "forward", "gemm", dtype, precision, 3).workspace_bytes == packed + split
        # grad_input: K = C_out/groups, N = C_in/groups; grad_weight reads no weight
        packed = 2 * 6 * nc * math.ceil(kc / per_row) * per_row * itemsize
        assert impl.kernel_path(GROUPED, "grad_input", "gemm", dtype, precision, 1).workspace_bytes == packed
        assert impl.kernel_path(GROUPED, "grad_weight", "gemm", dtype, precision, 1).workspace_bytes == 0
    # f32 and f64 read the weight unpacked: no workspace unsplit, the weight itself handed over
    for dtype in (np.float32, np.float64):
        weight = np.zeros(GROUPED.weight_shape, dtype)
        for pass_ in ("forward", "grad_input"):
            path = impl.kernel_path(GROUPED, pass_, "gemm", dtype, "fp32", 1)
            assert path.workspace_bytes == 0
            assert impl._gemm_weight(path, weight, GROUPED, pass_) is weight


def test_only_the_tensor_core_maths_define_a_packing():
    sass_report = _sass_report()
    skip_unless_kernel_checks_can_run("a C++ preprocessor", None if sass_report.find_preprocessor() else "no g++")
    defined = sass_report.library_entry_points()["deconv_gemm.cu"]
    packings = {entry for entry in defined if entry.startswith("deconv_gemm_pack_weight_")}
    assert packings == {f"deconv_gemm_pack_weight_{m}" for m in ("tf32", "tf32x3", "f16", "bf16")}


# -- the emulator's memory-traffic profile --------------------------------------------------------

def line_of(snippet):
    """``file:N`` of the one line of the GEMM's source or its headers holding ``snippet``."""
    places = [f"{path.name}:{n}" for path in sorted(kernels_dir().glob("*gemm*.cu*"))
              for n, line in enumerate(path.read_text().splitlines(), 1) if snippet in line]
    assert len(places) == 1, (snippet, places)
    return places[0]


# Where B's fragments leave shared memory, and what one warp-level request of each costs without
# bank conflicts: tf32 loads 4 bytes per lane (one wavefront), f16 ldmatrix.x4 four 8 × 16-byte
# matrices (four); f16's A, stored from registers 2 bytes per lane, one.
FRAGMENT_READS = {
    "tf32": {"b_big[j][0] = __float_as_uint(b0[0]);": 1, "b_big[j][1] = __float_as_uint(b0[4 * kRowB]);": 1},
    "f16": {"ldmatrix_x4_trans(pair, b + b_offset(": 4},
}
STAGED_STORES = {"f16": {"a[M::a_offset(Rows::k(r), Rows::column())] = staged[r];": 1}}


@pytest.mark.parametrize("dtype, precision, math_name", [(np.float32, "tf32", "tf32"), (np.float16, "fp32", "f16")],
                         ids=["tf32", "f16"])
def test_the_weight_operand_reads_whole_sectors(dtype, precision, math_name):
    """A DCGAN-like layer (2 × 32 × 8 × 8, 32 → 32 channels, k4 s2 p1): the GEMM reads the packed
    weight by cp.async only, at most 1.25 sectors per sector of bytes asked for (1.00 where the
    array starts on a sector; NumPy's 16-byte alignment adds one sector per 128-byte run at most;
    the weight's own layout took 8 in float32, 16 in float16), and B's fragment reads and the
    staged stores are free of bank conflicts."""
    _emulator()
    geom = make_geometry(2, (2, 32, 8, 8), (32, 32, 4, 4), 2, 1, 0, 1, 1)
    rng = np.random.default_rng(0)
    x, weight = (rng.standard_normal(shape).astype(dtype) for shape in (geom.input_shape, geom.weight_shape))
    grad_output = rng.standard_normal(geom.output_shape).astype(dtype)
    impl = profile_gemm.ProfilingBackend()
    impl.forward(x, weight, None, geom, "gemm", precision, 1)
    impl.grad_input(grad_output, weight, geom, "gemm", precision, 1)
    entries = [entry for entry, _ in impl.profiles]
    pack = f"deconv_gemm_pack_weight_{math_name}"
    assert entries == [pack, f"deconv_forward_gemm_{math_name}", pack, f"deconv_grad_input_gemm_{math_name}"]
    for entry, profile in impl.profiles:
        if "pack_weight" in entry:
            continue
        weight_traffic = profile["per_argument"][1]  # packed_w
        assert set(weight_traffic) == {"cp_async", "dram_sectors", "parameter"}, (entry, weight_traffic)
        copies = weight_traffic["cp_async"]
        assert copies["bytes"] == weight.nbytes, entry  # each weight value once: one M tile per phase
        assert copies["sectors"] <= 1.25 * copies["bytes"] / SECTOR, (entry, copies)
        for snippet, per_request in {**FRAGMENT_READS[math_name], **STAGED_STORES.get(math_name, {})}.items():
            counts = profile["per_line"][line_of(snippet)]
            (kind, count), = counts.items()
            assert count["requests"] > 0 and count["wavefronts"] == per_request * count["requests"], (snippet, count)


# -- SASS ------------------------------------------------------------------------------------------

def _sass_report():
    import sass_report  # a script (scripts/ is on the path, above)

    return sass_report


def module_sass(math_name, arch="sm_90"):
    """(ptxas's report, {function: [(opcode with modifiers)]}) of the module the launch layer builds
    for ``math_name``, compiled by nvcc."""
    sass_report = _sass_report()
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    cuobjdump, tool_dir = sass_report.find_cuobjdump()
    env = None
    if tool_dir:
        import os

        env = dict(os.environ, PATH=tool_dir + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as scratch:
        source, cubin = Path(scratch) / "deconv_gemm.cu", Path(scratch) / "module.cubin"
        source.write_text(kernel_source("deconv_gemm.cu"))  # headers inlined, as CuPy gets it
        compiled = subprocess.run([sass_report.find_nvcc(), "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v",
                                   *module_options(math_name), str(source), "-o", str(cubin)],
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
def test_the_weight_is_copied_in_16_byte_ldgsts(math_name):
    """nvcc's SASS of the launch layer's module: the forward and grad_input copy B with 16-byte
    LDGSTS (float16: all their LDGSTS, A staying in registers); nothing spills or uses local memory."""
    ptxas, functions = module_sass(math_name)
    for pass_ in ("forward", "grad_input"):
        ops = functions[f"deconv_{pass_}_gemm_{math_name}"]
        wide = [op for op in ops if op.startswith("LDGSTS") and op.endswith(".128")]
        assert wide, (pass_, sorted(set(ops)))
        if math_name == "f16":
            assert wide == [op for op in ops if op.startswith("LDGSTS")], pass_
    assert f"deconv_gemm_pack_weight_{math_name}" in functions
    for name, ops in functions.items():
        assert not [op for op in ops if op.split(".")[0] in ("LDL", "STL")], name
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    assert len(frames) == len(functions) and all(frame == ("0", "0", "0") for frame in frames), ptxas
