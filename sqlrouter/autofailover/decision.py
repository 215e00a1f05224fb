"""When is the master dead, and may the leader fail it over?  The rule, pure.

Each round the leader gathers a :class:`Round` of evidence and calls :func:`decide`
with what it carried over from the previous round (:class:`Detection`) and the
service's automatic-failover history (:class:`History`).  Dead means *agreed*:

1. the leader's own probes of the master failed for ``rounds`` consecutive rounds
   (a master that answers once resets the count: slow or frozen for less than the
   detection time is not dead);
2. a strict majority of the live agents (those holding a lease, the leader included)
   last saw the master unreachable, in a view at most ``stale_after`` seconds old and
   about the same master: one observer alone, cut off from the master, is not enough;
3. the replicas agree: at least one replica of that master is reachable, and no
   reachable replica still has its IO thread connected to it (a master alive for a
   replica is alive).

Then the history may still hold it back (``blocked``): a refused candidate (diverged
histories, a replica missing acknowledged transactions) blocks automation until an
operator acknowledges it; so does an automatic failover less than ``period`` seconds
ago that nobody acknowledged (no flapping).  And a failover that failed without blocking
is not tried again at once: after ``n`` failures in a row the next attempt waits
:func:`backoff` seconds from the last one (``backoff``), doubling up to a cap.

The verdict (``healthy``, ``suspect``, ``disagreement``, ``blocked``, ``backoff``,
``failover``) comes
with its reason and its evidence, one line per observation, as the leader logs them and
``sqlrouter admin autofailover status`` shows them.  No I/O and no clock here: the
caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AgentView",
    "Decision",
    "Detection",
    "History",
    "ReplicaView",
    "Round",
    "Verdict",
    "backoff",
    "decide",
    "failures_in_a_row",
]

Verdict = Literal["healthy", "suspect", "disagreement", "blocked", "backoff", "failover"]


def failures_in_a_row(previous: int, last_at: float | None, now: float, *, cap: float) -> int:
    """The count after one more failed failover at ``now``: ``previous + 1``, or ``1``
    when the last failure is more than twice the cap ago (the failures are not in a row
    any more: the master came back, or automation was held back, in between)."""
    if previous <= 0 or last_at is None or now - last_at > 2 * cap:
        return 1
    return previous + 1


def backoff(failures: int, *, base: float, cap: float) -> float:
    """Seconds between the last of ``failures`` failed failovers in a row and the next
    attempt: ``base``, doubled with each further failure, at most ``cap`` (none before
    a first failure).  ``base`` and ``cap`` are the service's ``backoff_base`` and
    ``backoff_cap``; the schedule with their defaults: 10, 20, 40, 80, 160, 300, 300 ..."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(failures - 1, 62)))


@dataclass(frozen=True, slots=True)
class AgentView:
    """What one agent last published of the master (in the store, under its lease)."""

    agent: str
    #: The datasource the agent takes for the master (``None``: it could not tell).
    master: str | None
    reachable: bool
    #: Wall-clock seconds (``time.time()``) when the agent published it.
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as the leader saw it this round."""

    name: str
    reachable: bool
    #: The datasource it replicates from (``None``: none, or not in the service).
    source: str | None
    #: Its IO thread is connected to its source (``Slave_IO_Running: Yes``).
    io_connected: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Round:
    """One round of evidence about ``master``, gathered by the leader."""

    master: str
    #: The leader's own probe of the master (connect and a query within the timeout).
    probe_ok: bool
    probe_detail: str
    #: The latest view of every live agent, the leader's own included.
    agents: tuple[AgentView, ...]
    replicas: tuple[ReplicaView, ...]
    now: float


@dataclass(frozen=True, slots=True)
class History:
    """The service's automatic failovers, as the store keeps them."""

    #: Wall-clock time of the last automatic failover, ``None`` if none.
    last_failover_at: float | None = None
    #: An operator acknowledged the last automatic failover (or the block).
    acknowledged: bool = True
    #: Why automation is blocked until acknowledged (a refused candidate), or ``None``.
    blocked: str | None = None
    #: Automatic failovers that failed in a row (without blocking), the last one's time.
    failures: int = 0
    last_failure_at: float | None = None


