"""Split brain on a real cluster: the master is observed, never remembered.

db3 is a replica that someone made writable (``SET GLOBAL read_only=0``) while it still
replicates from db1.  Writes must keep going to db1 only, whatever a probe missed, in a
process that watched from the start as in one that starts during the split, and the
monitor must never write its heartbeat on db3 (with ``gtid_strict_mode`` that breaks
db3's replication for good).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pymysql
import pytest

import sqlrouter
from sqlrouter import events
from sqlrouter._runtime import handles
from sqlrouter.gtid import CausalToken
from sqlrouter.routing._probe import HEARTBEAT_SQL
from sqlrouter.routing.router import observed_master
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import HEARTBEAT_TABLE, Sandbox
from tests.fixtures.helpers import server_id, wait_until

pytestmark = pytest.mark.sandbox

#: A process of its own: one RW_STRICT connect, prints the server id or the error.
NEWCOMER = """
import sys, sqlrouter
try:
    conn = sqlrouter.connect(sys.argv[1])
except sqlrouter.Error as exc:
    print(type(exc).__name__, exc.args[-1])
else:
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        print(cur.fetchone()[0])
    conn.close()
"""


def handle() -> ServiceHandle:
    (h,) = handles()
    return h


def rw(sb: Sandbox, **params: Any) -> sqlrouter.Connection:
    return sqlrouter.connect(sb.url("RW_STRICT", autocommit="true", **params))


def newcomer(sb: Sandbox) -> str:
    """What a process started now answers to one RW_STRICT connect."""
    done = subprocess.run(
        [sys.executable, "-c", NEWCOMER, sb.url("RW_STRICT", autocommit="true")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def slave_status(sb: Sandbox, name: str) -> dict[str, Any]:
    with sb.cursor(name) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        assert row is not None, f"{name} does not replicate"
        return dict(zip([d[0] for d in cur.description], row, strict=True))


def local_gtids(sb: Sandbox, name: str, server: int) -> list[str]:
    """The GTIDs server ``server`` binlogged, as ``name``'s binlog state records them."""
    (state,) = sb.query(name, "SELECT @@gtid_binlog_state")[0]
    return [g for g in str(state or "").split(",") if g and int(g.split("-")[1]) == server]


def test_one_missed_probe_never_hands_writes_to_a_writable_replica(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    changes: list[events.Event] = []
    lock = threading.Lock()

    def record(event: events.Event) -> None:
        with lock:
            changes.append(event)

    with events.subscribe("master_changed", record):
        with rw(sb) as conn:
            assert server_id(conn) == 1
        monitor = handle().monitor
        sb.query("db3", "SET GLOBAL read_only = 0")  # db3 still replicates from db1
        wait_until(
            lambda: monitor.snapshot.health_of("db3").read_only is False, 10, "db3 seen writable"
        )
        for _ in range(3):
            with rw(sb) as conn:
                assert server_id(conn) == 1

        sb.fault("db1", "freeze")
        try:
            # A probe of db1 times out (probe_timeout 1 s): db3 is the only writable server.
            wait_until(
                lambda: not monitor.snapshot.health_of("db1").reachable, 10, "db1 probe missed"
            )
            assert observed_master(monitor.snapshot) is None
            with pytest.raises(sqlrouter.NoMasterAvailable) as refused:
                rw(sb).close()
            assert (
                "db3 writable but replicating from db1: a misconfigured replica, never the master"
                in str(refused.value)
            )
            # A process that starts now sees the same: no master.
            during = newcomer(sb)
        finally:
            sb.fault("db1", "thaw")
        assert during.startswith("NoMasterAvailable "), during

        wait_until(lambda: monitor.snapshot.health_of("db1").reachable, 10, "db1 probed again")
        for _ in range(10):
            with rw(sb) as conn:
                assert server_id(conn) == 1
        # A process that starts after the freeze agrees with the one that watched it.
        assert newcomer(sb) == "1"
        master = observed_master(monitor.snapshot)
        assert master is not None and master.name == "db1"

        # db3 still replicates: a write on db1 reaches it, and nothing of db3's own (no
        # heartbeat of the monitor) is in its binlog.
        with rw(sb) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE appdb.after_split (n INT PRIMARY KEY)")
            cur.execute("INSERT INTO appdb.after_split VALUES (1)")
        position = CausalToken.parse(sb.query("db1", "SELECT @@gtid_binlog_pos")[0][0])
        for _ in range(4):  # rounds in which a wrong heartbeat would be written
            monitor.wait_for_round()
        (waited,) = sb.query("db3", f"SELECT MASTER_GTID_WAIT('{position}', 10)")[0]
        status = slave_status(sb, "db3")
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes"), (
            status["Last_SQL_Error"] or status["Last_IO_Error"]
        )
        assert waited == 0
        assert local_gtids(sb, "db3", 3) == []
        assert sb.query("db3", "SELECT n FROM appdb.after_split") == [(1,)]

    # What writes did: db1, then nobody while db1 did not answer, then db1 again.
    with lock:
        seen = [(e.previous, e.datasource) for e in changes]
    assert seen == [("db1", None), (None, "db1")]


def test_the_heartbeat_statement_writes_only_on_a_writable_server_that_does_not_replicate(
    cluster: Sandbox,
) -> None:
    """The monitor's heartbeat statement, run as the admin account (which has READ ONLY
    ADMIN, so the server's read-only check alone would let it write)."""
    sb = cluster
    admin = sb.state.admin
    statement = HEARTBEAT_SQL.format(table=HEARTBEAT_TABLE)

    def heartbeat(name: str) -> int:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=sb.node(name).port,
            user=admin.user,
            password=admin.password,
            autocommit=True,
            connect_timeout=5,
            read_timeout=5,
        )
        try:
            with conn.cursor() as cur:
                return int(cur.execute(statement))
        finally:
            conn.close()

    before = sb.query("db3", "SELECT @@gtid_binlog_state")
    assert heartbeat("db3") == 0  # a read-only replica
    sb.query("db3", "SET GLOBAL read_only = 0")
    try:
        assert heartbeat("db3") == 0  # a replica made writable: its SQL thread runs
    finally:
        sb.query("db3", "SET GLOBAL read_only = 1")
    assert sb.query("db3", "SELECT @@gtid_binlog_state") == before
    assert local_gtids(sb, "db3", 3) == []
    assert heartbeat("db1") in (1, 2)  # the master: inserted, or updated
