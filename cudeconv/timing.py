"""Timing that holds up on a loaded machine: adaptive sample counts, interleaved contenders, spread.

One pass (say, the forward of one case) is timed for several implementations at once — cudeconv and
its baselines — by :func:`interleaved_samples`:

1. each implementation is warmed up (``Timed.warmup`` calls), then calibrated like ``timeit.autorange``: the number of calls
   per sample grows 1, 2, 5, 10, 20, ... until one sample lasts at least ``min_sample_seconds``
   (short calls are timed in batches, so the clock's resolution and call overhead do not dominate);
2. then rounds: in each round every implementation takes one sample, in an order that rotates from
   round to round, so a burst of load from other processes hits all of them alike. With more than
   one implementation, each sample follows one untimed call of the same pass: the first call after
   a switch pays for waking its library's thread pool while the previous library's threads still
   spin (measured: 5-10× a steady call for a 1 ms PyTorch or NumPy convolution on two cores), a
   cost of interleaving itself, not of either implementation;
3. rounds go on until there are at least ``min_samples`` of them *and* the samples add up to at least
   ``min_seconds`` (all implementations together), or ``max_samples`` rounds were run.

Samples of the same round are taken moments apart, so their ratio cancels most of the machine's
drift: speed-ups are the median of those per-round ratios (:func:`paired_ratios`), not a ratio of
medians from different moments. :class:`Spread` summarises samples by median, interquartile range
(IQR) and extremes.

Interleaving has a cost of its own where libraries get in each other's way (one's idle threads
spinning while another works): :func:`solo_samples` times an implementation alone, right after the
rounds, and :func:`interfered` says when its time in the rounds is more than
``INTERFERENCE_FACTOR`` times that: a time that says more about the neighbours than about itself.

The clocks are objects with one method, ``seconds(fn, calls)``: :class:`CpuClock` (wall time, any
``now`` function — the tests pass a fake one) and :class:`CudaEventClock` (CUDA events on CuPy's
current stream).
"""
from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# A comparison is "ranked" only when the middle half of its per-round ratios lies on one side of 1;
# a time is "noisy" when its IQR is more than this fraction of its median.
NOISY_RELATIVE_IQR = 0.25
# An interleaved median more than this many times the same implementation's median alone is flagged.
INTERFERENCE_FACTOR = 2.0


@dataclass(frozen=True)
class TimingPolicy:
    """How long to measure one pass (see the module docstring)."""

    min_samples: int
    min_seconds: float
    min_sample_seconds: float = 1e-3
    max_calls_per_sample: int = 10_000
    max_samples: int = 10_000  # a bound even for a clock that reads zero

    def __post_init__(self):
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {self.min_samples}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be non-negative, got {self.min_seconds}")


class CpuClock:
    """Wall time of ``calls`` calls, read from ``now`` (default ``time.perf_counter``)."""

    description = "time.perf_counter"

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self.now = now

    def seconds(self, fn, calls: int) -> float:
        start = self.now()
        for _ in range(calls):
            fn()
        return self.now() - start


class CudaEventClock:
    """GPU time of ``calls`` calls: CUDA events recorded on CuPy's current stream before and after
    (the legacy default stream unless the caller set another, which is also where PyTorch launches)."""

    description = "CUDA events on the current stream"

    def seconds(self, fn, calls: int) -> float:
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3


@dataclass(frozen=True)
class Timed:
    """One implementation of a pass, ready to time."""

    fn: Callable[[], object]
    clock: object  # CpuClock or CudaEventClock (anything with ``seconds(fn, calls)``)
    warmup: int = 0  # calls before calibration (calibration's own calls are discarded as well)
    context: Callable = contextlib.nullcontext  # entered around each of its samples


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and extremes of a set of values."""

    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if len(values) == 0:
            raise ValueError("Spread.of needs at least one value")
        q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(min(values)), float(max(values)),
                   len(values))

    @property
    def relative_iqr(self) -> float:
        """(q3 - q1) / median: the spread as a fraction of the typical value."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        return not self.relative_iqr <= NOISY_RELATIVE_IQR

    @property
    def ranked(self) -> bool:
        """For ratios: the middle half lies wholly above or wholly below 1."""
        return self.q1 > 1 or self.q3 < 1


@dataclass
class Samples:
    """One implementation's samples of one pass: seconds per call, one value per round."""

    seconds_per_call: List[float]
    calls_per_sample: int

    def spread(self) -> Spread:
        return Spread.of(self.seconds_per_call)


def _one_two_five():
    """1, 2, 5, 10, 20, 50, 100, ..."""
    for decade in itertools.count():
        for step in (1, 2, 5):
            yield step * 10**decade


def _calls_per_sample(timed: Timed, policy: TimingPolicy) -> int:
    """The first of 1, 2, 5, 10, 20, 50, ... calls whose time reaches ``policy.min_sample_seconds``
    (at most ``policy.max_calls_per_sample``)."""
    for calls in _one_two_five():
        if calls >= policy.max_calls_per_sample:
            return policy.max_calls_per_sample
        if timed.clock.seconds(timed.fn, calls) >= policy.min_sample_seconds:
            return calls


def interleaved_samples(
    contenders: Dict[str, Timed], policy: TimingPolicy
) -> Tuple[Dict[str, Samples], Dict[str, str]]:
    """Time every contender's pass in interleaved rounds (see the module docstring).

    Returns ``(samples, failures)``: samples per contender that ran to the end, and for one that
    raised, ``"ExceptionType: message"`` (it leaves the rounds, the others go on)."""
    failures: Dict[str, str] = {}
    calls: Dict[str, int] = {}
    for name, timed in contenders.items():
        try:
            with timed.context():
                for _ in range(timed.warmup):
                    timed.fn()
                calls[name] = _calls_per_sample(timed, policy)
        except Exception as exc:  # e.g. out of memory in a baseline: report it, time the others
            failures[name] = f"{type(exc).__name__}: {exc}"
    samples = {name: Samples([], calls[name]) for name in calls}
    names = list(samples)
    settle = len(names) > 1
    total = 0.0
    for round_index in range(policy.max_samples):
        if not names or (round_index >= policy.min_samples and total >= policy.min_seconds):
            break
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            timed = contenders[name]
            try:
                with timed.context():
                    if settle:
                        timed.fn()
                    seconds = timed.clock.seconds(timed.fn, calls[name])
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            samples[name].seconds_per_call.append(seconds / calls[name])
            total += seconds
        for name in [n for n in names if n in failures]:
            names.remove(name)
            del samples[name]
    return samples, failures


def paired_ratios(theirs: Samples, ours: Samples) -> Optional[Spread]:
    """Spread of theirs/ours over the rounds both were sampled in (None without common rounds).
    Above 1: ours is faster."""
    pairs = [t / o for t, o in zip(theirs.seconds_per_call, ours.seconds_per_call) if o > 0]
    return Spread.of(pairs) if pairs else None


def solo_samples(timed: Timed, calls_per_sample: int, count: int) -> Samples:
    """``count`` samples of ``calls_per_sample`` calls of one implementation with nothing else
    in between, after one untimed call (which wakes its library after another's)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    with timed.context():
        timed.fn()
        seconds = [timed.clock.seconds(timed.fn, calls_per_sample) / calls_per_sample for _ in range(count)]
    return Samples(seconds, calls_per_sample)


def interfered(interleaved: Samples, solo: Samples) -> bool:
    """The interleaved median is more than ``INTERFERENCE_FACTOR`` × the solo median."""
    return interleaved.spread().median > INTERFERENCE_FACTOR * solo.spread().median
