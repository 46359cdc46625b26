"""The benchmark's machinery (``cudeconv.bench``) on the CPU: error bounds, baseline selection,
GPU peaks and input rotation as pure functions, thread pools, interference flags, results that
survive a run stopped part-way, and the plot. Runs use tiny shapes and one or two samples."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ScriptedClock, skip_unless_kernel_checks_can_run
from cudeconv import backends, bench, cli
from cudeconv.backends.numpy_backend import NumpyBackend
from cudeconv.bench import accuracy, baselines, device, measure, runner, table, threads
from cudeconv.bench.plot import figure, nothing_to_draw
from cudeconv.cases import BY_NAME, QUICK, QUICK_EMULATOR
from cudeconv.timing import INTERFERENCE_FACTOR, CpuClock
from oracle import conv_transpose_backward_ref, conv_transpose_ref

REPO = Path(__file__).resolve().parents[1]
TORCH = baselines._torch_contender("probe", False).skipped is None


# -- error bounds ---------------------------------------------------------------------------------
def test_low_precision_bounds_are_elementwise_and_do_not_grow_with_the_sums():
    for terms in (16, 8192):
        tf32 = accuracy.bound_for(np.float32, "tf32", terms)
        assert (tf32.form, tf32.limit) == ("elementwise", accuracy.ELEMENTWISE_CONSTANT * 2.0**-11)
        fp32 = accuracy.bound_for(np.float32, "fp32", terms)
        assert fp32.form == "normwise" and fp32.limit == pytest.approx(8 * math.sqrt(terms) * 2.0**-24)
    # the old TF32 bound on dcgan_g2's forward (8192 terms): 0.35 of max |y|
    assert 8 * math.sqrt(8192) * 2.0**-11 == pytest.approx(0.35, abs=0.01)
    assert accuracy.bound_for(np.float16, "fp16", 10).floor == 2.0**-25  # half float16's least subnormal
    assert accuracy.bound_for(np.float32, "tf32x3", 10).unit == 2.0**-21
    described = accuracy.bound_for(np.float32, "tf32", 10).describe()
    assert described["form"] == "elementwise" and described["constant"] == 4 and "Σ|a·b|" in described["rule"]
    with pytest.raises(ValueError, match="arithmetic must be one of .* got 'fp8'"):
        accuracy.bound_for(np.float32, "fp8", 10)


def test_elementwise_error_against_the_magnitudes():
    reference = np.array([1.0, -2.0, 0.0])
    magnitude = np.array([10.0, 4.0, 0.0])
    assert accuracy.elementwise_error(reference + [0.1, 0.0, 0.0], reference, magnitude) == pytest.approx(0.01)
    assert accuracy.elementwise_error(reference + [0.0, 0.2, 0.0], reference, magnitude) == pytest.approx(0.05)
    assert accuracy.elementwise_error(reference + [0.0, 0.0, 1e-9], reference, magnitude) == math.inf
    assert accuracy.elementwise_error(reference + [0.0, 0.0, 1e-9], reference, magnitude, floor=1e-9) == 0
    assert accuracy.elementwise_error(reference[:2], reference, magnitude) == math.inf
    assert accuracy.elementwise_error(reference + [math.nan, 0, 0], reference, magnitude) == math.inf
    pair = (reference, reference)
    assert accuracy.elementwise_error((reference, reference + [0, 0.4, 0]), pair, (magnitude, magnitude)) == \
        pytest.approx(0.1)


@pytest.mark.parametrize("name", ["dilated_op", "textbook", "depthwise_up"])
def test_magnitudes_are_the_passes_on_absolute_values(name):
    """Σ|a·b| (+|bias|) of every entry, against the naive loops; the SGD step's adds up."""
    problem = bench.Problem.make(BY_NAME[name].quick(QUICK_EMULATOR), "float32")
    c = problem.case
    kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups,
              dilation=c.dilation)
    x, w, b, gy = (np.abs(a.astype(np.float64)) for a in (problem.x, problem.weight, problem.bias, problem.grad_output))
    magnitudes = problem.magnitudes()
    np.testing.assert_allclose(magnitudes["forward"], conv_transpose_ref(x, w, b, **kw), rtol=1e-12)
    grad_input, grad_weight, grad_bias = conv_transpose_backward_ref(gy, x, w, **kw)
    np.testing.assert_allclose(magnitudes["grad_input"], grad_input, rtol=1e-12)
    np.testing.assert_allclose(magnitudes["grad_weight"], grad_weight, rtol=1e-12)
    np.testing.assert_allclose(magnitudes["grad_bias"], grad_bias, rtol=1e-12)
    param, grad, momentum = (np.abs(a.astype(np.float64)) for a in (problem.param, problem.grad, problem.momentum))
    sgd = param + 0.01 * (0.9 * momentum + grad)
    np.testing.assert_allclose(magnitudes["sgd_step"], sgd, rtol=1e-12)
    assert (problem.param == problem.weight).all()  # the problem's own arrays are untouched


