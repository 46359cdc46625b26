"""Autotuning (cudeconv.autotune) on the emulator: the same tuner code as on a GPU, with the emulated
kernels and a fake clock that gives each candidate a chosen time, so that the choice, the budget,
the memory and key caps, the cache file (format, merging by two processes, invalidation by a
changed kernel hash, corruption), the refusal to tune during a graph capture (simulated) and the
sharing of choices between ranks are checked without a GPU. The oracle of every result is the
NumPy backend (exact arithmetic, summed in float64 here) or the candidate run on its own."""
import json
import multiprocessing
import warnings

import numpy as np
import pytest

from conftest import skip_unless_kernel_checks_can_run

import cudeconv
from cudeconv import autotune, backends, cli, distributed
from cudeconv._geometry import make_geometry

FILE_NAME = "emulator-H100_SXM-sm90-132sms.json"  # the emulator describes an H100 SXM


@pytest.fixture
def impl(monkeypatch):
    """The emulator backend, whose run_path records the kernels it ran (for this test only)."""
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    backend = backends.get("emulator")
    run_path = backend.run_path

    def recording_run_path(path, *args, **kwargs):
        backend.ran.append(path)
        return run_path(path, *args, **kwargs)
    monkeypatch.setattr(backend, "ran", [], raising=False)
    monkeypatch.setattr(backend, "run_path", recording_run_path, raising=False)
    return backend


class FakeClock:
    """Runs what it times and says it took ``times[kind, parts]`` seconds per call (``default``
    for others); ``now`` advances by what it measured, so a budget is spent by timed calls."""

    def __init__(self, impl, times, default=1.0):
        self.impl, self.times, self.default = impl, times, default
        self.elapsed, self.timed = 0.0, []

    def now(self):
        return self.elapsed

    def seconds(self, fn, calls):
        for _ in range(calls):
            fn()
        path = self.impl.ran[-1]
        self.timed.append(path)
        seconds = calls * self.times.get((path.kind, path.parts), self.default)
        self.elapsed += seconds
        return seconds


def make_tuner(impl, cache, times=None, **options):
    """A tuner on a FakeClock giving ``times``, with a budget no test spends unless it sets one."""
    clock = FakeClock(impl, times or {})
    return autotune.Tuner(cache_dir=cache, clock=clock, now=clock.now, **{"budget": 1e3, **options}), clock


