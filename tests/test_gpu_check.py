"""scripts/gpu_check.sh, the one run a lent GPU gets, checked here without a GPU: its rehearsal
(every step it can run on the CPU), its time budget, what it leaves in $OUT, its preflight, and
the pieces it relies on — the smoke step's entry-point coverage, the switch that turns cuda skips
into failures, and the SASS report of an archive of CuPy's cubins.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import sass_report, skip_unless_kernel_checks_can_run

from cudeconv import backends

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
BUDGET_S = 510  # what the device call leaves the script: about nine minutes, less the transfers
OUT_MAX_FILES, OUT_MAX_BYTES = 8, 16 * 1024 * 1024  # what comes back from the GPU machine's $OUT
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
REHEARSAL_STEPS = ["gpu", "preflight", "warmup", "tests", "sanitizer_probe", "smoke", "racecheck", "tune", "bench",
                   "bench_tf32", "archive", "ncu", "out_limits"]


def load_smoke_step():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke_step", REPO / "scripts" / "gpu_smoke_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args, out, timeout, **extra_env):
    """``bash scripts/gpu_check.sh ARGS`` with $OUT at ``out`` and this interpreter as python3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDECONV_REQUIRE", "LIMIT_"))}
    env.update(OUT=str(out), PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               **extra_env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def out_problems(out):
    """What would not come back from $OUT: too many files, too large, too deep, odd names."""
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    problems = [f"{len(files)} files"] if len(files) > OUT_MAX_FILES else []
    for path in files:
        relative = path.relative_to(out)
        if path.stat().st_size > OUT_MAX_BYTES:
            problems.append(f"{relative} is {path.stat().st_size} bytes")
        if len(relative.parts) > 3:  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
            problems.append(f"{relative} is too deep")
        if not all(OUT_NAME.match(part) for part in relative.parts):
            problems.append(f"{relative} has an odd name")
    return problems


@pytest.mark.slow
def test_rehearsal_runs_every_step_it_can_within_the_budget(tmp_path):
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    out = tmp_path / "out"
    result = run_script(["--rehearse"], out, timeout=BUDGET_S)
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    assert result.returncode == 0, (result.stdout, result.stderr, (out / "gpu_check.log").read_text()[-6000:])
    assert summary["mode"] == "rehearsal" and not summary["failed"]
    assert [step["name"] for step in summary["steps"]] == REHEARSAL_STEPS
    # the script's own numbers: every step's limit plus its kill grace, within the budget
    assert summary["budget_s"] == BUDGET_S
    limits = summary["limits_s"]
    assert summary["limits_total_s"] == sum(limits.values()) + len(limits) * summary["kill_grace_s"] <= BUDGET_S
    assert summary["elapsed_s"] <= BUDGET_S
    for name in ("gpu", "sanitizer_probe", "racecheck", "ncu"):  # only what needs the GPU is skipped, saying so
        assert steps[name]["status"] == "skipped" and "rehearsal: no GPU" in steps[name]["note"], steps[name]
    for name in ("preflight", "tests", "smoke", "bench", "bench_tf32", "archive", "out_limits"):
        assert steps[name]["status"] == "ok", steps[name]
    for step in summary["steps"]:
        if step["seconds"] is not None:
            assert step["seconds"] <= step["limit_s"], step
    assert steps["smoke"]["limit_s"] == limits["memcheck"]  # the smoke step runs in memcheck's slot
    defined = sum(map(len, sass_report.library_entry_points().values()))
    assert steps["smoke"]["note"] == f"entry points: {defined} launched, {defined} defined in kernels/*.cu, the same set"
    assert steps["preflight"]["note"] == "backend 'emulator' works"
    assert "per-test timeout" in steps["tests"]["note"] or "pytest-timeout not installed" in steps["tests"]["note"]
    # what comes back: within the limits, and each file what it says it is
    assert out_problems(out) == []
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "summary.txt", "gpu_check.log", "bench.json", "bench_tf32.json", "cubins.tar.gz"} <= names
    for bench in ("bench.json", "bench_tf32.json"):
        assert json.loads((out / bench).read_text())
    with tarfile.open(out / "cubins.tar.gz") as archive:  # the rehearsal's CuPy cache is empty
        assert archive.getmembers() == []
    text = (out / "summary.txt").read_text()
    assert all(name in text for name in REHEARSAL_STEPS)


def test_a_step_over_its_limit_is_a_timeout_and_the_run_goes_on(tmp_path):
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    out = tmp_path / "out"
    result = run_script(["--rehearse"], out, timeout=BUDGET_S, LIMIT_BENCH="1", LIMIT_BENCH_TF32="1")
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    assert result.returncode == 1 and summary["failed"], result.stdout
    for name in ("bench", "bench_tf32"):  # the emulator's bench takes far longer than a second
        assert steps[name]["status"] == "timeout" and steps[name]["rc"] == 124, steps[name]
        assert steps[name]["note"] == "stopped at its 1s limit"
        assert steps[name]["seconds"] <= 1 + summary["kill_grace_s"]
    assert summary["limits_s"]["bench"] == 1 and summary["limits_total_s"] < BUDGET_S
    assert steps["archive"]["status"] == steps["out_limits"]["status"] == "ok"  # the steps after it still ran
    assert "bench            timeout     rc 124" in (out / "summary.txt").read_text()


