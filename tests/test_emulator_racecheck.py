"""The emulator's shared-memory race detector (RawModule(racecheck=True), $CUDECONV_EMULATOR_RACECHECK).

Each kernel of tests/emulator_kernels/racecheck.cu has one race of a kind (across warps, within a
warp, through cp.async and ldmatrix, a lost update) and a switch that makes it correct. The racy
version must fail under every schedule (the detector, unlike a schedule, does not depend on the
order the threads ran in), naming the kind, both source lines, the shared byte and both threads;
the corrected one must pass. Then block_sum with its trailing barrier removed, and every entry
point of kernels/ through the launch layer, which must be race-free.
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_unless_kernel_checks_can_run
from cudeconv import backends
from cudeconv._loader import kernels_dir, source_with_headers
from cudeconv.emulator import EmulatorLaunchError, RawModule

KERNELS = Path(__file__).resolve().parent / "emulator_kernels"
SOURCE_PATH = KERNELS / "racecheck.cu"
SOURCE = source_with_headers(SOURCE_PATH)
SCHEDULES = ("ascending", "descending", "random:1", "random:2")


@pytest.fixture(autouse=True)
def _emulator():
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())


def line_of(snippet, path=SOURCE_PATH, kernel=None):
    """``file:line`` of the one line of ``path`` (of ``kernel``'s body, if given) that contains ``snippet``."""
    lines = path.read_text().splitlines()
    first, last = 0, len(lines)
    if kernel:
        first = next(i for i, line in enumerate(lines) if re.search(rf"\b{kernel}\(", line))
        last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith('extern "C"')), len(lines))
    numbers = [n + 1 for n in range(first, last) if snippet in lines[n]]
    assert len(numbers) == 1, (snippet, numbers)
    return f"{path.name}:{numbers[0]}"


def launch(name, schedule, synchronized, threads=256, source=SOURCE):
    kernel = RawModule(source, racecheck=True, schedule=schedule).get_function(name)
    rng = np.random.default_rng(0)
    if name == "read_other_threads_copy" or name == "copy_over_a_row_being_read":
        args = (rng.standard_normal(4 * threads).astype(np.float32), np.zeros(threads, np.float32))
    elif name == "ldmatrix_other_lanes_copies":
        args = (rng.integers(0, 2**16, 256).astype(np.uint16), np.zeros(128, np.uint32))
    else:
        args = (np.zeros(threads, np.int32),)
    kernel((1,), (threads,), (*args, np.int32(synchronized)))
    return args


# kernel -> (kinds a schedule may show first, the two racing statements, threads launched)
RACES = {
    "read_lower_warp": ({"RAW", "WAR"}, ("slot[threadIdx.x] = 1000", "slot[threadIdx.x - 32]"), 256),
    "overwrite_after_higher_warp_reads": ({"RAW", "WAR"}, ("slot[threadIdx.x + 32]", "slot[threadIdx.x] = -1"), 256),
    "write_other_warps_slot": ({"WAW"}, ("slot[threadIdx.x] = threadIdx.x;", "slot[threadIdx.x ^ 32] ="), 256),
    "count_threads": ({"RAW", "WAW"}, ("else counter += 1", "else counter += 1"), 256),
    "exchange_within_warp": ({"RAW", "WAR"}, ("slot[threadIdx.x] = 1000", "slot[threadIdx.x ^ 1]"), 64),
    "read_other_threads_copy": ({"RAW", "WAR"}, ("cp_async_16(rows[threadIdx.x], source", "rows[threadIdx.x ^ 32][0]"),
                                64),
    "copy_over_a_row_being_read": ({"RAW", "WAR"}, ("rows[threadIdx.x ^ 32][0]", "cp_async_16(rows[threadIdx.x], source"),
                                   64),
    "ldmatrix_other_lanes_copies": ({"RAW", "WAR"}, ("cp_async_16(rows[lane]", "ldmatrix_x4(r, rows"), 32),
}
# the settings of `synchronized` that make each kernel correct
CORRECT = {"exchange_within_warp": (2,), "ldmatrix_other_lanes_copies": (1, 2)}
MESSAGE = re.compile(
    r"shared-memory race \((RAW|WAR|WAW)\) on byte (\d+) of __shared__ (\w+)::(\w+) in block \(0,0,0\): "
    r"thread \((\d+),0,0\)(?: \(atomically\))? (writes|reads) it at (\S+) \(in \w+\)(?:, inlined into \S+)?, and "
    r"thread \((\d+),0,0\)(?: \(atomically\))? (writes|reads) it at (\S+) \(in \w+\)(?:, inlined into \S+)?, "
    r"with no __syncthreads between them"
)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", RACES)
def test_each_race_is_caught_under_every_schedule(name, schedule):
    kinds, statements, threads = RACES[name]
    with pytest.raises(EmulatorLaunchError, match="race") as caught:
        launch(name, schedule, 0, threads)
    found = MESSAGE.search(str(caught.value))
    assert found, str(caught.value)
    kind, _, kernel, _, first, first_access, first_line, second, second_access, second_line = found.groups()
    assert kind in kinds and kernel == name
    assert first != second
    assert {first_line, second_line} == {line_of(s, kernel=name) for s in statements}, str(caught.value)
    # the kind names what each of the two did
    assert (first_access, second_access) == {"RAW": ("writes", "reads"), "WAR": ("reads", "writes"),
                                             "WAW": ("writes", "writes")}[kind]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", RACES)
