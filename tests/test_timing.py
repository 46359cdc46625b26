"""The timing logic of ``cudeconv.timing``, on a fake clock: nothing here times real work.

A :class:`FakeMachine` keeps a fake time that only the "work" functions advance, by a scripted
cost per call; the clocks under test read it through ``CpuClock(now=machine.now)``.
"""
import math

import pytest

from cudeconv.timing import (INTERFERENCE_FACTOR, NOISY_RELATIVE_IQR, CpuClock, Samples, Spread, Timed,
                             TimingPolicy, interfered, interleaved_samples, paired_ratios, solo_samples)


class FakeMachine:
    """Fake time, advanced only by the work functions; ``log`` lists every call in order."""

    def __init__(self):
        self.time = 0.0
        self.log = []

    def now(self):
        return self.time

    def work(self, name, cost):
        """A function whose call takes ``cost(k)`` fake seconds at its k-th call (k from 0)."""
        calls = [0]

        def run():
            self.log.append(name)
            self.time += cost(calls[0])
            calls[0] += 1

        return run


def timed(machine, name, cost, warmup=0):
    return Timed(machine.work(name, cost), CpuClock(now=machine.now), warmup)


def policy(**overrides):
    settings = dict(min_samples=5, min_seconds=0.0, min_sample_seconds=1e-3)
    settings.update(overrides)
    return TimingPolicy(**settings)


def test_short_calls_are_batched_like_autorange():
    """0.3 ms calls: 1 and 2 calls are below the 1 ms sample minimum, 5 calls (1.5 ms) reach it."""
    machine = FakeMachine()
    samples, failures = interleaved_samples({"a": timed(machine, "a", lambda k: 3e-4)},
                                            policy(min_samples=3))
    assert failures == {}
    assert samples["a"].calls_per_sample == 5
    # calibration: 1 + 2 + 5 calls, then 3 samples of 5 calls (one contender: no settling call)
    assert len(machine.log) == 1 + 2 + 5 + 3 * 5
    assert samples["a"].seconds_per_call == pytest.approx([3e-4] * 3)


def test_a_slow_call_is_one_call_per_sample_and_calls_are_capped():
    machine = FakeMachine()
    slow, _ = interleaved_samples({"slow": timed(machine, "slow", lambda k: 0.5)}, policy(min_samples=2))
    assert slow["slow"].calls_per_sample == 1
    zero, _ = interleaved_samples({"zero": timed(machine, "zero", lambda k: 0.0)},
                                  policy(min_samples=2, max_calls_per_sample=50))
    assert zero["zero"].calls_per_sample == 50  # a clock that never advances stops at the cap


def test_warmup_calls_come_first_and_are_not_timed():
    machine = FakeMachine()
    # the first 3 calls are very slow (a cold cache); warm-up must absorb them
    samples, _ = interleaved_samples({"a": timed(machine, "a", lambda k: 1.0 if k < 3 else 2e-3, warmup=3)},
                                     policy(min_samples=4))
    assert samples["a"].seconds_per_call == pytest.approx([2e-3] * 4)


def test_rounds_interleave_and_rotate_their_order():
    machine = FakeMachine()
    contenders = {name: timed(machine, name, lambda k: 2e-3) for name in ("a", "b", "c")}
    samples, _ = interleaved_samples(contenders, policy(min_samples=3))
    rounds = machine.log[3:]  # after one calibration call each
    # each sample is one settling call plus one timed call (2 ms reaches the 1 ms minimum)
    assert rounds == ["a", "a", "b", "b", "c", "c",
                      "b", "b", "c", "c", "a", "a",
                      "c", "c", "a", "a", "b", "b"]
    assert all(len(s.seconds_per_call) == 3 for s in samples.values())


def test_the_settling_call_keeps_the_cost_of_a_switch_out_of_the_samples():
    """A call right after another contender ran costs 10× (its thread pool wakes up while the
    other's still spins); the sample after one untimed call sees the steady cost."""
    machine = FakeMachine()

    def switching_cost(name):
        def cost(_):
            previous = machine.log[-2] if len(machine.log) > 1 else name
            return 1e-2 if previous != name else 1e-3
        return cost

    contenders = {name: timed(machine, name, switching_cost(name)) for name in ("a", "b")}
    samples, _ = interleaved_samples(contenders, policy(min_samples=4))
    for name in ("a", "b"):
        assert samples[name].seconds_per_call == pytest.approx([1e-3] * 4)


def test_rounds_go_on_until_both_the_samples_and_the_time_are_reached():
    machine = FakeMachine()
    contenders = {name: timed(machine, name, lambda k: 5e-3) for name in ("a", "b")}
    # 10 ms of samples per round: 0.095 s needs 10 rounds, more than the 4 samples asked for
    samples, _ = interleaved_samples(contenders, policy(min_samples=4, min_seconds=0.095))
    assert [len(s.seconds_per_call) for s in samples.values()] == [10, 10]
    machine = FakeMachine()
    contenders = {name: timed(machine, name, lambda k: 5e-3) for name in ("a", "b")}
    samples, _ = interleaved_samples(contenders, policy(min_samples=7, min_seconds=0.01))
    assert [len(s.seconds_per_call) for s in samples.values()] == [7, 7]


