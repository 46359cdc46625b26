"""kernels/mma.cuh — mma.sync, ldmatrix, cp.async and cvt.rna.tf32 — against NumPy.

The test kernels (tests/emulator_kernels/mma_primitives.cu) place every element by the PTX ISA's
fragment layouts written out in the kernel, so these tests pin the layouts independently of the
emulator's implementation: a kernel with a misplaced register must fail, and does. Each runs on
the emulator (always, in CI) and on the GPU when one is here; the tiled product also goes through
nvcc and the SASS check (tensor-core, ldmatrix and async-copy instructions present, no local memory).
"""
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close, sass_report, skip_unless_kernel_checks_can_run, tf32_round, to_backend, to_numpy
from cudeconv._loader import source_with_headers
from cudeconv import backends
from cudeconv.emulator import EmulatorLaunchError, RawModule

SOURCE = Path(__file__).parent / "emulator_kernels" / "mma_primitives.cu"
POISON_BITS = 0xFFFFFFFF  # what an unlanded cp.async destination and fresh shared memory read as


@pytest.fixture(scope="module", params=("emulator", "cuda"))
def module(request):
    """The test kernels on the emulator, or compiled by NVRTC for the GPU when one is here."""
    if request.param == "cuda":
        reason = backends.cuda_unavailable_reason()
        if reason is not None:
            pytest.skip(f"backend 'cuda' unavailable: {reason}")
        import cupy

        return "cuda", cupy.RawModule(code=source_with_headers(SOURCE), options=("-std=c++17",))
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    return "emulator", RawModule(code=source_with_headers(SOURCE))


@pytest.fixture(scope="module")
def emulated():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    return RawModule(code=source_with_headers(SOURCE))


def run(module, name, grid, block, *args):
    """Launch ``name`` with NumPy arguments (copied to the GPU and back for "cuda"); returns the
    arrays as NumPy arrays after the launch."""
    backend, raw = module
    device_args = tuple(to_backend(a, backend) if isinstance(a, np.ndarray) else a for a in args)
    raw.get_function(name)(grid, block, device_args)
    return [to_numpy(a) if isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__") else None
            for a in device_args]


# ---- number formats, computed here from their definitions -------------------------------------


def tf32_truncate(x):
    """What the tensor core reads of a .tf32 register: its top 19 bits."""
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def bfloat16_value(bits):
    return (np.asarray(bits, np.uint32) << 16).astype(np.uint32).view(np.float32)


def test_tf32_rounding_oracle_matches_its_definition():
    """The bit trick above against the arithmetic definition: the nearest multiple of the tf32
    ulp (2^(e-10), e the exponent, at least -126), ties away from zero."""
    rng = np.random.default_rng(19)
    x = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-45, 38, 5000),
                        [1 + 2**-11, -(1 + 2**-11), 1 + 2**-11 - 2**-23, 1e-40, -3e-39]]).astype(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) < 3e38)]
    magnitude = np.abs(x.astype(np.float64))
    exponent = np.maximum(np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0))), -126)
    ulp = 2.0 ** (exponent - 10)
    expected = np.sign(x) * np.floor(magnitude / ulp + 0.5) * ulp
    np.testing.assert_array_equal(tf32_round(x).astype(np.float64), expected)
    assert tf32_round(np.float32(3.4028235e38)) == np.inf  # rounds up past the largest finite


def special_values(rng, shape, dtype):
    """Random normals with NaN, ±inf, ±0 and subnormals in a few places."""
    values = rng.standard_normal(shape).astype(dtype)
    flat = values.reshape(-1)
    tiny = np.finfo(dtype).smallest_subnormal if hasattr(np.finfo(dtype), "smallest_subnormal") else np.finfo(dtype).tiny
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, tiny * 3, -tiny * 7]
    where = rng.choice(flat.size, size=len(specials), replace=False)
    flat[where] = np.array(specials, dtype=dtype)
    return values


def mma_reference(a, b, c):
    """D = A·B + C with exact products and a float64 sum, elementwise (no BLAS: IEEE NaN/inf)."""
    with np.errstate(invalid="ignore"):
        return (a.astype(np.float64)[:, :, None] * b.astype(np.float64)[None, :, :]).sum(axis=1) + c


def assert_mma_matches(d, a, b, c):
    expected = mma_reference(a, b, c)
    assert np.array_equal(np.isnan(d), np.isnan(expected)), "NaN positions differ"
    finite = np.isfinite(expected)
    assert np.array_equal(d[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)].astype(np.float32))
    with np.errstate(invalid="ignore"):
        scale = (np.abs(a.astype(np.float64))[:, :, None] * np.abs(b.astype(np.float64))[None]).sum(1) + np.abs(c)
    # products and sum exact, one rounding to float32 (the hardware's own summation may add a
    # few ulps of the magnitude: 4 units of float32 rounding of the sum of |terms|)
    err = np.abs(d[finite].astype(np.float64) - expected[finite])
    assert (err <= 4 * 2.0**-24 * scale[finite] + np.finfo(np.float32).smallest_subnormal).all()


