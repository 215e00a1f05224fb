"""The monitor's lag computation (pure: every time comes from the observations), and the
master it takes as reference and writes its heartbeat on (from the last round only)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlrouter.routing.lag import Observation, compute_health
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.router import observed_master, resolve_master
from sqlrouter.topology import Credentials, DataSource, Role, Service

NOW = 1_800_000_000.0

#: db1 declared master, db2 and db3 replicas, on 127.0.0.1:3310..3312.
DATASOURCES = tuple(
    DataSource(name, "127.0.0.1", 3310 + i, Role.MASTER if i == 0 else Role.REPLICA)
    for i, name in enumerate(("db1", "db2", "db3"))
)


def master(**kw: object) -> Observation:
    base = Observation(
        "db1",
        observed_at=1.0,
        reachable=True,
        server_id=1,
        read_only=False,
        gtid_binlog_pos="0-1-100",
        now=NOW,
        heartbeat=NOW - 0.2,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def replica(name: str = "db2", **kw: object) -> Observation:
    base = Observation(
        name,
        observed_at=1.0,
        reachable=True,
        server_id=2,
        read_only=True,
        gtid_binlog_pos="0-1-100",
        gtid_slave_pos="0-1-100",
        now=NOW,
        heartbeat=NOW - 0.2,
        replicating=True,
        master_server_id=1,
        master_host="127.0.0.1",
        master_port=3310,
        io_running=True,
        sql_running=True,
        seconds_behind_master=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def lag(*observations: Observation, name: str = "db2") -> tuple[float | None, str]:
    h = compute_health(observations, DATASOURCES)[name]
    return h.lag, h.lag_source


def test_caught_up_replica_has_no_lag() -> None:
    assert lag(master(), replica()) == (0.0, "gtid")
    assert lag(master(), replica(), name="db1") == (0.0, "master")


def test_lag_is_the_heartbeat_difference() -> None:
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 3.2)
    value, source = lag(master(), behind)
    assert source == "heartbeat" and value is not None and abs(value - 3.0) < 1e-6


def test_stopped_io_thread_lags_by_the_age_of_its_heartbeat() -> None:
    # Seconds_Behind_Master is NULL (or worse, 0) while the IO thread is stopped; the
    # heartbeat age keeps growing as long as the master is alive.
    stopped = replica(io_running=False, seconds_behind_master=0, heartbeat=NOW - 2.5)
    value, source = lag(master(), stopped)
    assert source == "heartbeat" and value is not None and abs(value - 2.5) < 1e-6


def test_stopped_thread_without_heartbeat_is_unknown() -> None:
    stopped = replica(sql_running=False, heartbeat=None)
    assert lag(master(heartbeat=None), stopped) == (None, "")


def test_silently_stalled_io_thread_is_seen_by_the_heartbeat() -> None:
    # Threads "running", Seconds_Behind_Master 0, but nothing arrives any more.
    stalled = replica(gtid_slave_pos="0-1-50", gtid_binlog_pos="0-1-50", heartbeat=NOW - 30)
    value, source = lag(master(), stalled)
    assert source == "heartbeat" and value is not None and value > 29


def test_falls_back_to_seconds_behind_master_without_heartbeat() -> None:
    behind = replica(
        gtid_slave_pos="0-1-90", gtid_binlog_pos="", heartbeat=None, seconds_behind_master=7
    )
    assert lag(master(heartbeat=None), behind) == (7.0, "seconds_behind_master")
    null = replica(
        gtid_slave_pos="0-1-90", gtid_binlog_pos="", heartbeat=None, seconds_behind_master=None
    )
    assert lag(master(heartbeat=None), null) == (None, "")


def test_dead_master_replicas_measured_against_the_best_replica() -> None:
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    best = replica("db2", io_running=False, gtid_slave_pos="0-1-100", heartbeat=NOW - 5)
    worse = replica(
        "db3",
        io_running=False,
        gtid_slave_pos="0-1-95",
        gtid_binlog_pos="0-1-95",
        heartbeat=NOW - 7,
    )
    health = compute_health([dead, best, worse], DATASOURCES)
    assert health["db1"].reachable is False and health["db1"].lag is None
    assert health["db2"].lag == 0.0
    assert health["db3"].lag is not None and abs(health["db3"].lag - 2.0) < 1e-6


def test_dead_master_without_heartbeat_uses_positions() -> None:
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    a = replica("db2", io_running=False, heartbeat=None)
    b = replica("db3", io_running=False, heartbeat=None)
    health = compute_health([dead, a, b], DATASOURCES)
    assert health["db2"].lag == 0.0 and health["db3"].lag == 0.0


def test_standalone_read_only_server_has_unknown_lag() -> None:
    alone = Observation("db2", observed_at=1.0, reachable=True, read_only=True)
    assert lag(master(), alone) == (None, "")


def test_split_brain_the_reference_is_what_the_replicas_replicate_from() -> None:
    # db3 writable and not replicating (an old master back, a restored copy): the
    # replicas replicate from db1, which is the master and the lag reference.
    other = master(name="db3", server_id=3, gtid_binlog_pos="0-3-5", heartbeat=NOW - 10)
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 1.2)
    h = compute_health([master(), behind, other], DATASOURCES)
    assert h["db2"].lag is not None and abs(h["db2"].lag - 1.0) < 1e-6
    assert h["db2"].lag_source == "heartbeat"
    # The replica follows db3: db3 is the reference, whatever the declared roles say.
    ahead = replace(other, gtid_binlog_pos="0-3-95", heartbeat=NOW - 1.0)
    follows = replace(behind, master_server_id=3, master_port=3312, heartbeat=NOW - 3.0)
    h = compute_health([master(), follows, ahead], DATASOURCES)
    assert h["db2"].lag is not None and abs(h["db2"].lag - 2.0) < 1e-6


def test_split_brain_without_a_master_measures_against_the_best_replica() -> None:
    # db1 and db3 writable, the replica cannot tell (it names neither): no master, so no
    # writable server is taken as the reference and the replica is its own.
    other = master(name="db3", server_id=3, gtid_binlog_pos="0-3-5", heartbeat=NOW - 10)
    lost = replica(master_server_id=9, master_host="10.0.0.9", heartbeat=NOW - 5)
    h = compute_health([master(), lost, other], DATASOURCES)
    assert h["db2"].lag == 0.0


def test_a_writable_replica_is_never_the_reference() -> None:
    # db3 was made writable while it replicates from db1, and db1 missed its probe:
    # there is no master; db3 is not it, and its lag is not taken as 0.
    missed = Observation("db1", observed_at=1.0, reachable=False, error="probe timed out")
    writable = replica(
        "db3",
        server_id=3,
        read_only=False,
        heartbeat=NOW - 4.0,
        gtid_binlog_pos="0-1-80",
        gtid_slave_pos="0-1-80",
    )
    good = replica(heartbeat=NOW - 1.0)
    h = compute_health([missed, good, writable], DATASOURCES)
    assert h["db2"].lag == 0.0
    assert h["db3"].lag is not None and abs(h["db3"].lag - 3.0) < 1e-6


def test_the_promotion_picks_the_reference_only_in_a_tie() -> None:
    other = master(name="db3", server_id=3, gtid_binlog_pos="0-3-5", heartbeat=NOW - 10)
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 1.2)
    h = compute_health([master(), behind, other], DATASOURCES, promoted="db3")
    assert h["db2"].lag is not None and abs(h["db2"].lag - 1.0) < 1e-6


def test_a_stalled_heartbeat_writer_does_not_hide_a_replica_s_lag() -> None:
    # The cluster's single heartbeat writer stalled 3 s ago (interval 1 s): the
    # master's heartbeat is frozen at NOW - 3.  A replica 3 s behind has applied that
    # very heartbeat but not the writes since (its GTID position does not cover the
    # master's): its lag is not 0 but at least the 3 s its heartbeat is old.
    frozen = master(heartbeat=NOW - 3.0)
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 3.0)
    h = compute_health([frozen, behind], DATASOURCES, monitor_interval=1.0)["db2"]
    assert h.lag is not None and h.lag >= 3.0 - 1e-6
    assert h.lag_source == "heartbeat"
    # One that covers the master's position has no lag, stalled writer or not.
    caught_up = replica(heartbeat=NOW - 3.0)
    h = compute_health([frozen, caught_up], DATASOURCES, monitor_interval=1.0)["db2"]
    assert (h.lag, h.lag_source) == (0.0, "gtid")
    # A heartbeat written within the last two intervals is measured against as before.
    fresh = master(heartbeat=NOW - 1.5)
    behind = replace(behind, heartbeat=NOW - 2.0)
    h = compute_health([fresh, behind], DATASOURCES, monitor_interval=1.0)["db2"]
    assert h.lag is not None and abs(h.lag - 0.5) < 1e-6


# --- the monitor: no history ------------------------------------------------------------

SERVICE = Service("sandbox", DATASOURCES, monitor_credentials=Credentials("monitor", "pw"))


def publish(monitor: Monitor, *rounds: Sequence[Observation]) -> list[str | None]:
    """Feed rounds of observations to a monitor that probes nothing; the masters."""
    masters = []
    for observations in rounds:
        master_ = observed_master(monitor.publish(observations))
        masters.append(master_.name if master_ is not None else None)
    return masters


def writable_replica(**kw: object) -> Observation:
    """db3 made writable while it replicates from db1."""
    return replica("db3", server_id=3, read_only=False, **kw)


def test_a_missed_probe_never_moves_the_master(
    caplog: pytest.LogCaptureFixture,
) -> None:
    split = [master(), replica(), writable_replica()]
    missed = [
        Observation("db1", observed_at=2.0, reachable=False, error="probe timed out after 1s"),
        replica(),
        writable_replica(),
    ]
    monitor = Monitor(SERVICE)
    with caplog.at_level(logging.INFO, logger="sqlrouter.monitor"):
        assert publish(monitor, split, split, missed, missed, split) == [
            "db1",
            "db1",
            None,
            None,
            "db1",
        ]
    # The log says what writes do, once per change.
    assert [r.getMessage() for r in caplog.records] == [
        "service 'sandbox': writable servers: db1, db3; writes go to db1 only: master db1 "
        "(writable; split brain: db3 also writable): db3 writable but replicating from db1: "
        "a misconfigured replica, never the master",
        "service 'sandbox': writable servers: db3; writes are refused: no master: db3 is "
        "writable but replicating: db3 writable but replicating from db1: a misconfigured "
        "replica, never the master",
        "service 'sandbox': writable servers: db1, db3; writes go to db1 only: master db1 "
        "(writable; split brain: db3 also writable): db3 writable but replicating from db1: "
        "a misconfigured replica, never the master",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    # A process that starts now agrees with the one that watched.
    assert publish(Monitor(SERVICE), split) == ["db1"]
    assert publish(Monitor(SERVICE), missed) == [None]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sqlrouter.monitor"):
        publish(monitor, [master(), replica(), replica("db3", server_id=3)])
    assert [r.getMessage() for r in caplog.records] == [
        "service 'sandbox': db1 is the only writable server again"
    ]


@st.composite
def observations(draw: st.DrawFn, name: str) -> Observation:
    """Anything one probe of ``name`` may observe, with upstreams among db1..db3."""
    kind = draw(st.sampled_from(["down", "master", "replica", "replica", "writable replica"]))
    server_id = int(name[2:])
    if kind == "down":
        return Observation(name, observed_at=1.0, reachable=False, error="probe timed out")
    if kind == "master":
        return master(name=name, server_id=server_id)
    source = draw(st.integers(1, 4))
    return replica(
        name,
        server_id=server_id,
        read_only=kind == "replica",
        master_server_id=source if draw(st.booleans()) else 0,
        master_port=3309 + source if draw(st.booleans()) else 3306,
        io_running=draw(st.booleans()),
    )


rounds = st.tuples(*(observations(ds.name) for ds in DATASOURCES)).map(list)


@settings(max_examples=200)
@given(st.lists(rounds, min_size=1, max_size=6), st.sampled_from([None, "db1", "db2", "db3"]))
def test_property_the_master_depends_on_the_last_round_only(
    history: list[list[Observation]], promoted: str | None
) -> None:
    watching = Monitor(SERVICE)
    watching.promote(promoted)
    masters = publish(watching, *history)
    newcomer = Monitor(SERVICE)
    newcomer.promote(promoted)
    assert publish(newcomer, history[-1]) == masters[-1:]
    snap = watching.snapshot
    expected = resolve_master(DATASOURCES, snap.health, promoted=promoted).master
    assert masters[-1] == (expected.name if expected is not None else None)
    if expected is not None:
        h = snap.health[expected.name]
        assert h.writable and not h.replicating