def test_max_samples_bounds_the_rounds():
    machine = FakeMachine()
    samples, _ = interleaved_samples({"a": timed(machine, "a", lambda k: 0.0)},
                                     policy(min_samples=1, min_seconds=1.0, max_samples=6,
                                            max_calls_per_sample=4))
    assert len(samples["a"].seconds_per_call) == 6  # the clock never reaches 1 s


def test_load_that_hits_both_cancels_in_the_paired_ratio():
    """Bursts of load (×1 to ×8, one per round) make each time noisy, but both contenders are hit
    in the same round, so the per-round ratio stays exactly 3 and ranks."""
    load = [1, 5, 1, 3, 1, 8, 1, 1, 6, 2, 1, 4]
    machine = FakeMachine()
    contenders = {
        "ours": timed(machine, "ours", lambda k: 1e-3 * load[max(k - 1, 0) // 2]),
        "theirs": timed(machine, "theirs", lambda k: 3e-3 * load[max(k - 1, 0) // 2]),
    }
    samples, _ = interleaved_samples(contenders, policy(min_samples=len(load)))
    ours, theirs = samples["ours"], samples["theirs"]
    assert ours.spread().noisy and theirs.spread().noisy
    ratio = paired_ratios(theirs, ours)
    assert ratio.median == pytest.approx(3) and ratio.q1 == pytest.approx(3) and ratio.q3 == pytest.approx(3)
    assert ratio.ranked and not ratio.noisy
    assert ratio.count == len(load)


def test_a_ratio_whose_middle_half_spans_one_is_unranked():
    machine = FakeMachine()
    jitter = [1.2, 0.8]
    contenders = {
        "ours": timed(machine, "ours", lambda k: 1e-3),
        "theirs": timed(machine, "theirs", lambda k: 1e-3 * jitter[max(k - 1, 0) // 2 % 2]),
    }
    samples, _ = interleaved_samples(contenders, policy(min_samples=8))
    ratio = paired_ratios(samples["theirs"], samples["ours"])
    assert ratio.q1 < 1 < ratio.q3 and not ratio.ranked


def test_a_contender_that_raises_leaves_and_the_others_go_on():
    machine = FakeMachine()

    def failing(k):
        if k >= 4:
            raise MemoryError("out of memory")
        return 2e-3

    contenders = {"ours": timed(machine, "ours", lambda k: 2e-3), "bad": timed(machine, "bad", failing)}
    samples, failures = interleaved_samples(contenders, policy(min_samples=5))
    assert failures == {"bad": "MemoryError: out of memory"}
    assert set(samples) == {"ours"} and len(samples["ours"].seconds_per_call) == 5


def test_a_contender_that_raises_while_calibrating_is_reported():
    machine = FakeMachine()

    def broken(_):
        raise RuntimeError("no kernel")

    samples, failures = interleaved_samples(
        {"ours": timed(machine, "ours", lambda k: 2e-3), "bad": timed(machine, "bad", broken)},
        policy(min_samples=2))
    assert failures == {"bad": "RuntimeError: no kernel"} and set(samples) == {"ours"}


def test_spread_statistics():
    spread = Spread.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (spread.median, spread.q1, spread.q3, spread.minimum, spread.maximum, spread.count) == (
        3.0, 2.0, 4.0, 1.0, 100.0, 5)
    assert spread.relative_iqr == pytest.approx(2 / 3)
    assert spread.noisy  # 67 % > 25 %
    steady = Spread.of([1.0, 1.1, 1.0, 0.95])
    assert steady.relative_iqr <= NOISY_RELATIVE_IQR and not steady.noisy
    assert steady.ranked is False  # 0.95..1.1 spans 1
    assert Spread.of([2.0]).ranked and Spread.of([0.5, 0.6]).ranked
    assert math.isinf(Spread.of([0.0, 0.0]).relative_iqr)
    with pytest.raises(ValueError):
        Spread.of([])


@pytest.mark.parametrize("bad, message", [
    (dict(min_samples=0), "min_samples"),
    (dict(min_seconds=-1.0), "min_seconds"),
])
def test_policy_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        policy(**bad)


def test_solo_samples_follow_one_untimed_call_and_nothing_else():
    machine = FakeMachine()
    # the first call after another library's costs 10×; the solo samples must not see it
    solo = solo_samples(timed(machine, "a", lambda k: 1e-2 if k == 0 else 1e-3), calls_per_sample=2, count=3)
    assert machine.log == ["a"] * (1 + 3 * 2)
    assert solo.seconds_per_call == pytest.approx([1e-3] * 3) and solo.calls_per_sample == 2
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        solo_samples(timed(machine, "a", lambda k: 1e-3), calls_per_sample=1, count=0)


def test_interfered_when_the_rounds_are_over_twice_the_time_alone():
    alone = Samples([1e-3, 1.1e-3, 0.9e-3], 1)
    assert interfered(Samples([2.5e-3, 2.2e-3, 3e-3], 1), alone)
    assert not interfered(Samples([1.9e-3, 2.0e-3, 1.2e-3], 1), alone)  # at most the factor: not flagged
    assert INTERFERENCE_FACTOR == 2.0