def test_limits_over_the_budget_stop_the_script_before_any_step(tmp_path):
    result = run_script(["--rehearse"], tmp_path / "out", timeout=60, LIMIT_TESTS="600")
    assert result.returncode == 2
    over = re.search(r"add up to (\d+)s, over the 510s budget", result.stderr)
    assert over and int(over.group(1)) > 600 + 5, result.stderr  # that step alone and its grace
    assert not (tmp_path / "out").exists()
    result = run_script(["--rehearse"], tmp_path / "out", timeout=60, LIMIT_BENCH="soon")
    assert result.returncode == 2 and "LIMIT_BENCH=soon is not a positive number of seconds" in result.stderr


def test_without_the_cuda_backend_the_preflight_stops_the_run(tmp_path):
    reason = backends.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("the cuda backend works here: the preflight would let the real GPU run go on")
    out = tmp_path / "out"
    result = run_script([], out, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "STOPPED: the cuda backend does not work here" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    assert summary["mode"] == "gpu"
    assert steps["preflight"]["status"] == "failed"
    assert steps["preflight"]["note"] == f"backend 'cuda' unavailable: {reason}"
    after = REHEARSAL_STEPS[2:-1]
    after[after.index("smoke")] = "memcheck"
    assert [step["name"] for step in summary["steps"]] == ["gpu", "preflight", *after]
    for name in after:
        assert steps[name]["status"] == "skipped" and steps[name]["note"] == "not run: the preflight stopped the run"


def test_require_cuda_turns_the_cuda_skips_into_failures():
    if backends.cuda_unavailable_reason() is None:
        pytest.skip("the cuda backend works here: its tests do not skip")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_sgd.py",
               "-k", "cuda and matches_reference"]
    env = {k: v for k, v in os.environ.items() if k != "CUDECONV_REQUIRE_CUDA"}
    skipped = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and " skipped" in skipped.stdout and " failed" not in skipped.stdout, skipped.stdout
    assert "backend 'cuda' unavailable" in skipped.stdout
    failed = subprocess.run(command, cwd=REPO, env={**env, "CUDECONV_REQUIRE_CUDA": "1"}, capture_output=True,
                            text=True, timeout=120)
    # the fixture fails, so pytest counts errors (at setup), and nothing skips
    assert failed.returncode == 1 and re.search(r"\d+ errors? in", failed.stdout), failed.stdout
    assert " skipped" not in failed.stdout
    assert "backend 'cuda' unavailable although CUDECONV_REQUIRE_CUDA=1" in failed.stdout


def test_the_sanitizer_filter_takes_every_entry_point_and_no_cupy_kernel():
    """compute-sanitizer's --kernel-name regex (a regex searched in the kernel's name)."""
    found = re.search(r"^SANITIZER_KERNELS='regex=([^']+)'$", SCRIPT.read_text(), re.MULTILINE)
    pattern = re.compile(found.group(1))
    names = set().union(*sass_report.library_entry_points().values())
    assert names and all(pattern.search(name) for name in names)
    for cupy_kernel in ("cupy_copy__float32_float32", "cupy_multiply__float_float_float", "_Z10cupy_fill"):
        assert not pattern.search(cupy_kernel)


ENTRY_POINT_SOURCE = r"""
#include <cuda_fp16.h>
#include "local.cuh"
// extern "C" __global__ void commented_out(float* y) {}
extern "C" __global__ void __launch_bounds__(256, 2)
plain_kernel(float* y) { y[0] = 1; }
extern "C" __global__ void not_a_definition(float* y);
__global__ void not_extern_c(float* y) {}
__device__ float helper(float x) { return x; }
#define PASTED(SUFFIX, T)                                                  \
    extern "C" __global__ void __launch_bounds__(BLOCK, 2)                 \
        pasted_##SUFFIX(T* y) { y[0] = helper(1); }
FOR_EACH_TYPE(PASTED)
#if 0
PASTED(never, float)
#endif
"""
LOCAL_HEADER = """#pragma once
#define FOR_EACH_TYPE(M) M(f16, __half) M(f32, float)
"""


