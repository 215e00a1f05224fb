"""What the servers hold, as GTIDs: histories, positions, and the choice of the replica
to promote (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..gtid import EMPTY, CausalToken, Gtid, format_gtid_list, parse_gtid_list

__all__ = [
    "Candidate",
    "Choice",
    "History",
    "choose_candidate",
]


#: What a server's binlog and slave state contain: ``{(domain, server_id): seq}``, the
#: highest sequence number seen from each server in each domain.
History = Mapping[tuple[int, int], int]


def _history(*lists: str | None) -> dict[tuple[int, int], int]:
    """The merged history of GTID lists (``@@gtid_binlog_state``, ``@@gtid_slave_pos``)."""
    hist: dict[tuple[int, int], int] = {}
    for text in lists:
        for d, s, n in parse_gtid_list(text):
            if hist.get((d, s), -1) < n:
                hist[(d, s)] = n
    return hist


def _tail(*lists: str | None) -> dict[int, Gtid]:
    """The last GTID of each domain in GTID lists: their merged position
    (:meth:`CausalToken.merge <sqlrouter.gtid.CausalToken.merge>`)."""
    position = EMPTY.merge(*(CausalToken.from_gtid_list(text) for text in lists))
    return {d: (d, s, n) for d, (s, n) in position.domains.items()}


def _missing(history: History, gtids: Iterable[Gtid]) -> list[Gtid]:
    """The GTIDs of ``gtids`` that ``history`` does not contain.

    A history contains ``d-s-n`` when it holds a transaction of server ``s`` in domain
    ``d`` with a sequence number of at least ``n``: the check MariaDB's GTID strict mode
    makes when a replica connects at position ``d-s-n``.
    """
    return [(d, s, n) for d, s, n in gtids if history.get((d, s), -1) < n]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica considered by :func:`choose_candidate` (pure data, for unit tests)."""

    __module__ = "sqlrouter.switchover"

    name: str
    #: Transactions applied: ``@@gtid_binlog_state`` merged with ``@@gtid_slave_pos``.
    history: History
    #: Its position: the last GTID of each domain it applied or received.
    tail: Mapping[int, Gtid]
    #: GTIDs received but not applied yet (``Gtid_IO_Pos``), if it can apply them.
    pending: tuple[Gtid, ...] = ()
    #: Can it become the master (binlog with log_slave_updates, not delayed, SQL ok)?
    eligible: bool = True
    why_not: str = ""

    @property
    def projected(self) -> dict[tuple[int, int], int]:
        """Its history once the pending GTIDs are applied."""
        hist = dict(self.history)
        for d, s, n in self.pending:
            if hist.get((d, s), -1) < n:
                hist[(d, s)] = n
        return hist


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of :func:`choose_candidate`."""

    __module__ = "sqlrouter.switchover"

    chosen: str | None
    #: True when the chosen replica contains every other replica's position.
    covers_all: bool
    #: Replicas whose position the chosen one lacks, with the GTIDs it lacks.
    diverged: Mapping[str, tuple[Gtid, ...]]
    reason: str


def choose_candidate(candidates: Sequence[Candidate], old_master_id: int | None) -> Choice:
    """Pick the replica to promote: the one whose history contains every other's position.

    Among those, the one with the most transactions of the old master, then the
    furthest position, then the first in the service.  When none contains every other's
    position, the histories diverged: ``covers_all`` is False and ``chosen`` is the best
    by the same order (what ``force`` promotes), with what each other replica would lose.
    """
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        why = "; ".join(f"{c.name}: {c.why_not}" for c in candidates) or "no replica reachable"
        return Choice(None, False, {}, f"no replica can be promoted ({why})")

    def lost(c: Candidate) -> dict[str, tuple[Gtid, ...]]:
        mine = c.projected
        out: dict[str, tuple[Gtid, ...]] = {}
        for other in candidates:
            if other.name == c.name:
                continue
            wanted = list(other.tail.values()) + list(other.pending)
            gone = _missing(mine, wanted)
            if gone:
                out[other.name] = tuple(sorted(set(gone)))
        return out

    def rank(item: tuple[int, Candidate]) -> tuple[int, int, int]:
        index, c = item
        hist = c.projected
        from_master = sum(n for (_, s), n in hist.items() if s == old_master_id)
        top: dict[int, int] = {}
        for (d, _), n in hist.items():
            top[d] = max(top.get(d, 0), n)
        return (from_master, sum(top.values()), -index)

    ordered = sorted(enumerate(eligible), key=rank, reverse=True)
    for _, c in ordered:
        if not lost(c):
            others = [o.name for o in candidates if o.name != c.name]
            if others:
                reason = f"{c.name} has every transaction of {', '.join(others)}"
            else:
                reason = f"{c.name} is the only replica"
            return Choice(c.name, True, {}, reason)
    best = ordered[0][1]
    detail = "; ".join(
        f"{c.name} lacks "
        + ", ".join(f"{format_gtid_list(g)} (on {n})" for n, g in lost(c).items())
        for _, c in ordered
    )
    return Choice(
        best.name,
        False,
        lost(best),
        f"the replicas diverged: no replica has every other replica's transactions ({detail})",
    )
