"""The monitor's lag computation (pure: every time comes from the observations), and the
master it takes as reference and writes its heartbeat on (from the last round only)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlrouter.gtid import CausalToken
from sqlrouter.routing.health import Health
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


# --- the rules one at a time (each kills mutants of sqlrouter/routing/lag.py) ------------


def test_the_masters_heartbeat_is_stale_from_eight_seconds() -> None:
    # The master writes a heartbeat every round: one 8 s old or more means the writes
    # stopped (a failing heartbeat, not the replica), so the replica's lag is not measured
    # against it but by Seconds_Behind_Master.
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 20.0)
    behind = replace(behind, seconds_behind_master=4)
    fresh = master(heartbeat=NOW - 7.99)
    value, source = lag(fresh, behind)
    assert source == "heartbeat" and value is not None and abs(value - 12.01) < 1e-6
    assert lag(master(heartbeat=NOW - 8.0), behind) == (4.0, "seconds_behind_master")
    assert lag(master(heartbeat=NOW - 30.0), behind) == (4.0, "seconds_behind_master")
    # The master's clock unknown: its heartbeat's age cannot be told, so it is not used.
    assert lag(master(now=None), behind) == (4.0, "seconds_behind_master")


def test_seconds_behind_master_needs_the_sql_thread() -> None:
    # Seconds_Behind_Master reads 0 or NULL when the SQL thread is stopped: not a lag.
    # (No heartbeat on either side, no master: the replicas measure each other.)
    a = replica("db2", sql_running=False, heartbeat=None, gtid_slave_pos="0-1-99")
    a = replace(a, gtid_binlog_pos="0-1-99", seconds_behind_master=0)
    b = replica("db3", heartbeat=None)
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    assert compute_health([dead, a, b], DATASOURCES)["db2"].lag is None
    running = replace(a, sql_running=True)
    h = compute_health([dead, running, b], DATASOURCES)["db2"]
    assert (h.lag, h.lag_source) == (0.0, "seconds_behind_master")


def test_lag_is_never_negative() -> None:
    # The replica's newest heartbeat is newer than the reference's (clocks apart, or the
    # probes read them at different moments): lag 0, not below.
    ahead = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW + 2.0)
    assert lag(master(), ahead) == (0.0, "heartbeat")
    stopped = replica(io_running=False, heartbeat=NOW + 2.0)
    assert lag(master(), stopped) == (0.0, "heartbeat")


def test_the_reference_replica_measures_itself() -> None:
    # No master reachable: the most advanced replica is the reference, lag 0 by
    # definition (measured as "heartbeat": it is the heartbeat everyone is compared to),
    # even when its GTID position is behind another's (position breaks ties only).
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    best = replica("db2", io_running=False, gtid_slave_pos="0-1-90", heartbeat=NOW - 1)
    best = replace(best, gtid_binlog_pos="0-1-90")
    other = replica("db3", io_running=False, heartbeat=NOW - 4)
    health = compute_health([dead, best, other], DATASOURCES)
    assert (health["db2"].lag, health["db2"].lag_source) == (0.0, "heartbeat")
    assert (health["db3"].lag, health["db3"].lag_source) == (0.0, "gtid")
    older = replace(other, gtid_slave_pos="0-1-80", gtid_binlog_pos="0-1-80")
    health = compute_health([dead, best, older], DATASOURCES)
    assert health["db3"].lag is not None and abs(health["db3"].lag - 3.0) < 1e-6
    # Without heartbeats, the furthest position is the reference.
    a = replace(best, heartbeat=None)
    b = replace(older, heartbeat=None, seconds_behind_master=None)
    health = compute_health([dead, b, a], DATASOURCES)
    assert (health["db2"].lag, health["db2"].lag_source) == (0.0, "heartbeat")
    assert (health["db3"].lag, health["db3"].lag_source) == (None, "")


def test_an_unreachable_or_writable_server_is_never_the_reference() -> None:
    # Without a master, only reachable replicas compete: a server that did not answer
    # (listed first, with nothing known) or a writable one that does not replicate is not
    # taken as the reference.
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    a = replica("db2", io_running=False, heartbeat=None, gtid_slave_pos="", gtid_binlog_pos="")
    b = replace(a, name="db3")
    health = compute_health([dead, a, b], DATASOURCES)
    assert (health["db2"].lag, health["db2"].lag_source) == (0.0, "heartbeat")
    assert (health["db3"].lag, health["db3"].lag_source) == (0.0, "gtid")
    # db1 writable but with db3 writable too and the replica naming neither: no master;
    # db1's heartbeat is the freshest, yet db1 is not a replica.
    lost = replica(master_server_id=9, master_host="10.0.0.9", heartbeat=NOW - 5)
    other = master(name="db3", server_id=3, gtid_binlog_pos="0-3-5", heartbeat=NOW - 10)
    health = compute_health([master(heartbeat=NOW), lost, other], DATASOURCES)
    assert (health["db2"].lag, health["db2"].lag_source) == (0.0, "heartbeat")


def _copied(kind: str) -> st.SearchStrategy[Observation]:
    opt_bool = st.none() | st.booleans()
    opt_int = st.none() | st.integers(0, 2**32)
    text = st.text(max_size=8)
    return st.builds(
        Observation,
        name=st.just("db2"),
        observed_at=st.floats(0, 1e9),
        reachable=st.just(kind == "reachable"),
        error=st.none() | text,
        # The probe gives an error number only with an unreachable server.
        error_code=st.none() if kind == "reachable" else opt_int,
        server_id=opt_int,
        read_only=opt_bool,
        gtid_binlog_pos=st.sampled_from(["", "0-1-5", "0-1-5,1-2-7"]),
        gtid_slave_pos=st.sampled_from(["", "0-1-4", "2-1-9"]),
        now=st.none() | st.floats(0, 2e9),
        heartbeat=st.none() | st.floats(0, 2e9),
        replicating=st.booleans(),
        master_server_id=opt_int,
        master_host=text,
        master_port=opt_int,
        io_running=opt_bool,
        sql_running=opt_bool,
        seconds_behind_master=opt_int,
        tracks_last_gtid=opt_bool,
    )


@given(_copied("reachable") | _copied("unreachable"))
def test_property_health_copies_what_the_probe_observed(obs: Observation) -> None:
    h = compute_health([obs], DATASOURCES)["db2"]
    position = CausalToken.from_gtid_list(obs.gtid_binlog_pos).merge(
        CausalToken.from_gtid_list(obs.gtid_slave_pos)
    )
    assert (h.name, h.reachable, h.observed_at) == ("db2", obs.reachable, obs.observed_at)
    assert (h.error, h.error_code, h.position) == (obs.error, obs.error_code, position)
    shared = {f.name for f in fields(Health)} & {f.name for f in fields(Observation)}
    always = {"name", "reachable", "observed_at", "error", "error_code"}
    for name in sorted(shared):
        expected = getattr(obs, name)
        if not obs.reachable and name not in always:
            # Nothing else is known of a server that did not answer.
            expected = getattr(Health("db2", reachable=False, observed_at=0.0), name)
        assert getattr(h, name) == expected, name
    if not obs.reachable:
        assert (h.lag, h.lag_source) == (None, "")


def test_unparsable_positions_count_as_empty() -> None:
    odd = replica(gtid_binlog_pos="garbage", gtid_slave_pos="0-1-100")
    h = compute_health([master(), odd], DATASOURCES)["db2"]
    assert h.position == CausalToken()


@pytest.mark.parametrize(
    ("io", "sql", "running"),
    [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (None, True, False),
        (True, None, False),
    ],
)
def test_threads_run_when_both_are_known_to_run(
    io: bool | None, sql: bool | None, running: bool
) -> None:
    assert Health("db2", True, 1.0, io_running=io, sql_running=sql).threads_running is running


def test_writable_means_reachable_and_known_not_read_only() -> None:
    assert Health("db1", True, 1.0, read_only=False).writable
    assert not Health("db1", False, 1.0, read_only=False).writable
    assert not Health("db1", True, 1.0, read_only=None).writable
    assert not Health("db1", True, 1.0, read_only=True).writable


def test_the_promotion_breaks_a_tie_of_the_reference() -> None:
    # db1 and db3 writable, db2 replicating from db1 and db4 from db3: a tie, no master
    # unless the operator's promotion picks one; then lag is measured against it.
    four = (*DATASOURCES, DataSource("db4", "127.0.0.1", 3313, Role.REPLICA))
    other = master(name="db3", server_id=3, gtid_binlog_pos="1-3-5", heartbeat=NOW - 1.0)
    db2 = replica(heartbeat=NOW - 4.0)
    db4 = replica(
        "db4",
        server_id=4,
        master_server_id=3,
        master_port=3312,
        gtid_binlog_pos="1-3-5",
        gtid_slave_pos="1-3-5",
        heartbeat=NOW - 2.0,
    )
    round_ = [master(), db2, other, db4]
    # No master: the freshest replica, db4, is the reference.
    alone = compute_health(round_, four)["db2"]
    assert alone.lag is not None and abs(alone.lag - 2.0) < 1e-6
    promoted = compute_health(round_, four, promoted="db3")["db2"]
    assert promoted.lag is not None and abs(promoted.lag - 3.0) < 1e-6
    assert promoted.lag_source == "heartbeat"


def test_a_master_without_heartbeat_leaves_seconds_behind_master() -> None:
    # The master's heartbeat table is unusable (NULL), the replica still has old rows.
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 50)
    behind = replace(behind, seconds_behind_master=5)
    assert lag(master(heartbeat=None), behind) == (5.0, "seconds_behind_master")
