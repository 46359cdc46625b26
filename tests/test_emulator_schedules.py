"""Schedules: the order in which the emulator runs the threads of a block between barriers
(RawModule(schedule=...), $CUDECONV_EMULATOR_SCHEDULE). A missing barrier passes under one order
and is caught under another; correct kernels, the library's among them, pass under every order.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_emulator as emulator_tests
import test_gemm as gemm_tests
import test_gemm_tiles as tile_tests
import test_kernels as kernel_tests
import test_mma_primitives as mma_tests

from cudeconv._dtypes import BFLOAT16
from cudeconv._loader import source_with_headers
from cudeconv.emulator import RawModule

KERNELS = Path(__file__).parent / "emulator_kernels"
SOURCE = (KERNELS / "schedules.cu").read_text()
REPO_ROOT = Path(__file__).resolve().parent.parent
OTHER_ORDERS = ("descending", "random:1", "random:2")  # ascending is what every other test runs


@pytest.fixture(scope="module")
def schedules():
    return RawModule(SOURCE)


def record_order(module, grid, threads, phases=4):
    ranks = np.full(grid * phases * threads, 2**32 - 1, np.uint32)
    module.get_function("record_order")((grid,), (threads,), (ranks, np.int32(phases)))
    return ranks.reshape(grid, phases, threads)


def ranks_of(order):
    ranks = np.empty(len(order), np.uint32)
    ranks[order] = np.arange(len(order))
    return ranks


def warps(threads):
    return [list(range(w, min(w + 32, threads))) for w in range(0, threads, 32)]


# ---- the orders -----------------------------------------------------------------------------


def test_ascending_runs_warps_and_lanes_in_thread_order():
    ranks = record_order(RawModule(SOURCE, schedule="ascending"), grid=3, threads=80)
    assert (ranks == np.arange(80)).all()


def test_descending_runs_the_last_warp_first_and_its_last_lane_first():
    ranks = record_order(RawModule(SOURCE, schedule="descending"), grid=3, threads=80)  # a partial last warp
    order = [t for warp in reversed(warps(80)) for t in reversed(warp)]
    assert (ranks == ranks_of(order)).all()


def check_random_orders(ranks, threads):
    """Each phase of each block runs every thread once, a warp at a time, in an order of its own."""
    seen = set()
    for block in ranks:
        for phase in block:
            assert sorted(phase) == list(range(threads))
            for warp in warps(threads):
                assert sorted(phase[warp]) == list(range(min(phase[warp]), min(phase[warp]) + len(warp)))
            seen.add(phase.tobytes())
    assert len(seen) == ranks.shape[0] * ranks.shape[1]  # drawn anew at every barrier and in every block


def test_random_orders_are_drawn_at_every_barrier_and_reproduce(schedules):
    first = record_order(RawModule(SOURCE, schedule="random:7"), grid=3, threads=80)
    check_random_orders(first, 80)
    assert not (first == np.arange(80)).all(axis=-1).any()  # some lane order differs in every phase
    assert (record_order(RawModule(SOURCE, schedule="random:7"), grid=3, threads=80) == first).all()
    other = record_order(RawModule(SOURCE, schedule="random:8"), grid=3, threads=80)
    check_random_orders(other, 80)
    assert (other != first).any(axis=-1).all()


_ORDER_IN_CHILD = """
import sys
import numpy as np
from cudeconv.emulator import RawModule
ranks = np.zeros(16 * 4 * 64, np.uint32)
RawModule(sys.stdin.read(), schedule="random:12345").get_function("record_order")((16,), (64,), (ranks, np.int32(4)))
sys.stdout.write(ranks.tobytes().hex())
"""


def test_a_seed_gives_the_same_orders_under_any_number_of_openmp_threads():
    results = []
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO_ROOT))
        child = subprocess.run([sys.executable, "-c", _ORDER_IN_CHILD], input=SOURCE, env=env, capture_output=True,
                               text=True, check=True)
        results.append(child.stdout)
    assert results[0] == results[1] == results[2]
    check_random_orders(np.frombuffer(bytes.fromhex(results[0]), np.uint32).reshape(16, 4, 64), 64)


def test_the_variable_is_read_at_each_launch_and_the_argument_wins(schedules, monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_SCHEDULE", "descending")
    assert (record_order(schedules, 1, 64) == np.arange(64)[::-1]).all()
    assert (record_order(RawModule(SOURCE, schedule="ascending"), 1, 64) == np.arange(64)).all()
    monkeypatch.setenv("CUDECONV_EMULATOR_SCHEDULE", "ascending")
    assert (record_order(schedules, 1, 64) == np.arange(64)).all()
    monkeypatch.delenv("CUDECONV_EMULATOR_SCHEDULE")
    assert (record_order(schedules, 1, 64) == np.arange(64)).all()


@pytest.mark.parametrize("value", ["sideways", "Ascending", "random", "random:", "random:x", "random:-1",
                                   f"random:{2**64}", "descending:3", "random:1.5"])
def test_bad_schedules_are_refused_naming_where_they_came_from(schedules, monkeypatch, value):
    monkeypatch.setenv("CUDECONV_EMULATOR_SCHEDULE", value)
    with pytest.raises(ValueError, match=rf"CUDECONV_EMULATOR_SCHEDULE must be 'ascending', 'descending' or "
                                         rf"'random:<seed>'.*got {value!r}"):
        record_order(schedules, 1, 32)
    with pytest.raises(ValueError, match=rf"schedule must be .*got {value!r}"):
        RawModule(SOURCE, schedule=value)


def test_schedule_must_be_a_string():
    with pytest.raises(TypeError, match="schedule must be a str or None"):
        RawModule(SOURCE, schedule=1)


# ---- races that only the order decides --------------------------------------------------------

RACES = {  # kernel: what each thread should see, from its index
    "read_lower_warp": lambda t: np.where(t >= 32, 1000 + t - 32, -2),
    "read_higher_warp_before_it_writes": lambda t: np.where(t + 32 < len(t), t + 32, -2),
    "read_lower_lane": lambda t: np.where(t % 32 != 0, 1000 + t - 1, -2),
}


def run_race(name, schedule, synchronized, grid=2, threads=512):
    # 16 warps: a random order puts some warp before the one below it in every block
    out = np.full(grid * threads, -3, np.int32)
    RawModule(SOURCE, schedule=schedule).get_function(name)((grid,), (threads,), (out, np.int32(synchronized)))
    return out.reshape(grid, threads)


@pytest.mark.parametrize("name", RACES)
def test_a_missing_barrier_passes_in_ascending_order(name):
    """The blind spot that the other orders are there for."""
    expected = RACES[name](np.arange(512))
    assert (run_race(name, "ascending", synchronized=0) == expected).all()


@pytest.mark.parametrize("schedule", OTHER_ORDERS)
@pytest.mark.parametrize("name", RACES)
def test_a_missing_barrier_is_caught_under_other_orders(name, schedule):
    expected = RACES[name](np.arange(512))
    wrong = (run_race(name, schedule, synchronized=0) != expected).any(axis=1)
    assert wrong.all()  # in every block


@pytest.mark.parametrize("schedule", ("ascending",) + OTHER_ORDERS)
@pytest.mark.parametrize("name", RACES)
def test_with_the_barrier_every_order_gives_the_right_result(name, schedule):
    expected = RACES[name](np.arange(512))
    assert (run_race(name, schedule, synchronized=1) == expected).all()


# ---- correct kernels under every order: warp collectives, and the library's kernel families ----


def _features_case(check):
    return lambda monkeypatch: check(RawModule((KERNELS / "features.cu").read_text()))


def _mma_case(check, *args):
    return lambda monkeypatch: check(("emulator", RawModule(source_with_headers(mma_tests.SOURCE))), *args)


def _neighbours_copy_after_the_barrier(module):
    source, _, after = mma_tests.cp_async(module, read_neighbour=1, barrier=1)
    np.testing.assert_array_equal(after, np.roll(source, -4))


# One small representative case per family; the full test files run under a schedule with
# CUDECONV_EMULATOR_SCHEDULE=<schedule> pytest tests/test_gemm.py ... (see docs/emulator.md).
CORRECT_KERNELS = {
    "shuffles": _features_case(emulator_tests.test_warp_shuffle_reductions),
    "votes": _features_case(emulator_tests.test_ballot_any_all_on_full_and_partial_warps),
    "scan": _features_case(lambda m: emulator_tests.test_shuffle_up_idx_and_width(m, 8)),
    "syncthreads_count": _features_case(emulator_tests.test_syncthreads_count_or_and),
    "tree_reduction": _features_case(emulator_tests.test_shared_memory_tree_reduction),
    "mma_layout_f16": _mma_case(mma_tests.test_mma_m16n8k16_layout, "f16"),
    "ldmatrix_x4_trans": _mma_case(mma_tests.test_ldmatrix_against_numpy_gathers, 4, True),
    "cp_async_then_barrier": _mma_case(_neighbours_copy_after_the_barrier),
    "tiled_product_tf32": _mma_case(mma_tests.test_tiled_product, "tf32", (64, 64, 64)),
    "gemm_fp32": lambda mp: gemm_tests.test_gemm_matches_reference("emulator", None, gemm_tests.GEOMETRIES[0],
                                                                   (np.float32, "fp32")),
    "gemm_tf32": lambda mp: gemm_tests.test_gemm_matches_reference("emulator", None, gemm_tests.GEOMETRIES[1],
                                                                   (np.float32, "tf32")),
    "gemm_f16": lambda mp: gemm_tests.test_gemm_matches_reference("emulator", None, gemm_tests.GEOMETRIES[0],
                                                                  (np.float16, "fp32")),
    # the narrow tiles: packed-chunk copies with idle threads (tf32's n-major B by ldmatrix.x2),
    # and M-narrow grad_weight staged through registers (f16)
    "gemm_tile_128x32_tf32": lambda mp: tile_tests.test_every_tile_matches_the_reference(
        "emulator", None, (np.float32, "tf32"), "forward", (128, 32)),
    "gemm_tile_32x128_f16": lambda mp: tile_tests.test_every_tile_matches_the_reference(
        "emulator", None, (np.float16, "fp32"), "grad_weight", (32, 128)),
    "gemm_tile_64x64_bf16_grad_input": lambda mp: tile_tests.test_every_tile_matches_the_reference(
        "emulator", None, (BFLOAT16, "fp32"), "grad_input", (64, 64)),
    "direct": lambda mp: kernel_tests.test_entry_points_match_reference("emulator", None, kernel_tests.CONFIGS[2],
                                                                        np.float32),
    "depthwise": lambda mp: kernel_tests.test_depthwise_kernels("emulator", None, mp, kernel_tests.DEPTHWISE[0],
                                                                np.float32),
    "grad_bias_slabs": lambda mp: kernel_tests.test_parallel_grad_bias("emulator", None, mp, np.float32, 1),
    "sgd": lambda mp: kernel_tests.test_sgd_kernel_matches_numpy("emulator", np.float32),
}


@pytest.mark.parametrize("schedule", OTHER_ORDERS)
@pytest.mark.parametrize("case", CORRECT_KERNELS)
def test_correct_kernels_under_every_order(poisoned, monkeypatch, case, schedule):
    monkeypatch.setenv("CUDECONV_EMULATOR_SCHEDULE", schedule)
    CORRECT_KERNELS[case](monkeypatch)
