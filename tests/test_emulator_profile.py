"""The emulator's memory-traffic profile (RawModule(profile=True), kernel.last_profile).

Kernels of tests/emulator_kernels/profile.cu whose requests, 32-byte sectors and shared-memory
wavefronts can be counted by hand: coalesced, strided and broadcast loads, doubles and float4,
cp.async, a column of an unpadded and of a padded shared tile, 8- and 16-byte shared accesses,
ldmatrix with and without bank conflicts, and mma counts. Arrays are 128-byte aligned, so every
count follows from the addresses alone.
"""
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_unless_kernel_checks_can_run
from cudeconv import backends
from cudeconv._loader import source_with_headers
from cudeconv.emulator import RawModule

SOURCE_PATH = Path(__file__).resolve().parent / "emulator_kernels" / "profile.cu"


@pytest.fixture(scope="module")
def module():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    return RawModule(source_with_headers(SOURCE_PATH), profile=True)


def aligned(count, dtype, fill=None):
    """A 128-byte aligned array of ``count`` elements (NumPy only promises 16)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(count * dtype.itemsize + 128, np.uint8)
    start = -raw.ctypes.data % 128
    array = raw[start : start + count * dtype.itemsize].view(dtype)
    array[...] = np.arange(count) if fill is None else fill
    return array


def run(module, name, threads, args):
    kernel = module.get_function(name)
    kernel((1,), (threads,), args)
    return kernel.last_profile


def line_of(snippet):
    numbers = [n for n, line in enumerate(SOURCE_PATH.read_text().splitlines(), 1) if snippet in line]
    assert len(numbers) == 1, (snippet, numbers)
    return f"{SOURCE_PATH.name}:{numbers[0]}"


@pytest.mark.parametrize("stride, sectors", [(1, 4), (2, 8), (8, 32), (16, 32)])
def test_strided_loads_touch_one_sector_per_32_bytes_spanned(module, stride, sectors):
    """32 lanes × 4 bytes: 128 contiguous bytes are 4 sectors; a stride of s floats spans s·128
    bytes, up to one sector per lane from s = 8 on. Stores stay coalesced (4 sectors)."""
    source, out = aligned(32 * 16, np.float32), aligned(32, np.float32)
    profile = run(module, "strided_copy", 32, (source, out, np.int32(stride), np.int32(1)))
    assert profile["global_load"] == {"requests": 1, "sectors": sectors, "bytes": 128}
    assert profile["global_store"] == {"requests": 1, "sectors": 4, "bytes": 128}
    np.testing.assert_array_equal(out, source[: 32 * stride : stride])
    # per argument: the kernel's parameters 0 (in) and 1 (out); distinct sectors of each
    assert profile["per_argument"][0]["global_load"]["sectors"] == sectors
    assert profile["per_argument"][1]["global_store"]["sectors"] == 4
    assert profile["per_argument"][0]["parameter"] == "float const*"
    assert profile["dram_sectors"] == sectors + 4


def test_requests_are_per_warp_and_per_execution(module):
    """Four warps, each running the copy three times: 12 requests of 4 sectors each, but only 16
    distinct sectors of each array."""
    source, out = aligned(128, np.float32), aligned(128, np.float32)
    profile = run(module, "strided_copy", 128, (source, out, np.int32(1), np.int32(3)))
    assert profile["global_load"] == {"requests": 12, "sectors": 48, "bytes": 12 * 128}
    assert profile["per_argument"][0]["dram_sectors"] == 16
    assert profile["dram_sectors"] == 32
    line = line_of("for (int r = 0; r < repeat; ++r)")
    assert profile["per_line"][line]["global_load"]["requests"] == 12
    assert profile["per_line"][line]["global_store"]["requests"] == 12


def test_a_broadcast_load_is_one_sector(module):
    source, out = aligned(32, np.float32), aligned(64, np.float32)
    profile = run(module, "broadcast_read", 64, (source, out))
    assert profile["global_load"] == {"requests": 2, "sectors": 2, "bytes": 2 * 128}
    assert profile["dram_sectors"] == 1 + 8


@pytest.mark.parametrize("name, dtype, width, sectors", [("copy_doubles", np.float64, 1, 8),
                                                          ("copy_float4", np.float32, 4, 16)])
def test_wide_elements_are_one_request_over_more_sectors(module, name, dtype, width, sectors):
    source, out = aligned(32 * width, dtype), aligned(32 * width, dtype)
    profile = run(module, name, 32, (source, out))
    nbytes = 32 * width * np.dtype(dtype).itemsize
    assert profile["global_load"] == {"requests": 1, "sectors": sectors, "bytes": nbytes}
    assert profile["global_store"] == {"requests": 1, "sectors": sectors, "bytes": nbytes}
    np.testing.assert_array_equal(out, source)


def test_cp_async_counts_its_global_side(module):
    """64 threads × 16 bytes: one cp.async request per warp over 16 sectors; the shared rows are
    then read back (4-byte loads at a 16-byte stride: 4 wavefronts per warp)."""
    source, out = aligned(256, np.float32), aligned(64, np.float32)
    profile = run(module, "copy_through_cp_async", 64, (source, out))
    assert profile["cp_async"] == {"requests": 2, "sectors": 32, "bytes": 1024}
    assert profile["global_load"] == {"requests": 0, "sectors": 0, "bytes": 0}
    assert profile["shared_load"] == {"requests": 2, "wavefronts": 8, "bytes": 256}
    assert profile["per_argument"][0]["cp_async"]["sectors"] == 32
    np.testing.assert_array_equal(out, source[::4])


def test_a_copy_is_one_request_whether_its_lanes_read_or_zero_fill(module):
    """Two copies per thread of 64, the odd lanes zero-filling: per warp and copy one request (4
    requests), whose shared side stores 512 consecutive bytes in 4 quarter-warp wavefronts and whose
    global side reads the even lanes' 16 bytes (16 sectors, each half used)."""
    source, out = aligned(256, np.float32), aligned(64, np.float32)
    profile = run(module, "copy_or_zero_fill_twice", 64, (source, out))
    line = line_of("cp_async_16(rows[r][threadIdx.x]")
    assert profile["per_line"][line]["shared_store"] == {"requests": 4, "wavefronts": 16, "bytes": 4 * 512}
    assert profile["per_line"][line]["cp_async"] == {"requests": 4, "sectors": 4 * 16, "bytes": 4 * 256}
    even = np.arange(64) % 2 == 0
    np.testing.assert_array_equal(out[even], source[::4][even] + source[1::4][even])
    np.testing.assert_array_equal(out[~even], 0)


