"""Data-parallel training (``cudeconv.distributed``) on two ranks under ``mpiexec -n 2``.

The ranks run ``data_parallel_worker.py`` (or ``cudeconv demo --distributed``) in their own
processes; this process never starts MPI. The oracle is training in this process, without any
communication, on the full batch. The MPI tests skip, with the reason, where mpi4py or MPICH's
``mpiexec`` is not installed (``pip install ".[test]"`` brings both; a GPU machine may have mpi4py
alone) — except under CUDECONV_REQUIRE_KERNEL_CHECKS=1 (CI), where a missing ``mpiexec`` beside
mpi4py fails; the NCCL case needs two GPUs, and skips for that first.

Every job gets a timeout: a job still running then is killed whole (mpiexec, its proxies and the
ranks share a process group) and the test fails with the ranks' output. MPICH's wheel starts two
ranks on one machine with its defaults, also with no network interface up and with a host name
that does not resolve (checked by hand with ``unshare -rn --uts``), so no MPI settings are made
here; ``HYDRA_IFACE=lo`` would break the no-network case (loopback down has no address).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import data_parallel_worker as worker
from conftest import skip_unless_kernel_checks_can_run

from cudeconv import backends, cli, demo, distributed
from cudeconv._dtypes import unit_roundoff

RANKS = 2
BIN = Path(sys.executable).parent  # the environment's: mpiexec from the mpich wheel, cudeconv
MPIEXEC = BIN / "mpiexec"
# One BLAS thread per rank: two ranks on two cores, each with a thread per core, would thrash.
RANK_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT_S = {"numpy": 120, "emulator": 300, "cuda": 300}  # the emulator may compile kernels first


def tolerance(dtype):
    """How far a rank's parameters may be from the single process's, relative to their largest
    magnitude: 8 units of rounding of their dtype (the sum over the batch is split in two and
    added in another order; at most 3.2 units were seen in 6 steps), several times below what
    training moves them (48 units, the least, for the bfloat16 weight)."""
    return 8 * unit_roundoff(dtype)


def require_mpi():
    reason = distributed.mpi_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if not MPIEXEC.exists():
        skip_unless_kernel_checks_can_run(
            "mpiexec", f"mpi4py is installed but {MPIEXEC} is not: pip install mpich (in cudeconv[mpi])")


def run_ranks(command, timeout, cwd=None):
    """``mpiexec -n 2 command``: (exit code, the ranks' stdout and stderr). A job still running
    after ``timeout`` seconds is killed with everything it started, and the test fails with its
    output."""
    job = subprocess.Popen(
        [str(MPIEXEC), "-n", str(RANKS), *map(str, command)], cwd=cwd, env=RANK_ENV,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # its own session: mpiexec, hydra's proxies, the ranks
        output, _ = job.communicate()
        pytest.fail(f"mpiexec -n {RANKS} {' '.join(map(str, command))} still ran after {timeout} s "
                    f"and was killed; the ranks' output:\n{output}")
    return job.returncode, output


def run_worker(scenario, backend, out):
    code, output = run_ranks([sys.executable, Path(worker.__file__), scenario, "--backend", backend,
                              "--out", out], TIMEOUT_S[backend])
    assert code == 0, output
    return output


def nccl_skip_reason():
    """Why the NCCL case cannot run where the "cuda" backend can (the fixture skips where it cannot)."""
    import cupy
    from cupy.cuda import nccl

    if not nccl.available:
        return "CuPy cannot load NCCL (pip install cudeconv[cuda12] or [cuda13] brings it)"
    gpus = cupy.cuda.runtime.getDeviceCount()
    if gpus < RANKS:
        return f"NCCL runs one rank per GPU: {RANKS} ranks need {RANKS} GPUs, this machine has {gpus}"
    return None


def test_two_ranks_train_as_one_process_on_the_full_batch(backend, tmp_path):
    """MPI on "numpy" and "emulator", NCCL on "cuda" (two GPUs)."""
    reason = nccl_skip_reason() if backend == "cuda" else None
    if reason is not None:  # before MPI: a one-GPU machine may have mpi4py without mpiexec
        pytest.skip(reason)
    require_mpi()
    xp = backends.get(backend).xp
    # the oracle first: on the emulator it also compiles the kernels the ranks will find cached
    layers = worker.build_layers(backend, seed=0)
    params = worker.parameters(layers)
    expected = worker.snapshot("start", params)
    worker.train(layers, worker.STEPS, xp,
                 after_step=lambda step: expected.update(worker.snapshot(f"step{step}", params)))

    run_worker("train", backend, tmp_path)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(RANKS)]
    for i in range(len(params)):  # each rank started from its own seed: the broadcast mattered
        assert not np.array_equal(ranks[0][f"before/{i}"], ranks[1][f"before/{i}"])
    assert set(ranks[0].files) == set(ranks[1].files) == set(expected) | {f"before/{i}" for i in range(len(params))}
    for name, want in expected.items():
        got = [rank[name] for rank in ranks]
        assert got[0].dtype == got[1].dtype == want.dtype, name
        assert got[0].tobytes() == got[1].tobytes(), f"{name}: the ranks' parameters differ"
        dtype = params[int(name.split("/")[1])].dtype
        scale = np.max(np.abs(want.astype(np.float64)))
        np.testing.assert_allclose(got[0].astype(np.float64), want.astype(np.float64), rtol=0,
                                   atol=tolerance(dtype) * scale, err_msg=name)
    for i, p in enumerate(params):  # and training moved every parameter well past that tolerance
        start, end = expected[f"start/{i}"].astype(np.float64), expected[f"step{worker.STEPS}/{i}"]
        moved = np.max(np.abs(end - start))
        assert moved > 4 * tolerance(p.dtype) * np.max(np.abs(start)), (i, moved)


def test_checkpoints_are_written_and_read_by_rank_0_only(tmp_path):
    require_mpi()
    run_worker("checkpoint", "numpy", tmp_path)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(RANKS)]
    for name in ("weight", "bias"):
        # what rank 0 saved (its own start, broadcast to rank 1) is what every rank loaded back
        np.testing.assert_array_equal(ranks[1][f"saved/{name}"], ranks[0][f"saved/{name}"])
        for rank in ranks:
            np.testing.assert_array_equal(rank[f"loaded/{name}"], ranks[0][f"saved/{name}"])
    # a load that fails on rank 0 fails on every rank, instead of leaving rank 1 waiting
    assert str(ranks[0]["missing_load_error"]).startswith("FileNotFoundError")
    assert str(ranks[1]["missing_load_error"]) == (
        f"RuntimeError: rank 0 failed to load {str(tmp_path / 'missing.npz')!r} (its error is raised on rank 0)")


EXPECTED_ERRORS = {  # scenario "errors": the exception and words of its message
    "comm_not_a_communicator": ("TypeError", "comm must be a cudeconv.distributed.Communicator"),
    "model_empty": ("ValueError", "model has no parameters"),
    "model_not_parameters": ("TypeError", "got ndarray at index 1"),
    "model_repeats_a_parameter": ("ValueError", "more than once in model"),
    "shard_uneven": ("ValueError", "batch has 3 samples, which 2 ranks cannot split evenly"),
    "shard_scalar": ("TypeError", "batch must be an array of shape (N, ...)"),
    "gradients_before_backward": ("RuntimeError", "model's parameter 0 (shape (2, 2, 3, 3)) has no gradient"),
    "save_without_a_layer": ("TypeError", "save() needs a model with save(path)"),
    "allreduce_float16": ("TypeError", "array must be float32 or float64, got dtype float16"),
    "allreduce_list": ("TypeError", "array must be a NumPy array for MPICommunicator"),
    "allreduce_strided": ("ValueError", "array must be C-contiguous"),
    "allreduce_read_only": ("ValueError", "array must be writable"),
    "broadcast_root_out_of_range": ("ValueError", "root must be a rank in [0, 2), got root=2"),
    "broadcast_root_not_int": ("TypeError", "root must be an int, got 0.0"),
}


def test_bad_arguments_raise_naming_them(tmp_path):
    require_mpi()
    run_worker("errors", "numpy", tmp_path)
    for rank in range(RANKS):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(seen) == set(EXPECTED_ERRORS)
        for name, (kind, words) in EXPECTED_ERRORS.items():
            assert seen[name] is not None, f"{name} did not raise on rank {rank}"
            assert seen[name][0] == kind and words in seen[name][1], (rank, name, seen[name])


def test_a_rank_that_raises_ends_every_rank(tmp_path):
    """Rank 1 raises after step 2 while rank 0 waits for it in the next reduce: the job ends at
    once (MPI_Abort), failing, with rank 1's traceback."""
    require_mpi()
    started = time.monotonic()
    code, output = run_ranks([sys.executable, Path(worker.__file__), "fail", "--out", tmp_path],
                             TIMEOUT_S["numpy"])
    assert code != 0, output
    assert "[rank 1] RuntimeError: deliberate failure on rank 1 after step 2" in output, output
    assert "MPI_Abort" in output, output
    assert time.monotonic() - started < TIMEOUT_S["numpy"] / 2, output


def test_a_job_that_hangs_is_killed_and_reported():
    require_mpi()
    hang = "print('rank started', flush=True); import time; time.sleep(600)"
    with pytest.raises(pytest.fail.Exception, match=r"(?s)still ran after 3 s and was killed.*rank started"):
        run_ranks([sys.executable, "-c", hang], timeout=3)


DEMO_SETTINGS = dict(steps=6, batch=4, size=8, seed=5)


def test_demo_distributed_matches_the_single_process_demo(tmp_path):
    require_mpi()
    options = [f"--{name}={value}" for name, value in DEMO_SETTINGS.items()]
    code, output = run_ranks([BIN / "cudeconv", "demo", "--distributed", "--backend", "numpy", *options,
                              "--json", "demo.json", "--out", "demo.png"], TIMEOUT_S["numpy"], cwd=tmp_path)
    assert code == 0, output
    assert output.count("cudeconv demo:") == 1 and "data-parallel on 2 processes" in output, output  # rank 0 reports
    assert output.count("wrote demo.json") == 1 and (tmp_path / "demo.png").exists(), output
    got = json.loads((tmp_path / "demo.json").read_text())
    want = demo.train(backend="numpy", progress=False, **DEMO_SETTINGS)
    assert got["ranks"] == 2 and want.ranks == 1
    np.testing.assert_allclose(got["losses"], want.losses, rtol=1e-5)  # the whole batch's loss
    np.testing.assert_allclose(got["held_out_loss"], want.held_out_loss, rtol=1e-5)


def test_demo_distributed_refuses_a_batch_the_processes_cannot_share(tmp_path):
    require_mpi()
    code, output = run_ranks([BIN / "cudeconv", "demo", "--distributed", "--backend", "numpy",
                              "--batch", "3", "--steps", "1"], TIMEOUT_S["numpy"], cwd=tmp_path)
    assert code != 0, output
    assert "--batch 3 must be a multiple of the 2 processes" in output, output


def test_demo_distributed_without_mpi_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "mpi_unavailable_reason", lambda: "mpi4py is not installed; pip install x")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--distributed", "--backend", "numpy", "--steps", "1"])
    assert exit_info.value.code == 2
    assert "--distributed needs MPI: mpi4py is not installed" in capsys.readouterr().err


def test_a_missing_mpiexec_skips_with_its_reason(monkeypatch):
    """Where mpi4py is installed without MPICH's mpiexec (as on a GPU machine's image), every MPI
    test skips saying so; CI (CUDECONV_REQUIRE_KERNEL_CHECKS=1) fails instead."""
    monkeypatch.setattr(distributed, "mpi_unavailable_reason", lambda: None)
    monkeypatch.setattr(sys.modules[__name__], "MPIEXEC", BIN / "no-such-mpiexec")
    monkeypatch.delenv("CUDECONV_REQUIRE_KERNEL_CHECKS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mpi4py is installed but .*no-such-mpiexec is not"):
        require_mpi()
    monkeypatch.setenv("CUDECONV_REQUIRE_KERNEL_CHECKS", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-mpiexec is not"):
        require_mpi()
