"""What a service is made of, as configured: datasources, roles and service settings.

These are immutable values produced by a registry (a TOML file, DNS, or code).  What
the servers really are at run time is observed by the monitor (see :mod:`health`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

#: The accepted range ``(lowest, highest)`` of each number of a service, wherever it is
#: given (a registry file, the options of a DNS registry, a URL, the control socket):
#: beyond these a value is a mistake (``monitor_interval = 1e-300`` spins a thread, a
#: 320-digit ``weight`` cannot be used in arithmetic), and is refused naming the range.
MAX_LAG_RANGE: Final = (0.0, 31_536_000.0)  # seconds: up to a year
MONITOR_INTERVAL_RANGE: Final = (0.05, 3600.0)  # seconds
PROBE_TIMEOUT_RANGE: Final = (0.05, 60.0)  # seconds
WEIGHT_RANGE: Final = (0, 65535)  # as a DNS SRV weight; a registry file needs >= 1
AUTOFAILOVER_ROUNDS_RANGE: Final = (1, 100)  # detection rounds
AUTOFAILOVER_PERIOD_RANGE: Final = (0.0, 31_536_000.0)  # seconds: up to a year
AUTOFAILOVER_LEASE_RANGE: Final = (2, 3600)  # whole seconds: etcd leases are in seconds
AUTOFAILOVER_AGENTS_RANGE: Final = (1, 99)
AUTOFAILOVER_BACKOFF_RANGE: Final = (1.0, 86_400.0)  # seconds: no tighter retry loop than 1 s


def range_text(bounds: tuple[float, float]) -> str:
    """``(0.05, 3600.0)`` as messages write it: ``0.05-3600``."""
    return "-".join(f"{bound:.15g}" for bound in bounds)


class Role(enum.Enum):
    """The role a registry *declares* for a datasource.  The monitor verifies it."""

    MASTER = "master"
    REPLICA = "replica"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user and password.  The password never appears in ``repr`` or ``str``."""

    user: str
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        return self.user


@dataclass(frozen=True, slots=True)
class DataSource:
    """One server of a service."""

    name: str
    host: str
    port: int = 3306
    role: Role = Role.REPLICA
    weight: int = 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    """Where the pt-heartbeat style heartbeat row lives, and whether to write it."""

    enabled: bool = True
    #: ``schema.table`` of the heartbeat table; created by ``sqlrouter sandbox`` and
    #: documented in docs/registry.md for other clusters.
    table: str = "sqlrouter.heartbeat"


@dataclass(frozen=True, slots=True)
class AutofailoverSettings:
    """Automatic failover of a service (``[services.NAME.autofailover]``): off by default.

    Run by ``sqlrouter agent`` processes (see docs/autofailover.md), never by
    applications.  ``interval`` ``None`` means the service's ``monitor_interval``.
    """

    enabled: bool = False
    #: etcd endpoints, ``host:port`` (the v3 JSON gateway, etcd's client port).
    etcd: tuple[str, ...] = ()
    #: Consecutive failed rounds of the leader's own probes before the master may be
    #: declared dead (with the agents' majority and the replicas' agreement).
    rounds: int = 3
    #: Seconds between two rounds; ``None``: the service's ``monitor_interval``.
    interval: float | None = None
    #: At most one automatic failover per ``period`` seconds until acknowledged.
    period: float = 3600.0
    #: Seconds of an agent's etcd lease (its registration and its leadership).
    lease_ttl: int = 5
    #: The number of agents deployed: a master is dead only for a strict majority of
    #: this many (or of the live agents, when more are alive), never of the live ones alone.
    min_agents: int = 3
    #: Seconds between a first failed automatic failover (one that did not block) and the
    #: next attempt; doubled after each further failure in a row, up to ``backoff_cap``.
    backoff_base: float = 10.0
    #: The longest wait between two attempts (``backoff_base <= backoff_cap``).
    backoff_cap: float = 300.0


@dataclass(frozen=True, slots=True)
class Service:
    """A named group of datasources replicating the same data, and its settings."""

    name: str
    datasources: tuple[DataSource, ...]
    #: Default ``max_lag`` (seconds) for RO_RELAXED when the URL does not give one.
    max_lag: float = 1.0
    #: Seconds between two monitor rounds (which start on the wall clock's multiples of it).
    monitor_interval: float = 0.5
    #: Timeout (seconds) of each monitor probe: connect, read and write.
    probe_timeout: float = 1.0
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    #: Credentials the monitor uses; ``None`` means the application's own.
    monitor_credentials: Credentials | None = None
    #: Credentials for topology operations (switchover, failover).
    admin_credentials: Credentials | None = None
    #: The replication account (``REPLICATION SLAVE``) that a demoted master uses to
    #: replicate from the new master in a switchover; ``None`` when not configured.
    replication_credentials: Credentials | None = None
    #: Automatic failover (off unless the registry enables it).
    autofailover: AutofailoverSettings = AutofailoverSettings()
    #: Where this service was defined (a file path, ``dns:DOMAIN``), for error messages.
    source: str = "<code>"

    def datasource(self, name: str) -> DataSource:
        for ds in self.datasources:
            if ds.name == name:
                return ds
        known = ", ".join(ds.name for ds in self.datasources)
        raise KeyError(f"service {self.name!r} has no datasource {name!r} (known: {known})")