def problem(batch=2, seed=0, cin=8, cout=16, groups=1):
    """A small strided layer the GEMM and the direct kernels both run; the forward's operands."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cin, 3, 3)).astype(np.float32)
    weight = rng.standard_normal((cin, cout // groups, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    geom = make_geometry(2, x.shape, weight.shape, 2, 1, 0, groups, 1, bias_shape=bias.shape)
    return (x, weight, bias), geom


PASS_INDEX = {"grad_input": 0, "grad_weight": 1}  # in the NumPy backend's backward


def reference_forward(operands, geom):
    x, weight, bias = (a.astype(np.float64) for a in operands)
    return backends.get("numpy").forward(x, weight, bias, geom)


def assert_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale)


def read_cache(cache):
    return json.loads((cache / FILE_NAME).read_text())


# -- the launch layer's candidates -------------------------------------------------------------------
@pytest.mark.parametrize("pass_", autotune.PASSES)
def test_candidates_are_the_heuristic_first_then_gemm_splits_and_direct_all_correct(impl, pass_):
    (x, weight, bias), geom = problem(batch=4)
    grad_output = np.random.default_rng(1).standard_normal(geom.output_shape).astype(np.float32)
    operands = {"forward": (x, weight, bias), "grad_input": (grad_output, weight),
                "grad_weight": (grad_output, x)}[pass_]
    paths = impl.candidate_paths(geom, pass_, np.float32, "fp32")
    assert paths[0] == impl.kernel_path(geom, pass_, "auto", np.float32, "fp32")
    assert len(set(paths)) == len(paths)
    assert {p.kind for p in paths} == {"gemm", "direct"}  # never the scatter
    assert 1 in {p.parts for p in paths if p.kind == "gemm"}
    numpy_backend = backends.get("numpy")
    x64, weight64, bias64, grad_output64 = (a.astype(np.float64) for a in (x, weight, bias, grad_output))
    expected = (numpy_backend.forward(x64, weight64, bias64, geom) if pass_ == "forward" else
                numpy_backend.backward(grad_output64, x64, weight64, geom, False)[PASS_INDEX[pass_]])
    for path in paths:
        assert_close(impl.run_path(path, pass_, operands, geom, "fp32"), expected)


def test_depthwise_candidates_include_the_depthwise_kernel_and_run_path_refuses_a_foreign_path(impl):
    operands, geom = problem(cin=4, cout=4, groups=4)
    paths = impl.candidate_paths(geom, "forward", np.float32, "fp32")
    assert paths[0].kind == "depthwise" and "direct" in {p.kind for p in paths}
    (x, weight, bias), wide = problem()
    with pytest.raises(ValueError, match="cannot run"):
        impl.run_path(paths[0], "forward", (x, weight, bias), wide, "fp32")


# -- choosing ---------------------------------------------------------------------------------------
def test_the_fastest_candidate_is_kept_and_its_own_output_returned(impl, tmp_path):
    operands, geom = problem()
    tuner, clock = make_tuner(impl, tmp_path, {("direct", 1): 0.1}, repeats=2)
    y = tuner.run(impl, "forward", operands, geom, "fp32")
    candidates = impl.candidate_paths(geom, "forward", np.float32, "fp32")
    assert {p for p in clock.timed} == set(candidates)  # every candidate timed ...
    assert all(clock.timed.count(p) == 2 for p in candidates)  # ... repeats times, after an untimed call
    direct = next(p for p in candidates if p.kind == "direct")
    np.testing.assert_array_equal(y, impl.run_path(direct, "forward", operands, geom, "fp32"))
    assert_close(y, reference_forward(operands, geom))
    timed = len(clock.timed)
    impl.ran.clear()
    tuner.run(impl, "forward", operands, geom, "fp32")
    assert len(clock.timed) == timed and impl.ran == [direct]  # from then on: the choice, untimed


def test_a_tie_goes_to_the_heuristic(impl, tmp_path):
    operands, geom = problem()
    tuner, _ = make_tuner(impl, tmp_path)  # every candidate 1 s
    tuner.run(impl, "forward", operands, geom, "fp32")
    impl.ran.clear()
    tuner.run(impl, "forward", operands, geom, "fp32")
    assert impl.ran == [impl.kernel_path(geom, "forward", "auto", np.float32, "fp32")]


def test_a_spent_budget_and_the_memory_cap_leave_the_heuristic_alone(impl, tmp_path):
    operands, geom = problem()
    heuristic = impl.kernel_path(geom, "forward", "auto", np.float32, "fp32")
    for options in ({"budget": 0.5}, {"max_extra_bytes": 0}):
        tuner, clock = make_tuner(impl, tmp_path / str(sorted(options)), {("direct", 1): 0.1}, **options)
        tuner.run(impl, "forward", operands, geom, "fp32")
        assert set(clock.timed) == {heuristic}
        (entry,) = read_cache(tmp_path / str(sorted(options)))["entries"].values()
        assert entry["choice"]["kind"] == heuristic.kind
        assert [c["kind"] for c in entry["candidates"] if "skipped" in c] == [
            p.kind for p in impl.candidate_paths(geom, "forward", np.float32, "fp32")[1:]]


def test_past_max_keys_new_keys_take_the_heuristic_untuned(impl, tmp_path):
    tuner, clock = make_tuner(impl, tmp_path, {("direct", 1): 0.1}, max_keys=1)
    first, first_geom = problem(batch=2)
    tuner.run(impl, "forward", first, first_geom, "fp32")
    timed = len(clock.timed)
    second, second_geom = problem(batch=3)
    impl.ran.clear()
    y = tuner.run(impl, "forward", second, second_geom, "fp32")
    assert len(clock.timed) == timed
    assert impl.ran == [impl.kernel_path(second_geom, "forward", "auto", np.float32, "fp32")]
    assert_close(y, reference_forward(second, second_geom))
    assert len(read_cache(tmp_path)["entries"]) == 1


def test_no_tuning_while_a_graph_is_captured_but_a_cached_choice_serves(impl, tmp_path):
    operands, geom = problem()
    capturing, clock = make_tuner(impl, tmp_path, {("direct", 1): 0.1}, is_capturing=lambda: True)
    impl.ran.clear()
    capturing.run(impl, "forward", operands, geom, "fp32")
    assert clock.timed == [] and not (tmp_path / FILE_NAME).exists()
    assert impl.ran == [impl.kernel_path(geom, "forward", "auto", np.float32, "fp32")]
    make_tuner(impl, tmp_path, {("direct", 1): 0.1})[0].run(impl, "forward", operands, geom, "fp32")
    capturing, clock = make_tuner(impl, tmp_path, is_capturing=lambda: True)
    impl.ran.clear()
    capturing.run(impl, "forward", operands, geom, "fp32")
    assert clock.timed == [] and [p.kind for p in impl.ran] == ["direct"]


# -- the cache --------------------------------------------------------------------------------------
def test_the_cache_file_holds_the_key_and_a_new_process_runs_its_choice_bitwise(impl, tmp_path):
    operands, geom = problem()
    tuner, _ = make_tuner(impl, tmp_path, {("gemm", 1): 0.1})
    first = tuner.run(impl, "forward", operands, geom, "fp32", "channels_last")
    data = read_cache(tmp_path)
    assert data["format"] == "cudeconv-autotune" and data["device"]["device"] == "H100 SXM"
    (key, entry), = data["entries"].items()
    fields = json.loads(key)
    assert fields["pass"] == "forward" and fields["dtype"] == "float32" and fields["memory_format"] == "channels_last"
    assert fields["geometry"]["in_size"] == [3, 3] and fields["alignment"] == 16
    assert fields["versions"]["cudeconv"] == cudeconv.__version__ and fields["sources"] == autotune.kernel_sources_hash()
    chosen = impl.kernel_path(geom, "forward", "gemm", np.float32, "fp32", 1)
    assert entry["choice"] == {"kind": "gemm", "entry": chosen.entry, "parts": 1}
    assert chosen.entry.startswith("deconv_forward_gemm_f32_")
    later, clock = make_tuner(impl, tmp_path)  # another process: reads the file, times nothing
    impl.ran.clear()
    again = later.run(impl, "forward", operands, geom, "fp32", "channels_last")
    assert clock.timed == [] and [(p.kind, p.parts) for p in impl.ran] == [("gemm", 1)]
    np.testing.assert_array_equal(first, again)


def test_two_runs_with_real_timing_share_a_cache_and_agree_bitwise(impl, tmp_path):
    operands, geom = problem(batch=3, seed=5)
    runs = [autotune.Tuner(cache_dir=tmp_path, repeats=1).run(impl, "forward", operands, geom, "fp32")
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert_close(runs[0], reference_forward(operands, geom))


def test_a_changed_kernel_hash_retunes_and_drops_the_stale_entry(impl, tmp_path, monkeypatch):
    operands, geom = problem()
    make_tuner(impl, tmp_path, sources_hash="old")[0].run(impl, "forward", operands, geom, "fp32")
    tuner, clock = make_tuner(impl, tmp_path, sources_hash="new")
    tuner.run(impl, "forward", operands, geom, "fp32")
    assert clock.timed
    assert [json.loads(key)["sources"] for key in read_cache(tmp_path)["entries"]] == ["new"]
    # the real hash follows the kernels' text
    before = autotune.kernel_sources_hash()
    autotune.kernel_sources_hash.cache_clear()
    monkeypatch.setattr(autotune, "kernel_source", lambda name: "// edited\n")
    assert autotune.kernel_sources_hash() != before
    autotune.kernel_sources_hash.cache_clear()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "something else"}),
                                     json.dumps({"format": "cudeconv-autotune", "version": 1,
                                                 "device": {"device": "another GPU"}, "entries": {}})])
def test_a_corrupt_or_foreign_file_is_ignored_with_a_warning_and_replaced(impl, tmp_path, content):
    (tmp_path / FILE_NAME).write_text(content)
    operands, geom = problem()
    tuner, clock = make_tuner(impl, tmp_path, {("direct", 1): 0.1})
    with pytest.warns(UserWarning, match="ignoring it"):
        y = tuner.run(impl, "forward", operands, geom, "fp32")
    assert clock.timed
    assert_close(y, reference_forward(operands, geom))
    assert len(read_cache(tmp_path)["entries"]) == 1


def test_an_unwritable_cache_warns_and_keeps_the_choice_in_the_process(impl, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    operands, geom = problem()
    tuner, clock = make_tuner(impl, blocker / "cache", {("direct", 1): 0.1})
    with pytest.warns(UserWarning) as warned:
        tuner.run(impl, "forward", operands, geom, "fp32")
    assert any("cannot be written" in str(warning.message) for warning in warned)
    impl.ran.clear()
    tuner.run(impl, "forward", operands, geom, "fp32")
    assert [p.kind for p in impl.ran] == ["direct"]


def _tune_in_a_process(cache, batch, barrier):
    impl = backends.get("emulator")
    operands, geom = problem(batch=batch)
    tuner = autotune.Tuner(cache_dir=cache, repeats=1)
    barrier.wait()  # both tune, and write, at about the same time
    tuner.run(impl, "forward", operands, geom, "fp32")


def test_two_processes_tuning_different_keys_both_keep_their_entries(impl, tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=_tune_in_a_process, args=(tmp_path, batch, barrier)) for batch in (2, 3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    batches = sorted(json.loads(key)["geometry"]["batch"] for key in read_cache(tmp_path)["entries"])
    assert batches == [2, 3]


def test_a_key_already_on_disk_wins_over_this_process_choice(impl, tmp_path):
    operands, geom = problem()
    slow_disk, _ = make_tuner(impl, tmp_path, {("direct", 1): 0.1})
    mine, _ = make_tuner(impl, tmp_path, {("gemm", 1): 0.1})
    mine.run(impl, "forward", operands, geom, "fp32")  # loads the (empty) file first
    slow_disk.run(impl, "forward", operands, geom, "fp32")  # tunes too: the file already has gemm
    impl.ran.clear()
    slow_disk.run(impl, "forward", operands, geom, "fp32")
    assert [(p.kind, p.parts) for p in impl.ran] == [("gemm", 1)]


# -- the API ----------------------------------------------------------------------------------------
@pytest.fixture
def installed(impl, tmp_path):
    """A fake-clock tuner as the library's own, for the functional API and the layers."""
    tuner, clock = make_tuner(impl, tmp_path, {("direct", 1): 0.1})
    previous = autotune.set_tuner(tuner)
    yield tuner, clock
    autotune.set_tuner(previous)


