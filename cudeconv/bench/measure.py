"""One case's measurements: each contender checked against the float64 reference, then its passes
timed — interleaved with the others', then alone — on inputs rotated through enough copies to
leave the GPU's L2 cold."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..timing import Samples, TimingPolicy, interleaved_samples, solo_samples
from .accuracy import Bound, arithmetic, bound_for, relative_error
from .baselines import Contender
from .problem import PASSES, Problem

# Samples of each contender alone, after the interleaved rounds of a pass (at most --repeat).
SOLO_SAMPLES = 3
# Most copies of a contender's arrays its calls rotate through; past it, the figures are L2-warm.
MAX_COPIES = 64


@dataclass
class Checked:
    """One contender on one problem after the correctness check: its passes (callables), the
    normwise error of each, the bound each was held to and its error in that bound's terms, those
    over their bound, its library's settings, or why it could not run."""

    contender: Contender
    passes: Dict[str, Callable] = field(default_factory=dict)
    errors: Dict[str, float] = field(default_factory=dict)
    bounds: Dict[str, Bound] = field(default_factory=dict)
    measured: Dict[str, float] = field(default_factory=dict)
    wrong: Dict[str, float] = field(default_factory=dict)  # pass -> measured error over its bound
    settings: dict = field(default_factory=dict)
    failure: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.wrong

    def why_not_timed(self) -> str:
        return self.failure or "wrong result: " + ", ".join(
            f"{p} error {e:.2g} > {self.bounds[p].limit:.2g} ({self.bounds[p].form})" for p, e in self.wrong.items())

    def bound_records(self) -> Dict[str, dict]:
        """{pass: the bound's description and the error measured against it} for the JSON."""
        return {p: {**bound.describe(), "measured": self.measured[p]} for p, bound in self.bounds.items()}


def check(contender: Contender, problem: Problem, on_step=lambda what: None) -> Checked:
    """Build the contender's passes and hold each one's first result to its bound (:mod:`.accuracy`)."""
    checked = Checked(contender)
    try:
        with contender.context():
            checked.settings = contender.settings()
            passes = contender.build(problem)
            for name, fn in passes.items():
                on_step(f"check {name}")
                result, reference = fn(), problem.reference[name]
                bound = bound_for(problem.dtype, arithmetic(problem.dtype, contender.precision), problem.terms(name))
                magnitude = problem.magnitudes()[name] if bound.needs_magnitude else None
                checked.errors[name] = relative_error(result, reference)
                checked.bounds[name] = bound
                checked.measured[name] = bound.measure(result, reference, magnitude)
                if not checked.measured[name] <= bound.limit:
                    checked.wrong[name] = checked.measured[name]
        checked.passes = passes
    except Exception as exc:  # e.g. a dtype PyTorch has no CPU kernel for: report it, go on
        checked.failure = f"{type(exc).__name__}: {exc}"
    return checked


def input_rotation(smallest_input_bytes: int, copy_bytes: int, l2_bytes: int, budget_bytes: int) -> dict:
    """How many copies of its arrays a GPU contender's calls rotate through, so that between two
    calls on one copy the others' inputs — more than twice the L2 — have gone through the cache:
    ``{"state": "cold" (one pass's inputs alone exceed it), "rotated" or "L2-warm" (the copies
    would pass MAX_COPIES or ``budget_bytes``), "copies", ...}``."""
    needed = 2 * l2_bytes // max(smallest_input_bytes, 1) + 1
    record = {"copies": 1, "l2_bytes": l2_bytes, "copy_bytes": copy_bytes}
    if l2_bytes <= 0:
        return {**record, "state": "L2-warm", "why": "not rotated: the L2's size is unknown"}
    if needed == 1:
        return {**record, "state": "cold", "why": "each pass's inputs exceed twice the L2"}
    if needed <= MAX_COPIES and needed * copy_bytes <= budget_bytes:
        return {**record, "state": "rotated", "copies": needed,
                "why": f"each GPU contender's inputs rotated through {needed} copies, over twice the L2 "
                       f"between two uses of one"}
    return {**record, "state": "L2-warm",
            "why": f"not rotated: {needed} copies of {copy_bytes / 2**20:.3g} MiB would be needed "
                   f"(at most {MAX_COPIES}, within {budget_bytes / 2**30:.3g} GiB)"}


def rotating(copies: List[Dict[str, Callable]]) -> Dict[str, Callable]:
    """Each pass of ``copies[0]`` as one callable that calls the copies' passes in turn."""

    def in_turn(fns):
        turn = itertools.cycle(fns)
        return lambda: next(turn)()

    return {name: in_turn([passes[name] for passes in copies]) for name in copies[0]}


def rotated_passes(checked: Checked, problem: Problem, copies: int) -> Dict[str, Callable]:
    """The checked contender's passes, rotating through ``copies`` builds of the problem (the
    checked one first)."""
    if copies == 1:
        return checked.passes
    with checked.contender.context():
        extra = [checked.contender.build(problem) for _ in range(copies - 1)]
    return rotating([checked.passes] + extra)


@dataclass
class PassTimes:
    """Per contender, per pass: samples of the interleaved rounds and alone; failures."""

    interleaved: Dict[str, Dict[str, Samples]]
    solo: Dict[str, Dict[str, Samples]]
    failures: Dict[str, str]


def time_passes(contenders: List[Checked], policy: TimingPolicy, on_step=lambda what: None,
                passes: Optional[Dict[str, Dict[str, Callable]]] = None) -> PassTimes:
    """Time each pass the first contender (the benchmarked backend) has, for it and every other
    contender that has the pass too, interleaved; then each alone (with more than one: alone, the
    rounds' samples already are). ``passes``: {name: {pass: callable}} to time in place of each
    one's checked passes (the rotated ones). A contender that fails stops being timed."""
    passes = passes or {c.contender.name: c.passes for c in contenders}
    ours = contenders[0].contender.name
    times = PassTimes({c.contender.name: {} for c in contenders}, {c.contender.name: {} for c in contenders}, {})
    solo_count = min(SOLO_SAMPLES, policy.min_samples)
    for pass_name in PASSES:
        if pass_name not in contenders[0].passes or ours in times.failures:
            continue
        on_step(f"time {pass_name}")
        timed = {c.contender.name: c.contender.timed(passes[c.contender.name][pass_name]) for c in contenders
                 if pass_name in c.passes and c.contender.name not in times.failures}
        got, failed = interleaved_samples(timed, policy)
        times.failures.update(failed)
        for name, pass_samples in got.items():
            times.interleaved[name][pass_name] = pass_samples
            if len(timed) == 1:
                continue
            on_step(f"time {pass_name} alone")
            try:
                times.solo[name][pass_name] = solo_samples(timed[name], pass_samples.calls_per_sample, solo_count)
            except Exception as exc:  # as in the rounds: report it, time the others
                times.failures[name] = f"{type(exc).__name__}: {exc}"
    for name in times.failures:
        times.interleaved[name], times.solo[name] = {}, {}
    return times