@dataclass(frozen=True, slots=True)
class Detection:
    """Carried from one round to the next: the failed rounds in a row, of which master."""

    master: str | None = None
    failed_rounds: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    master: str
    reason: str
    evidence: tuple[str, ...]
    #: What the next round starts from.
    detection: Detection

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "master": self.master,
            "reason": self.reason,
            "evidence": list(self.evidence),
            "failed_rounds": self.detection.failed_rounds,
        }

    def __str__(self) -> str:
        return f"{self.verdict} ({self.master}): {self.reason}"


def decide(
    detection: Detection,
    rnd: Round,
    history: History,
    *,
    rounds: int,
    period: float,
    stale_after: float,
    min_agents: int,
    backoff_base: float,
    backoff_cap: float,
) -> Decision:
    """The verdict of round ``rnd`` (see the module's docstring for the rule)."""
    master = rnd.master
    evidence = [f"leader's probe of {master}: {'ok' if rnd.probe_ok else 'failed'}"]
    if rnd.probe_detail:
        evidence[0] += f" ({rnd.probe_detail})"
    if rnd.probe_ok:
        return Decision("healthy", master, f"{master} answers", tuple(evidence), Detection(master))
    failed = detection.failed_rounds + 1 if detection.master == master else 1
    carried = Detection(master, failed)
    evidence.append(f"failed rounds in a row: {failed} of {rounds}")

    def verdict(kind: Verdict, reason: str) -> Decision:
        return Decision(kind, master, reason, tuple(evidence), carried)

    if failed < rounds:
        return verdict("suspect", f"{master} failed {failed} of {rounds} rounds")

    unreachable = 0
    for view in sorted(rnd.agents, key=lambda v: v.agent):
        if view.master != master:
            evidence.append(f"agent {view.agent}: sees master {view.master or 'unknown'}")
        elif rnd.now - view.at > stale_after:
            evidence.append(f"agent {view.agent}: its view is {rnd.now - view.at:.1f}s old")
        elif view.reachable:
            evidence.append(f"agent {view.agent}: reaches {master}")
        else:
            unreachable += 1
            what = f" ({view.detail})" if view.detail else ""
            evidence.append(f"agent {view.agent}: cannot reach {master}{what}")
    live = len(rnd.agents)
    # A majority of the agents there should be, not of those alive: an agent cut off
    # with the master's host must not find itself a majority of one.
    total = max(live, min_agents)
    if 2 * unreachable <= total:
        short = "" if total == live else f" of min_agents {min_agents}"
        return verdict(
            "disagreement",
            f"{unreachable} of {live} live agents cannot reach {master}: no majority{short}",
        )

    own = [r for r in rnd.replicas if r.source == master]
    for r in own:
        if not r.reachable:
            state = "unreachable"
        else:
            state = "IO thread connected" if r.io_connected else "IO thread lost the master"
        evidence.append(f"replica {r.name}: {state}" + (f" ({r.detail})" if r.detail else ""))
    seen = [r for r in own if r.reachable]
    if not seen:
        return verdict("disagreement", f"no reachable replica of {master} to confirm it is dead")
    connected = [r.name for r in seen if r.io_connected]
    if connected:
        return verdict(
            "disagreement",
            f"{', '.join(connected)} still receive(s) from {master}: it is alive for them",
        )

    if history.blocked is not None:
        return verdict(
            "blocked",
            f"{master} is dead, but automation is blocked until an operator "
            f"acknowledges: {history.blocked}",
        )
    last = history.last_failover_at
    if last is not None and not history.acknowledged and rnd.now - last < period:
        return verdict(
            "blocked",
            f"{master} is dead, but an automatic failover ran {rnd.now - last:.0f}s ago "
            f"(at most one per {period:g}s until an operator acknowledges it)",
        )
    failed_at = history.last_failure_at
    wait = backoff(history.failures, base=backoff_base, cap=backoff_cap)
    # A failure recorded "in the future" (another agent's clock ahead of this one's) does
    # not hold automation back for the clocks' difference: a backoff only delays.
    if failed_at is not None and 0 <= rnd.now - failed_at < wait:
        return verdict(
            "backoff",
            f"{master} is dead, but {history.failures} automatic failover(s) failed in a row, "
            f"the last {rnd.now - failed_at:.0f}s ago: next attempt in "
            f"{wait - (rnd.now - failed_at):.0f}s (backoff {wait:g}s, at most {backoff_cap:g}s)",
        )
    return verdict(
        "failover",
        f"{master} is dead: {failed} failed rounds, {unreachable} of {live} agents "
        f"and {len(seen)} replica(s) agree",
    )
