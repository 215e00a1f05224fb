"""What sqlrouter measures as it works, handed to observers (metrics, tracing).

The connect path, the monitor, the consistency checks, the topology operations and the
control socket describe what they did as small immutable records (:data:`Record`) and
hand them to :func:`emit`.  Nothing is built and nothing is called while no observer is
registered: each call site first reads :data:`observers` (a tuple, replaced whole under
a lock, so reading it needs none).  The statement path (execute, fetch) emits nothing.

:mod:`sqlrouter.observe` registers the observers: Prometheus counters
(:mod:`sqlrouter.observe.metrics`) and OpenTelemetry spans
(:mod:`sqlrouter.observe.otel`).  This module imports neither library.

Observers run in the thread that did the work (a connect: the application's; a round:
the monitor's): keep them short, and do not block.  An exception in an observer is
logged and goes no further.

Every field whose value a metric uses as a label is one of a few fixed words (the
``Literal`` types below) or a name from the registry (a service, a datasource): never
a query, a user's input or a token.  The free-text fields (``reason``, ``error``) are for
spans and logs, and never hold a password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from . import _forksafe
from .gtid import EMPTY, CausalToken
from .topology import DataSource

__all__ = [
    "CheckOutcome",
    "ConsistencyCheck",
    "ControlCommand",
    "GtidFallback",
    "Invalidated",
    "InvalidationCause",
    "MonitorRound",
    "Observer",
    "Record",
    "Registration",
    "Routed",
    "TopologyRun",
    "Verdict",
    "add",
    "emit",
    "observers",
]

logger = logging.getLogger("sqlrouter.telemetry")

#: Where a routing decision sent a connect, or that it refused it.
Verdict = Literal["replica", "master", "fallback", "refused"]
#: Why: ``ok`` for a replica or the master as asked; for a fallback ``no_replica`` (none
#: within max_lag) or ``token`` (none has the session's writes); for a refusal
#: ``no_master``, ``no_replica``, ``stale`` (the monitor is not publishing) or ``auth``
#: (every server refused the monitor's login).
Reason = Literal["ok", "no_replica", "token", "no_master", "stale", "auth"]
#: A consistency check of a relaxed connection: the replica had the session's writes
#: (``free``), caught up within ``consistency_wait`` (``waited``), or the connection
#: went elsewhere (``moved``: another replica or the master).
CheckOutcome = Literal["free", "waited", "moved"]
InvalidationCause = Literal["master_changed", "datasource_down", "datasource_offline", "reroute"]


@dataclass(frozen=True, slots=True)
class Routed:
    """One routing decision of a connect and the connection it opened (or not).

    A connect makes one in the common case; more when a server does not answer, a
    replica does not catch up, or a RW_STRICT connect waits for a master.
    """

    service: str
    #: ``"RW_STRICT"`` or ``"RO_RELAXED"``.
    qos: str
    verdict: Verdict
    reason: Reason
    #: The datasource chosen; ``None`` when the router refused.
    datasource: DataSource | None
    #: The router's own words (``"replica db2 lag 0.12s <= 1.0s"``) or the refusal's.
    detail: str
    #: Whether the connection opened (``False`` also for a refusal).
    connected: bool
    #: ``time.monotonic()`` when the decision began, and the seconds until the
    #: connection was open or had failed.
    started: float
    duration: float
    #: The chosen server's lag as the monitor last saw it.
    lag: float | None = None
    #: The session's causal token, and whether the chosen server is known to cover it
    #: (``None``: no token, or the master, which has every write).
    token: CausalToken = EMPTY
    token_covered: bool | None = None
    #: The database named by the URL, and the server's version string once connected
    #: (it says MariaDB or not).
    database: str = ""
    server_version: str = ""
    #: Why the connection did not open (no password in it).
    error: str = ""


@dataclass(frozen=True, slots=True)
class MonitorRound:
    """One round of the monitor: every datasource probed once."""

    service: str
    started: float
    duration: float
    #: The datasources this round could not observe (unreachable, timed out, refused).
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConsistencyCheck:
    """A relaxed connection made sure its replica has the session's writes."""

    service: str
    datasource: DataSource
    outcome: CheckOutcome
    #: ``MASTER_GTID_WAIT`` time (0 when none ran), from ``started`` (monotonic).
    started: float
    waited: float
    token: CausalToken = EMPTY


@dataclass(frozen=True, slots=True)
class GtidFallback:
    """A writer's server cannot report ``last_gtid`` in OK packets: each write on this
    connection costs a ``SELECT @@last_gtid`` round trip."""

    service: str
    datasource: str


@dataclass(frozen=True, slots=True)
class Invalidated:
    """Open connections invalidated: ``cause`` is the event that did it
    (``master_changed``, ``datasource_down``, ``datasource_offline``) or ``reroute``
    (a relaxed connection's server no longer suits its policy)."""

    service: str
    datasource: str
    cause: InvalidationCause
    count: int = 1


@dataclass(frozen=True, slots=True)
class TopologyRun:
    """A switchover or failover, run or planned (``dry_run``)."""

    service: str
    operation: Literal["switchover", "failover"]
    outcome: Literal["ok", "failed", "dry_run"]
    started: float
    duration: float
    #: The new master asked for (switchover) or chosen (failover); "" when unknown.
    target: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One command of the control socket (``command``: a name of the protocol)."""

    command: str
    ok: bool


Record = (
    Routed
    | MonitorRound
    | ConsistencyCheck
    | GtidFallback
    | Invalidated
    | TopologyRun
    | (ControlCommand)
)
Observer = Callable[[Record], object]

_lock = _forksafe.lock()
#: The registered observers; read without the lock (a tuple, replaced whole).
observers: tuple[Observer, ...] = ()


class Registration:
    """An observer's registration; :meth:`cancel` ends it."""

    __slots__ = ("observer",)

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def cancel(self) -> None:
        global observers  # noqa: PLW0603 (replaced whole: readers take no lock)
        with _lock:
            observers = tuple(o for o in observers if o is not self.observer)

    def __repr__(self) -> str:
        return f"<Registration {self.observer!r}>"


def add(observer: Observer) -> Registration:
    """Call ``observer(record)`` for every record from now on, in every thread."""
    global observers  # noqa: PLW0603 (replaced whole: readers take no lock)
    with _lock:
        observers = (*observers, observer)
    return Registration(observer)


def emit(record: Record) -> None:
    """Hand ``record`` to every observer (in the caller's thread)."""
    for observer in observers:
        try:
            observer(record)
        except Exception:
            logger.exception("telemetry observer %r failed on %s", observer, type(record).__name__)