@pytest.mark.slow  # compiles the TF32 GEMM for the CPU on first use (shared with test_cli's TF32 run)
def test_the_tf32_bound_passes_the_tf32_kernel_and_catches_wrong_results():
    """On the emulator: the TF32 GEMM's grad_weight (operands rounded to 10 bits: errors 70× FP32's)
    passes; the exact result 3 % off in every 10th entry, and the result of a wrong tap (the taps
    shifted by one), fail — the first within the old bound 8·√terms·2⁻¹¹ of max |reference|."""
    skip_unless_kernel_checks_can_run("emulator", backends.emulator_unavailable_reason())
    emulator = backends.get("emulator")
    problem = bench.Problem.make(BY_NAME["dcgan_g4"].quick(QUICK_EMULATOR), "float32")
    assert emulator.kernel_paths(problem.geom, np.float32, precision="tf32")["grad_weight"].entry.startswith(
        "deconv_grad_weight_gemm_tf32_")
    tf32 = baselines.backend_contender("emulator", emulator, on_gpu=False, precision="tf32")
    checked = measure.check(tf32, problem)
    assert checked.ok, checked.why_not_timed()
    reference = problem.reference["grad_weight"]
    fp32_bound = accuracy.bound_for(np.float32, "fp32", problem.terms("grad_weight"))
    assert checked.errors["grad_weight"] > 10 * fp32_bound.limit  # TF32 rounding did happen
    assert checked.bounds["grad_weight"].form == "elementwise"

    exact = reference.astype(np.float32)
    off = exact.copy()
    off.flat[::10] *= 1.03
    wrong_tap = np.roll(reference, 1, axis=-1).astype(np.float32)
    old_limit = 8 * math.sqrt(problem.terms("grad_weight")) * 2.0**-11
    assert accuracy.relative_error(off, reference) < old_limit  # what the old bound let through
    for wrong in (off, wrong_tap):
        impostor = baselines.Contender("impostor", False, lambda _: {"grad_weight": lambda: wrong}, precision="tf32")
        result = measure.check(impostor, problem)
        assert set(result.wrong) == {"grad_weight"}, result.measured
        assert "elementwise" in result.why_not_timed()


def test_a_float16_run_records_the_elementwise_bound_of_each_pass():
    results = bench.run([BY_NAME["dilated_op"]], "numpy", "float16", repeat=1, quick=True, min_seconds=0,
                        progress=False, baselines="none")
    (case,) = results["cases"]
    assert case["status"] == "ok"
    for p in case["rel_errors"]:
        bound = case["bounds"][p]
        assert (bound["form"], bound["arithmetic"], bound["unit"]) == ("elementwise", "fp16", 2.0**-11), p
        assert 0 <= bound["measured"] <= bound["limit"] == case["tolerances"][p]


# -- baselines ------------------------------------------------------------------------------------
GPU_BASELINES = ["torch_cudnn", "torch_cudnn_tuned", "torch_cudnn_tf32", "torch_cudnn_tf32_tuned", "cuda_direct",
                 "cupy_col2im"]


@pytest.mark.parametrize("backend, dtype, precision, expected", [
    ("cuda", "float32", "fp32", GPU_BASELINES),  # no CPU baseline on a GPU run
    ("cuda", "float32", "tf32x3", GPU_BASELINES),
    ("cuda", "float32", "tf32", ["torch_cudnn_tf32", "torch_cudnn_tf32_tuned"]),  # FP32 rows not re-timed
    ("cuda", "float16", "tf32", GPU_BASELINES),  # TF32 does not apply to float16
    ("numpy", "float32", "fp32", ["torch"]),
    ("emulator", "float32", "fp32", ["torch", "numpy"]),
    ("emulator", "float32", "tf32", []),
])
def test_default_baselines(backend, dtype, precision, expected):
    assert bench.select_baselines(None, backend, dtype, precision) == expected


