"""The routing decision: which datasource of a service serves a new connection.

:func:`choose` is a pure function of a monitor :class:`~sqlrouter.routing.health.Snapshot`, a
:class:`Policy` and a caller-side counter: no I/O, no clock, no randomness, no lock.
It returns a :class:`Decision` or raises :class:`~sqlrouter.errors.NoMasterAvailable` /
:class:`~sqlrouter.errors.NoReplicaAvailable` with a message that names the service and
every datasource with the reason it was rejected.

Roles are observed, not configured.  Who the master is follows from one round of
observations alone (:func:`resolve_master`), never from earlier rounds nor from the
declared roles, so every process that watches the same servers, old or new, reaches
the same answer:

- The *candidates* are the reachable servers with ``read_only`` off that do not
  replicate (``SHOW SLAVE STATUS`` has no row).  A writable server that replicates is a
  misconfigured replica: never the master, and never a replica for reads either.
- Each reachable server that replicates names what it replicates from (``SHOW SLAVE
  STATUS``): the datasource whose ``host:port`` is its ``Master_Host:Master_Port``,
  else the one reachable datasource whose server id is its ``Master_Server_Id``, else
  an address or server id that is no datasource.  The address comes first because it
  is the replica's configuration now, where ``Master_Server_Id`` is the server its IO
  thread last connected to (0 before it ever did, and still the old master's after a
  ``CHANGE MASTER`` until the IO thread reconnects); the id serves registries that
  name servers by other addresses than replication does.  Followed through servers
  that replicate themselves (a chain), this leads to the replica's *source*.
- The master is the candidate that is the source of every reachable replica.  When the
  sources are several candidates, the operator's routing-level promotion (``promote
  DS``) breaks the tie if it names one of them; it never overrides the replicas.  With
  no reachable replica to tell, a single candidate is the master, and among several
  only a promotion chooses.
- Otherwise nobody is the master and writes are refused
  (:class:`~sqlrouter.errors.NoMasterAvailable` names every writable server and why).
  A replica whose source is not a candidate (an unreachable server, a read-only one, a
  server that is no datasource) may replicate from a master this process cannot see or
  that is being changed, so no candidate is safe: sqlrouter never writes to a master
  it guessed.
- Fencing follows from the observations: after a failover the replicas replicate from
  the new master, so an old master that comes back writable is not their source and
  gets no write.  While the master misses a probe its replicas still name it, so a
  missed probe never hands the writes to another server: writes wait (up to
  ``failover_timeout``) or fail until it answers.  The one case the observations
  cannot decide is a single candidate while no replica is reachable: it is the
  master, so a second writable server that is no replica (a standalone copy) gets the
  writes if the master and every replica miss the same round.
- A *replica* is a reachable server with ``read_only`` on that replicates and whose
  measured lag is known and at most ``max_lag``.  A stopped IO or SQL thread counts
  through the lag, which the monitor measures as the age of the last heartbeat the
  replica applied.  The declared role does not matter: a demoted master that
  replicates is a replica.  A writable server is never a replica.
- Datasources an operator took offline, and those the caller already tried in this
  connect (:attr:`Policy.exclude`), are never chosen.

Causal tokens (session consistency) for RO_RELAXED:

- A replica serves the read only if its observed position covers the token.  The
  monitor's position is a past reading of a position that only grows, so "covers" in
  the snapshot means covers now.
- If replicas are within ``max_lag`` but none covers the token and
  :attr:`Policy.allow_wait` is true, the decision is the replica closest to the token
  with ``needs_wait=token``: the caller runs ``MASTER_GTID_WAIT(token, timeout)`` on
  it.  On timeout the caller calls :func:`choose` again, either with that replica
  added to ``exclude`` (try the next one) or with ``allow_wait=False`` (stop waiting).
- Otherwise the read falls back like any other: to the master with
  ``fallback=master``.  The master is taken to cover every token, since the writes
  the token records were made there.
- With ``fallback=error`` the master never serves a RO_RELAXED read, token or not: a
  read that cannot be served consistently by a replica fails with
  :class:`~sqlrouter.errors.NoReplicaAvailable`.  Read-your-writes holds either way;
  ``fallback`` only chooses between loading the master and failing, and the user
  asked not to load the master.

This module is kept whole (over 600 lines): it is every routing rule, and each
verdict's wording sits next to the rule that gives it, so that what a refusal says is
read with what decides it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NoReturn

from ..errors import (
    AUTH_ERRNOS,
    ER_NO_MASTER,
    ER_NO_REPLICA,
    PRIVILEGE_ERRNOS,
    NoMasterAvailable,
    NoReplicaAvailable,
)
from ..gtid import EMPTY, CausalToken
from ..qos import Fallback, QoS
from ..topology import DataSource, Role
from .health import STALE_AFTER_INTERVALS, Health, Snapshot, unknown

__all__ = [
    "MAX_ROUTES",
    "MOVE_TOLERANCE",
    "Decision",
    "Fallback",
    "Mastership",
    "Policy",
    "QoS",
    "Route",
    "Source",
    "choose",
    "explain",
    "explain_master",
    "health_check",
    "logins_refused",
    "mastership",
    "missing",
    "observed_master",
    "reroute",
    "resolve_master",
    "route",
    "upstream_of",
    "wait_here",
]


@dataclass(frozen=True, slots=True)
class Policy:
    """What one connect asks of the router."""

    qos: QoS
    #: RO_RELAXED: the largest replica lag (seconds) accepted.
    max_lag: float = 1.0
    #: RO_RELAXED: what to do when no replica qualifies.
    fallback: Fallback = Fallback.MASTER
    #: Session consistency: a RO_RELAXED read must come from a server that applied this.
    token: CausalToken = EMPTY
    #: RO_RELAXED with a token: may the caller wait (``MASTER_GTID_WAIT``) for a replica
    #: to catch up?  ``False`` means "go to the fallback now".
    allow_wait: bool = True
    #: Datasources already tried in this connect: the next decision skips them.
    exclude: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if math.isnan(self.max_lag) or self.max_lag < 0:
            raise ValueError(f"max_lag must be a number of seconds >= 0, not {self.max_lag!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a connection goes, and why."""

    datasource: DataSource
    #: Human-readable, for logs and ``sqlrouter route``: ``"replica db2 lag 0.12s <= 1.0s"``.
    reason: str
    #: A RO_RELAXED request served by the master because no replica qualified.
    is_fallback: bool = False
    #: Set when the replica is not known to cover the session's token: the caller must
    #: ``MASTER_GTID_WAIT`` for this token on it before using it (see module docstring).
    needs_wait: CausalToken | None = None
    #: The datasource is the master (RW_STRICT, or a RO_RELAXED fallback): it has every
    #: write, so a session's token needs no check there.
    on_master: bool = False
    #: A fallback because replicas within ``max_lag`` lack the session's token (and
    #: none could be waited for), not because none is within ``max_lag``.
    for_token: bool = False


