"""The command line (``cudeconv bench / demo / info``) on the NumPy backend, with tiny settings.

Commands run in-process through ``cudeconv.cli.main`` (and once through ``python -m cudeconv``);
the checks read the JSON and PNG files they write.
"""
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import ScriptedClock

from cudeconv import backends, bench, cli
from cudeconv.backends.numpy_backend import NumpyBackend
from cudeconv.cases import BY_NAME, QUICK, QUICK_EMULATOR, SUITE

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_timings(ms, timing):
    """Medians per pass, and each one's spread record around it."""
    assert ms and all(isinstance(t, float) and t > 0 for t in ms.values()), ms
    assert set(ms) <= set(bench.PASSES) and set(timing) == set(ms)
    for name, spread in timing.items():
        assert spread["median_ms"] == ms[name]
        assert spread["min_ms"] <= spread["q1_ms"] <= spread["median_ms"] <= spread["q3_ms"] <= spread["max_ms"]
        assert spread["samples"] >= 1 and spread["calls_per_sample"] >= 1


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """The whole suite, shrunk, once: (exit code, stdout, JSON results, plot path)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--backend", "numpy", "--quick", "--repeat", "2", "--min-time", "0",
            "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(argv)
    return code, stdout.getvalue(), json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_bench_quick_suite_json(quick_suite):
    code, _, results, _ = quick_suite
    assert code == 0
    assert {"device", "backend", "dtype", "versions", "cases"} <= set(results)
    assert results["backend"] == "numpy" and results["dtype"] == "float32"
    assert results["precision"] == "fp32"
    assert results["quick"] is True and results["quick_limits"] == QUICK.describe()
    assert results["timing"]["min_samples"] == 2 and results["timing"]["min_seconds"] == 0
    assert results["versions"]["numpy"] == np.__version__
    assert [c["name"] for c in results["cases"]] == [c.name for c in SUITE]
    for case in results["cases"]:
        assert {"name", "config", "ms", "timing", "noisy", "tflops", "max_rel_error", "baselines",
                "status"} <= set(case)
        assert case["status"] == "ok", case
        real = BY_NAME[case["name"]]
        # what ran is the shrunk case; its source and shrunk_from name the real layer
        assert case["config"] == real.quick(QUICK).config()
        if case["name"] == "textbook":
            assert case["shrunk_from"] is None and "already within --quick's limits" in case["source"]
        else:
            assert case["shrunk_from"] == real.config() != case["config"]
            assert case["source"] == "shrunk by --quick from: " + real.source
        # The NumPy backend has no separate gradient entry points: forward, backward, SGD step.
        assert set(case["ms"]) == {"forward", "backward", "sgd_step"}
        assert_timings(case["ms"], case["timing"])
        assert all(t["samples"] >= 2 for t in case["timing"].values())
        assert set(case["noisy"]) <= set(case["ms"])
        assert set(case["tflops"]) == {"forward", "backward"}
        assert all(t > 0 for t in case["tflops"].values())
        assert 0 <= case["max_rel_error"] < 1e-4
        assert set(case["baselines"]) == {"torch"}  # on the CPU, the CPU baselines by default
        assert case["bounds"]["forward"]["form"] == "normwise"
        for name, timing in case["baselines"].items():
            if "skipped" in timing:
                assert set(timing) == {"skipped"} and timing["skipped"]
            else:
                # interleaved: the baseline is timed on exactly our passes, round for round
                assert_timings(timing["ms"], timing["timing"])
                assert set(timing["ms"]) == set(case["ms"])
                assert set(case["speedup"][name]) == set(case["ms"])
                for p, ratio in case["speedup"][name].items():
                    spread = case["speedup_spread"][name][p]
                    assert spread["q1"] <= ratio <= spread["q3"]
                    assert spread["ranked"] == (not spread["interfered"] and (spread["q1"] > 1 or spread["q3"] < 1))
    assert results["baselines"] == ["torch"] and results["complete"] is True


def test_bench_table_and_plot(quick_suite):
    _, stdout, results, plot = quick_suite
    first = stdout.splitlines()[0]
    assert first.startswith("cudeconv bench --quick (shrunk cases, not the real layers' sizes): backend 'numpy'")
    if backends.cuda_unavailable_reason() is not None:
        assert "not on a GPU" in first
    assert "QUICK RUN (--quick): every case shrunk (" + QUICK.describe() in stdout
    assert "precision fp32" in stdout and "±IQR" in stdout
    for case in SUITE:
        assert case.name in stdout
    assert sum(line.startswith("─") for line in stdout.splitlines()) == 1  # case by case, one header
    if "torch" in results["compared"]:
        assert_png(plot)
    else:  # nothing to compare: no picture, and the reason
        assert not plot.exists() and "no picture written" in stdout and "PyTorch is not importable" in stdout


def test_bench_through_python_m(tmp_path):
    """``python -m cudeconv`` as a user runs it, its output into pipes: no progress bar there."""
    out = tmp_path / "textbook.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "cudeconv", "bench", "--backend", "numpy", "--quick",
         "--cases", "textbook", "--dtype", "float64", "--repeat", "2", "--min-time", "0",
         "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "%|" not in done.stderr and "%|" not in done.stdout  # no progress bar into a pipe
    assert "textbook" in done.stdout
    results = json.loads(out.read_text())
    (case,) = results["cases"]
    assert case["name"] == "textbook" and results["dtype"] == "float64"
    assert case["max_rel_error"] < 1e-12


def test_bench_cases_globs_and_commas(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--repeat", "1", "--min-time", "0",
                     "--cases", "dcgan_g*,textbook", "unet_up", "--json", str(out)]) == 0
    names = [c["name"] for c in json.loads(out.read_text())["cases"]]
    assert names == ["dcgan_g2", "dcgan_g3", "dcgan_g4", "unet_up", "textbook"]


def test_bench_list(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for case in SUITE:
        assert case.name in out and case.source in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--cases", "textbook,no_such_case"], "unknown case 'no_such_case'"),
    (["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["bench", "--repeat", "0"], "must be a positive integer"),
    (["bench", "--min-time", "-1"], "must be zero or more"),
    (["bench", "--backend", "tpu"], "invalid choice: 'tpu'"),
    (["demo", "--size", "30", "--scale", "4"], "must be a multiple of --scale"),
    (["demo", "--out", "/no/such/folder/demo.png"], "cannot write /no/such/folder/demo.png"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err
    if "no_such_case" in message:
        assert "textbook" in err  # the known names are listed


def test_unusable_backend_says_why(capsys):
    reason = backends.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("the cuda backend works here")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--backend", "cuda", "--quick", "--cases", "textbook"])
    assert exit_info.value.code == 2
    assert reason in capsys.readouterr().err


def test_wrong_backend_is_reported_not_timed(tmp_path, monkeypatch, capsys):
    """A backend whose float32 forward is off gets status "wrong", no timings, exit code 1
    (the float64 reference, computed by the same class, stays right)."""
    forward = NumpyBackend.forward

    def off_by_one(self, x, *args, **kwargs):
        y = forward(self, x, *args, **kwargs)
        return y + 1 if y.dtype == np.float32 else y

    monkeypatch.setattr(NumpyBackend, "forward", off_by_one)
    out = tmp_path / "wrong.json"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--cases", "textbook",
                     "--repeat", "1", "--min-time", "0", "--json", str(out)]) == 1
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] == "wrong" and case["ms"] == {}
    assert case["max_rel_error"] > 0.1 and "forward" in case["wrong_passes"]
    assert all("skipped" in timing for timing in case["baselines"].values())
    captured = capsys.readouterr()
    assert "WRONG" in captured.out and "textbook" in captured.err


@pytest.mark.parametrize("name", ["dilated_op", "depthwise_up", "hifigan_up1", "vnet_up", "textbook"])
def test_col2im_baseline_matches_reference(name):
    """The GPU baseline's maths (Chainer's GEMM + col2im), run with NumPy as its array module."""
    problem = bench.Problem.make(BY_NAME[name].quick(QUICK), "float32")
    x, w, b, gy, geom = problem.x, problem.weight, problem.bias, problem.grad_output, problem.geom
    results = {
        "forward": bench.col2im_forward(np, x, w, b, geom),
        "grad_input": bench.col2im_grad_input(np, gy, w, geom),
        "grad_weight": bench.col2im_grad_weight(np, gy, x, geom),
        "grad_bias": bench.col2im_grad_bias(gy, geom),
    }
    for pass_name, result in results.items():
        assert result.dtype == np.float32
        error = bench.relative_error(result, problem.reference[pass_name])
        assert error <= bench.bound_for(np.float32, "fp32", problem.terms(pass_name)).limit, (pass_name, error)


def test_cupy_baseline_passes_with_numpy_for_cupy(monkeypatch):
    """Every pass the GPU baseline times, SGD step included, with NumPy standing in for CuPy."""
    monkeypatch.setitem(sys.modules, "cupy", np)
    contender = bench.cupy_col2im_contender()
    problem = bench.Problem.make(BY_NAME["dilated_op"].quick(QUICK), "float32")
    passes = contender.build(problem)
    assert set(passes) == set(bench.PASSES)
    for name, run in passes.items():
        error = bench.relative_error(run(), problem.reference[name])
        assert error <= bench.bound_for(np.float32, "fp32", problem.terms(name)).limit, (name, error)


@pytest.mark.slow  # compiles the kernels for the CPU on first use
def test_emulator_backend_benchmarks(tmp_path):
    reason = backends.emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(f"emulator unavailable: {reason}")
    out = tmp_path / "emulator.json"
    assert cli.main(["bench", "--backend", "emulator", "--quick", "--cases", "textbook",
                     "--repeat", "1", "--min-time", "0", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["quick_limits"] == QUICK_EMULATOR.describe()  # emulator-sized shapes
    (case,) = results["cases"]
    assert case["status"] == "ok" and case["max_rel_error"] < 1e-5
    # the kernel backends time each gradient on its own too
    assert set(case["ms"]) == set(bench.PASSES)
    assert "numpy" in case["baselines"]
    # textbook: 1 channel per group: the depthwise kernels for every pass but grad_bias
    assert {p: path["kind"] for p, path in case["paths"].items()} == {
        "forward": "depthwise", "grad_input": "depthwise", "grad_weight": "depthwise", "grad_bias": "per-channel"}


@pytest.mark.slow  # compiles the GEMM kernels for the CPU on first use
def test_bench_precision_flag_and_kernel_paths(tmp_path, capsys):
    """--precision tf32 runs the kernels' TF32 GEMMs (checked against TF32's own error bound), and
    the table and JSON say which kernel ran each pass, on which arithmetic, with grad_weight's
    workspace."""
    reason = backends.emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(f"emulator unavailable: {reason}")
    out = tmp_path / "tf32.json"
    assert cli.main(["bench", "--backend", "emulator", "--quick", "--cases", "dcgan_g4", "--precision", "tf32",
                     "--repeat", "1", "--min-time", "0", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    (case,) = results["cases"]
    assert results["precision"] == "tf32" and case["status"] == "ok"
    paths = case["paths"]
    # 3 output channels: the forward on the GEMM still (its K side, C_in, has 4 at --quick sizes);
    # grad_input's K side (3 channels) too narrow
    assert paths["forward"]["kind"] == "gemm" and paths["forward"]["kernel"].startswith("deconv_forward_gemm_tf32_")
    assert paths["grad_input"]["kind"] == "direct"
    assert paths["grad_weight"]["kernel"].startswith("deconv_grad_weight_gemm_tf32_")
    assert paths["grad_weight"]["parts"] >= 1 and len(paths["grad_weight"]["grid"]) == 3
    assert paths["grad_weight"]["workspace_bytes"] % (4 * math.prod(case["config"]["kernel_size"])) == 0
    assert re.search(r"kernels: forward gemm tf32 \([0-9.]+ MiB workspace\), grad_input direct fp32, grad_weight gemm tf32",
                     capsys.readouterr().out)
    assert case["bounds"]["grad_weight"]["form"] == "elementwise" and case["bounds"]["grad_weight"]["arithmetic"] == "tf32"
    assert results["baselines"] == []  # a TF32 run compares with TF32 baselines only: none on the CPU


def _demo(tmp_path, *extra):
    out, png = tmp_path / "demo.json", tmp_path / "demo.png"
    assert cli.main(["demo", "--backend", "numpy", "--json", str(out), "--out", str(png), *extra]) == 0
    return json.loads(out.read_text()), png


def test_demo_learns(tmp_path, capsys):
    result, png = _demo(tmp_path, "--steps", "80", "--batch", "8", "--seed", "3")
    assert {"losses", "backend", "steps", "seed", "first_loss", "last_loss", "ratio"} <= set(result)
    assert result["backend"] == "numpy" and result["steps"] == 80 and result["seed"] == 3
    losses = result["losses"]
    assert len(losses) == 80 and all(math.isfinite(v) for v in losses)
    # the default run (300 steps of 16 images) falls about 100×; 80 steps of 8 already fall about 30×
    assert result["ratio"] >= 5
    assert np.mean(losses[-10:]) * 5 <= np.mean(losses[:10])
    assert result["held_out_loss"] < losses[0] / 5
    out = capsys.readouterr().out
    assert "lower" in out and "repeating pixels" in out
    assert_png(png)


def test_demo_is_deterministic(tmp_path):
    tiny = ("--steps", "6", "--batch", "4", "--size", "16")
    first, _ = _demo(tmp_path, *tiny, "--seed", "7")
    again, _ = _demo(tmp_path, *tiny, "--seed", "7")
    other, _ = _demo(tmp_path, *tiny, "--seed", "8")
    assert first["losses"] == again["losses"]
    assert first["losses"] != other["losses"]


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("cudeconv", "numpy", "backends:", "cuda", "emulator compiler:"):
        assert word in out
    assert "numpy    works" in out
    if backends.cuda_unavailable_reason() is not None:
        assert "cuda     unavailable: " + backends.cuda_unavailable_reason() in out


def test_no_command_prints_help_and_info(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "usage: cudeconv" in out and "bench" in out and "backends:" in out


# -- --quick shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("limits", [QUICK, QUICK_EMULATOR], ids=["quick", "quick_emulator"])
def test_quick_shrinks_every_case_within_its_limits(limits):
    for case in SUITE:
        small = case.quick(limits)
        geom, real = small.geometry(), case.geometry()
        # the layer's geometry is kept: only batch, channels (groups) and spatial size shrink
        for key in ("kernel_size", "stride", "padding", "output_padding", "dilation"):
            assert getattr(geom, key) == getattr(real, key), (case.name, key)
        assert small.batch <= limits.batch and geom.flops() <= limits.flops, case.name
        assert max(small.in_channels, small.out_channels) <= limits.channels, case.name
        assert math.prod(small.in_size) <= limits.positions, case.name
        assert geom.in_channels * geom.out_channels_per_group * geom.taps <= limits.filter_elements
        if case.groups == case.in_channels == case.out_channels:  # depthwise stays depthwise
            assert small.groups == small.in_channels == small.out_channels
        if case.name == "textbook":  # 2×2, one channel: nothing to shrink
            assert small.config() == case.config() and small.shrunk_from is None
        else:
            assert geom.flops() < real.flops() and small.shrunk_from is case, case.name
    fcn = BY_NAME["fcn8s_up8"].quick(limits)  # batch 1, 21 channels, 4096 positions: shrunk by flops
    assert math.prod(fcn.in_size) < 4096


# -- timing, end to end on a fake clock ---------------------------------------------------------------
@pytest.mark.parametrize("baseline_factor, ranked", [(3.0, True), (None, False)])
def test_bench_reports_paired_ratios_spread_and_flags(baseline_factor, ranked, monkeypatch, tmp_path, capsys):
    """The bench's numbers come from the interleaved rounds: with load that hits both contenders in
    the same round, the medians are noisy (flagged ~) but the speed-up is exactly the cost ratio;
    a baseline that alternates 20 % faster and slower is unranked (?)."""
    load = [1, 6, 1, 4, 1, 9, 1, 1, 5, 1] * 3
    alternate = [1.2, 0.8] * 15

    def fake_timed(contender, fn):
        if contender.name == "numpy":
            return bench.Timed(fn, ScriptedClock(1e-3, load if baseline_factor else [1.0] * 30))
        factors = [baseline_factor * l for l in load] if baseline_factor else alternate
        return bench.Timed(fn, ScriptedClock(1e-3, factors))

    monkeypatch.setattr(bench.Contender, "timed", fake_timed)
    # a second NumPy backend stands in for PyTorch (whose presence the test must not depend on)
    monkeypatch.setitem(bench.BASELINES, "stand_in", bench.baselines.Baseline(
        False, "fp32", "a stand-in", lambda dtype: bench.backend_contender("stand_in", NumpyBackend(), on_gpu=False)))
    out = tmp_path / "fake.json"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--cases", "textbook", "--repeat", "10",
                     "--min-time", "0", "--baselines", "stand_in", "--json", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    for p in ("forward", "backward", "sgd_step"):
        assert case["timing"][p]["samples"] == 10
        spread = case["speedup_spread"]["stand_in"][p]
        assert spread["ranked"] is ranked
        if ranked:
            assert case["speedup"]["stand_in"][p] == pytest.approx(3.0)
            assert spread["q1"] == pytest.approx(3.0) and spread["q3"] == pytest.approx(3.0)
            assert p in case["noisy"]  # the medians themselves move with the load
            assert case["ms"][p] == pytest.approx(1.0)  # median load is 1
        else:
            assert spread["q1"] < 1 < spread["q3"]
    table = capsys.readouterr().out
    forward_row = next(line for line in table.splitlines() if "forward" in line)
    if ranked:
        assert "~" in forward_row and "3 " in forward_row.split("│")[1]
        assert "geometric mean ×stand_in: 3 over 3 passes (0 of them unranked ?)" in table
    else:
        assert forward_row.rstrip().endswith("?")
        assert "(3 of them unranked ?)" in table


# -- help, optional matplotlib, info ------------------------------------------------------------------
def test_bench_help_is_a_usage_text_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: cudeconv bench")
    assert "examples:" in text and "cudeconv bench --quick" in text and "--min-time" in text
    assert bench.__doc__.splitlines()[0] not in text  # not the module docstring


@pytest.fixture
def no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError


@pytest.mark.parametrize("argv, option", [
    (["bench", "--quick", "--cases", "textbook", "--plot", "out.png"], "--plot out.png"),
    (["demo", "--steps", "1", "--out", "demo.png"], "--out demo.png"),
])
def test_pictures_without_matplotlib_fail_before_any_work(argv, option, no_matplotlib, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("ran although the plot cannot be written"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} needs matplotlib" in err and "cudeconv[cli]" in err


def test_demo_without_matplotlib_trains_and_skips_the_picture(no_matplotlib, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--backend", "numpy", "--steps", "2", "--batch", "2", "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "no picture: matplotlib is not installed" in out
    assert list(tmp_path.iterdir()) == []


class FakeCudaRuntimeError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class FakeRuntime:
    """cupy.cuda.runtime as seen with a given driver, runtime and device count (or error)."""

    def __init__(self, driver, runtime, error=None, count=1):
        self.driver, self.runtime, self.error, self.count = driver, runtime, error, count

    def driverGetVersion(self):  # noqa: N802 (CuPy's names)
        return self.driver

    def runtimeGetVersion(self):  # noqa: N802
        return self.runtime

    def getDeviceCount(self):  # noqa: N802
        if self.error:
            raise self.error
        return self.count


INSUFFICIENT = FakeCudaRuntimeError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                                        "for CUDA runtime version")


@pytest.mark.parametrize("runtime, expected", [
    (FakeRuntime(0, 13000, INSUFFICIENT), "no NVIDIA driver found (CuPy's CUDA runtime is 13.0)"),
    (FakeRuntime(12040, 13000, INSUFFICIENT),
     "the NVIDIA driver (CUDA 12.4) is older than CuPy's CUDA runtime (CUDA 13.0)"),
    (FakeRuntime(13000, 13000, FakeCudaRuntimeError(100, "cudaErrorNoDevice: no CUDA-capable device")),
     "no CUDA device found (the NVIDIA driver is installed but sees no GPU)"),
    (FakeRuntime(13000, 13000, count=0), "no CUDA device found"),
    (FakeRuntime(13000, 13000, FakeCudaRuntimeError(999, "cudaErrorUnknown: unknown error")),
     "no usable CUDA device (FakeCudaRuntimeError: cudaErrorUnknown: unknown error)"),
])
def test_cuda_diagnosis_names_the_missing_piece(runtime, expected):
    reason = backends.cuda_device_unavailable_reason(runtime)
    assert reason.startswith(expected), reason
    assert "insufficient" not in reason  # CUDA's wording, which hides a missing driver
    assert backends.cuda_device_unavailable_reason(FakeRuntime(13000, 13000)) is None


def test_info_without_a_driver(monkeypatch, capsys):
    """With CuPy installed but no NVIDIA driver, `info` says so (not "driver 0.0")."""
    fake = types.ModuleType("cupy")
    fake.__version__ = "14.0.0"
    fake.cuda = types.SimpleNamespace(runtime=FakeRuntime(0, 13000, INSUFFICIENT))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    backends.cuda_unavailable_reason.cache_clear()
    try:
        assert cli.main(["info"]) == 0
    finally:
        backends.cuda_unavailable_reason.cache_clear()
    out = capsys.readouterr().out
    assert "CUDA     runtime 13.0, driver none found (no NVIDIA driver)" in out
    assert "cuda     unavailable: no NVIDIA driver found" in out
    assert "driver 0.0" not in out and "insufficient" not in out


# -- a clean install ----------------------------------------------------------------------------------
@pytest.mark.slow  # builds a virtual environment and installs into it (tens of seconds)
def test_clean_install_runs_bench_and_demo(tmp_path):
    """`pip install cudeconv` alone (NumPy and tqdm, no matplotlib, no PyTorch) gives a working
    `cudeconv bench --quick` and `cudeconv demo`; pictures ask for the cli extra."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    cudeconv = str(venv / "bin" / "cudeconv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    missing = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True, env=env)
    assert missing.returncode != 0  # the core install does not bring matplotlib

    done = subprocess.run([cudeconv, "bench", "--quick", "--backend", "numpy", "--json", "r.json"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["quick"] and [c["status"] for c in results["cases"]] == ["ok"] * len(SUITE)
    assert "PyTorch is not importable" in results["cases"][0]["baselines"]["torch"]["skipped"]

    demo = subprocess.run([cudeconv, "demo", "--steps", "3", "--batch", "2"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "no picture: matplotlib is not installed" in demo.stdout

    plot = subprocess.run([cudeconv, "bench", "--quick", "--plot", "p.png"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert plot.returncode == 2 and "cudeconv[cli]" in plot.stderr


def test_bench_precision_hook():
    """run() takes the library's precision names and says which one ran."""
    with pytest.raises(ValueError, match="precision must be one of"):
        bench.run([BY_NAME["textbook"]], "numpy", precision="fp16", progress=False)
    results = bench.run([BY_NAME["textbook"]], "numpy", precision="tf32", repeat=1, min_seconds=0,
                        progress=False)
    assert results["precision"] == "tf32" and results["cases"][0]["status"] == "ok"