# ---- mma.sync ------------------------------------------------------------------------------------


@pytest.mark.parametrize("round_operands", [1, 0], ids=["cvt.rna", "raw-bits"])
def test_mma_m16n8k8_tf32_layout(module, round_operands):
    rng = np.random.default_rng(80 + round_operands)
    a = special_values(rng, (16, 8), np.float32)
    b = special_values(rng, (8, 8), np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    d = run(module, "probe_mma_tf32", (1,), (32,), a, b, c, d, np.int32(round_operands), np.int32(0))[3]
    operand = tf32_round if round_operands else tf32_truncate
    assert_mma_matches(d, operand(a), operand(b), c)


def test_mma_tf32_uses_only_the_top_19_bits(module):
    # Operands whose low 13 bits are set: the truncated product differs from the full one.
    a = np.full((16, 8), np.float32(1 + 2**-20), np.float32)
    b = np.full((8, 8), np.float32(1 + 2**-21), np.float32)
    c = np.zeros((16, 8), np.float32)
    d = run(module, "probe_mma_tf32", (1,), (32,), a, b, c, np.zeros((16, 8), np.float32), np.int32(0), np.int32(0))[3]
    assert (d == 8.0).all()


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_mma_m16n8k16_layout(module, kind):
    rng = np.random.default_rng(16)
    if kind == "f16":
        a_values = special_values(rng, (16, 16), np.float16)
        b_values = special_values(rng, (16, 8), np.float16)
        a_bits, b_bits = a_values.view(np.uint16), b_values.view(np.uint16)
    else:
        # bf16 patterns: top halves of float32 values, plus NaN, ±inf, -0 and subnormals
        a_bits = (special_values(rng, (16, 16), np.float32).view(np.uint32) >> 16).astype(np.uint16)
        b_bits = (special_values(rng, (16, 8), np.float32).view(np.uint32) >> 16).astype(np.uint16)
        a_bits.reshape(-1)[:3] = [0x0001, 0x807F, 0x7FC1]  # subnormals and a NaN with payload
        a_values, b_values = bfloat16_value(a_bits), bfloat16_value(b_bits)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    d = run(module, "probe_mma_k16", (1,), (32,), a_bits, b_bits, c, d, np.int32(kind == "bf16"), np.int32(0))[3]
    assert_mma_matches(d, a_values, b_values, c)


@pytest.mark.parametrize("kernel", ["probe_mma_tf32", "probe_mma_k16"])
def test_a_misplaced_register_gives_a_wrong_answer(module, kernel):
    rng = np.random.default_rng(5)
    if kernel == "probe_mma_tf32":
        a, b = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)
        a_in, b_in, flag = a, b, np.int32(1)
        a_ref, b_ref = tf32_round(a), tf32_round(b)
    else:
        a_ref = rng.standard_normal((16, 16)).astype(np.float16)
        b_ref = rng.standard_normal((16, 8)).astype(np.float16)
        a_in, b_in, flag = a_ref.view(np.uint16), b_ref.view(np.uint16), np.int32(0)
    c = np.zeros((16, 8), np.float32)
    d = run(module, kernel, (1,), (32,), a_in, b_in, c, np.zeros((16, 8), np.float32), flag, np.int32(1))[3]
    with pytest.raises(AssertionError):
        assert_mma_matches(d, a_ref, b_ref, c)