def test_entry_points_come_from_the_preprocessed_source(tmp_path):
    if sass_report.find_preprocessor() is None:
        skip_unless_kernel_checks_can_run("a C++ preprocessor", "neither g++ nor c++ is on PATH")
    (tmp_path / "module.cu").write_text(ENTRY_POINT_SOURCE)
    (tmp_path / "local.cuh").write_text(LOCAL_HEADER)
    (tmp_path / "other.cu").write_text('extern "C" __global__ void other(int* x) { *x = 0; }\n')
    assert sass_report.library_entry_points(tmp_path) == {
        "module.cu": {"plain_kernel", "pasted_f16", "pasted_f32"},
        "other.cu": {"other"},
    }


def test_the_smoke_step_fails_when_an_entry_point_is_never_launched(monkeypatch, capsys):
    smoke = load_smoke_step()
    defined = {"a.cu": {"k1", "k2"}, "b.cu": {"k3"}}
    assert smoke.coverage_problems({"k1", "k2", "k3"}, defined) == []
    assert smoke.coverage_problems({"k1", "k3", "stray"}, defined) == [
        "never launched: k2 (a.cu)", "launched but not defined in kernels/*.cu: stray"]
    # the whole step: nothing launched, so every entry point of kernels/*.cu is reported missing
    skip_unless_kernel_checks_can_run("the emulator", backends.emulator_unavailable_reason())
    monkeypatch.setattr(smoke, "run_everything", lambda backend: None)
    monkeypatch.setattr(smoke.KernelBackend, "_launch", smoke.KernelBackend._launch)  # undo its recording after
    monkeypatch.delenv("GPU_CHECK_NOTE", raising=False)
    assert smoke.main(["--backend", "emulator"]) == smoke.COVERAGE_FAILED
    printed = capsys.readouterr().out
    defined = sass_report.library_entry_points()
    assert printed.count("never launched: ") == sum(map(len, defined.values()))
    assert "never launched: sgd_step_bf16 (sgd.cu)" in printed


def nvcc_cubin(source, cubin, *options):
    subprocess.run([sass_report.find_nvcc(), "-cubin", "-arch=sm_90", "-O3", *options, str(source), "-o", str(cubin)],
                   check=True, capture_output=True, timeout=300)
    return cubin.read_bytes()


def test_an_archive_of_cupy_cubins_reports_what_nvcc_compiled(tmp_path):
    """A CuPy cache as CuPy writes it (the cubin's MD5 in hex, then the cubin) holding one module
    of the library, one of somebody else, a torn write and a PTX file: --pack-cubins keeps the
    library's, and --cubins reports it as report() reports the source compiled alike."""
    skip_unless_kernel_checks_can_run("nvcc/cuobjdump", sass_report.tools_unavailable_reason())
    source = REPO / "kernels" / "sgd.cu"
    library = nvcc_cubin(source, tmp_path / "sgd.cubin")
    (tmp_path / "other.cu").write_text('extern "C" __global__ void other_kernel(int* x) { *x = 1; }\n')
    other = nvcc_cubin(tmp_path / "other.cu", tmp_path / "other.cubin")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "f00d_2.cubin").write_bytes(hashlib.md5(library).hexdigest().encode() + library)
    (cache / "beef_2.cubin").write_bytes(hashlib.md5(other).hexdigest().encode() + other)
    (cache / "torn_2.cubin").write_bytes(b"0" * 32 + library[: len(library) // 2])
    (cache / "text_2.ptx").write_text(".version 8.0\n.target sm_90\n")
    archive, report_json = tmp_path / "cubins.tar.gz", tmp_path / "sass.json"
    script = [sys.executable, str(REPO / "scripts" / "sass_report.py")]
    subprocess.run([*script, "--pack-cubins", str(cache), str(archive)], check=True, capture_output=True, timeout=120)
    with tarfile.open(archive) as packed:
        assert [m.name for m in packed.getmembers()] == ["f00d_2.cubin"]
        assert packed.extractfile("f00d_2.cubin").read() == library
    shown = subprocess.run([*script, "--cubins", str(archive), "--json", str(report_json)], check=True,
                           capture_output=True, text=True, timeout=300).stdout
    cubins = json.loads(report_json.read_text())["cubins"]
    assert list(cubins) == ["f00d_2.cubin"] and cubins["f00d_2.cubin"]["arch"] == "sm_90"
    expected = sass_report.report(source, "sm_90")
    assert [row["kernel"] for row in expected] == sorted(sass_report.library_entry_points()["sgd.cu"])
    rows = cubins["f00d_2.cubin"]["rows"]
    assert [r["kernel"] for r in rows] == [r["kernel"] for r in expected]
    for got, want in zip(rows, expected):
        assert got["spill_stores"] is None and got["spill_loads"] is None  # not in a cubin
        assert {k: v for k, v in got.items() if not k.startswith("spill")} == \
            {k: v for k, v in want.items() if not k.startswith("spill")}
        assert got["FFMA"] + got["DFMA"] > 0  # an SGD step multiplies and adds
    assert re.search(r"^sgd_step_f32 .* - ", shown, re.MULTILINE), shown  # the spill column reads "-"
