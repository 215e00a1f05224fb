"""The schedule of rounds, heartbeat writes and a follower's looks (pure)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sqlrouter.routing._ticks import (
    EARLY_LOOKS,
    looks,
    reads_registry,
    until_heartbeat,
    until_look,
    until_tick,
)

intervals = st.floats(min_value=0.01, max_value=3600.0)
times = st.floats(min_value=0.0, max_value=4e9)
polls = st.integers(min_value=1, max_value=100)


def _phase(t: float, interval: float) -> float:
    """Distance of ``t`` from the nearest multiple of ``interval``."""
    r = t % interval
    return min(r, interval - r)


@given(intervals, times)
def test_a_round_waits_for_the_next_tick(interval: float, now: float) -> None:
    wait = until_tick(interval, now)
    assert 0 < wait <= interval
    assert math.isclose(_phase(now + wait, interval), 0.0, abs_tol=1e-6 * max(1.0, now))


def test_every_process_waits_for_the_same_instant() -> None:
    # Two processes that ended their rounds at different moments start the next at the
    # same tick.
    assert 1000.5 == 1000.12 + until_tick(0.5, 1000.12) == 1000.44 + until_tick(0.5, 1000.44)


@given(intervals, times)
def test_the_heartbeat_is_written_half_an_interval_after_a_tick(
    interval: float, now: float
) -> None:
    wait = until_heartbeat(interval, now)
    assert 0 <= wait < interval
    half = (now + wait - interval / 2) % interval
    assert math.isclose(min(half, interval - half), 0.0, abs_tol=1e-6 * max(1.0, now))


def test_the_heartbeat_waits_for_the_half_and_never_for_a_whole_interval() -> None:
    assert until_heartbeat(0.5, 1000.0) == 0.25
    assert math.isclose(until_heartbeat(0.5, 1000.3), 0.45)
    assert until_heartbeat(0.5, 1000.25) == 0.0


@given(intervals, polls)
def test_a_follower_looks_early_after_the_tick_then_regularly(interval: float, n: int) -> None:
    offsets = looks(interval, n)
    assert list(offsets) == sorted(set(offsets))
    assert all(0 < o < interval for o in offsets)
    step = interval / n
    # Every regular look is there: a dead publisher is noticed within a step.
    for k in range(1, n):
        assert any(math.isclose(o, k * step) for o in offsets)
    # The early looks that come before the first regular one.
    assert {o for o in offsets if o < step} == {e for e in EARLY_LOOKS if e < step}


@given(intervals, times, polls)
def test_a_followers_next_look_is_one_of_its_looks(interval: float, now: float, n: int) -> None:
    wait = until_look(interval, now, n)
    offsets = looks(interval, n)
    assert 0 < wait <= interval + offsets[0] + 1e-9
    # Never longer than the regular step (plus the first early look, across a tick).
    assert wait <= interval / n + offsets[0] + 1e-6 * max(1.0, now)


def test_a_follower_looks_2ms_after_the_tick_then_doubles() -> None:
    at = 1000.0  # a tick of 0.5 s rounds
    seen = []
    for _ in range(8):
        at += until_look(0.5, at, 10)
        seen.append(round(at - 1000.0, 6))
    assert seen == [0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.1, 0.15]


def test_once_the_ticks_round_is_in_a_follower_skips_the_early_looks() -> None:
    # At 8 ms after the tick the round was read: the next look is the regular one.
    assert math.isclose(until_look(0.5, 1000.008, 10, early=False), 0.042)
    # Past the last regular look: the next tick's early looks are kept.
    assert math.isclose(until_look(0.5, 1000.46, 10, early=False), 0.042)
    assert looks(0.5, 10, early=False) == tuple(k * 0.05 for k in range(1, 10))


@given(intervals, times, polls)
def test_skipping_early_looks_never_waits_past_the_next_tick_s_first(
    interval: float, now: float, n: int
) -> None:
    wait = until_look(interval, now, n, early=False)
    assert 0 < wait <= interval + looks(interval, n)[0] + 1e-6 * max(1.0, now)
    assert wait >= until_look(interval, now, n) - 1e-9


def test_a_follower_woken_by_a_write_leaves_the_registry_to_its_regular_look() -> None:
    """All of a host's followers wake at a publisher's write: none of them reads the
    registry then (the round waits for their CPU), but at its next regular look."""
    assert reads_registry(0.3, 0.5, woken=False)
    assert not reads_registry(0.3, 0.5, woken=True)
    assert not reads_registry(0.2, 0.5, woken=False)  # at most every half interval
    assert reads_registry(1.0, 0.5, woken=True)  # never more than two intervals without


@given(st.floats(0.0, 100.0), st.floats(0.01, 10.0), st.booleans())
def test_the_registry_is_read_at_least_every_two_intervals(
    since: float, interval: float, woken: bool
) -> None:
    if since >= 2 * interval:
        assert reads_registry(since, interval, woken=woken)
    if since < interval / 2:
        assert not reads_registry(since, interval, woken=woken)
