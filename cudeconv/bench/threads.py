"""Thread pools on the CPU while the bench times: the same thread count for every library, and no
idle OpenMP pool spinning while another library works.

PyTorch's OpenMP runtime and the emulator's (g++'s libgomp) keep a pool of threads whose idle
threads spin before they sleep, on the cores the next library wants. Measured on a busy 2-core
machine, NumPy and PyTorch calls taking 0.2–1 ms alone took 8–45 ms when alternated, NumPy's
sitting on multiples of the scheduler's tick; with ``OMP_WAIT_POLICY=PASSIVE`` (GNU, LLVM and Intel
OpenMP: an idle thread sleeps at once) they took what they take alone. So:

- :func:`quiet_idle_pools` sets ``OMP_WAIT_POLICY=PASSIVE`` where the environment does not set it.
  An OpenMP runtime reads it once, when it loads: the bench calls this before PyTorch and the
  emulator load theirs, and :func:`pool_report` says of a runtime loaded earlier that it spins.
- NumPy's OpenBLAS is left as it is: its idle threads spin about 0.1 s but yield the CPU while they
  do, and a shorter spin (``OPENBLAS_THREAD_TIMEOUT``) made each call wait for its sleeping threads
  to be scheduled again: NumPy's backward went from 0.3 to 50 ms on the same machine.
- :func:`same_threads` runs a block with every BLAS and OpenMP pool (``threadpoolctl``) and
  PyTorch's intra-op pool at one thread count.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import List

QUIET_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}

# OpenMP runtimes already loaded when quiet_idle_pools set OMP_WAIT_POLICY: they keep spinning.
_openmp_loaded_before: set = set()


def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def quiet_idle_pools() -> None:
    """Make idle OpenMP pools sleep at once (see the module docstring): sets environment variables
    of this process where they are unset."""
    for name, value in QUIET_ENVIRONMENT.items():
        if name not in os.environ:
            os.environ[name] = value
            _openmp_loaded_before.update(
                lib.filepath for lib in _controller().lib_controllers if lib.user_api == "openmp")


def _idle_wait(library) -> str:
    if library.user_api == "openmp":
        policy = os.environ.get("OMP_WAIT_POLICY")
        if library.filepath in _openmp_loaded_before:
            return f"spins: loaded before OMP_WAIT_POLICY={policy} was set"
        return f"OMP_WAIT_POLICY={policy}" if policy else "spins (OMP_WAIT_POLICY unset)"
    if library.internal_api == "openblas":
        return "spins about 0.1 s, yielding the CPU (left as is)"
    return "its library's default"


def pool_report() -> List[dict]:
    """The thread pools loaded now: library, API, threads and how an idle one waits."""
    return [{"library": lib.prefix, "api": lib.internal_api, "threads": lib.num_threads, "idle": _idle_wait(lib),
             "path": lib.filepath} for lib in _controller().lib_controllers]


@contextlib.contextmanager
def same_threads(count: int):
    """Every BLAS and OpenMP pool loaded now, and PyTorch's intra-op pool where PyTorch is loaded,
    at ``count`` threads inside the block; the previous settings after it."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    with threadpool_limits(limits=count):
        saved = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(saved)