@pytest.mark.parametrize("name, column_wavefronts", [("column_of_unpadded_tile", 32), ("column_of_padded_tile", 1)])
def test_a_column_of_a_tile_conflicts_unless_padded(module, name, column_wavefronts):
    """Stride 32 words: every lane in bank 0, 32 passes; stride 33: 32 banks, one pass. The read of
    tile[0][0] by every lane is a broadcast: one pass per warp."""
    profile = run(module, name, 64, (aligned(64, np.float32),))
    assert profile["shared_store"] == {"requests": 2, "wavefronts": 2 * column_wavefronts, "bytes": 256}
    assert profile["shared_load"] == {"requests": 2, "wavefronts": 2, "bytes": 256}


def test_wide_shared_accesses_go_by_half_and_quarter_warps(module):
    """8-byte accesses: two half-warp passes; 16-byte: four quarter-warp passes (consecutive
    addresses, no conflicts)."""
    profile = run(module, "wide_shared_accesses", 32, (aligned(32, np.float32),))
    assert profile["shared_store"] == {"requests": 2, "wavefronts": 2 + 4, "bytes": 32 * 8 + 32 * 16}
    assert profile["shared_load"] == {"requests": 2, "wavefronts": 2 + 4, "bytes": 32 * 8 + 32 * 16}