def test_functional_and_layer_tune_forward_grad_input_and_grad_weight(installed, tmp_path):
    tuner, clock = installed
    layer = cudeconv.ConvTranspose2d(8, 16, 3, stride=2, padding=1, backend="emulator", seed=0, autotune=True)
    x = np.random.default_rng(2).standard_normal((2, 8, 3, 3)).astype(np.float32)
    y = layer(x)
    grad_input = layer.backward(np.ones_like(y))
    passes = sorted(json.loads(key)["pass"] for key in read_cache(tmp_path)["entries"])
    assert passes == ["forward", "grad_input", "grad_weight"]
    reference = cudeconv.ConvTranspose2d(8, 16, 3, stride=2, padding=1, backend="numpy", seed=0, dtype="float64")
    assert_close(y, reference(x.astype(np.float64)))
    assert_close(grad_input, reference.backward(np.ones(y.shape)))
    assert_close(layer.weight.grad, reference.weight.grad)
    timed = len(clock.timed)
    cudeconv.conv_transpose2d(x[:1], layer.weight.data, backend="emulator", stride=2, padding=1, autotune=False)
    cudeconv.conv_transpose2d(x[:1], layer.weight.data, backend="emulator", stride=2, padding=1, algorithm="gather",
                              autotune=True)
    assert len(clock.timed) == timed  # off, or an algorithm other than "auto": nothing tuned
    previous = cudeconv.set_autotune(True)
    try:
        cudeconv.conv_transpose2d(x[:1], layer.weight.data, backend="emulator", stride=2, padding=1)
    finally:
        cudeconv.set_autotune(previous)
    assert len(clock.timed) > timed and "autotune=True" in repr(layer)


