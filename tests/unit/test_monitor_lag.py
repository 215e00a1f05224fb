"""The monitor's lag computation (pure: every time comes from the observations)."""

from __future__ import annotations

from dataclasses import replace

from sqlrouter.monitor import Observation, compute_health

NOW = 1_800_000_000.0


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
        io_running=True,
        sql_running=True,
        seconds_behind_master=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def lag(*observations: Observation, name: str = "db2") -> tuple[float | None, str]:
    h = compute_health(observations)[name]
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
    health = compute_health([dead, best, worse])
    assert health["db1"].reachable is False and health["db1"].lag is None
    assert health["db2"].lag == 0.0
    assert health["db3"].lag is not None and abs(health["db3"].lag - 2.0) < 1e-6


def test_dead_master_without_heartbeat_uses_positions() -> None:
    dead = Observation("db1", observed_at=1.0, reachable=False, error="refused")
    a = replica("db2", io_running=False, heartbeat=None)
    b = replica("db3", io_running=False, heartbeat=None)
    health = compute_health([dead, a, b])
    assert health["db2"].lag == 0.0 and health["db3"].lag == 0.0


def test_standalone_read_only_server_has_unknown_lag() -> None:
    alone = Observation("db2", observed_at=1.0, reachable=True, read_only=True)
    assert lag(master(), alone) == (None, "")


def test_split_brain_uses_the_hint_as_reference() -> None:
    other = master(name="db3", server_id=3, gtid_binlog_pos="0-3-5", heartbeat=NOW - 10)
    behind = replica(gtid_slave_pos="0-1-90", gtid_binlog_pos="0-1-90", heartbeat=NOW - 1.2)
    h = compute_health([master(), other, behind], master_hint="db1")
    assert h["db2"].lag is not None and abs(h["db2"].lag - 1.0) < 1e-6