def test_the_synchronized_versions_are_clean(name, schedule):
    for synchronized in CORRECT.get(name, (1,)):
        launch(name, schedule, synchronized, RACES[name][2])


def test_the_report_pins_the_first_race_in_ascending_order():
    """Warp 0 runs first: thread 32 reads slot[0] after thread 0 wrote it; every thread of warps
    1..7 races once."""
    with pytest.raises(EmulatorLaunchError) as caught:
        launch("read_lower_warp", "ascending", 0)
    assert (
        f"shared-memory race (RAW) on byte 0 of __shared__ read_lower_warp::slot in block (0,0,0): thread (0,0,0) "
        f"writes it at {line_of('slot[threadIdx.x] = 1000', kernel='read_lower_warp')} (in read_lower_warp), and "
        f"thread (32,0,0) reads it at {line_of('slot[threadIdx.x - 32]')} (in read_lower_warp), with no __syncthreads between them "
        "(224 racing accesses in this block)"
    ) in str(caught.value)


def test_a_shuffle_is_not_a_memory_fence():
    with pytest.raises(EmulatorLaunchError, match=r"race \((RAW|WAR)\).*\(nor __syncwarp: same warp\)"):
        launch("exchange_within_warp", "ascending", 1, threads=32)


def test_the_lost_update_is_only_seen_by_the_detector():
    """A plain += by every thread gives the right count under every order the emulator runs
    (threads switch only at barriers), so only the detector can show it."""
    for schedule in SCHEDULES:
        out = np.zeros(256, np.int32)
        RawModule(SOURCE, schedule=schedule).get_function("count_threads")((1,), (256,), (out, np.int32(0)))
        assert out[0] == 256
    with pytest.raises(EmulatorLaunchError, match=r"count_threads::counter"):
        launch("count_threads", "ascending", 0)


def test_block_sum_without_its_trailing_barrier_races():
    """block_sum (kernels/deconv_common.cuh) called twice in a row: with its trailing barrier the
    second call's writes of warp_sums wait for the first call's reads; without it they race."""
    barrier = "    __syncthreads();  // warp_sums may be reused by the caller's next reduction\n"
    assert SOURCE.count(barrier) == 1
    values = np.random.default_rng(1).standard_normal(3 * 128).astype(np.float32)
    out = np.zeros(6, np.float32)
    kernel = RawModule(SOURCE, racecheck=True).get_function("sum_and_sum_of_squares")
    kernel((3,), (128,), (values, out))
    rows = values.reshape(3, 128).astype(np.float64)
    np.testing.assert_allclose(out.reshape(3, 2), np.stack([rows.sum(1), (rows**2).sum(1)], 1), rtol=1e-5)
    broken = RawModule(SOURCE.replace(barrier, "\n"), racecheck=True).get_function("sum_and_sum_of_squares")
    with pytest.raises(EmulatorLaunchError, match=r"race \(WAR\) on byte \d+ of __shared__ .*warp_sums") as caught:
        broken((3,), (128,), (values, out))
    common = kernels_dir() / "deconv_common.cuh"
    assert line_of("value = lane < (int)(blockDim.x / 32) ? warp_sums[lane]", common) in str(caught.value)
    assert line_of("if (lane == 0) warp_sums[warp] = value;", common) in str(caught.value)


def test_the_variable_turns_racecheck_on_and_the_argument_wins(monkeypatch):
    monkeypatch.setenv("CUDECONV_EMULATOR_RACECHECK", "1")
    with pytest.raises(EmulatorLaunchError, match="race"):
        RawModule(SOURCE).get_function("read_lower_warp")((1,), (64,), (np.zeros(64, np.int32), np.int32(0)))
    RawModule(SOURCE, racecheck=False).get_function("read_lower_warp")((1,), (64,), (np.zeros(64, np.int32), np.int32(0)))


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_a_bad_variable_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("CUDECONV_EMULATOR_RACECHECK", value)
    with pytest.raises(ValueError, match=f"CUDECONV_EMULATOR_RACECHECK must be 0 or 1, got '{value}'"):
        RawModule(SOURCE)


def test_racecheck_and_sanitize_do_not_combine():
    with pytest.raises(ValueError, match="sanitize=True cannot be combined with racecheck=True"):
        RawModule(SOURCE, racecheck=True, sanitize=True)
    with pytest.raises(TypeError, match="racecheck must be a bool or None, got 1"):
        RawModule(SOURCE, racecheck=1)


def test_every_library_kernel_is_race_free():
    """Every entry point of kernels/*.cu, launched on small shapes through the public API
    (scripts/gpu_smoke_step.py's run, checked against NumPy), on a backend whose modules are
    built with racecheck=True; the launched set must be every entry point the sources define."""
    from cudeconv import backends, emulator
    from cudeconv.backends.kernel_backend import KernelBackend

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import gpu_smoke_step
    import sass_report

    modules = []

    def racechecked_module(code, options=()):
        modules.append(emulator.RawModule(code, options, racecheck=True))
        return modules[-1]

    racechecked = KernelBackend("emulator", np, racechecked_module, lambda: "cpu-racecheck", module_per_math=False)
    launch_method = KernelBackend._launch
    try:
        with backends.substituted("emulator", racechecked):
            launched = gpu_smoke_step.record_launches()
            gpu_smoke_step.run_everything("emulator")
    finally:
        KernelBackend._launch = launch_method
    defined = sass_report.library_entry_points()
    assert gpu_smoke_step.coverage_problems(launched, defined) == []
    assert len(modules) == len(defined) and all(m.racecheck for m in modules)