def test_bad_autotune_values_are_refused_by_name():
    x, weight = np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="autotune must be None, True or False, got 'yes'"):
        cudeconv.conv_transpose2d(x, weight, autotune="yes")
    with pytest.raises(TypeError, match="autotune"):
        cudeconv.ConvTranspose2d(2, 2, 3, autotune=1)
    with pytest.raises(TypeError, match="autotune must be True or False, got None"):
        cudeconv.set_autotune(None)
    with pytest.raises(TypeError, match="tuner"):
        autotune.set_tuner("fast")
    with pytest.raises(ValueError, match="repeats"):
        autotune.Tuner(repeats=0)


def test_the_environment_switch_and_cache_folder(monkeypatch, tmp_path):
    assert autotune._parse_switch("1") and not autotune._parse_switch("0") and not autotune._parse_switch("")
    with pytest.warns(UserWarning, match="neither 1 nor 0"):
        assert not autotune._parse_switch("maybe")
    monkeypatch.setenv("CUDECONV_AUTOTUNE_CACHE", str(tmp_path))
    assert autotune.cache_dir() == tmp_path
    monkeypatch.delenv("CUDECONV_AUTOTUNE_CACHE")
    assert autotune.cache_dir().parts[-3:] == (".cache", "cudeconv", "autotune")


