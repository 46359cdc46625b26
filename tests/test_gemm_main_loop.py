"""The GEMMs' main loops as the GPU would issue them, read from nvcc's sm_90 SASS of the launch
layer's modules (scripts/sass_report.py: the loop holding the most multiply-adds, its size and its
opcodes with their modifiers), on the widest tile:

- the tensor-core GEMMs (tf32, f16, bf16) issue at most 6 instructions per HMMA in the forward's
  and grad_input's loops, at most 8 in grad_weight's (whose B rows each find their output position
  from a (sample, position) cursor): both operands arrive packed by 16-byte LDGSTS (no other copy
  in the loop); tf32 rounds nothing in any loop (the packings round to TF32 once);
- the FFMA GEMM (f32) keeps at least 70% FFMA in every pass's loop (every operand packed, in
  16-byte copies: 75% forward, 77% grad_input, 79% grad_weight; 55% when grad_weight gathered both
  element by element);
- nothing spills or uses local memory (ptxas, cuobjdump).

The detector of rounding is checked on tf32x3, which splits both operands into TF32 parts in its loop.
"""
import pytest

from conftest import sass_report, skip_unless_kernel_checks_can_run
from cudeconv._loader import kernels_dir
from cudeconv.backends.kernel_backend import module_options

TILE = (128, 128)
MAX_ISSUE_PER_HMMA = {"forward": 6.0, "grad_input": 6.0, "grad_weight": 8.0}
MIN_FFMA_SHARE = 0.70
# cvt.rna.tf32.f32 on sm_90: FSETP.GEU |x|, +INF, then an add and a mask (no single opcode)
TF32_ROUNDING = "FSETP.GEU.AND"


def _rows(math_name):
    """{entry point: sass_report row} of the launch layer's modules of ``math_name`` on TILE: one
    nvcc compile holding every pass's GEMM of that tile (the pass filter off, the tile filter on;
    conftest compiles each once a session)."""
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    options = [option for option in module_options(math_name, True, "forward", TILE) if "GEMM_PASS" not in option]
    rows = sass_report.report(kernels_dir() / "deconv_gemm.cu", "sm_90", options)
    return {row["kernel"]: row for row in rows}


def _gemm(math_name, pass_):
    return _rows(math_name)[f"deconv_{pass_}_gemm_{math_name}_{TILE[0]}x{TILE[1]}"]


@pytest.mark.parametrize("pass_", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("math_name", ["tf32", "f16", "bf16"])
def test_tensor_core_loops_issue_few_instructions_per_hmma(math_name, pass_):
    row = _gemm(math_name, pass_)
    assert row["loop_fma"] == row["loop_opcodes"].count("HMMA.1688.F32.TF32" if math_name == "tf32"
                                                        else "HMMA.16816.F32" + (".BF16" if math_name == "bf16" else ""))
    assert row["loop_fma"] > 0 and row["loop"] / row["loop_fma"] <= MAX_ISSUE_PER_HMMA[pass_], (row["loop"],
                                                                                                row["loop_fma"])
    copies = [op for op in row["loop_opcodes"] if op.startswith("LDGSTS")]
    assert copies and all(op.endswith(".128") for op in copies), copies
    assert not [op for op in row["loop_opcodes"] if op.startswith("LDG.")], "a register-staged copy in the loop"
    if math_name == "tf32":
        assert TF32_ROUNDING not in row["loop_opcodes"]


def test_the_rounding_detector_sees_tf32x3_split_its_operands():
    assert _gemm("tf32x3", "grad_weight")["loop_opcodes"].count(TF32_ROUNDING) > 0


@pytest.mark.parametrize("pass_", ["forward", "grad_input", "grad_weight"])
def test_the_ffma_loops_stay_mostly_ffma(pass_):
    row = _gemm("f32", pass_)
    assert row["loop_fma"] == row["loop_opcodes"].count("FFMA") == 512  # 8 × 8 outputs × BK 8 per thread
    assert row["loop_fma"] / row["loop"] >= MIN_FFMA_SHARE, (row["loop"], row["loop_fma"])


@pytest.mark.parametrize("math_name", ["tf32", "tf32x3", "f16", "bf16", "f32"])
def test_no_spills_and_no_local_memory(math_name):
    for name, row in _rows(math_name).items():
        assert row["spill_stores"] == row["spill_loads"] == row["local"] == row["stack"] == 0, name
