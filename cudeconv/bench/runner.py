"""Check every contender on every case, time the passes in interleaved rounds, and gather the
JSON-able results (their layout: the package docstring)."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import backends
from .._precision import check_precision
from ..cases import QUICK, QUICK_EMULATOR, Case
from ..timing import CpuClock, CudaEventClock, Samples, Spread, TimingPolicy, interleaved_samples, paired_ratios
from .baselines import Contender, contenders
from .device import cpu_threads, describe_device, gpu_info, versions
from .problem import CONVOLUTIONS, PASSES, Problem, relative_error, tolerance

# Samples per pass at least (``--repeat``), per benchmarked backend: few on the emulator, whose
# times say nothing about a GPU's and whose calls are slow; and seconds of samples per pass at
# least (``--min-time``).
DEFAULT_MIN_SAMPLES = {"numpy": 7, "emulator": 3, "cuda": 20}
DEFAULT_MIN_SECONDS = 0.2

@dataclass
class Checked:
    """One contender on one problem after the correctness check: its passes (callables), the
    error of each, those over tolerance, or why it could not run."""

    contender: Contender
    passes: Dict[str, Callable] = field(default_factory=dict)
    errors: Dict[str, float] = field(default_factory=dict)
    wrong: Dict[str, float] = field(default_factory=dict)  # pass -> error over its tolerance
    failure: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.wrong

    def why_not_timed(self) -> str:
        return self.failure or "wrong result: max relative error " + ", ".join(
            f"{p} {e:.2g}" for p, e in self.wrong.items())


def check(contender: Contender, problem: Problem, on_step=lambda what: None) -> Checked:
    """Build the contender's passes and compare each one's first result with the reference."""
    checked = Checked(contender)
    try:
        with contender.context():
            passes = contender.build(problem)
            for name, fn in passes.items():
                on_step(f"check {name}")
                error = relative_error(fn(), problem.reference[name])
                checked.errors[name] = error
                if not error <= tolerance(problem.dtype, problem.terms(name), contender.unit):
                    checked.wrong[name] = error
        checked.passes = passes
    except Exception as exc:  # e.g. a dtype PyTorch has no CPU kernel for: report it, go on
        checked.failure = f"{type(exc).__name__}: {exc}"
    return checked


def time_passes(contenders: List[Checked], policy: TimingPolicy, on_step=lambda what: None):
    """Time each pass the first contender (the benchmarked backend) has, for it and every other
    contender that has the pass too, interleaved. Returns ``({name: {pass: Samples}}, {name:
    failure})``; a contender that fails stops being timed."""
    ours = contenders[0].contender.name
    samples = {c.contender.name: {} for c in contenders}
    failures = {}
    for pass_name in PASSES:
        if pass_name not in contenders[0].passes or ours in failures:
            continue
        on_step(f"time {pass_name}")
        timed = {c.contender.name: c.contender.timed(c.passes[pass_name]) for c in contenders
                 if pass_name in c.passes and c.contender.name not in failures}
        got, failed = interleaved_samples(timed, policy)
        failures.update(failed)
        for name, pass_samples in got.items():
            samples[name][pass_name] = pass_samples
    for name in failures:
        samples[name] = {}
    return samples, failures


def _timing_record(samples: Dict[str, Samples]) -> dict:
    record = {}
    for pass_name, pass_samples in samples.items():
        spread = pass_samples.spread()
        record[pass_name] = {
            "median_ms": spread.median * 1e3, "q1_ms": spread.q1 * 1e3, "q3_ms": spread.q3 * 1e3,
            "min_ms": spread.minimum * 1e3, "max_ms": spread.maximum * 1e3,
            "samples": spread.count, "calls_per_sample": pass_samples.calls_per_sample,
        }
    return record


def _case_record(problem: Problem, mine: Checked, samples: Dict[str, Samples],
                 baselines: Dict[str, object], speedups: Dict[str, Dict[str, Spread]], peaks) -> dict:
    timing = _timing_record(samples)
    ms = {p: t["median_ms"] for p, t in timing.items()}
    case = problem.case
    status = "ok" if mine.ok else "wrong" if mine.wrong else "failed"
    record = {
        "name": case.name, "source": case.source, "config": case.config(),
        "shrunk_from": None if case.shrunk_from is None else case.shrunk_from.config(),
        "status": status,
        "ms": ms,
        "timing": timing,
        "noisy": [p for p, s in samples.items() if s.spread().noisy],
        "tflops": {p: CONVOLUTIONS[p] * problem.geom.flops() / (t * 1e-3) / 1e12
                   for p, t in ms.items() if p in CONVOLUTIONS},
        "gbps": {p: problem.min_bytes(p) / (t * 1e-3) / 1e9 for p, t in ms.items()},
        "max_rel_error": max(mine.errors.values(), default=None),  # None: nothing was checked
        "rel_errors": mine.errors,
        "tolerances": {p: tolerance(problem.dtype, problem.terms(p)) for p in mine.errors},
        "baselines": baselines,
        "speedup": {name: {p: s.median for p, s in by_pass.items()} for name, by_pass in speedups.items()},
        "speedup_spread": {name: {p: {"q1": s.q1, "q3": s.q3, "ranked": s.ranked} for p, s in by_pass.items()}
                           for name, by_pass in speedups.items()},
    }
    if mine.failure:
        record["error"] = mine.failure
    if mine.wrong:
        record["wrong_passes"] = mine.wrong
    if peaks is not None:
        record["peak_fraction"] = {
            "fp32": {p: t / peaks.fp32_tflops for p, t in record["tflops"].items()},
            "bandwidth": {p: g / peaks.bandwidth_gbps for p, g in record["gbps"].items()},
        }
    return record


def kernel_paths(impl, problem: Problem, precision: str):
    """{pass: {"kind", "kernel", "workspace_bytes"}}: which kernel the benchmarked backend ran for
    each pass of this case (None for the NumPy backend, which has no kernels)."""
    if not hasattr(impl, "kernel_paths"):
        return None
    paths = impl.kernel_paths(problem.geom, problem.dtype, precision=precision, need_bias=problem.bias is not None)
    return {p: {"kind": path.kind, "kernel": path.entry, "workspace_bytes": path.workspace_bytes}
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


def run(cases: List[Case], backend_name: str = "numpy", dtype="float32", repeat=None, quick=False,
        progress=True, min_seconds=None, precision="fp32") -> dict:
    """Check and time every case; the JSON-able results (see the module docstring). ``repeat`` and
    ``min_seconds``: the least samples and seconds of samples per pass (None: the defaults);
    ``precision``: the float32 arithmetic of the benchmarked backend (``cudeconv._precision``,
    ``--precision``)."""
    from tqdm import tqdm

    mine, baselines = contenders(backend_name, dtype, check_precision(precision))
    mine_impl = backends.get(backend_name)
    policy = default_policy(backend_name, repeat, min_seconds)
    peaks = gpu_info() if mine.on_gpu else None
    runnable = [b for b in baselines if b.skipped is None]
    limits = quick_limits(backend_name) if quick else None
    results = {
        "device": describe_device(backend_name), "backend": backend_name, "dtype": np.dtype(dtype).name,
        "precision": precision, "versions": versions(), "quick": quick,
        "quick_limits": None if limits is None else limits.describe(),
        "timing": {"min_samples": policy.min_samples, "min_seconds": policy.min_seconds,
                   "min_sample_seconds": policy.min_sample_seconds, "interleaved": True},
        "timer": (CudaEventClock if mine.on_gpu else CpuClock).description,
        "threads": cpu_threads(),
        "peaks": None if peaks is None else {"fp32_tflops": peaks.fp32_tflops,
                                             "bandwidth_gbps": peaks.bandwidth_gbps, "gpu": peaks.name},
        "cases": [],
    }
    threads = _same_threads_for_torch(runnable)
    bar = tqdm(total=len(cases), desc="bench", file=sys.stderr, disable=not progress, leave=False)
    try:
        for case in cases:
            problem = Problem.make(case.quick(limits) if quick else case, dtype)
            step = lambda who: lambda what: bar.set_postfix_str(f"{case.name}: {who} {what}")  # noqa: E731
            ours = check(mine, problem, step(mine.name))
            checked, timings = [], {b.name: {"skipped": b.skipped} for b in baselines if b.skipped}
            for baseline in runnable:
                if not ours.ok:  # a wrong (or failed) case is not timed, nor are its baselines
                    verdict = "wrong" if ours.wrong else "failing"
                    timings[baseline.name] = {"skipped": f"not timed: {backend_name} is {verdict} on this case"}
                    continue
                theirs = check(baseline, problem, step(baseline.name))
                if theirs.ok:
                    checked.append(theirs)
                else:
                    timings[baseline.name] = {"skipped": theirs.why_not_timed()}
            samples, failures = time_passes([ours] + checked, policy, step("all")) if ours.ok else ({}, {})
            if mine.name in failures:  # time_passes left its samples empty
                ours.failure = f"failed while timed: {failures[mine.name]}"
            speedups = {}
            for theirs in checked:
                name = theirs.contender.name
                if name in failures or mine.name in failures:
                    timings[name] = {"skipped": failures.get(name, f"not timed: {mine.name} failed")}
                    continue
                timing = _timing_record(samples[name])
                timings[name] = {"ms": {p: t["median_ms"] for p, t in timing.items()}, "timing": timing}
                speedups[name] = {p: ratio for p, s in samples[name].items()
                                  if (ratio := paired_ratios(s, samples[mine.name][p])) is not None}
            ordered = {b.name: timings[b.name] for b in baselines}
            record = _case_record(problem, ours, samples.get(mine.name, {}), ordered, speedups, peaks)
            record["paths"] = kernel_paths(mine_impl, problem, precision)
            results["cases"].append(record)
            bar.update()
    finally:
        bar.close()
        threads.close()
    return results


def _same_threads_for_torch(runnable):
    """PyTorch on the CPU gets as many threads as NumPy's BLAS (all cores given to this process);
    the previous setting comes back when the returned object is closed."""
    restore = contextlib.ExitStack()
    if any(c.name == "torch" for c in runnable):
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(cpu_threads())
        restore.callback(torch.set_num_threads, saved)
    return restore