def test_baselines_option_names_all_and_none():
    assert bench.select_baselines("all", "cuda", "float32", "fp32") == [n for n in bench.BASELINES if n != "cuda"]
    assert "numpy" not in bench.select_baselines("all", "numpy", "float32", "fp32")
    assert bench.select_baselines("none", "cuda", "float32", "tf32") == []
    assert bench.select_baselines(" numpy, torch_cudnn,numpy", "cuda", "float32", "tf32") == ["numpy", "torch_cudnn"]
    with pytest.raises(ValueError, match="unknown baseline 'cudnn' in 'torch,cudnn'; choose from torch, "):
        bench.select_baselines("torch,cudnn", "cuda", "float32", "fp32")
    with pytest.raises(ValueError, match="unknown baseline 'all'"):
        bench.select_baselines("all,torch", "cuda", "float32", "fp32")
    with pytest.raises(ValueError, match="'numpy' is the benchmarked backend"):
        bench.select_baselines("numpy", "numpy", "float32", "fp32")
    with pytest.raises(ValueError, match="no baseline named in ','"):
        bench.select_baselines(",", "numpy", "float32", "fp32")
    with pytest.raises(TypeError, match="baselines must be a string, got list"):
        bench.select_baselines(["torch"], "numpy", "float32", "fp32")


def test_gpu_baselines_asked_for_on_the_cpu_say_why_not():
    _, chosen = baselines.contenders("numpy", "float32", "fp32", ["cupy_col2im", "torch_cudnn_tuned"])
    assert [(c.name, c.skipped) for c in chosen] == [
        (name, "runs on the GPU only (the benchmarked backend is on the CPU)")
        for name in ("cupy_col2im", "torch_cudnn_tuned")]


def test_bad_baselines_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--backend", "numpy", "--quick", "--baselines", "torch,nope"])
    assert exit_info.value.code == 2
    assert "--baselines: unknown baseline 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not TORCH, reason="PyTorch is not installed")
def test_cudnn_baselines_set_and_record_tf32_and_tuning(monkeypatch):
    """The cuDNN contenders' switches, on a CPU build of PyTorch (whose flags exist all the same)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32, cudnn.benchmark
    for name, tf32, tuned in [("torch_cudnn", False, False), ("torch_cudnn_tf32_tuned", True, True)]:
        contender = bench.BASELINES[name].make(np.float32)
        assert (contender.name, contender.on_gpu, contender.precision) == (name, True, "tf32" if tf32 else "fp32")
        with contender.context():
            settings = contender.settings()
        assert (settings["cudnn.allow_tf32"], settings["cudnn.benchmark"]) == (tf32, tuned)
        assert (cudnn.allow_tf32, cudnn.benchmark) == saved  # restored
    assert bench.BASELINES["torch_cudnn_tf32"].make(np.float16).skipped == "TF32 applies to float32 only"


# -- GPU peaks, by arithmetic -----------------------------------------------------------------------
def test_peaks_match_the_datasheets():
    """SMs × boost clock × the per-SM rates give NVIDIA's published dense figures."""
    a100 = device.peaks_tflops((8, 0), 108, 1.41e9)
    for arithmetic, datasheet in {"fp32": 19.5, "fp64": 9.7, "tf32": 156, "fp16": 312, "bf16": 312}.items():
        assert a100[arithmetic] == pytest.approx(datasheet, rel=0.01), arithmetic
    h100 = device.peaks_tflops((9, 0), 132, 1.83e9)  # H100 SXM's tensor figures are at 1830 MHz
    assert h100["tf32"] == pytest.approx(494.7, rel=0.01) and h100["fp16"] == pytest.approx(989.4, rel=0.01)
    unknown = device.peaks_tflops((12, 0), 10, 1e9)
    assert unknown == {"fp32": pytest.approx(10 * 1e9 * 256 / 1e12)}  # no tensor or FP64 figure claimed


