"""Check and time every case, and gather the JSON-able results (their layout: the package docstring)."""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import backends
from .._precision import check_precision
from ..cases import QUICK, QUICK_EMULATOR, Case
from ..timing import CpuClock, CudaEventClock, Samples, TimingPolicy, interfered, paired_ratios
from .baselines import contenders, select_baselines
from .device import cpu_threads, describe_device, gpu_info, pass_arithmetic, peak_tflops, versions
from .measure import SOLO_SAMPLES, Checked, PassTimes, check, input_rotation, rotated_passes, time_passes
from .problem import CONVOLUTIONS, PASSES, Problem
from .threads import pool_report, quiet_idle_pools, same_threads

# Samples per pass at least (``--repeat``), per benchmarked backend: few on the emulator, whose
# times say nothing about a GPU's and whose calls are slow; and seconds of samples per pass at
# least (``--min-time``).
DEFAULT_MIN_SAMPLES = {"numpy": 7, "emulator": 3, "cuda": 20}
DEFAULT_MIN_SECONDS = 0.2
# Share of the GPU's memory the rotated copies of all contenders may take together.
ROTATION_MEMORY_SHARE = 0.25


def _timing_record(samples: Dict[str, Samples], solo: Dict[str, Samples]) -> dict:
    record = {}
    for pass_name, pass_samples in samples.items():
        spread, alone = pass_samples.spread(), solo.get(pass_name)
        record[pass_name] = {
            "median_ms": spread.median * 1e3, "q1_ms": spread.q1 * 1e3, "q3_ms": spread.q3 * 1e3,
            "min_ms": spread.minimum * 1e3, "max_ms": spread.maximum * 1e3,
            "samples": spread.count, "calls_per_sample": pass_samples.calls_per_sample,
            # None: timed alone only (no other contender), the rounds' samples are the solo time
            "solo_ms": None if alone is None else alone.spread().median * 1e3,
            "interfered": alone is not None and interfered(pass_samples, alone),
        }
    return record


def backward_arithmetic(arithmetics: Dict[str, str]) -> Optional[str]:
    """The arithmetic of ``backward`` from its grad_input's and grad_weight's (equal flops each):
    one name, or both joined by "+"."""
    parts = [arithmetics[p] for p in ("grad_input", "grad_weight") if p in arithmetics]
    return "+".join(dict.fromkeys(parts)) if parts else None


def pass_arithmetics(paths: Optional[dict], dtype, precision: str) -> Dict[str, str]:
    """{pass: arithmetic} of the benchmarked backend's kernels (empty for the NumPy backend)."""
    if not paths:
        return {}
    arithmetics = {p: pass_arithmetic(path["kind"], dtype, precision) for p, path in paths.items()}
    if backward_arithmetic(arithmetics):
        arithmetics["backward"] = backward_arithmetic(arithmetics)
    return arithmetics


def peak_fractions(tflops: Dict[str, float], arithmetics: Dict[str, str], peaks: Dict[str, float]):
    """({pass: TFLOP/s / peak of the arithmetic it ran}, {pass: that peak}); a pass whose
    arithmetic has no known peak is left out of the first and None in the second."""
    used = {p: peak_tflops(peaks, arithmetics[p]) for p in tflops if p in arithmetics}
    return {p: tflops[p] / peak for p, peak in used.items() if peak}, used


