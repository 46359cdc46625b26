"""cudeconv.emulator follows the GPU's rules where the GPU refuses or faults: dynamic shared
memory above 48 KiB needs the kernel's opt-in (max_dynamic_shared_size_bytes, bounded per
architecture), and misaligned accesses through pointers (vector types above all) fail the launch
in plain builds as well as under the sanitizer."""

import re
from pathlib import Path

import numpy as np
import pytest

from cudeconv.emulator import EmulatorLaunchError, RawModule, _kernel

KERNELS = Path(__file__).parent / "emulator_kernels"
SOURCE = (KERNELS / "gpu_rules.cu").read_text()
KIB = 1024


@pytest.fixture(scope="module")
def rules():
    return RawModule(SOURCE)


def reverse_through_shared(module, shared_bytes, threads=256):
    count = shared_bytes // 4
    out = np.full(count, np.nan, np.float32)
    module.get_function("reverse_through_shared")((1,), (threads,), (out, np.int32(count)), shared_mem=shared_bytes)
    return out


# ---- dynamic shared memory ------------------------------------------------------------------


def test_up_to_48_kib_needs_no_opt_in(rules):
    kernel = rules.get_function("reverse_through_shared")
    assert kernel.max_dynamic_shared_size_bytes == 48 * KIB
    out = reverse_through_shared(rules, 48 * KIB)
    np.testing.assert_array_equal(out, np.arange(12 * KIB)[::-1])


def test_more_than_48_kib_is_refused_without_the_opt_in():
    module = RawModule(SOURCE)  # a kernel of its own: the attribute is per kernel and sticks
    out = np.full(16, np.nan, np.float32)
    with pytest.raises(
        EmulatorLaunchError,
        match=r"kernel 'reverse_through_shared'.*shared_mem=49156 bytes of dynamic shared memory exceed the kernel's "
        r"max_dynamic_shared_size_bytes of 49152; opt in first, as on the GPU: "
        r"kernel\.max_dynamic_shared_size_bytes = 49156",
    ):
        module.get_function("reverse_through_shared")((1,), (32,), (out, np.int32(16)), shared_mem=48 * KIB + 4)
    assert np.isnan(out).all()  # nothing ran


@pytest.mark.parametrize("arch, limit", [(None, 227 * KIB), ("-arch=sm_90", 227 * KIB), ("--gpu-architecture=sm_80", 163 * KIB),
                                         ("-arch=sm_86", 99 * KIB), ("-arch=compute_75", 64 * KIB), ("-arch=sm_89", 99 * KIB)])