def test_peak_follows_the_arithmetic_each_pass_ran():
    peaks = {"fp32": 60.0, "tf32": 480.0, "fp16": 960.0}
    assert device.peak_tflops(peaks, "tf32") == 480 and device.peak_tflops(peaks, "tf32x3") == 160
    assert device.peak_tflops(peaks, "tf32+fp32") == pytest.approx(2 / (1 / 480 + 1 / 60))
    assert device.peak_tflops(peaks, "bf16") is None and device.peak_tflops(peaks, "fp64") is None
    assert [device.pass_arithmetic(kind, dtype, precision) for kind, dtype, precision in [
        ("gemm", np.float32, "tf32"), ("direct", np.float32, "tf32"), ("gemm", np.float32, "fp32"),
        ("gemm", np.float16, "fp32"), ("depthwise", np.float16, "tf32"), ("gemm", np.float64, "tf32"),
    ]] == ["tf32", "fp32", "fp32", "fp16", "fp32", "fp64"]
    paths = {"forward": {"kind": "gemm"}, "grad_input": {"kind": "direct"}, "grad_weight": {"kind": "gemm"},
             "grad_bias": {"kind": "per-channel"}}
    arithmetics = runner.pass_arithmetics(paths, np.float32, "tf32")
    assert arithmetics == {"forward": "tf32", "grad_input": "fp32", "grad_weight": "tf32", "grad_bias": "fp32",
                           "backward": "fp32+tf32"}
    fractions, used = runner.peak_fractions({"forward": 48.0, "backward": 12.0}, arithmetics, peaks)
    assert fractions == {"forward": pytest.approx(0.1), "backward": pytest.approx(12 / (2 / (1 / 60 + 1 / 480)))}
    assert used["forward"] == 480
    fractions, used = runner.peak_fractions({"forward": 48.0}, {"forward": "bf16"}, peaks)
    assert fractions == {} and used == {"forward": None}  # no peak known: no fraction claimed


def test_a_gpu_run_end_to_end_with_numpy_standing_in_for_the_gpu(monkeypatch):
    """The GPU-only branches of a run on the CPU: NumPy contenders marked as on a GPU, a fake GPU
    (peaks, L2 small enough that the inputs rotate through 4 copies) and fake kernel paths."""
    problem = bench.Problem.make(BY_NAME["dilated_op"].quick(QUICK), "float32")
    l2 = 3 * min(problem.input_bytes(p) for p in problem.reference) // 2
    gpu = device.GpuInfo("Fake GPU", "9.0", 1, 1000.0, 80.0, 10.0, 1000.0, l2_bytes=l2,
                         peaks_tflops={"fp32": 10.0, "tf32": 80.0})
    builds = []

    def numpy_on_gpu(name):
        contender = bench.backend_contender(name, NumpyBackend(), on_gpu=True, precision="tf32")
        build = contender.build
        contender.build = lambda problem: builds.append(name) or build(problem)
        return contender

    monkeypatch.setattr(runner, "gpu_info", lambda: gpu)
    monkeypatch.setattr(runner, "describe_device", lambda backend: "Fake GPU")
    monkeypatch.setattr(runner, "contenders", lambda *args: (numpy_on_gpu("numpy"), [numpy_on_gpu("twin")]))
    monkeypatch.setattr(bench.Contender, "timed", lambda contender, fn: bench.Timed(fn, CpuClock()))
    paths = {"forward": {"kind": "gemm", "kernel": "f", "workspace_bytes": 0},
             "grad_input": {"kind": "direct", "kernel": "g", "workspace_bytes": 0},
             "grad_weight": {"kind": "gemm", "kernel": "w", "workspace_bytes": 2**20}}
    monkeypatch.setattr(runner, "kernel_paths", lambda impl, problem, precision: paths)
    results = bench.run([BY_NAME["dilated_op"]], "numpy", repeat=1, quick=True, min_seconds=0, progress=False,
                        precision="tf32", baselines="none")
    (case,) = results["cases"]
    assert case["status"] == "ok" and case["bounds"]["forward"]["form"] == "elementwise"
    assert (case["inputs"]["state"], case["inputs"]["copies"]) == ("rotated", 4)
    assert builds == ["numpy", "twin"] + ["numpy"] * 3 + ["twin"] * 3  # checked once, then 3 more copies each
    assert case["arithmetic"] == {"forward": "tf32", "grad_input": "fp32", "grad_weight": "tf32",
                                  "backward": "fp32+tf32"}
    assert case["peak_tflops"]["forward"] == 80 and case["peak_fraction"]["compute"]["forward"] == \
        pytest.approx(case["tflops"]["forward"] / 80)
    assert case["peak_fraction"]["bandwidth"]["forward"] == pytest.approx(case["gbps"]["forward"] / 1000)
    assert results["peaks"]["l2_bytes"] == l2 and results["timer"] == "CUDA events on the current stream"
    text = bench.format_table(results)
    assert "%peak" in text and "inputs: rotated: each GPU contender's inputs rotated through 4 copies" in text
    assert "kernels: forward gemm tf32, grad_input direct fp32, grad_weight gemm tf32 (1 MiB workspace)" in text
    forward_row = next(line for line in text.splitlines() if " forward " in line)
    assert forward_row.split("│")[0].split()[-2] == "tf32"  # the math column, before %BW