def _case_record(problem: Problem, mine: Checked, times: PassTimes, baselines: Dict[str, dict],
                 paths: Optional[dict], precision: str, peaks, inputs: dict) -> dict:
    name = mine.contender.name
    samples = times.interleaved.get(name, {})
    timing = _timing_record(samples, times.solo.get(name, {}))
    ms = {p: t["median_ms"] for p, t in timing.items()}
    mine_interfered = {p for p, t in timing.items() if t["interfered"]}
    speedup, speedup_spread = {}, {}
    for theirs, record in baselines.items():
        for p, their_samples in times.interleaved.get(theirs, {}).items() if "timing" in record else ():
            ratio = paired_ratios(their_samples, samples[p])
            if ratio is None:
                continue
            flagged = p in mine_interfered or record["timing"][p]["interfered"]
            speedup.setdefault(theirs, {})[p] = ratio.median
            speedup_spread.setdefault(theirs, {})[p] = {"q1": ratio.q1, "q3": ratio.q3, "interfered": flagged,
                                                         "ranked": ratio.ranked and not flagged}
    case = problem.case
    arithmetics = pass_arithmetics(paths, problem.dtype, precision)
    record = {
        "name": case.name, "source": case.source, "config": case.config(),
        "shrunk_from": None if case.shrunk_from is None else case.shrunk_from.config(),
        "status": "ok" if mine.ok else "wrong" if mine.wrong else "failed",
        "ms": ms,
        "timing": timing,
        "noisy": [p for p, s in samples.items() if s.spread().noisy],
        "interfered": sorted(mine_interfered, key=PASSES.index),
        "tflops": {p: CONVOLUTIONS[p] * problem.geom.flops() / (t * 1e-3) / 1e12
                   for p, t in ms.items() if p in CONVOLUTIONS},
        "gbps": {p: problem.min_bytes(p) / (t * 1e-3) / 1e9 for p, t in ms.items()},
        "max_rel_error": max(mine.errors.values(), default=None),  # None: nothing was checked
        "rel_errors": mine.errors,
        "tolerances": {p: bound.limit for p, bound in mine.bounds.items()},
        "bounds": mine.bound_records(),
        "settings": mine.settings,
        "inputs": inputs,
        "baselines": baselines,
        "speedup": speedup,
        "speedup_spread": speedup_spread,
        "paths": paths,
        "arithmetic": arithmetics,
    }
    if mine.failure:
        record["error"] = mine.failure
    if mine.wrong:
        record["wrong_passes"] = mine.wrong
    if peaks is not None:
        compute, used = peak_fractions(record["tflops"], arithmetics, peaks.peaks_tflops)
        record["peak_tflops"] = used
        record["peak_fraction"] = {"compute": compute,
                                   "bandwidth": {p: g / peaks.bandwidth_gbps for p, g in record["gbps"].items()}}
    return record


def kernel_paths(impl, problem: Problem, precision: str):
    """{pass: {"kind", "kernel", "parts", "grid", "workspace_bytes", "packed"}}: which kernel the
    benchmarked backend ran for each pass of this case, split (or slabbed) into how many parts, on
    which grid, with which operands packed (None for the NumPy backend, which has no kernels)."""
    if not hasattr(impl, "kernel_paths"):
        return None
    paths = impl.kernel_paths(problem.geom, problem.dtype, precision=precision, need_bias=problem.bias is not None)
    return {p: {"kind": path.kind, "kernel": path.entry, "parts": path.parts, "grid": list(path.grid),
                "workspace_bytes": path.workspace_bytes, "packed": list(path.packed)}
            for p, path in paths.items()}


def quick_limits(backend_name: str):
    """How --quick shrinks the cases for ``backend_name``: emulator-sized for the emulator."""
    return QUICK_EMULATOR if backend_name == "emulator" else QUICK


def first_line(backend_name: str, quick: bool = False) -> str:
    """What runs where, whether the cases are shrunk, and why not on the GPU when it does not."""
    command = "cudeconv bench --quick (shrunk cases, not the real layers' sizes)" if quick else "cudeconv bench"
    line = f"{command}: backend {backend_name!r} on {describe_device(backend_name)}"
    reason = backends.cuda_unavailable_reason()
    if backend_name != "cuda":
        line += f" — not on a GPU: {reason}" if reason else " — a GPU is present but not benchmarked"
    return line


