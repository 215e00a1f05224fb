"""When a monitor's rounds run: on the ticks of the wall clock, alike in every process.

A round starts at a multiple of ``monitor_interval`` on the wall clock (``time.time()``),
not at a random phase.  The publishers of every host of a fleet then probe at the same
instants, and a change is seen by every host in the same round: the fleet follows it as
soon as one process would.  (With random phases, the last of H hosts sees a change on
average H/(H+1) of an interval after it, against half an interval for one process.)
Clocks kept by NTP agree within milliseconds; a host whose clock is off only probes at
another phase, as every host did before.

Two schedules follow from it:

- The heartbeat is written half an interval after the tick, not in the round: the probes
  of the other hosts, at the tick, would race with a write made then (the master read
  just after the write, a replica just before it replicated it: a healthy replica would
  show one interval of lag).
- A follower (:mod:`sqlrouter.routing.shared`) looks at the shared file just after
  each tick, when the publisher's round lands (a few milliseconds later:
  :data:`EARLY_LOOKS`), then every ``1/polls`` of an interval, to notice a publisher
  that died.

Pure functions of the interval and the time: no clock is read here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EARLY_LOOKS", "reads_registry", "until_heartbeat", "until_look", "until_tick"]

#: When a follower looks at the shared file after a tick (seconds): a round on loopback
#: or a LAN takes a few milliseconds; a slower one is caught by the regular looks.
EARLY_LOOKS: Final = (0.002, 0.004, 0.008, 0.016, 0.032)
_EPSILON: Final = 1e-6


def until_tick(interval: float, now: float) -> float:
    """Seconds from ``now`` to the next round (in ``(0, interval]``)."""
    return interval - now % interval


def until_heartbeat(interval: float, now: float) -> float:
    """Seconds from ``now`` to the next heartbeat write, half an interval after a tick
    (in ``[0, interval)``)."""
    return (interval / 2 - now % interval) % interval


def looks(interval: float, polls: int, *, early: bool = True) -> tuple[float, ...]:
    """A follower's looks within one interval, as offsets after its tick (ascending);
    without the early ones if not ``early``."""
    step = interval / polls
    regular = {k * step for k in range(1, polls)}
    first = {look for look in EARLY_LOOKS if look < step} if early else set()
    return tuple(sorted(first | regular))


def until_look(
    interval: float, now: float, polls: int, *, early: bool = True, early_next: bool = True
) -> float:
    """Seconds from ``now`` to a follower's next look at the shared file (positive, at
    most an interval plus the first look).  ``early=False``: this tick's round is in
    already, skip this interval's early looks; ``early_next=False``: the next tick's
    too (a follower that the publisher's writes wake needs none)."""
    phase = now % interval
    for offset in looks(interval, polls, early=early):
        if offset > phase + _EPSILON:
            return offset - phase
    following = looks(interval, polls, early=early_next)
    return interval - phase + (following[0] if following else 0.0)


def reads_registry(since: float, interval: float, *, woken: bool) -> bool:
    """Whether a monitor's turn reads the registry again, ``since`` seconds after it
    last did: about once per interval (at most every half interval), but not in a turn
    that a publisher's write woke (every follower of the host wakes then, and the round
    they all read waits for their CPU), unless two intervals went by without a regular
    look."""
    return since >= 2 * interval or (since >= interval / 2 and not woken)
