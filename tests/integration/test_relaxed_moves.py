"""Open RO_RELAXED connections follow their own policy: they move off a server that no
longer suits them at their next transaction start, never in the middle of one.

- a replica that lags past the *connection's* ``max_lag`` (the URL's), even when the
  service's own ``max_lag`` is larger;
- a replica that a switchover made the master.
"""

from __future__ import annotations

import pytest

import sqlrouter
from sqlrouter._runtime import handles
from sqlrouter.routing.router import observed_master
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import server_id, wait_until

pytestmark = pytest.mark.sandbox


def where(conn: sqlrouter.Connection) -> str:
    assert conn.datasource is not None
    return conn.datasource.name


def test_open_connection_uses_its_own_max_lag(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    conn = sqlrouter.connect(sb.url("RO_RELAXED", max_lag=1, autocommit="false"))
    try:
        (handle,) = handles()
        handle.override(max_lag=30.0)  # the service's threshold is far above the URL's
        stuck = where(conn)
        # Lag is measured from the heartbeat: let one reach the replica before it stops
        # applying (else its lag is unknown, not growing).
        wait_until(
            lambda: sb.query(stuck, "SELECT COUNT(*) FROM sqlrouter.heartbeat")[0][0] > 0,
            timeout=30,
            what=f"a heartbeat on {stuck}",
        )
        sb.fault(stuck, "stop-sql")
        try:
            conn.begin()
            server_id(conn)
            # The replica falls behind by more than the connection's max_lag (1 s) ...
            wait_until(
                lambda: (handle.monitor.snapshot.health_of(stuck).lag or 0.0) > 1.5,
                timeout=30,
                what=f"{stuck}'s lag past 1.5s",
            )
            # ... but the open transaction finishes where it started.
            server_id(conn)
            assert where(conn) == stuck
            conn.commit()
            # The next transaction starts on another server.
            server_id(conn)
            assert where(conn) != stuck
            conn.commit()
        finally:
            sb.fault(stuck, "resume")
    finally:
        conn.close()


def test_open_connection_leaves_a_replica_made_master(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    service = sb.service()
    conns = [
        sqlrouter.connect(sb.url("RO_RELAXED", max_lag=5, autocommit="true")) for _ in range(4)
    ]
    try:
        on_db2 = [c for c in conns if where(c) == "db2"]
        assert on_db2, [where(c) for c in conns]
        (handle,) = handles()
        switchover(service, "db2")
        try:
            wait_until(
                lambda: handle.monitor.snapshot.health_of("db2").writable,
                timeout=10,
                what="db2 seen writable",
            )
            for conn in on_db2:
                # Within a monitor round or two, the next statement runs on a replica.
                wait_until(
                    lambda conn=conn: server_id(conn) != 2,  # type: ignore[misc]
                    timeout=10,
                    what="a relaxed connection leaving the new master",
                )
                assert where(conn) in {"db1", "db3"}
        finally:
            switchover(service, "db1")
    finally:
        for conn in conns:
            conn.close()


def test_fallback_on_a_master_demoted_by_another_tool(fresh_cluster: Sandbox) -> None:
    """A relaxed connection on the master because no replica qualified; another tool
    demotes that master without killing its sessions; the session writes on the new
    master: the relaxed connection's next read sees that write."""
    sb = fresh_cluster
    repl = sb.service().replication_credentials
    assert repl is not None
    with sqlrouter.session():
        probe = sqlrouter.connect(sb.url("RO_RELAXED", autocommit="true", max_lag=3600))
        probe.close()
        (handle,) = handles()
        for name in ("db2", "db3"):
            handle.monitor.set_offline(name, True)
        reader = sqlrouter.connect(sb.url("RO_RELAXED", autocommit="true", max_lag=3600))
        try:
            assert where(reader) == "db1" and reader.decision is not None
            assert reader.decision.is_fallback
            # Another tool's switchover db1 -> db2: no session is killed.
            sb.query("db1", "SET GLOBAL read_only = 1")
            (pos,) = sb.query("db1", "SELECT @@gtid_binlog_pos")[0]
            sb.query("db2", f"SELECT MASTER_GTID_WAIT('{pos}', 10)")
            sb.query("db2", "STOP SLAVE")
            sb.query("db2", "RESET SLAVE ALL")
            sb.query("db2", "SET GLOBAL read_only = 0")
            for name in ("db1", "db3"):
                sb.query(name, "STOP SLAVE")
                sb.query(
                    name,
                    f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={sb.node('db2').port}, "
                    f"MASTER_USER='{repl.user}', MASTER_PASSWORD='{repl.password}', "
                    "MASTER_USE_GTID=slave_pos",
                )
                sb.query(name, "START SLAVE")
            handle.monitor.set_offline("db2", False)

            def db2_is_master() -> bool:
                master = observed_master(handle.monitor.snapshot)
                return master is not None and master.name == "db2"

            wait_until(db2_is_master, timeout=10, what="db2 seen as the master")
            sb.query("db1", "STOP SLAVE SQL_THREAD")  # the old master lags behind
            try:
                writer = sqlrouter.connect(sb.url("RW_STRICT", autocommit="true"))
                with writer.cursor() as cur:
                    cur.execute("CREATE TABLE appdb.demoted (n INT)")
                    cur.execute("INSERT INTO appdb.demoted VALUES (1)")
                writer.close()
                with reader.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM appdb.demoted")
                    assert cur.fetchone() == (1,)
                assert where(reader) != "db1"
            finally:
                sb.query("db1", "START SLAVE SQL_THREAD")
        finally:
            reader.close()