# -- inputs rotated past the L2 ---------------------------------------------------------------------
def test_input_rotation_leaves_the_l2_cold_or_says_warm():
    mib = 2**20
    cold = measure.input_rotation(120 * mib, 400 * mib, 50 * mib, 10 * 2**30)
    assert (cold["state"], cold["copies"]) == ("cold", 1)
    rotated = measure.input_rotation(4 * mib, 38 * mib, 50 * mib, 10 * 2**30)
    assert rotated["state"] == "rotated" and rotated["copies"] == 26 and 26 * 4 * mib > 2 * 50 * mib
    assert measure.input_rotation(4 * mib, 38 * mib, 50 * mib, 20 * 38 * mib)["state"] == "L2-warm"  # memory
    assert measure.input_rotation(4 * mib, 38 * mib, 0, 10 * 2**30)["state"] == "L2-warm"  # L2 size unknown
    tiny = measure.input_rotation(64, 400, 50 * mib, 10 * 2**30)
    assert tiny["state"] == "L2-warm" and tiny["copies"] == 1 and "at most 64" in tiny["why"]


def test_rotated_passes_call_every_copy_in_turn():
    calls, builds = [], []

    def build(problem):
        copy = len(builds)
        builds.append(copy)
        return {"forward": lambda: calls.append(copy) or copy}

    problem = bench.Problem.make(BY_NAME["textbook"], "float32")
    checked = measure.Checked(bench.Contender("fake", True, build), passes=build(problem))
    forward = measure.rotated_passes(checked, problem, 3)["forward"]
    assert [forward() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0] and builds == [0, 1, 2]
    assert measure.rotated_passes(checked, problem, 1) is checked.passes

    def out_of_memory(problem):
        raise MemoryError("out of memory")

    failing = measure.Checked(bench.Contender("fails", True, out_of_memory), passes={"forward": lambda: 0})
    inputs = {"state": "rotated", "copies": 3, "why": "rotated"}
    assert runner._timed_passes([failing], problem, inputs) == {"fails": failing.passes}
    assert inputs["state"] == "L2-warm" and inputs["copies"] == 1 and "MemoryError: out of memory" in inputs["why"]


