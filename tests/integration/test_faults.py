"""Faults on a real cluster: events, invalidation, retries, clear errors, fencing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pymysql
import pytest

import sqlrouter
from sqlrouter import events
from sqlrouter._runtime import handles
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.router import observed_master, resolve_master
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import server_id, wait_until

pytestmark = pytest.mark.sandbox


def handle() -> ServiceHandle:
    (h,) = handles()
    return h


def rw(sb: Sandbox, **params: Any) -> sqlrouter.Connection:
    return sqlrouter.connect(sb.url("RW_STRICT", autocommit="true", **params))


def ro(sb: Sandbox, **params: Any) -> sqlrouter.Connection:
    return sqlrouter.connect(sb.url("RO_RELAXED", autocommit="true", **params))


class Recorder:
    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: events.Event) -> None:
        with self.lock:
            self.events.append(event)

    def seen(self, name: str, ds: str | None = None) -> bool:
        with self.lock:
            return any(e.name == name and (ds is None or e.datasource == ds) for e in self.events)


def test_events_follow_the_cluster(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    rec = Recorder()
    with events.subscribe(events.EVENT_NAMES, rec):
        ro(sb).close()  # starts the monitor
        sb.fault("db3", "kill")
        wait_until(lambda: rec.seen("datasource_down", "db3"), 5)
        sb.fault("db3", "restart")
        wait_until(lambda: rec.seen("datasource_up", "db3"), 10)
        sb.fault("db2", "delay", 3)
        try:
            wait_until(lambda: rec.seen("lag_exceeded", "db2"), 10)
        finally:
            sb.fault("db2", "resume")
        wait_until(lambda: rec.seen("lag_recovered", "db2"), 10)
        handle().monitor.set_offline("db2", True)
        assert rec.seen("datasource_offline", "db2")
        handle().monitor.set_offline("db2", False)
        assert rec.seen("datasource_online", "db2")
    assert not rec.seen("master_changed")


def test_offline_invalidates_at_the_transaction_boundary(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    conn = rw(sb)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE appdb.inv (id INT PRIMARY KEY)")
        conn.begin()
        cur.execute("INSERT INTO inv VALUES (1)")
        handle().monitor.set_offline("db1", True)
        cur.execute("INSERT INTO inv VALUES (2)")  # the transaction may finish
        conn.commit()
        with pytest.raises(sqlrouter.ConnectionInvalidated) as info:
            cur.execute("SELECT 1")
    assert info.value.args[0] == sqlrouter.errors.ER_CONNECTION_INVALIDATED
    assert isinstance(info.value, pymysql.err.OperationalError)
    assert "db1" in str(info.value) and "offline" in str(info.value)
    assert not conn.open
    handle().monitor.set_offline("db1", False)
    assert sb.query("db1", "SELECT COUNT(*) FROM appdb.inv") == [(2,)]


def test_ping_reports_an_invalidated_connection(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    conn = rw(sb)
    conn.ping()
    handle().monitor.set_offline("db1", True)
    with pytest.raises(sqlrouter.ConnectionInvalidated):
        conn.ping()
    handle().monitor.set_offline("db1", False)


def test_relaxed_connection_moves_when_its_replica_goes_offline(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    conn = ro(sb)
    assert conn.datasource is not None
    first = conn.datasource.name
    handle().monitor.set_offline(first, True)
    assert server_id(conn) != int(first[2:])  # moved, the read did not fail
    assert conn.datasource.name != first
    assert handle().open_connections().get(first, 0) == 0


def test_master_killed_in_autocommit_and_mid_transaction(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    with rw(sb) as setup, setup.cursor() as cur:
        cur.execute("CREATE TABLE appdb.k (id INT PRIMARY KEY)")
    auto = rw(sb, read_timeout=2)
    tx = rw(sb, read_timeout=2)
    tx.begin()
    with tx.cursor() as cur:
        cur.execute("INSERT INTO k VALUES (100)")
    with auto.cursor() as cur:
        cur.execute("INSERT INTO k VALUES (1)")
    sb.fault("db1", "kill")
    with pytest.raises(sqlrouter.OperationalError) as auto_err, auto.cursor() as cur:
        cur.execute("INSERT INTO k VALUES (2)")
    with pytest.raises(sqlrouter.OperationalError) as tx_err, tx.cursor() as cur:
        cur.execute("INSERT INTO k VALUES (101)")
    for err in (auto_err.value, tx_err.value):
        text = str(err)
        assert "db1" in text and "sandbox" in text
        assert "Traceback" not in text
    # Whichever noticed first (the monitor or the socket), the message says what happened.
    assert isinstance(auto_err.value, sqlrouter.OutcomeUnknown | sqlrouter.ConnectionInvalidated)
    if isinstance(tx_err.value, sqlrouter.ConnectionInvalidated):
        assert "went down" in str(tx_err.value)
    else:
        assert "nothing of it was committed" in str(tx_err.value)
    sb.fault("db1", "restart")
    rows = sb.query("db1", "SELECT id FROM appdb.k ORDER BY id")
    assert (1,) in rows and (100,) not in rows and (101,) not in rows


def test_commit_in_flight_is_reported_as_outcome_unknown(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    with rw(sb) as setup, setup.cursor() as cur:
        cur.execute("CREATE TABLE appdb.c (id INT PRIMARY KEY)")
    conn = rw(sb, read_timeout=1)
    conn.begin()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO c VALUES (1)")
    sb.fault("db1", "freeze")
    try:
        with pytest.raises(sqlrouter.OutcomeUnknown) as info:
            conn.commit()
    finally:
        sb.fault("db1", "thaw")
    assert "during COMMIT" in str(info.value) and "outcome is unknown" in str(info.value)
    assert info.value.args[0] == 2013


def test_relaxed_autocommit_read_is_retried_once_elsewhere(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    conn = ro(sb, read_timeout=1)
    assert conn.datasource is not None
    first = conn.datasource.name
    sb.fault(first, "freeze")
    try:
        sid = server_id(conn)  # times out on the frozen replica, then runs elsewhere
    finally:
        sb.fault(first, "thaw")
    # Run once more, on another server (the frozen one excluded from the reconnect).
    assert conn.datasource.name != first and sid != int(first[2:]), (conn.datasource, sid)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT GET_LOCK('sqlrouter-test', 0)",
        "SELECT n FROM appdb.resend_t WHERE n = 1 FOR UPDATE",
        "SELECT NEXTVAL(appdb.resend_seq)",
        "CALL appdb.resend_proc()",
    ],
)
def test_relaxed_statement_that_may_lock_or_write_is_never_resent(
    fresh_cluster: Sandbox, statement: str
) -> None:
    sb = fresh_cluster
    with sb.cursor("db1") as cur:
        cur.execute("CREATE TABLE appdb.resend_t (n INT PRIMARY KEY)")
        cur.execute("INSERT INTO appdb.resend_t VALUES (1)")
        cur.execute("CREATE SEQUENCE appdb.resend_seq")
        cur.execute("CREATE PROCEDURE appdb.resend_proc() SELECT 1")
    sb.wait_caught_up("db2")
    sb.wait_caught_up("db3")
    conn = ro(sb, read_timeout=1)
    assert conn.datasource is not None
    first = conn.datasource.name
    sb.fault(first, "freeze")
    try:
        with pytest.raises(sqlrouter.OutcomeUnknown) as info, conn.cursor() as cur:
            cur.execute(statement)
    finally:
        sb.fault(first, "thaw")
    message = str(info.value)
    assert info.value.args[0] == 2013, message
    assert f"connection to {first}" in message and "it was not re-sent" in message
    assert "outcome is unknown" in message
    # Nothing ran elsewhere: no other server holds the lock or moved the sequence.
    for name in ("db1", "db2", "db3"):
        if name != first:
            assert sb.query(name, "SELECT IS_USED_LOCK('sqlrouter-test')") == [(None,)]
    assert sb.query("db1", "SELECT NEXTVAL(appdb.resend_seq)") == [(1,)]


def test_frozen_master_for_half_a_second_is_not_a_failover(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    rec = Recorder()
    with events.subscribe(events.EVENT_NAMES, rec):
        conn = rw(sb)
        h = handle()
        h.monitor.wait_for_round()
        sb.fault("db1", "freeze")
        try:
            time.sleep(0.5)
        finally:
            sb.fault("db1", "thaw")
        for _ in range(4):
            h.monitor.wait_for_round()
        assert server_id(conn) == 1
    assert not rec.seen("master_changed") and not rec.seen("datasource_down", "db1")


def not_master(h: ServiceHandle) -> list[str]:
    """The writable servers that get no write, as the monitor observes them now."""
    snap = h.monitor.snapshot
    m = resolve_master(snap.service.datasources, snap.health, promoted=snap.promoted)
    return [ds.name for ds in m.not_master]


def test_fencing_a_server_that_comes_back_writable(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    rec = Recorder()
    with events.subscribe("master_changed", rec):
        with rw(sb) as conn:
            assert server_id(conn) == 1
        h = handle()
        # A replica turns writable: it still replicates, so db1 keeps the writes.
        sb.query("db2", "SET GLOBAL read_only = 0")
        wait_until(lambda: not_master(h) == ["db2"], 5)
        with rw(sb) as conn:
            assert server_id(conn) == 1
        # A failover by a tool sqlrouter cannot see: db1 demoted, db2 stops replicating,
        # db3 replicates from db2.
        old = rw(sb)
        sb.query("db1", "SET GLOBAL read_only = 1")
        sb.query("db2", "STOP SLAVE")
        sb.query("db2", "RESET SLAVE ALL")
        sb.query("db3", "STOP SLAVE")
        sb.query(
            "db3", f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={sb.node('db2').port}"
        )
        sb.query("db3", "START SLAVE")
        wait_until(lambda: rec.seen("master_changed", "db2"), 5)
        with pytest.raises(sqlrouter.ConnectionInvalidated, match="no longer the master"):
            server_id(old)
        with rw(sb) as conn:
            assert server_id(conn) == 2
        # The old declared master comes back writable, not replicating, believing it is
        # the master: db3 replicates from db2, so db1 is fenced off.
        sb.query("db1", "SET GLOBAL read_only = 0")
        wait_until(lambda: not_master(h) == ["db1"], 5)
        for _ in range(5):
            with rw(sb) as conn:
                assert server_id(conn) == 2
        # A process that starts now, with no past to remember, agrees.
        newcomer = Monitor(sb.service())
        newcomer.start()
        try:
            master = observed_master(newcomer.wait_for_round(after=0, timeout=10))
        finally:
            newcomer.stop()
        assert master is not None and master.name == "db2"


def test_failover_writes_resume_and_relaxed_reads_never_fail(fresh_cluster: Sandbox) -> None:
    from sqlrouter.switchover import failover

    sb = fresh_cluster
    with rw(sb) as setup, setup.cursor() as cur:
        cur.execute("CREATE TABLE appdb.f (id INT AUTO_INCREMENT PRIMARY KEY)")
        cur.execute("INSERT INTO f VALUES ()")
    stop = threading.Event()
    reads = [0]
    failures: list[str] = []

    def reader() -> None:
        conn = ro(sb, read_timeout=2)
        try:
            while not stop.is_set():
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT COUNT(*) FROM f")
                    reads[0] += 1
                except sqlrouter.Error as exc:  # the test fails on any of these
                    failures.append(f"{type(exc).__name__}: {exc}")
                    conn = ro(sb, read_timeout=2)
                time.sleep(0.005)
        finally:
            conn.close()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        sb.fault("db1", "kill")
        wait_until(lambda: not handle().monitor.snapshot.health_of("db1").reachable, 5)
        steps = failover(sb.service(), timeout=30)
        assert steps[-1].ok
        with rw(sb, failover_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO f VALUES ()")
            cur.execute("SELECT @@server_id")
            row = cur.fetchone()
        assert row is not None and row[0] in (2, 3)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert failures == []
    assert reads[0] > 50


def test_relaxed_connection_leaves_a_replica_that_falls_behind(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    rec = Recorder()
    with events.subscribe("lag_exceeded", rec):
        conn = ro(sb, max_lag=1)
        assert conn.datasource is not None
        lagging = conn.datasource.name
        sb.fault(lagging, "delay", 3)
        wait_until(lambda: rec.seen("lag_exceeded", lagging), 10)
        sid = server_id(conn)  # moved at this statement, no error
        assert conn.datasource.name != lagging and sid != int(lagging[2:])
        conn.close()