def default_policy(backend_name: str, min_samples=None, min_seconds=None) -> TimingPolicy:
    """The timing policy for the benchmarked backend; None takes the default."""
    return TimingPolicy(
        min_samples=DEFAULT_MIN_SAMPLES[backend_name] if min_samples is None else min_samples,
        min_seconds=DEFAULT_MIN_SECONDS if min_seconds is None else min_seconds,
    )


def check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def machine_load() -> Optional[dict]:
    """The 1-minute load average and the machine's CPUs (None where the system has no load average):
    other processes' work, which multi-threaded libraries suffer from most."""
    if not hasattr(os, "getloadavg"):
        return None
    return {"load_average": os.getloadavg()[0], "cpus": os.cpu_count()}


CPU_INPUTS = {"state": "warm", "copies": 1, "why": "on the CPU the inputs are not rotated: caches stay warm"}


def _check_all(mine, others, problem: Problem, step):
    """Our backend checked, then each runnable baseline (none when ours is wrong or failed):
    (ours, the baselines that passed, {name: skipped record} of the others)."""
    ours = check(mine, problem, step(mine.name))
    passed, skipped = [], {b.name: {"skipped": b.skipped} for b in others if b.skipped}
    for baseline in (b for b in others if b.skipped is None):
        if not ours.ok:  # a wrong (or failed) case is not timed, nor are its baselines
            verdict = "wrong" if ours.wrong else "failing"
            skipped[baseline.name] = {"skipped": f"not timed: {mine.name} is {verdict} on this case"}
            continue
        theirs = check(baseline, problem, step(baseline.name))
        if theirs.ok:
            passed.append(theirs)
        else:
            skipped[baseline.name] = {"skipped": theirs.why_not_timed(), "settings": theirs.settings,
                                      "bounds": theirs.bound_records()}
    return ours, passed, skipped


def _timed_passes(contenders: List[Checked], problem: Problem, inputs: dict):
    """{name: passes to time}: the GPU contenders' rotated through ``inputs["copies"]`` builds.
    Where building the copies fails (out of memory), none rotates and ``inputs`` says so."""
    try:
        return {c.contender.name: rotated_passes(c, problem, inputs["copies"] if c.contender.on_gpu else 1)
                for c in contenders}
    except Exception as exc:
        inputs.update(state="L2-warm", copies=1, why=f"not rotated: building the copies failed "
                                                       f"({type(exc).__name__}: {exc})")
        return {c.contender.name: c.passes for c in contenders}


def _baseline_record(theirs: Checked, times: PassTimes, ours_name: str) -> dict:
    name = theirs.contender.name
    if name in times.failures or ours_name in times.failures:
        return {"skipped": times.failures.get(name, f"not timed: {ours_name} failed"), "settings": theirs.settings}
    timing = _timing_record(times.interleaved[name], times.solo[name])
    return {"ms": {p: t["median_ms"] for p, t in timing.items()}, "timing": timing,
            "interfered": [p for p, t in timing.items() if t["interfered"]], "settings": theirs.settings,
            "bounds": theirs.bound_records()}