# -- the command line --------------------------------------------------------------------------------
LAYER = "batch=2,in_channels=8,out_channels=16,in_size=3x3,kernel_size=3,stride=2,padding=1"


def test_cudeconv_tune_writes_every_pass_of_a_layer_then_reports_it_cached(installed, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setenv("CUDECONV_AUTOTUNE_CACHE", str(tmp_path))
    assert cli.main(["tune", "--backend", "emulator", "--layer", LAYER]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  layer")]
    assert [(line[1], line[2]) for line in lines] == [("forward", "direct"), ("grad_input", "direct"),
                                                      ("grad_weight", "direct")]  # the fake clock's fastest
    assert all("ms" in line for line in lines)
    entries = read_cache(tmp_path)["entries"]
    assert sorted(json.loads(key)["pass"] for key in entries) == ["forward", "grad_input", "grad_weight"]
    assert {json.loads(key)["geometry"]["in_size"] == [3, 3] for key in entries} == {True}
    assert cli.main(["tune", "--backend", "emulator", "--layer", LAYER]) == 0
    output = capsys.readouterr().out
    assert output.count(" cached") == 3 and f"autotune  {tmp_path}:" in output


@pytest.mark.parametrize("layer, message", [
    ("in_channels=8,out_channels=16,in_size=3x3", "needs kernel_size"),
    ("in_channels=8,out_channels=6,in_size=3,kernel_size=3,groups=4", "groups=4 must be a positive divisor"),
    ("in_channels=8,colour=red", "'colour=red' is not NAME=VALUE"),
    ("in_channels=8,out_channels=8,in_size=3x,kernel_size=3", "in_size='3x' is not a number"),
])
def test_cudeconv_tune_refuses_a_bad_layer_by_name(layer, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["tune", "--backend", "emulator", "--layer", layer])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_bench_autotune_times_the_tuned_kernels_beside_the_heuristic(installed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDECONV_AUTOTUNE_CACHE", str(tmp_path))
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--backend", "emulator", "--quick", "--cases", "textbook", "--autotune",
                     "--baselines", "none", "--repeat", "1", "--min-time", "0", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["compared"] == ["emulator_autotuned"]
    (case,) = results["cases"]
    assert sorted(case["baselines"]["emulator_autotuned"]["ms"]) == ["backward", "forward", "grad_input", "grad_weight"]
    assert sorted(json.loads(key)["pass"] for key in read_cache(tmp_path)["entries"]) == [
        "forward", "grad_input", "grad_weight"]  # tuned by the warm-up, on the case's own shape
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "--backend", "numpy", "--quick", "--autotune"])
    assert exited.value.code == 2 and "--autotune needs a kernel backend" in capsys.readouterr().err


# -- data-parallel training ---------------------------------------------------------------------------
class LoopbackCommunicator(distributed.Communicator):
    """One of several ranks in this process, called one after the other, root first: the root's
    broadcasts are queued, the others' take them in order."""

    xp = np
    array_kind = "NumPy"

    class _Comm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return self.size

    def __init__(self, rank, size, queue):
        super().__init__(self._Comm(rank, size))
        self.queue = queue

    def _holds(self, array):
        return isinstance(array, np.ndarray)

    def _broadcast_bytes(self, data, root):
        if self.rank == root:
            self.queue.append(data.copy())
        else:
            data[...] = self.queue.pop(0)


def test_share_autotune_makes_other_ranks_run_rank_zeros_kernels(impl, tmp_path):
    operands, geom = problem()
    rank0, _ = make_tuner(impl, tmp_path / "rank0", {("direct", 1): 0.1})
    rank1, rank1_clock = make_tuner(impl, tmp_path / "rank1", {("gemm", 1): 0.1})
    queue, previous = [], autotune.default_tuner()
    try:
        for rank, tuner in ((0, rank0), (1, rank1)):
            tuner.run(impl, "forward", operands, geom, "fp32")  # each rank tunes its first step alone
            autotune.set_tuner(tuner)
            layer = cudeconv.ConvTranspose2d(8, 16, 3, backend="emulator")
            distributed.DataParallel(layer, LoopbackCommunicator(rank, 2, queue)).share_autotune()
    finally:
        autotune.set_tuner(previous)
    assert queue == []
    impl.ran.clear()
    rank1.run(impl, "forward", operands, geom, "fp32")
    assert [p.kind for p in impl.ran] == ["direct"]