def choose(
    snapshot: Snapshot,
    policy: Policy,
    *,
    turn: int = 0,
    now: float | None = None,
    routes: MutableMapping[Policy, Route] | None = None,
) -> Decision:
    """Pick the datasource for a new connection.

    ``turn`` is a caller-side counter (one increment per connect) that spreads
    RO_RELAXED connections over the qualifying replicas by weight: over any ``W``
    consecutive turns, where ``W`` is the sum of their weights, each replica is chosen
    exactly ``weight`` times, interleaved.  Replicas of weight 0 or less are used only
    when no replica of positive weight qualifies.

    Raises :class:`~sqlrouter.errors.NoMasterAvailable` (RW_STRICT) or
    :class:`~sqlrouter.errors.NoReplicaAvailable` (RO_RELAXED) and nothing else.

    ``now`` (a ``time.monotonic()`` reading of the caller) makes a snapshot older than
    :attr:`Snapshot.max_age <sqlrouter.routing.health.Snapshot.max_age>` qualify nothing: a
    monitor that stopped publishing (a forked child, a stalled thread) is not trusted.

    ``routes`` (optional, kept by the caller for this snapshot alone) holds the
    :func:`route` of each policy already decided on it; one decided here is added (at
    most :data:`MAX_ROUTES`), so that the next connect only picks its turn.
    """
    if now is not None and snapshot.generation > 0 and snapshot.age(now) > snapshot.max_age:
        _refuse_stale(snapshot, policy, now)
    if routes is None:
        return route(snapshot, policy).pick(turn)
    known = routes.get(policy)
    if known is None:
        known = route(snapshot, policy)
        if len(routes) < MAX_ROUTES:
            routes[policy] = known
    return known.pick(turn)


#: The most routes :func:`choose` keeps for one snapshot (policies differ by the
#: session's token, so their number follows the traffic).
MAX_ROUTES: Final = 64