def run(cases: List[Case], backend_name: str = "numpy", dtype="float32", repeat=None, quick=False,
        progress=True, min_seconds=None, precision="fp32", baselines: Optional[str] = None,
        threads: Optional[int] = None, on_case: Optional[Callable[[dict], None]] = None, autotune=False) -> dict:
    """Check and time every case; the JSON-able results (see the package docstring). ``repeat``
    and ``min_seconds``: the least samples and seconds of samples per pass (None: the defaults);
    ``precision``: the float32 arithmetic of the benchmarked backend (``cudeconv._precision``,
    ``--precision``); ``baselines``: which baselines (``--baselines``: None for the defaults,
    "all", "none" or names, comma separated); ``threads``: the thread count of every library on
    the CPU (None: the CPUs this process may run on); ``on_case(results)`` after every case, with the
    results so far (``"complete"`` is false until the last); ``autotune``: time the backend's autotuned
    kernels beside it, as the baseline ``<backend>_autotuned`` (a kernel backend only). Quiets idle thread pools first
    (:func:`.threads.quiet_idle_pools`: sets an environment variable of this process)."""
    from tqdm import tqdm

    precision = check_precision(precision)
    threads = cpu_threads() if threads is None else check_threads(threads)
    baseline_names = select_baselines(baselines, backend_name, dtype, precision)
    quiet_idle_pools()  # before PyTorch (imported by contenders) and the emulator load OpenMP
    mine, others = contenders(backend_name, dtype, precision, baseline_names, autotune)
    mine_impl = backends.get(backend_name)
    policy = default_policy(backend_name, repeat, min_seconds)
    peaks = gpu_info() if mine.on_gpu else None
    runnable = [b for b in others if b.skipped is None]
    limits = quick_limits(backend_name) if quick else None
    results = {
        "device": describe_device(backend_name), "backend": backend_name, "dtype": np.dtype(dtype).name,
        "precision": precision, "versions": versions(), "quick": quick,
        "quick_limits": None if limits is None else limits.describe(),
        "timing": {"min_samples": policy.min_samples, "min_seconds": policy.min_seconds,
                   "min_sample_seconds": policy.min_sample_seconds, "interleaved": True,
                   "solo_samples": min(SOLO_SAMPLES, policy.min_samples)},
        "timer": (CudaEventClock if mine.on_gpu else CpuClock).description,
        "threads": threads, "thread_pools": None, "load": machine_load(),
        "peaks": None if peaks is None else {"tflops": peaks.peaks_tflops, "fp32_tflops": peaks.fp32_tflops,
                                             "bandwidth_gbps": peaks.bandwidth_gbps, "l2_bytes": peaks.l2_bytes,
                                             "gpu": peaks.name},
        "baselines": baseline_names, "compared": [b.name for b in runnable],
        "cases_planned": [case.name for case in cases], "complete": False,
        "cases": [],
    }
    gpu_contenders = 1 + sum(b.on_gpu for b in runnable)
    bar = tqdm(total=len(cases), desc="bench", file=sys.stderr, disable=True if not progress else None, leave=False)
    try:
        for index, case in enumerate(cases):
            problem = Problem.make(case.quick(limits) if quick else case, dtype)
            step = lambda who: lambda what: bar.set_postfix_str(f"{case.name}: {who} {what}")  # noqa: E731
            ours, checked, baseline_records = _check_all(mine, others, problem, step)
            inputs = dict(CPU_INPUTS)
            if peaks is not None:
                budget = peaks.memory_gib * 2**30 * ROTATION_MEMORY_SHARE / gpu_contenders
                smallest = min(problem.input_bytes(p) for p in problem.reference)
                inputs = input_rotation(smallest, problem.copy_bytes(), peaks.l2_bytes, budget)
            times = PassTimes({}, {}, {})
            if ours.ok:
                passes = _timed_passes([ours] + checked, problem, inputs)
                with same_threads(threads):
                    results["thread_pools"] = results["thread_pools"] or pool_report()
                    for timed in [ours] + checked:  # the settings in force while timed
                        with timed.contender.context():
                            timed.settings = timed.contender.settings()
                    times = time_passes([ours] + checked, policy, step("all"), passes)
            if mine.name in times.failures:  # time_passes left its samples empty
                ours.failure = f"failed while timed: {times.failures[mine.name]}"
            baseline_records.update((c.contender.name, _baseline_record(c, times, mine.name)) for c in checked)
            ordered = {b.name: baseline_records[b.name] for b in others}
            paths = kernel_paths(mine_impl, problem, precision)
            results["cases"].append(_case_record(problem, ours, times, ordered, paths, precision, peaks, inputs))
            bar.update()
            results["complete"] = index == len(cases) - 1
            if on_case is not None:
                on_case(results)
    finally:
        bar.close()
    results["complete"] = True
    return results
