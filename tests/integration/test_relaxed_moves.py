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