@dataclass(frozen=True, slots=True)
class Route:
    """What :func:`choose` decides from a snapshot and a policy, before the turn: one
    decision, or the decisions for the qualifying replicas that turns spread
    connections over (by weight, see :func:`choose`)."""

    decisions: tuple[Decision, ...]
    #: The sum of the positive weights, and the step between the slots of two turns
    #: (see :func:`_stride`); 0 when the decisions are used in turn.
    total: int = 0
    stride: int = 1
    #: The decision of each slot ``0..total-1``, when there are at most
    #: :data:`_SLOT_TABLE` slots (each connect then indexes it).
    by_slot: tuple[Decision, ...] = field(init=False, repr=False, compare=False)
    #: The decisions of consecutive turns, over one period: ``pick(turn)`` is
    #: ``cycle[turn % len(cycle)]`` (empty when ``by_slot`` is).
    cycle: tuple[Decision, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slots: tuple[Decision, ...] = ()
        cycle: tuple[Decision, ...] = ()
        if len(self.decisions) == 1 or self.total == 0:
            cycle = self.decisions
        elif self.total <= _SLOT_TABLE:
            slots = tuple(d for d in self.decisions for _ in range(max(0, d.datasource.weight)))
            cycle = tuple(slots[turn * self.stride % self.total] for turn in range(self.total))
        object.__setattr__(self, "by_slot", slots)
        object.__setattr__(self, "cycle", cycle)

    def pick(self, turn: int) -> Decision:
        """The decision for a connect's ``turn``."""
        cycle = self.cycle
        if cycle:
            return cycle[turn % len(cycle)]
        decisions = self.decisions
        slot = turn * self.stride % self.total
        for decision in decisions:
            weight = decision.datasource.weight
            if weight > 0:
                if slot < weight:
                    return decision
                slot -= weight
        raise AssertionError("unreachable: slot < total")


#: The most slots (the sum of the weights) a :class:`Route` tabulates.
_SLOT_TABLE: Final = 1024


def route(snapshot: Snapshot, policy: Policy) -> Route:
    """:func:`choose` without the turn and the staleness check: what it decides for this
    snapshot and policy, or the error it raises.  Pure, so a caller may keep the route
    for as long as it routes on the same snapshot with the same policy (a connect then
    only picks its turn: :meth:`Route.pick`)."""
    if policy.qos is QoS.RW_STRICT:
        return Route((_choose_master(snapshot, policy),))
    return _route_replica(snapshot, policy)


def _refuse_stale(snapshot: Snapshot, policy: Policy, now: float) -> NoReturn:
    age = snapshot.age(now)
    shown = "of unknown age (made before fork())" if math.isinf(age) else f"{age:.1f}s old"
    why = (
        f"the monitor's last observation is {shown}, and routing trusts one for "
        f"{_secs(snapshot.max_age)} at most ({STALE_AFTER_INTERVALS} monitor intervals + "
        "the probe timeout): the monitor is not publishing"
    )
    name = snapshot.service.name
    if policy.qos is QoS.RW_STRICT:
        raise NoMasterAvailable(
            ER_NO_MASTER, f"service {name!r}: no master known: {why}", service=name
        )
    raise NoReplicaAvailable(
        ER_NO_REPLICA, f"service {name!r}: no replica or master known: {why}", service=name
    )


@dataclass(frozen=True, slots=True)
class Source:
    """What a replica replicates from, as far as the observations tell."""

    #: The datasource it names (by server id or by address); ``None`` when it names none.
    datasource: str | None
    #: How to say it: the datasource's name, else ``"server id 9"`` or ``"10.0.0.9:3306"``.
    text: str


@dataclass(frozen=True, slots=True)
class Mastership:
    """Who the master is, and the observations that decided it (module docstring)."""

    #: The master; ``None`` when the observations do not single one out.
    master: DataSource | None
    #: Reachable servers with ``read_only`` off, in declaration order.
    writable: tuple[DataSource, ...]
    #: The writable servers that do not replicate: the only ones that can be the master.
    candidates: tuple[DataSource, ...]
    #: For each reachable server that replicates: what it replicates from directly...
    upstream: Mapping[str, Source]
    #: ... and at the end of its chain of replicas.
    source: Mapping[str, Source]
    #: The candidates the observations cannot tell apart: the sources of the replicas
    #: when every source is a candidate, every candidate when no replica is reachable,
    #: none when a source is not a candidate.
    tied: tuple[DataSource, ...]
    #: The operator's routing-level promotion, if any, and whether it broke the tie.
    promoted: str | None = None
    by_promotion: bool = False

    @property
    def not_master(self) -> tuple[DataSource, ...]:
        """Writable servers that get no write (split brain, misconfigured replicas)."""
        return tuple(ds for ds in self.writable if ds != self.master)


def resolve_master(
    datasources: Sequence[DataSource],
    health: Mapping[str, Health],
    *,
    promoted: str | None = None,
) -> Mastership:
    """Who the master is, from one round of observations (the rule of the module
    docstring).  Pure; admin state is not considered; the order of ``datasources`` and
    any earlier observation change nothing."""
    seen = [(ds, h) for ds in datasources if (h := health.get(ds.name)) is not None]
    reachable = [(ds, h) for ds, h in seen if h.reachable]
    writable = tuple(ds for ds, h in reachable if h.read_only is False)
    candidates = tuple(ds for ds, h in reachable if h.read_only is False and not h.replicating)
    upstream = {
        ds.name: _upstream(h, datasources, reachable) for ds, h in reachable if h.replicating
    }
    source = {name: _source(name, upstream) for name in upstream}
    names = {src.datasource for src in source.values()}
    if not source:
        tied = candidates
    elif names <= {ds.name for ds in candidates}:
        tied = tuple(ds for ds in candidates if ds.name in names)
    else:
        tied = ()
    master: DataSource | None = None
    by_promotion = False
    if len(tied) == 1:
        master = tied[0]
    else:
        chosen = [ds for ds in tied if ds.name == promoted]
        if chosen:
            master, by_promotion = chosen[0], True
    return Mastership(
        master=master,
        writable=writable,
        candidates=candidates,
        upstream=MappingProxyType(upstream),
        source=MappingProxyType(source),
        tied=tied,
        promoted=promoted,
        by_promotion=by_promotion,
    )


def _upstream(
    h: Health, datasources: Sequence[DataSource], reachable: Sequence[tuple[DataSource, Health]]
) -> Source:
    """What the replica of health ``h`` replicates from: the datasource at its
    ``Master_Host:Master_Port``, else the one reachable datasource with its
    ``Master_Server_Id`` (module docstring)."""
    host = h.master_host.lower()
    if host:
        for ds in datasources:
            if ds.host.lower() == host and ds.port == h.master_port:
                return Source(ds.name, ds.name)
    sid = h.master_server_id or None
    if sid is not None:
        holders = [ds.name for ds, other in reachable if other.server_id == sid]
        if len(holders) == 1:
            return Source(holders[0], holders[0])
        return Source(None, f"server id {sid}")
    if h.master_host:
        return Source(None, f"{h.master_host}:{h.master_port}")
    return Source(None, "an unknown server")


def upstream_of(
    name: str, datasources: Sequence[DataSource], health: Mapping[str, Health]
) -> Source:
    """What the server ``name`` replicates from directly, by the rule of the module
    docstring (address first, then the server id among the reachable servers): the
    same answer the monitor's rule reaches, for a topology operation to act on."""
    reachable = [(ds, h) for ds in datasources if (h := health.get(ds.name)) and h.reachable]
    return _upstream(health[name], datasources, reachable)


def _source(name: str, upstream: Mapping[str, Source]) -> Source:
    """Where the chain of replicas that starts at ``name`` ends."""
    path = [name]
    src = upstream[name]
    while src.datasource is not None and src.datasource in upstream:
        if src.datasource in path:
            return Source(None, f"a replication loop ({' -> '.join([*path, src.datasource])})")
        path.append(src.datasource)
        src = upstream[src.datasource]
    return src


def observed_master(snapshot: Snapshot) -> DataSource | None:
    """The server that writes go to, ignoring admin state; ``None`` if there is none."""
    return mastership(snapshot).master


def explain_master(snapshot: Snapshot) -> str:
    """Who the master is and why, or why there is none, and why each other writable
    server is not, in one line (admin state ignored): for logs and status reports."""
    m = mastership(snapshot)
    if m.master is not None:
        head = _master_reason(snapshot, m, m.master)
    else:
        head = _no_master_head(snapshot, m)
    details = _join((ds.name, _writable_verdict(ds, snapshot, m)) for ds in m.not_master)
    return f"{head}: {details}" if details else head


def mastership(snapshot: Snapshot) -> Mastership:
    """:func:`resolve_master` of ``snapshot``, worked out once per snapshot (the
    monitor's listeners, the events' diff and every connect on it ask)."""
    m = snapshot.mastership_memo
    if isinstance(m, Mastership):
        return m
    m = resolve_master(snapshot.service.datasources, snapshot.health, promoted=snapshot.promoted)
    object.__setattr__(snapshot, "mastership_memo", m)  # a cache of a pure function
    return m


def explain(snapshot: Snapshot, policy: Policy) -> list[tuple[str, str]]:
    """``(datasource name, verdict)`` for every datasource, as :func:`choose` sees it.

    For ``sqlrouter route`` tables.  The verdicts are the texts the refusal messages use.
    """
    m = mastership(snapshot)
    master = m.master
    if policy.qos is QoS.RW_STRICT:
        return [(ds.name, _rw_verdict(ds, snapshot, policy, m)) for ds in snapshot.datasources]
    rows: list[tuple[str, str]] = []
    for ds in snapshot.service.datasources:
        h = snapshot.health_of(ds.name)
        if master is not None and ds.name == master.name:
            verdict = _ro_master_verdict(ds, snapshot, policy)
        else:
            why = _reject(ds.name, h, snapshot.offline, policy.exclude, policy.max_lag)
            if why is not None:
                verdict = _describe(why, ds, h, policy, snapshot=snapshot, m=m)
            else:
                verdict = f"replica, lag {_secs(h.lag)} <= {_secs(policy.max_lag)}"
                if ds.weight != 1:
                    verdict += f", weight {ds.weight}"
                if policy.token:
                    if h.position.covers(policy.token):
                        verdict += f", covers token {policy.token}"
                    else:
                        verdict += f", {_not_covered(h, policy.token)}"
                        if policy.allow_wait:
                            verdict += " (can wait for it)"
        rows.append((ds.name, verdict))
    return rows


# --- RW_STRICT -------------------------------------------------------------------------


def _choose_master(snapshot: Snapshot, policy: Policy) -> Decision:
    m = mastership(snapshot)
    master = m.master
    if master is None or master.name in snapshot.offline or master.name in policy.exclude:
        raise NoMasterAvailable(
            ER_NO_MASTER,
            _no_master_message(snapshot, policy, m),
            service=snapshot.service.name,
        )
    return Decision(master, _master_reason(snapshot, m, master), on_master=True)


def _master_reason(snapshot: Snapshot, m: Mastership, master: DataSource) -> str:
    kind = "promoted master" if m.by_promotion else "master"
    reason = f"{kind} {master.name} (writable"
    if len(m.candidates) > 1 and not m.by_promotion:
        reason += ", the replicas replicate from it"
    others = m.not_master
    if others:
        reason += f"; split brain: {', '.join(ds.name for ds in others)} also writable"
    promoted = m.promoted
    if promoted is not None and promoted != master.name and _knows(snapshot, promoted):
        if not snapshot.health_of(promoted).writable:
            reason += f"; promoted {promoted} is not writable"
        else:
            reason += f"; promoted {promoted} is not the master"
    return reason + ")"


def _knows(snapshot: Snapshot, name: str) -> bool:
    return any(ds.name == name for ds in snapshot.service.datasources)


def _no_master_message(snapshot: Snapshot, policy: Policy, m: Mastership) -> str:
    if m.master is not None:
        head = f"master {m.master.name} is not available"
    else:
        head = _no_master_head(snapshot, m)
    details = _join((ds.name, _rw_verdict(ds, snapshot, policy, m)) for ds in snapshot.datasources)
    return f"service {snapshot.service.name!r}: {head}: {details}"


def _no_master_head(snapshot: Snapshot, m: Mastership) -> str:
    """Why the observations single out no master (``m.master`` is ``None``)."""
    if not m.writable:
        return "no writable master"
    if not m.candidates:
        names = _and(ds.name for ds in m.writable)
        verb = "is" if len(m.writable) == 1 else "are"
        return f"no master: {names} {verb} writable but replicating"
    names = _and(ds.name for ds in m.candidates)
    cands = {ds.name for ds in m.candidates}
    strays = [(r, src) for r, src in m.source.items() if src.datasource not in cands]
    if len(m.candidates) == 1:
        head = f"no master: {names} is writable and not replicating, but "
        return head + _strays(snapshot, m, strays) + ", refusing to write"
    head = f"split brain: {names} are writable and not replicating; "
    if strays:
        head += _strays(snapshot, m, strays) + ", none of them"
    elif not m.source:
        head += "no reachable replica tells which is the master"
    else:
        head += (
            "the replicas replicate from "
            + _and(ds.name for ds in m.tied)
            + " ("
            + "; ".join(f"{r} from {_source_text(snapshot, m, r)}" for r in m.source)
            + ")"
        )
    head += "; refusing to write"
    if not strays:
        if m.promoted is not None and _knows(snapshot, m.promoted):
            head += f" (promoted {m.promoted} is not one of them)"
        else:
            head += " (promote one of them with `sqlrouter admin promote`)"
    return head


def _strays(snapshot: Snapshot, m: Mastership, strays: Sequence[tuple[str, Source]]) -> str:
    return ", ".join(f"{r} replicates from {_source_text(snapshot, m, r)}" for r, _ in strays)


def _source_text(snapshot: Snapshot, m: Mastership, replica: str) -> str:
    """``"db1"``, ``"db1 (unreachable)"``, ``"db1 through db2"``, ``"server id 9"``..."""
    src = m.source[replica]
    text = src.text
    if src.datasource is not None:
        h = snapshot.health_of(src.datasource)
        if not h.reachable:
            text += " (unreachable)"
        elif h.read_only is not False:
            text += " (read-only)"
    direct = m.upstream[replica]
    if direct != src:
        text += f" through {direct.text}"
    return text


def _and(names: Iterable[str]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _rw_verdict(ds: DataSource, snapshot: Snapshot, policy: Policy, m: Mastership) -> str:
    h = snapshot.health_of(ds.name)
    is_master = m.master is not None and ds.name == m.master.name
    prefix = "writable master, " if is_master else ""
    if ds.name in snapshot.offline:
        return f"{prefix}offline (operator)"
    if ds.name in policy.exclude:
        return f"{prefix}excluded (failed this attempt)"
    if not h.reachable:
        return _unreachable(h)
    if h.read_only is None:
        return _read_only_unknown(h)
    if h.read_only:
        if ds.name == snapshot.promoted:
            return "read_only=1 (promoted master is not writable)"
        if ds.role is Role.MASTER:
            return "read_only=1 (declared master is not writable)"
        return "read_only=1"
    return _writable_verdict(ds, snapshot, m)


def _writable_verdict(ds: DataSource, snapshot: Snapshot, m: Mastership) -> str:
    """The verdict of a writable server: the master, or why it is not."""
    if m.master is not None and ds.name == m.master.name:
        return "writable master"
    if ds.name in m.upstream:
        return (
            f"writable but replicating from {m.upstream[ds.name].text}: "
            "a misconfigured replica, never the master"
        )
    if m.master is not None:
        return f"writable, but {m.master.name} is the master (split brain)"
    if len(m.candidates) == 1:
        return "writable, but not what the replicas replicate from"
    names = ", ".join(c.name for c in m.candidates)
    return f"writable (split brain: {names} are writable, none is the master)"


# --- RO_RELAXED ------------------------------------------------------------------------


class _Why(enum.Enum):
    """Why a datasource is not a replica for this request (formatted by _describe)."""

    OFFLINE = enum.auto()
    EXCLUDED = enum.auto()
    UNREACHABLE = enum.auto()
    WRITABLE = enum.auto()
    READ_ONLY_UNKNOWN = enum.auto()
    NOT_REPLICATING = enum.auto()
    IO_STOPPED = enum.auto()
    SQL_STOPPED = enum.auto()
    LAG_UNKNOWN = enum.auto()
    LAG_HIGH = enum.auto()


def _reject(
    name: str, h: Health, offline: frozenset[str], exclude: frozenset[str], max_lag: float
) -> _Why | None:
    """Why ``h`` is not a replica within ``max_lag``; ``None`` when it is one."""
    if name in offline:
        return _Why.OFFLINE
    if name in exclude:
        return _Why.EXCLUDED
    if not h.reachable:
        return _Why.UNREACHABLE
    if h.read_only is not True:
        return _Why.WRITABLE if h.read_only is False else _Why.READ_ONLY_UNKNOWN
    if not h.replicating:
        return _Why.NOT_REPLICATING
    # A stopped thread does not disqualify by itself: the monitor already counts it in
    # the lag (the age of the last applied heartbeat while the master writes; against
    # the most advanced replica while no master is reachable).  It explains an unknown lag.
    lag = h.lag
    if lag is None or math.isnan(lag):
        if h.io_running is False:
            return _Why.IO_STOPPED
        if h.sql_running is False:
            return _Why.SQL_STOPPED
        return _Why.LAG_UNKNOWN
    if lag > max_lag:
        return _Why.LAG_HIGH
    return None


def _route_replica(snapshot: Snapshot, policy: Policy) -> Route:
    token = policy.token
    health = snapshot.health
    offline = snapshot.offline
    exclude = policy.exclude
    max_lag = policy.max_lag
    ready: list[DataSource] = []
    behind: list[DataSource] = []  # within max_lag, but not known to cover the token
    for ds in snapshot.service.datasources:
        h = health.get(ds.name)
        if h is None or _reject(ds.name, h, offline, exclude, max_lag) is not None:
            continue
        if token and not h.position.covers(token):
            behind.append(ds)
        else:
            ready.append(ds)

    if ready:
        covers = f", covers token {token}" if token else ""
        decisions = tuple(
            Decision(
                ds,
                f"replica {ds.name} lag {_secs(health[ds.name].lag)} <= {_secs(max_lag)}{covers}",
            )
            for ds in ready
        )
        total, stride = _stride(ready)
        return Route(decisions, total, stride)

    if behind and policy.allow_wait:
        ds = _closest(behind, health, token)
        h = health[ds.name]
        reason = (
            f"replica {ds.name} lag {_secs(h.lag)} <= {_secs(max_lag)}, "
            f"{_not_covered(h, token)} yet: wait for it"
        )
        return Route((Decision(ds, reason, needs_wait=token),))

    head = (
        f"no replica covers token {token}"
        if behind
        else f"no replica within max_lag {_secs(max_lag)}"
    )
    m = mastership(snapshot)
    master = m.master
    if (
        policy.fallback is Fallback.MASTER
        and master is not None
        and master.name not in offline
        and master.name not in exclude
    ):
        details = _ro_details(snapshot, policy, m, skip=master)
        reason = f"fallback to master {master.name}: {head}: {details}"
        return Route(
            (Decision(master, reason, is_fallback=True, on_master=True, for_token=bool(behind)),)
        )

    if policy.fallback is Fallback.ERROR:
        head += ", and fallback=error"
    else:
        head += " and no master to fall back to"
    details = _ro_details(snapshot, policy, m, skip=None)
    raise NoReplicaAvailable(
        ER_NO_REPLICA,
        f"service {snapshot.service.name!r}: {head}: {details}",
        service=snapshot.service.name,
    )


def _stride(candidates: Sequence[DataSource]) -> tuple[int, int]:
    """Deterministic, interleaved weighted round-robin over ``candidates``: ``(total,
    stride)`` (``total`` 0: no positive weight, the candidates are used in turn).

    Slot ``k`` of ``0..total-1`` belongs to the candidate whose cumulative weight range
    holds it.  Turn ``t`` takes slot ``t * stride % total`` with ``stride`` coprime to
    ``total``, a bijection over any ``total`` consecutive turns (so each candidate gets
    exactly its weight), and with ``stride`` near ``total / golden ratio`` consecutive
    turns land far apart, so a burst of connects is spread rather than sent in blocks.
    """
    total = sum(ds.weight for ds in candidates if ds.weight > 0)
    if total == 0:
        return 0, 1
    stride = max(1, round(total * 0.618))
    while math.gcd(stride, total) != 1:
        stride += 1
    return total, stride


def _closest(
    candidates: Sequence[DataSource], health: Mapping[str, Health], token: CausalToken
) -> DataSource:
    """The candidate likely to cover ``token`` first: fewest missing transactions
    (summed over the token's domains), then lowest lag, then declaration order."""

    def distance(ds: DataSource) -> tuple[int, float]:
        h = health[ds.name]
        return missing(h.position, token), h.lag if h.lag is not None else math.inf

    return min(candidates, key=distance)


def missing(position: CausalToken, token: CausalToken) -> int:
    """How many transactions of ``token`` ``position`` lacks (summed over its domains)."""
    return sum(max(0, seq - position.seq(d)) for d, (_, seq) in token.domains.items())


# --- open RO_RELAXED connections ---------------------------------------------------------

#: How many more transactions of the token a replica may lack than the closest other
#: qualifying replica before a relaxed connection on it moves instead of waiting there.
MOVE_TOLERANCE = 2


def wait_here(snapshot: Snapshot, name: str, policy: Policy) -> bool:
    """Should a relaxed connection on replica ``name``, which is not known to have applied
    ``policy.token``, wait for it there (``MASTER_GTID_WAIT``) rather than move?

    Yes while ``name`` still qualifies as a replica for ``policy`` and lacks at most
    :data:`MOVE_TOLERANCE` more of the token's transactions than any other qualifying
    replica: moving costs a new connection.
    """
    offline, max_lag, token = snapshot.offline, policy.max_lag, policy.token
    here = snapshot.health_of(name)
    if _reject(name, here, offline, policy.exclude, max_lag) is not None:
        return False
    best = min(
        (
            missing(h.position, token)
            for other, h in snapshot.health.items()
            if other != name and _reject(other, h, offline, policy.exclude, max_lag) is None
        ),
        default=math.inf,
    )
    return missing(here.position, token) <= best + MOVE_TOLERANCE


def reroute(snapshot: Snapshot, name: str, policy: Policy, *, fallback: bool) -> str | None:
    """Why a RO_RELAXED connection open on ``name`` should move at its next transaction
    start; ``None`` when it stays.

    A connection opened on a replica moves as soon as that server no longer qualifies
    for the connection's own policy (its ``max_lag``): it lags, its threads stopped, it
    became writable (a switchover made it the master), went down or offline.  A
    connection on the master because no replica qualified (``fallback``) moves when
    :func:`choose` would pick a replica again (one that covers the session's token, or
    the closest one to wait on), and as soon as its server is no longer the master (it
    was demoted by some tool: it may lack the session's writes made on the new master).
    """
    offline, exclude, max_lag = snapshot.offline, policy.exclude, policy.max_lag
    if not fallback:
        h = snapshot.health_of(name)
        why = _reject(name, h, offline, exclude, max_lag)
        if why is None:
            return None
        m = mastership(snapshot)
        ds = next((d for d in snapshot.service.datasources if d.name == name), None)
        if ds is None:
            return f"{name} left the service's definition"
        if m.master is not None and m.master.name == name:
            return f"{name} is now the master"
        return f"{name} no longer serves reads: " + _describe(
            why, ds, h, policy, snapshot=snapshot, m=m
        )
    master = mastership(snapshot).master
    if master is None or master.name != name:
        now = f"{master.name} is" if master is not None else "no server is"
        return f"{name} is no longer the master ({now})"
    try:
        back = _route_replica(snapshot, policy).pick(0)
    except NoReplicaAvailable:
        return None
    if back.is_fallback or back.datasource.name == name:
        return None
    return f"a replica serves reads again: {back.reason}"


def health_check(
    snapshot: Snapshot,
    name: str,
    *,
    role: Role,
    max_lag: float,
    now: float | None = None,
) -> str | None:
    """Why datasource ``name`` should get no traffic as ``role`` now, in the words of the
    rules above; ``None`` when it qualifies (for load balancers' health checks).

    ``Role.REPLICA``: online and a replica within ``max_lag`` (what a RO_RELAXED connect
    with that ``max_lag`` would accept).  ``Role.MASTER``: online and the observed master.
    ``now`` (monotonic) makes a snapshot older than its ``max_age`` qualify nothing.
    """
    if math.isnan(max_lag) or max_lag < 0:
        raise ValueError(f"max_lag must be a number of seconds >= 0, not {max_lag!r}")
    ds = next((d for d in snapshot.service.datasources if d.name == name), None)
    if ds is None:
        return f"{name} is not a datasource of service {snapshot.service.name!r}"
    if now is not None and snapshot.age(now) > snapshot.max_age:
        age = snapshot.age(now)
        shown = "of unknown age" if math.isinf(age) else f"{age:.1f}s old"
        return f"the monitor's last observation is {shown} (trusted for {_secs(snapshot.max_age)})"
    m = mastership(snapshot)
    if role is Role.MASTER:
        if m.master is not None and m.master.name == name and name not in snapshot.offline:
            return None
        return _rw_verdict(ds, snapshot, Policy(QoS.RW_STRICT), m)
    h = snapshot.health_of(name)
    why = _reject(name, h, snapshot.offline, frozenset(), max_lag)
    if why is None:
        return None
    return _describe(why, ds, h, Policy(QoS.RO_RELAXED, max_lag=max_lag), snapshot=snapshot, m=m)


def logins_refused(snapshot: Snapshot) -> tuple[int, str] | None:
    """``(errno, message)`` when every server refused the monitor's login: nothing can
    be observed, so nothing can be routed, and the cause is the account, not the
    servers; ``None`` otherwise."""
    health = [snapshot.health_of(ds.name) for ds in snapshot.service.datasources]
    if not health or not all(h.error_code in AUTH_ERRNOS for h in health):
        return None
    service = snapshot.service
    account = (
        f"the monitor's account {service.monitor_credentials.user!r} (the registry's "
        "[monitor] of this service)"
        if service.monitor_credentials is not None
        else "the credentials of this process's connections (the registry names no "
        "[monitor] account)"
    )
    details = "; ".join(f"{h.name}: {h.error}" for h in health)
    return (
        health[0].error_code or 1045,
        f"service {service.name!r}: authentication failed on every server: the monitor "
        f"logs in with {account}, and every server refused it: {details}",
    )


def _ro_master_verdict(ds: DataSource, snapshot: Snapshot, policy: Policy) -> str:
    if ds.name in snapshot.offline:
        return "master, offline (operator)"
    if ds.name in policy.exclude:
        return "master, excluded (failed this attempt)"
    if policy.fallback is Fallback.ERROR:
        return "master (not used: fallback=error)"
    return "master (fallback)"


def _ro_details(
    snapshot: Snapshot, policy: Policy, m: Mastership, *, skip: DataSource | None
) -> str:
    """``"db2 lag 3.2s > 1.0s; db3 unreachable (...)"``: every datasource but ``skip``."""
    master = m.master
    items: list[tuple[str, str]] = []
    for ds in snapshot.service.datasources:
        if skip is not None and ds.name == skip.name:
            continue
        if master is not None and ds.name == master.name:
            items.append((ds.name, _ro_master_verdict(ds, snapshot, policy)))
            continue
        h = snapshot.health_of(ds.name)
        why = _reject(ds.name, h, snapshot.offline, policy.exclude, policy.max_lag)
        if why is None:
            items.append((ds.name, _not_covered(h, policy.token)))
        else:
            items.append((ds.name, _describe(why, ds, h, policy, snapshot=snapshot, m=m)))
    return _join(items)


def _describe(
    why: _Why,
    ds: DataSource,
    h: Health,
    policy: Policy,
    *,
    snapshot: Snapshot,
    m: Mastership,
) -> str:
    if why is _Why.OFFLINE:
        return "offline (operator)"
    if why is _Why.EXCLUDED:
        return "excluded (failed this attempt)"
    if why is _Why.UNREACHABLE:
        return _unreachable(h)
    if why is _Why.WRITABLE:
        return _writable_verdict(ds, snapshot, m)
    if why is _Why.READ_ONLY_UNKNOWN:
        return _read_only_unknown(h)
    if why is _Why.NOT_REPLICATING:
        if ds.role is Role.MASTER:
            return "read_only=1 (declared master is not writable), not replicating"
        return "read_only=1, not replicating"
    if why is _Why.IO_STOPPED or why is _Why.SQL_STOPPED:
        thread = "io thread" if why is _Why.IO_STOPPED else "sql thread"
        return f"lag unknown ({thread} stopped)"
    if why is _Why.LAG_UNKNOWN:
        return f"lag unknown ({h.error})" if h.error else "lag unknown"
    return f"lag {_secs(h.lag)} > {_secs(policy.max_lag)}"


# --- shared wording ----------------------------------------------------------------------


def _unreachable(h: Health) -> str:
    if h.error == unknown(h.name).error:
        return "not probed yet"
    if h.error_code in PRIVILEGE_ERRNOS:
        return f"not observable ({h.error})"
    if h.error_code in AUTH_ERRNOS:
        return f"not observable: the monitor's login was refused ({h.error})"
    return f"unreachable ({h.error})" if h.error else "unreachable"


def _read_only_unknown(h: Health) -> str:
    return f"read_only unknown ({h.error})" if h.error else "read_only unknown"


def _not_covered(h: Health, token: CausalToken) -> str:
    return f"position {h.position or '(empty)'} does not cover token {token}"


def _secs(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return f"{seconds}s"
    return f"{round(seconds, 3)!r}s"


def _join(items: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"{name} {verdict}" for name, verdict in items)