def test_float_to_tf32_is_cvt_rna(module):
    rng = np.random.default_rng(32)
    x = special_values(rng, 4096, np.float32) * np.float32(7.0)
    bits = rng.integers(0, 2**32, size=2048, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([x, bits.view(np.float32), np.array([3.4028235e38, -3.4028235e38, 1 + 2**-11], np.float32)])
    out = np.zeros(x.size, np.uint32)
    out = run(module, "round_to_tf32", ((x.size + 255) // 256,), (256,), x, out, np.int32(x.size))[1]
    expected = tf32_round(x)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], expected[~nan].view(np.uint32))
    assert np.isnan(out[nan].view(np.float32)).all() and not (out & 0x1FFF).any()


def test_mma_needs_every_lane_of_a_full_warp(emulated):
    kernel = emulated.get_function("probe_mma_misuse")
    out = np.zeros(32, np.float32)
    kernel((1,), (32,), (out, np.int32(-1)))
    assert (out == 1).all()
    with pytest.raises(EmulatorLaunchError, match="lane 5 has already exited"):
        kernel((1,), (32,), (out, np.int32(5)))
    with pytest.raises(EmulatorLaunchError, match="needs a full warp of 32 threads; this warp has 16"):
        kernel((1,), (16,), (out, np.int32(-1)))


# ---- ldmatrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("transposed", [False, True], ids=["", "trans"])
def test_ldmatrix_against_numpy_gathers(module, count, transposed):
    rng = np.random.default_rng(count + 10 * transposed)
    rows = rng.integers(0, 2**16, size=(32, 8), dtype=np.uint64).astype(np.uint16)
    out = np.full((32, 4), 0xDEADBEEF, np.uint32)
    variant = np.int32(count + 8 * transposed)
    out = run(module, "probe_ldmatrix", (1,), (32,), rows, out, variant, np.int32(0), np.int32(0))[1]
    lane = np.arange(32)
    for i in range(4):
        if i >= count:
            assert (out[:, i] == 0).all()
            continue
        matrix = rows[8 * i: 8 * i + 8].astype(np.uint32)  # matrix i: rows from lanes 8i..8i+7
        r, c = lane // 4, 2 * (lane % 4)
        low, high = (matrix[c, r], matrix[c + 1, r]) if transposed else (matrix[r, c], matrix[r, c + 1])
        np.testing.assert_array_equal(out[:, i], low | high << 16)


def test_ldmatrix_addresses_must_be_aligned_rows_of_shared_memory(emulated):
    kernel = emulated.get_function("probe_ldmatrix")
    rows = np.zeros((32, 8), np.uint16)
    out = np.zeros((32, 4), np.uint32)
    with pytest.raises(EmulatorLaunchError, match="lane 0's row address .* is not 16-byte aligned"):
        kernel((1,), (32,), (rows, out, np.int32(4), np.int32(8), np.int32(0)))
    with pytest.raises(EmulatorLaunchError, match="not 16 bytes inside the block's shared memory"):
        kernel((1,), (32,), (rows, out, np.int32(1), np.int32(0), np.int32(1)))


# ---- cp.async -----------------------------------------------------------------------------------


def cp_async(module, copy_bytes=16, source_bytes=16, read_neighbour=0, barrier=0):
    source = np.random.default_rng(copy_bytes + source_bytes).standard_normal(128 * 4).astype(np.float32)
    before = np.zeros(128 * 4, np.float32)
    after = np.zeros(128 * 4, np.float32)
    _, before, after, *_ = run(module, "probe_cp_async", (1,), (128,), source, before, after, np.int32(copy_bytes),
                               np.int32(source_bytes), np.int32(0), np.int32(read_neighbour), np.int32(barrier))
    return source, before, after


def test_cp_async_lands_at_the_wait_and_reads_as_poison_before(emulated):
    source, before, after = cp_async(("emulator", emulated))
    assert (before.view(np.uint32) == POISON_BITS).all()  # read before the wait: NaN bytes
    np.testing.assert_array_equal(after, source)


@pytest.mark.parametrize("copy_bytes", [4, 8, 16])
def test_cp_async_zero_fills_past_src_size(module, copy_bytes):
    for source_bytes in sorted({0, 1, copy_bytes // 2, copy_bytes - 1, copy_bytes}):
        source, _, after = cp_async(module, copy_bytes, source_bytes)
        got = after.view(np.uint8).reshape(128, 16)[:, :copy_bytes]
        expected = source.view(np.uint8).reshape(128, 16)[:, :copy_bytes].copy()
        expected[:, source_bytes:] = 0
        np.testing.assert_array_equal(got, expected, err_msg=f"cp-size {copy_bytes}, src-size {source_bytes}")


def test_reading_another_threads_copy_needs_the_barrier_after_the_wait(module):
    backend, _ = module
    source, _, after = cp_async(module, read_neighbour=1, barrier=1)
    np.testing.assert_array_equal(after, np.roll(source, -4))
    if backend == "emulator":  # without the barrier the emulator shows the race as poison
        # in ascending order, where the reader runs before its neighbour's copy lands (whatever
        # $CUDECONV_EMULATOR_SCHEDULE the suite runs under)
        ascending = ("emulator", RawModule(code=source_with_headers(SOURCE), schedule="ascending"))
        _, _, racy = cp_async(ascending, read_neighbour=1, barrier=0)
        assert (racy[:-4].view(np.uint32) == POISON_BITS).all()


def test_cp_async_wait_group_completes_the_oldest_groups_first(emulated):
    source = np.arange(1, 13, dtype=np.float32)
    observed = np.zeros(36, np.float32)
    emulated.get_function("probe_cp_async_groups")((1,), (32,), (source, observed))
    stages = observed.reshape(3, 3, 4)  # after wait<2>, wait<1>, wait<0>; per group
    for stage in range(3):
        for group in range(3):
            if group <= stage:
                np.testing.assert_array_equal(stages[stage, group], source[4 * group: 4 * group + 4])
            else:
                assert (stages[stage, group].view(np.uint32) == POISON_BITS).all(), (stage, group)


def test_cp_async_misuse_is_reported(emulated):
    kernel = emulated.get_function("probe_cp_async")
    buffers = [np.zeros(512, np.float32) for _ in range(3)]
    with pytest.raises(EmulatorLaunchError, match=r"src-size 8 is not in \[0, 4\]"):
        kernel((1,), (128,), (*buffers, np.int32(4), np.int32(8), np.int32(0), np.int32(0), np.int32(0)))
    with pytest.raises(EmulatorLaunchError, match="must be aligned to the copy size"):
        kernel((1,), (128,), (*buffers, np.int32(16), np.int32(16), np.int32(1), np.int32(0), np.int32(0)))
    with pytest.raises(EmulatorLaunchError, match="is not inside the block's shared memory"):
        emulated.get_function("probe_cp_async_to_global")((1,), (1,), (buffers[0], buffers[1]))


def test_cp_async_out_of_bounds_source_under_the_sanitizer():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    sanitized = RawModule(code=source_with_headers(SOURCE), sanitize=True)
    kernel = sanitized.get_function("probe_cp_async")
    source = np.zeros(512, np.float32)
    args = [np.zeros(512, np.float32), np.zeros(512, np.float32), np.int32(16), np.int32(16)]
    kernel((1,), (128,), (source, *args, np.int32(0), np.int32(0), np.int32(0)))  # in bounds: clean
    with pytest.raises(EmulatorLaunchError, match="AddressSanitizer"):
        kernel((1,), (128,), (source, *args, np.int32(4), np.int32(0), np.int32(0)))
    # the tiled product, every copy and ldmatrix checked
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 64)).astype(np.float16).view(np.uint16)
    b = rng.standard_normal((64, 64)).astype(np.float16).view(np.uint16)
    c = np.full((64, 64), np.nan, np.float32)
    sanitized.get_function("tiled_product_f16")((1, 1), (128,), (a, b, c, np.int32(64), np.int32(64), np.int32(64)))
    assert np.isfinite(c).all()


# ---- the tiled product ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tf32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(64, 64, 64), (128, 192, 160)], ids=["64^3", "128x192x160"])
def test_tiled_product(module, kind, shape):
    m, n, k = shape  # multiples of the 64×64 tile and of the K slice (16 floats, 32 halves)
    rng = np.random.default_rng(m + n + k)
    a32 = rng.standard_normal((m, k)).astype(np.float32)
    b32 = rng.standard_normal((k, n)).astype(np.float32)
    if kind == "tf32":
        a_in, b_in = a32, np.ascontiguousarray(b32.T)  # B given as N×K
        a_ref, b_ref, step = tf32_round(a32), tf32_round(b32), 8
    elif kind == "f16":
        a_ref, b_ref, step = a32.astype(np.float16), b32.astype(np.float16), 16
        a_in, b_in = a_ref.view(np.uint16), b_ref.view(np.uint16)
    else:
        a_in = (a32.view(np.uint32) >> 16).astype(np.uint16)
        b_in = (b32.view(np.uint32) >> 16).astype(np.uint16)
        a_ref, b_ref, step = bfloat16_value(a_in), bfloat16_value(b_in), 16
    c = np.full((m, n), np.nan, np.float32)
    c = run(module, f"tiled_product_{kind}", (n // 64, m // 64), (128,), a_in, b_in, c, np.int32(m), np.int32(n),
            np.int32(k))[2]
    a64, b64 = a_ref.astype(np.float64), b_ref.astype(np.float64)
    # exact products of the rounded inputs; the accumulator is rounded to float32 once per mma
    assert_close(c, a64 @ b64, np.float32, terms=k // step, scale=np.abs(a64) @ np.abs(b64), factor=2.0,
                 name=f"tiled {kind} product")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tiled_product_sass_has_tensor_core_instructions(arch):
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    rows = {row["kernel"]: row for row in sass_report.report(SOURCE, arch)}
    print("\n" + sass_report.format_table(list(rows.values()), f"{SOURCE.name} ({arch})"))
    for kind in ("tf32", "f16", "bf16"):
        row = rows[f"tiled_product_{kind}"]
        assert row["HMMA"] > 0 and row["LDSM"] > 0 and row["LDGSTS"] > 0, row
        assert row["LDL"] == row["STL"] == row["local"] == 0, row
        assert row["spill_stores"] == row["spill_loads"] == 0, row
