"""The command line (``cudeconv bench / demo / info``) on the NumPy backend, with tiny settings.

Commands run in-process through ``cudeconv.cli.main`` (and once through ``python -m cudeconv``);
the checks read the JSON and PNG files they write.
"""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cudeconv import backends, bench, cli
from cudeconv.backends.numpy_backend import NumpyBackend
from cudeconv.cases import BY_NAME, SUITE

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_timings(timing):
    assert timing and all(isinstance(ms, float) and ms > 0 for ms in timing.values()), timing
    assert set(timing) <= set(bench.PASSES)


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """The whole suite, shrunk, once: (exit code, stdout, JSON results, plot path)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--backend", "numpy", "--quick", "--repeat", "1",
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
    assert results["versions"]["numpy"] == np.__version__
    assert [c["name"] for c in results["cases"]] == [c.name for c in SUITE]
    for case in results["cases"]:
        assert {"name", "config", "ms", "tflops", "max_rel_error", "baselines", "status"} <= set(case)
        assert case["status"] == "ok", case
        assert case["config"] == BY_NAME[case["name"]].quick().config()
        # The NumPy backend has no separate gradient entry points: forward, backward, SGD step.
        assert set(case["ms"]) == {"forward", "backward", "sgd_step"}
        assert_timings(case["ms"])
        assert set(case["tflops"]) == {"forward", "backward"}
        assert all(t > 0 for t in case["tflops"].values())
        assert 0 <= case["max_rel_error"] < 1e-4
        assert set(case["baselines"]) == {"torch", "cupy_col2im"}
        for name, timing in case["baselines"].items():
            if "skipped" in timing:
                assert set(timing) == {"skipped"} and timing["skipped"]
            else:
                assert_timings(timing)
                assert case["speedup"][name]
    assert "runs on the GPU only" in results["cases"][0]["baselines"]["cupy_col2im"]["skipped"]


def test_bench_table_and_plot(quick_suite):
    _, stdout, results, plot = quick_suite
    first = stdout.splitlines()[0]
    assert first.startswith("cudeconv bench: backend 'numpy'")
    if backends.cuda_unavailable_reason() is not None:
        assert "not on a GPU" in first
    for case in SUITE:
        assert case.name in stdout
    assert "cupy_col2im: skipped (all cases)" in stdout
    assert_png(plot)


def test_bench_through_python_m(tmp_path):
    """``python -m cudeconv`` as a user runs it; the progress bar goes to stderr, not stdout."""
    out = tmp_path / "textbook.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "cudeconv", "bench", "--backend", "numpy", "--quick",
         "--cases", "textbook", "--dtype", "float64", "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "bench" in done.stderr  # tqdm's bar
    assert "textbook" in done.stdout and "%|" not in done.stdout
    results = json.loads(out.read_text())
    (case,) = results["cases"]
    assert case["name"] == "textbook" and results["dtype"] == "float64"
    assert case["max_rel_error"] < 1e-12


def test_bench_cases_globs_and_commas(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--repeat", "1", "--cases",
                     "dcgan_g*,textbook", "unet_up", "--json", str(out)]) == 0
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

    def off_by_one(self, x, *args):
        y = forward(self, x, *args)
        return y + 1 if y.dtype == np.float32 else y

    monkeypatch.setattr(NumpyBackend, "forward", off_by_one)
    out = tmp_path / "wrong.json"
    assert cli.main(["bench", "--backend", "numpy", "--quick", "--cases", "textbook",
                     "--repeat", "1", "--json", str(out)]) == 1
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] == "wrong" and case["ms"] == {}
    assert case["max_rel_error"] > 0.1 and "forward" in case["wrong_passes"]
    assert all("skipped" in timing for timing in case["baselines"].values())
    captured = capsys.readouterr()
    assert "WRONG" in captured.out and "textbook" in captured.err


@pytest.mark.parametrize("name", ["dilated_op", "depthwise_up", "hifigan_up1", "vnet_up", "textbook"])
def test_col2im_baseline_matches_reference(name):
    """The GPU baseline's maths (Chainer's GEMM + col2im), run with NumPy as its array module."""
    problem = bench.Problem.make(BY_NAME[name].quick(), "float32")
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
        assert error <= bench.tolerance(np.float32, problem.terms(pass_name)), (pass_name, error)


def test_cupy_baseline_passes_with_numpy_for_cupy(monkeypatch):
    """Every pass the GPU baseline times, SGD step included, with NumPy standing in for CuPy."""
    monkeypatch.setitem(sys.modules, "cupy", np)
    contender = bench.cupy_col2im_contender(on_gpu=True)
    problem = bench.Problem.make(BY_NAME["dilated_op"].quick(), "float32")
    passes = contender.build(problem)
    assert set(passes) == set(bench.PASSES)
    for name, run in passes.items():
        error = bench.relative_error(run(), problem.reference[name])
        assert error <= bench.tolerance(np.float32, problem.terms(name)), (name, error)


@pytest.mark.slow  # compiles the kernels for the CPU on first use
def test_emulator_backend_benchmarks(tmp_path):
    reason = backends.emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(f"emulator unavailable: {reason}")
    out = tmp_path / "emulator.json"
    assert cli.main(["bench", "--backend", "emulator", "--quick", "--cases", "textbook",
                     "--repeat", "1", "--json", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] == "ok" and case["max_rel_error"] < 1e-5
    # the kernel backends time each gradient on its own too
    assert set(case["ms"]) == set(bench.PASSES)
    assert "numpy" in case["baselines"]


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