def test_opt_in_up_to_the_architectures_limit(arch, limit):
    module = RawModule(SOURCE, options=(arch,) if arch else ())
    kernel = module.get_function("reverse_through_shared")
    with pytest.raises(ValueError, match=rf"max_dynamic_shared_size_bytes={limit + 1} .*outside 0\.\.{limit} bytes"):
        kernel.max_dynamic_shared_size_bytes = limit + 1
    assert kernel.max_dynamic_shared_size_bytes == 48 * KIB  # unchanged by the refused value
    kernel.max_dynamic_shared_size_bytes = limit
    assert kernel.max_dynamic_shared_size_bytes == limit
    assert module.get_function("reverse_through_shared") is kernel  # the same function: the setting stays
    out = reverse_through_shared(module, limit)
    np.testing.assert_array_equal(out, np.arange(limit // 4)[::-1])
    with pytest.raises(EmulatorLaunchError, match=rf"exceed the kernel's max_dynamic_shared_size_bytes of {limit}; "
                                                  rf"that is more than the {limit} bytes a block can have on sm_\d+"):
        reverse_through_shared(module, limit + 4)


def test_opt_in_below_48_kib_lowers_the_limit(rules):
    module = RawModule(SOURCE)
    kernel = module.get_function("reverse_through_shared")
    kernel.max_dynamic_shared_size_bytes = 1 * KIB
    np.testing.assert_array_equal(reverse_through_shared(module, 1 * KIB), np.arange(256)[::-1])
    with pytest.raises(EmulatorLaunchError, match="exceed the kernel's max_dynamic_shared_size_bytes of 1024"):
        reverse_through_shared(module, 2 * KIB)


@pytest.mark.parametrize("value, error", [(-1, ValueError), (2.0**16, TypeError), (True, TypeError), ("64K", TypeError)])
def test_bad_opt_in_values(rules, value, error):
    kernel = RawModule(SOURCE).get_function("reverse_through_shared")
    with pytest.raises(error, match="max_dynamic_shared_size_bytes"):
        kernel.max_dynamic_shared_size_bytes = value


def test_the_emulators_buffer_holds_the_largest_opt_in():
    header = (Path(_kernel.__file__).parent / "cudeconv_emu.h").read_text()
    (size,) = re.findall(r"constexpr size_t kMaxDynamicShared = (\d+);", header)
    assert int(size) == max(_kernel._OPT_IN_SHARED_BYTES.values())


# ---- alignment ------------------------------------------------------------------------------


def test_aligned_vector_accesses_compute_the_right_values(rules):
    x = np.arange(64, dtype=np.float32)
    out = np.full(8, np.nan, np.float32)
    rules.get_function("sum_float4")((1,), (8,), (x, out, np.int32(4)))
    np.testing.assert_array_equal(out, (x[4:36].reshape(8, 4)).sum(1))
    rules.get_function("sum_float2")((1,), (8,), (x, out, np.int32(2)))
    np.testing.assert_array_equal(out, x[2:18].reshape(8, 2).sum(1))
    doubles = np.arange(32, dtype=np.float64)
    out64 = np.full(8, np.nan)
    rules.get_function("sum_double2")((1,), (8,), (doubles, out64, np.int32(2)))
    np.testing.assert_array_equal(out64, doubles[2:18].reshape(8, 2).sum(1))
    ints = np.zeros(40, np.int32)
    rules.get_function("store_int4")((1,), (8,), (ints, np.int32(4)))
    np.testing.assert_array_equal(ints, [0] * 4 + [1, 2, 3, 4] * 8 + [0] * 4)
    rules.get_function("shared_double2")((1,), (8,), (out, np.int32(4)))
    np.testing.assert_array_equal(out, 2 * np.arange(8))


# Struct copies reach the check as reference bindings or member accesses: "access to". The place is
# the kernel's line, or the shim's for an access inside an intrinsic (__ldg).
MISALIGNED = [
    ("sum_float4", np.float32, 1, r"(load of|access to) 'const (struct )?float4' at address 0x[0-9a-f]+, which needs 16-byte alignment"),
    ("sum_float4", np.float32, 2, r"(load of|access to) 'const (struct )?float4' .*16-byte alignment"),
    ("sum_float2", np.float32, 1, r"(load of|access to) 'const (struct )?float2' .*8-byte alignment"),
    ("sum_double2", np.float64, 1, r"(load of|access to) 'const (struct )?double2' .*16-byte alignment"),
    ("store_int4", np.int32, 2, r"(store to|access to) '(struct )?int4' .*16-byte alignment"),
    ("shared_double2", None, 2, r"(store to|access to) '(struct )?double2' .*16-byte alignment"),
]


@pytest.mark.parametrize("name, dtype, offset, message", MISALIGNED, ids=lambda v: str(v)[:12])
def test_misaligned_vector_accesses_fail_the_launch(rules, name, dtype, offset, message):
    args = _misaligned_args(name, dtype, offset)
    with pytest.raises(EmulatorLaunchError, match=rf"kernel '{name}' failed: misaligned {message} "
                                                  r"\([^,]*(cudeconv_kernel\.cu|cudeconv_emu\.h):\d+:\d+, block \(0,0,0\), thread \(0,0,0\)\); "
                                                  "on a GPU this is a misaligned address error"):
        rules.get_function(name)((1,), (8,), args)
    # The process and the module carry on.
    test_aligned_vector_accesses_compute_the_right_values(rules)


def _misaligned_args(name, dtype, offset):
    if name == "shared_double2":
        return (np.zeros(8, np.float32), np.int32(offset))
    if name == "store_int4":
        return (np.zeros(40, np.int32), np.int32(offset))
    return (np.arange(64, dtype=dtype), np.zeros(8, dtype), np.int32(offset))


def test_a_misaligned_scalar_fails_too(rules):
    raw = np.arange(16, dtype=np.float32).view(np.uint8)
    out = np.full(2, np.nan, np.float32)
    rules.get_function("load_float_at_byte")((1,), (2,), (raw, out, np.int32(8)))
    np.testing.assert_array_equal(out, [2, 3])
    with pytest.raises(EmulatorLaunchError, match=r"misaligned load of 'const float' .*4-byte alignment"):
        rules.get_function("load_float_at_byte")((1,), (2,), (raw, out, np.int32(2)))


def test_misaligned_vector_load_under_the_sanitizer():
    module = RawModule(SOURCE, sanitize=True)
    x = np.arange(64, dtype=np.float32)
    out = np.full(8, np.nan, np.float32)
    module.get_function("sum_float4")((1,), (8,), (x, out, np.int32(4)))
    np.testing.assert_array_equal(out, x[4:36].reshape(8, 4).sum(1))
    with pytest.raises(EmulatorLaunchError, match=r"misaligned address .* for type 'const (struct )?float4', which "
                                                  r"requires 16 byte alignment"):
        module.get_function("sum_float4")((1,), (8,), (x, out, np.int32(1)))