# -- thread pools ---------------------------------------------------------------------------------
def test_quiet_idle_pools_sets_only_what_the_user_did_not(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # monkeypatch restores the variable afterwards
    threads.quiet_idle_pools()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    threads.quiet_idle_pools()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    report = {pool["api"]: pool for pool in threads.pool_report()}
    assert report["openblas"]["idle"].startswith("spins about 0.1 s, yielding")


@pytest.mark.skipif(not TORCH, reason="PyTorch is not installed")
def test_pytorch_idle_threads_sleep_at_once():
    """A fresh process, quieted before it imports PyTorch: a sleep right after PyTorch's matrix
    products burns no CPU (its OpenMP threads used to spin 10-20 ms of CPU in 0.3 s of sleep)."""
    script = textwrap.dedent("""
        import json, os, time
        os.environ.pop("OMP_WAIT_POLICY", None)
        from cudeconv.bench.threads import pool_report, quiet_idle_pools
        quiet_idle_pools()
        import torch
        torch.set_num_threads(2)
        a = torch.rand(300, 300)
        burnt = 0.0
        for _ in range(3):
            a @ a, a @ a
            start = time.process_time()
            time.sleep(0.1)
            burnt += time.process_time() - start
        print(json.dumps({"burnt": burnt, "openmp": [p["idle"] for p in pool_report() if p["api"] == "openmp"]}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["openmp"] == ["OMP_WAIT_POLICY=PASSIVE"] and found["burnt"] < 0.003, found


def test_same_threads_for_every_pool_and_torch():
    from threadpoolctl import threadpool_info

    before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch else None
    with threads.same_threads(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        if torch:
            assert torch.get_num_threads() == 1
    assert {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()} == before
    if torch:
        assert torch.get_num_threads() == torch_before


# -- interference, streaming and stopped runs -------------------------------------------------------
def stand_in(monkeypatch, loads):
    """A second NumPy backend as the baseline "stand_in", and fake clocks: ``loads[name]`` per
    contender (4 rounds: one calibration and 4 round timings, then the solo ones)."""
    monkeypatch.setitem(bench.BASELINES, "stand_in", baselines.Baseline(
        False, "fp32", "a stand-in", lambda dtype: bench.backend_contender("stand_in", NumpyBackend(), on_gpu=False)))
    monkeypatch.setattr(bench.Contender, "timed", lambda contender, fn: bench.Timed(
        fn, ScriptedClock(1e-3, loads[contender.name])))


@pytest.mark.parametrize("slowed", ["stand_in", "numpy"])
def test_a_time_slowed_by_its_neighbours_is_flagged_and_not_ranked(slowed, monkeypatch):
    """3× slower in the rounds than alone: flagged, in the JSON and the table, and its speed-ups
    withheld (not ranked, not printed, not in the geometric mean)."""
    interfered_load = [3.0] * 5 + [1.0] * 3
    loads = {"numpy": [1.0] * 8, "stand_in": [2.0] * 8, slowed: interfered_load}
    stand_in(monkeypatch, loads)
    results = bench.run([BY_NAME["textbook"]], "numpy", repeat=4, quick=True, min_seconds=0, progress=False,
                        baselines="stand_in")
    (case,) = results["cases"]
    timing = case["timing"] if slowed == "numpy" else case["baselines"]["stand_in"]["timing"]
    for p in ("forward", "backward", "sgd_step"):
        assert timing[p]["solo_ms"] == pytest.approx(1.0) and timing[p]["median_ms"] == pytest.approx(3.0)
        assert timing[p]["median_ms"] > INTERFERENCE_FACTOR * timing[p]["solo_ms"] and timing[p]["interfered"]
        spread = case["speedup_spread"]["stand_in"][p]
        assert spread["interfered"] and not spread["ranked"]
    flagged = case["interfered"] if slowed == "numpy" else case["baselines"]["stand_in"]["interfered"]
    assert flagged == ["forward", "backward", "sgd_step"]
    text = bench.format_table(results)
    forward_row = next(line for line in text.splitlines() if " forward " in line)
    assert forward_row.rstrip().endswith(table.INTERFERED_MARK)
    assert "geometric mean ×stand_in: none, all 3 withheld !" in text
    assert nothing_to_draw(results).startswith("every speed-up was withheld (3")


def test_steady_times_are_not_flagged(monkeypatch):
    stand_in(monkeypatch, {"numpy": [1.0] * 8, "stand_in": [2.0] * 8})
    results = bench.run([BY_NAME["textbook"]], "numpy", repeat=4, quick=True, min_seconds=0, progress=False,
                        baselines="stand_in")
    (case,) = results["cases"]
    assert case["interfered"] == [] and case["baselines"]["stand_in"]["interfered"] == []
    assert case["speedup"]["stand_in"]["forward"] == pytest.approx(2.0)
    assert case["speedup_spread"]["stand_in"]["forward"]["ranked"]
    assert "geometric mean ×stand_in: 2 over 3 passes" in bench.format_table(results)


def test_a_run_stopped_part_way_keeps_its_json_and_table(tmp_path, monkeypatch):
    """The second case is interrupted (as a timeout would): the JSON written after the first is
    whole and says it is incomplete; the first case's rows were printed; no temporary file is left."""
    check = runner.check

    def interrupted(contender, problem, on_step=lambda what: None):
        if problem.case.name.startswith("textbook"):
            raise KeyboardInterrupt
        return check(contender, problem, on_step)

    monkeypatch.setattr(runner, "check", interrupted)
    out = tmp_path / "partial.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(KeyboardInterrupt):
        cli.main(["bench", "--backend", "numpy", "--quick", "--cases", "dilated_op,textbook", "--repeat", "1",
                  "--min-time", "0", "--baselines", "none", "--json", str(out)])
    results = json.loads(out.read_text())
    assert [c["name"] for c in results["cases"]] == ["dilated_op"] and results["cases"][0]["status"] == "ok"
    assert results["complete"] is False and results["cases_planned"] == ["dilated_op", "textbook"]
    printed = stdout.getvalue()
    assert "dilated_op     forward" in printed and "geometric mean" not in printed
    assert [p.name for p in tmp_path.iterdir()] == ["partial.json"]
    partial = bench.format_table(results)
    assert "INCOMPLETE: not measured (yet): textbook" in partial


@pytest.fixture(scope="module")
def small_run():
    return bench.run([BY_NAME["dilated_op"], BY_NAME["textbook"]], "numpy", repeat=2, quick=True, min_seconds=0,
                     progress=False)


def test_the_table_printed_case_by_case_is_the_whole_table(small_run):
    out = io.StringIO()
    writer = bench.TableWriter(out)
    first = dict(small_run, cases=small_run["cases"][:1])
    writer.cases_done(first)
    writer.finish(small_run)
    assert out.getvalue() == bench.format_table(small_run) + "\n"


def test_results_record_solo_times_pools_and_settings(small_run):
    assert small_run["complete"] and small_run["threads"] >= 1
    pools = {pool["api"]: pool for pool in small_run["thread_pools"]}
    assert pools["openblas"]["threads"] == small_run["threads"]
    for case in small_run["cases"]:
        assert case["inputs"]["state"] == "warm"
        assert case["settings"] == {"precision": "fp32", "algorithm": "auto"}
        if "torch" in small_run["compared"]:
            assert all(t["solo_ms"] > 0 for t in case["timing"].values())
            assert case["baselines"]["torch"]["settings"]["num_threads"] == small_run["threads"]
            assert case["baselines"]["torch"]["bounds"]["forward"]["form"] == "normwise"
        for p, bound in case["bounds"].items():
            assert bound["form"] == "normwise" and bound["measured"] == case["rel_errors"][p] <= bound["limit"]


# -- the plot -------------------------------------------------------------------------------------
def test_no_baseline_no_picture(tmp_path, capsys):
    picture = tmp_path / "none.png"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--cases", "textbook", "--repeat", "1",
                     "--min-time", "0", "--baselines", "none", "--plot", str(picture)]) == 0
    out = capsys.readouterr().out
    assert f"no picture written to {picture}: no baseline was selected" in out
    assert "no baseline compared (none selected)" in out
    assert not picture.exists()


