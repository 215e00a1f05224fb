"""From one round of observations to :class:`~sqlrouter.routing.health.Health`: lag.

Pure: :func:`compute_health` takes what the monitor's probes read (one
:class:`Observation` per datasource) and computes each replica's lag, with every time
it compares coming from the observations themselves (the servers' own clocks), so it
is unit-tested without a server.  :mod:`sqlrouter.routing.monitor` does the I/O.

- a replica whose IO or SQL thread is not running lags by the age of the last heartbeat
  it applied (reference ``NOW()`` minus its heartbeat): it grows while it is stopped,
  where ``Seconds_Behind_Master`` reads NULL or 0;
- a replica whose GTID position covers the reference's position has lag 0;
- otherwise lag is the reference's freshest heartbeat minus the replica's, while that
  heartbeat is fresh (written within :data:`HEARTBEAT_STALE_INTERVALS` monitor
  intervals: the cluster's one heartbeat writer writes one every round).  When it is
  older (the writer stalled and has not been replaced yet) a replica may have applied
  that frozen heartbeat and still be behind: its lag is then the reference's ``NOW()``
  minus its heartbeat, an overestimate, never a false 0;
- without a usable heartbeat, ``Seconds_Behind_Master`` (NULL counts as unknown).

The reference is the master the routing rule singles out of the same observations
(:func:`~sqlrouter.routing.router.resolve_master`).  While there is none it is the
most advanced replica: replicas keep serving reads, their lag measured against the
best copy of the data that exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..gtid import EMPTY, CausalToken
from ..topology import DataSource
from .health import Health
from .router import resolve_master

__all__ = ["HEARTBEAT_STALE_INTERVALS", "Observation", "compute_health"]

#: The master's freshest heartbeat older than this many monitor intervals: the
#: heartbeat writer stalled (it writes one every interval, half an interval after a tick).
HEARTBEAT_STALE_INTERVALS = 2.0


#: Seconds after which the reference's own freshest heartbeat is stale (the master writes
#: one every round): a replica's lag is then not measured against it while the master
#: is alive.
_HEARTBEAT_FRESH_SECONDS = 8.0


@dataclass(frozen=True, slots=True)
class Observation:
    """What one probe read from one server (before lag is computed)."""

    name: str
    observed_at: float
    reachable: bool
    error: str | None = None
    #: The server's (or the client's) error number of ``error``, when there is one.
    error_code: int | None = None
    server_id: int | None = None
    read_only: bool | None = None
    gtid_binlog_pos: str = ""
    gtid_slave_pos: str = ""
    #: The server's ``NOW(6)`` and freshest heartbeat, as seconds since the epoch.
    now: float | None = None
    heartbeat: float | None = None
    replicating: bool = False
    #: ``SHOW SLAVE STATUS``'s ``Master_Server_Id``, ``Master_Host``, ``Master_Port``.
    master_server_id: int | None = None
    master_host: str = ""
    master_port: int | None = None
    io_running: bool | None = None
    sql_running: bool | None = None
    seconds_behind_master: int | None = None
    tracks_last_gtid: bool | None = None


def _position(obs: Observation) -> CausalToken:
    try:
        binlog, slave = obs.gtid_binlog_pos, obs.gtid_slave_pos
        return CausalToken.from_gtid_list(binlog).merge(CausalToken.from_gtid_list(slave))
    except ValueError:
        return EMPTY


def compute_health(
    observations: Sequence[Observation],
    datasources: Sequence[DataSource],
    *,
    promoted: str | None = None,
    monitor_interval: float | None = None,
) -> dict[str, Health]:
    """Turn one round of observations into Health values, computing each lag.

    Pure: all the times it uses come from the observations.  The lag reference is the
    master as :func:`~sqlrouter.routing.router.resolve_master` singles it out of these
    observations (``promoted``: the operator's routing-level promotion, which may break
    a tie); without one, the most advanced reachable replica.  ``monitor_interval``
    (the rounds' interval) tells a stalled heartbeat writer from a fresh heartbeat
    (``None``: only :data:`_HEARTBEAT_FRESH_SECONDS` does).
    """
    positions = {o.name: _position(o) for o in observations}
    observed = {o.name: _observed(o, positions[o.name]) for o in observations}
    master = resolve_master(datasources, observed, promoted=promoted).master
    reference = next((o for o in observations if master and o.name == master.name), None)
    if reference is None:
        # No master: measure against the most advanced reachable replica (the freshest
        # heartbeat, then the furthest GTID position).
        replicas = [o for o in observations if o.reachable and o.replicating]
        if replicas:
            reference = max(
                replicas,
                key=lambda o: (
                    o.heartbeat or 0.0,
                    sum(seq for _, seq in positions[o.name].domains.values()),
                ),
            )
    health: dict[str, Health] = {}
    for obs in observations:
        h = observed[obs.name]
        if obs.reachable:
            lag, source = _lag(
                obs,
                reference,
                positions,
                master_alive=master is not None,
                monitor_interval=monitor_interval,
            )
            h = replace(h, lag=lag, lag_source=source)
        health[obs.name] = h
    return health


def _observed(obs: Observation, position: CausalToken) -> Health:
    """What one observation says, without the lag (which needs the whole round)."""
    if not obs.reachable:
        return Health(
            name=obs.name,
            reachable=False,
            observed_at=obs.observed_at,
            error=obs.error,
            error_code=obs.error_code,
            position=position,
        )
    return Health(
        name=obs.name,
        reachable=True,
        observed_at=obs.observed_at,
        read_only=obs.read_only,
        server_id=obs.server_id,
        replicating=obs.replicating,
        master_server_id=obs.master_server_id,
        master_host=obs.master_host,
        master_port=obs.master_port,
        io_running=obs.io_running,
        sql_running=obs.sql_running,
        position=position,
        gtid_binlog_pos=obs.gtid_binlog_pos,
        gtid_slave_pos=obs.gtid_slave_pos,
        tracks_last_gtid=obs.tracks_last_gtid,
        error=obs.error,
    )


def _lag(
    obs: Observation,
    ref: Observation | None,
    positions: Mapping[str, CausalToken],
    *,
    master_alive: bool,
    monitor_interval: float | None,
) -> tuple[float | None, str]:
    """``obs``'s lag behind ``ref`` (the master when ``master_alive``, else the most
    advanced replica), and how it was measured."""
    if not obs.replicating:
        return (0.0, "master") if obs.read_only is False else (None, "")
    threads_ok = bool(obs.io_running) and bool(obs.sql_running)
    if ref is not None and ref.name == obs.name:
        return 0.0, "heartbeat"
    if not threads_ok and master_alive:
        if ref is not None and ref.now is not None and obs.heartbeat is not None:
            return max(0.0, ref.now - obs.heartbeat), "heartbeat"
        return None, ""
    if ref is not None and positions[obs.name].covers(positions[ref.name]):
        return 0.0, "gtid"
    if ref is not None and ref.heartbeat is not None and obs.heartbeat is not None:
        age = None if ref.now is None else ref.now - ref.heartbeat
        fresh = age is not None and age < _HEARTBEAT_FRESH_SECONDS
        stalled = (
            fresh
            and master_alive
            and monitor_interval is not None
            and age is not None
            and age > HEARTBEAT_STALE_INTERVALS * monitor_interval
        )
        if stalled and ref.now is not None:
            # The writer stalled: the replica may have applied the master's last
            # heartbeat and not the writes since.  Its heartbeat's age bounds its lag
            # from above.
            return max(0.0, ref.now - obs.heartbeat), "heartbeat"
        if fresh or not master_alive:
            return max(0.0, ref.heartbeat - obs.heartbeat), "heartbeat"
    if obs.sql_running and obs.seconds_behind_master is not None:
        return float(obs.seconds_behind_master), "seconds_behind_master"
    return None, ""
