"""What the monitor observed of each datasource, as immutable snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ..gtid import EMPTY, CausalToken
from ..topology import DataSource, Service

__all__ = ["STALE_AFTER_INTERVALS", "Health", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Health:
    """One observation of one datasource by the monitor.

    ``observed_at`` is a ``time.monotonic()`` reading of the monitoring process.
    Fields that could not be observed are ``None``.
    """

    name: str
    reachable: bool
    observed_at: float
    read_only: bool | None = None
    server_id: int | None = None
    #: Replication is configured on this server (``SHOW SLAVE STATUS`` has a row).
    replicating: bool = False
    #: What it replicates from (``SHOW SLAVE STATUS``): the ``Master_Server_Id`` (of the
    #: server its IO thread last connected to; 0 or ``None`` before it ever connected)
    #: and the configured ``Master_Host`` / ``Master_Port``.
    master_server_id: int | None = None
    master_host: str = ""
    master_port: int | None = None
    io_running: bool | None = None
    sql_running: bool | None = None
    #: Replication lag in seconds measured by the heartbeat (or Seconds_Behind_Master
    #: as a fallback); ``None`` when unknown, which routing treats as too lagged.
    lag: float | None = None
    #: How ``lag`` was measured: ``"heartbeat"``, ``"gtid"``, ``"seconds_behind_master"``
    #: or ``""`` when it is unknown.
    lag_source: str = ""
    #: The GTID position applied on this server (binlog and slave positions merged).
    position: CausalToken = EMPTY
    gtid_binlog_pos: str = ""
    gtid_slave_pos: str = ""
    #: The server's global ``session_track_system_variables`` includes ``last_gtid``
    #: (then new sessions report the GTID of each write in their OK packets).
    tracks_last_gtid: bool | None = None
    #: The last error seen while probing, without credentials.
    error: str | None = None
    #: Its error number (1045: the monitor's login was refused...), when it has one.
    error_code: int | None = None

    @property
    def writable(self) -> bool:
        return self.reachable and self.read_only is False

    @property
    def threads_running(self) -> bool:
        return bool(self.io_running) and bool(self.sql_running)


#: A snapshot older than this many monitor intervals (plus one probe timeout, the
#: longest a round may take) is not trusted: its monitor stopped publishing (a forked
#: child, a stalled or starved thread, a dead publisher).
STALE_AFTER_INTERVALS: Final = 3


def unknown(name: str) -> Health:
    """The health of a datasource not probed yet."""
    return Health(name=name, reachable=False, observed_at=0.0, error="not probed yet")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The monitor's immutable view of one service at one moment.

    Routing reads snapshots and never blocks the monitor, which publishes a new one
    after each round.  A snapshot holds what one round observed and the operator's
    routing-level state, nothing remembered from earlier rounds: who the master is
    follows from it alone (:func:`sqlrouter.routing.router.resolve_master`), so every process
    that observes the same servers reaches the same answer.
    """

    service: Service
    health: Mapping[str, Health]
    #: Datasources an operator took offline: routing gives them no new connection.
    offline: frozenset[str] = frozenset()
    #: A datasource an operator promoted at routing level (``promote DS``), if any.
    promoted: str | None = None
    #: ``time.monotonic()`` at the end of the round that produced this snapshot.
    taken_at: float = 0.0
    #: Increases by one with each published snapshot.
    generation: int = 0

    #: Seconds after :attr:`taken_at` from which routing no longer trusts this
    #: snapshot: ``3 * monitor_interval + probe_timeout`` (2.5 s by default).
    max_age: float = field(init=False, repr=False, compare=False)
    #: Who the master is in this snapshot, once :func:`~.router.mastership` has worked
    #: it out (the snapshot is immutable: the answer stays; ``None``: not yet).
    mastership_memo: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.health, MappingProxyType):
            object.__setattr__(self, "health", MappingProxyType(dict(self.health)))
        service = self.service
        max_age = STALE_AFTER_INTERVALS * service.monitor_interval + service.probe_timeout
        object.__setattr__(self, "max_age", max_age)

    @property
    def datasources(self) -> tuple[DataSource, ...]:
        return self.service.datasources

    def age(self, now: float) -> float:
        """Seconds since the round that produced this snapshot (``now``: monotonic)."""
        return now - self.taken_at

    def health_of(self, name: str) -> Health:
        h = self.health.get(name)
        return h if h is not None else unknown(name)