def _one_pass_results():
    """A run with one pass compared: the narrowest figure, under a long headline."""
    spread = {"q1": 1.5, "q3": 2.5, "ranked": True, "interfered": False}
    return {
        "backend": "numpy", "device": "CPU: " + "A very long processor name " * 4, "dtype": "float32",
        "precision": "fp32", "quick": True, "quick_limits": QUICK.describe(), "timer": "time.perf_counter",
        "timing": {"min_samples": 7, "min_seconds": 0.2}, "baselines": ["torch"], "threads": 2,
        "load": {"load_average": 9.0, "cpus": 2}, "peaks": None,
        "cases": [{"name": "dcgan_g2", "status": "ok", "speedup": {"torch": {"forward": 2.0}},
                   "speedup_spread": {"torch": {"forward": spread}}, "baselines": {}},
                  {"name": "unet_up", "status": "wrong", "speedup": {}, "speedup_spread": {}, "baselines": {}}],
    }


def test_a_busy_machine_is_said_for_multi_threaded_cpu_runs():
    busy = _one_pass_results()
    assert any(line.startswith("BUSY MACHINE: load average 9.0 on 2 CPUs") for line in table.headline(busy))
    for quiet in (dict(busy, threads=1), dict(busy, load={"load_average": 1.0, "cpus": 2}),
                  dict(busy, peaks={"l2_bytes": 1})):
        assert not any(line.startswith("BUSY") for line in table.headline(quiet))


def test_every_text_of_the_plot_lies_inside_the_figure(tmp_path):
    """The drawn figure's tight box (every text and axis drawn, the title included) within the
    figure's own box; the title wrapped to get there."""
    fig = figure(_one_pass_results())
    renderer = fig.canvas.get_renderer()
    title = fig.get_suptitle()
    assert "A very long processor name" in title and "\n" in title
    drawn = fig.get_tightbbox(renderer)  # in inches
    width, height = fig.get_size_inches()
    tolerance = 1 / fig.dpi
    assert drawn.x0 >= -tolerance and drawn.y0 >= -tolerance, drawn
    assert drawn.x1 <= width + tolerance and drawn.y1 <= height + tolerance, (drawn, width, height)
    title_box = fig._suptitle.get_window_extent(renderer)
    assert 0 <= title_box.x0 and title_box.x1 <= fig.bbox.width and title_box.y1 <= fig.bbox.height
    bench.plot(_one_pass_results(), tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