@pytest.mark.parametrize("stride_chunks, wavefronts", [(1, 4), (2, 8), (4, 16)])
def test_ld_shared_16_is_one_16_byte_access_per_lane(module, stride_chunks, wavefronts):
    """ld_shared_16 (the FFMA GEMM's vector loads, which the CPU compiler would split into 4-byte
    ones): one request of 16-byte lanes, by quarter warps — consecutive chunks fill the 32 banks
    once per quarter (4 wavefronts), every other chunk twice (8), every fourth four times (16)."""
    out = aligned(32, np.float32)
    profile = run(module, "vector_shared_loads", 32, (out, np.int32(stride_chunks)))
    line = line_of("ld_shared_16(values, chunks")
    assert profile["per_line"][line]["shared_load"] == {"requests": 1, "wavefronts": wavefronts, "bytes": 512}
    first = 4 * stride_chunks * np.arange(32)
    np.testing.assert_array_equal(out, 2 * first + 3)


@pytest.mark.parametrize("row_stride, wavefronts", [(16, 4), (64, 16), (128, 32)])
def test_ldmatrix_goes_by_8_row_phases(module, row_stride, wavefronts):
    """ldmatrix.x4: four matrices of 8 rows × 16 bytes. Rows 16 bytes apart fill the 32 banks once
    per matrix; 64 bytes apart, rows r and r + 2 share banks (4 passes per matrix); 128 bytes
    apart, all 8 rows share 4 banks (8 passes)."""
    profile = run(module, "ldmatrix_then_mma", 32, (aligned(32, np.float32), np.int32(row_stride)))
    line = line_of("ldmatrix_x4(a, buffer")
    assert profile["per_line"][line]["shared_load"] == {"requests": 1, "wavefronts": wavefronts, "bytes": 512}
    assert profile["mma"] == {"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32": 1}


def test_profile_is_per_launch_and_off_by_default(module):
    source, out = aligned(32, np.float32), aligned(32, np.float32)
    kernel = module.get_function("strided_copy")
    kernel((1,), (32,), (source, out, np.int32(1), np.int32(2)))
    assert kernel.last_profile["global_load"]["requests"] == 2
    kernel((1,), (32,), (source, out, np.int32(1), np.int32(1)))
    assert kernel.last_profile["global_load"]["requests"] == 1
    plain = RawModule(source_with_headers(SOURCE_PATH)).get_function("strided_copy")
    plain((1,), (32,), (source, out, np.int32(1), np.int32(1)))
    assert plain.last_profile is None
    with pytest.raises(TypeError, match="profile must be a bool"):
        RawModule(source_with_headers(SOURCE_PATH), profile=1)


def test_the_gemm_profile_script_names_every_operand(module):
    """scripts/profile_gemm.py (docs/perf.md's table): every GEMM pass of each math is profiled,
    each array argument it touches has a name, and the output arrays are written whole."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import profile_gemm

    launches = profile_gemm.profiled_launches()
    entries = {entry for entry, _ in launches}
    for math in ("f32", "tf32", "f16"):
        for pass_ in ("forward", "grad_input", "grad_weight"):
            assert any(entry.startswith(f"deconv_{pass_}_gemm_{math}_") for entry in entries), (pass_, math)
    for entry, profile in launches:
        for position in profile["per_argument"]:
            assert not profile_gemm.operand_name(entry, position).startswith("arg"), (entry, position)
    forward_entry, forward = next((e, p) for e, p in launches if e.startswith("deconv_forward_gemm_f32_"))
    y_bytes = 2 * 32 * 16 * 16 * 4
    assert forward["per_argument"][4]["dram_sectors"] in (y_bytes // 32, y_bytes // 32 + 1)
    assert f"| `{forward_entry}` | w |" in profile_gemm.table(launches)
