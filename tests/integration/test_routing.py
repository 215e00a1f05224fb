"""connect(service URL) against a real sandbox: routing, lag, faults, DB-API."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import pytest

import sqlrouter
from sqlrouter._runtime import handles
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import node_of, returns_before, server_id, wait_until

pytestmark = pytest.mark.sandbox


def relaxed_nodes(sb: Sandbox, count: int, **params: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        with sqlrouter.connect(sb.url("RO_RELAXED", **params)) as conn:
            seen[node_of(sb, conn)] += 1
    return seen


def snapshot_lag(node: str) -> float | None:
    (handle,) = handles()
    return handle.monitor.snapshot.health_of(node).lag


def lag_over(node: str, limit: float) -> bool:
    lag = snapshot_lag(node)
    return lag is not None and lag > limit


def lag_within(node: str, limit: float) -> bool:
    lag = snapshot_lag(node)
    return lag is not None and lag <= limit


def test_rw_strict_lands_on_the_master(cluster: Sandbox) -> None:
    for _ in range(5):
        with sqlrouter.connect(cluster.url("RW_STRICT")) as conn:
            assert server_id(conn) == 1
            assert conn.datasource is not None and conn.datasource.name == "db1"
            assert conn.qos is sqlrouter.QoS.RW_STRICT


def test_rw_strict_is_the_default_qos(cluster: Sandbox) -> None:
    url = cluster.url().replace("qos=RW_STRICT&", "")
    with sqlrouter.connect(url) as conn:
        assert conn.qos is sqlrouter.QoS.RW_STRICT and server_id(conn) == 1


def test_ro_relaxed_spreads_over_replicas(cluster: Sandbox) -> None:
    seen = relaxed_nodes(cluster, 20)
    assert set(seen) == {"db2", "db3"}, seen
    assert min(seen.values()) >= 5, seen


def test_keywords_and_overrides(cluster: Sandbox) -> None:
    st = cluster.state
    with sqlrouter.connect(
        service="sandbox",
        database=st.database,
        user=st.app.user,
        password=st.app.password,
        qos="ro_relaxed",
        registry=str(cluster.registry_path),
    ) as conn:
        assert node_of(cluster, conn) in {"db2", "db3"}
    with sqlrouter.connect(cluster.url("RO_RELAXED"), qos="RW_STRICT") as conn:
        assert server_id(conn) == 1


def test_registry_from_environment(cluster: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLROUTER_REGISTRY", str(cluster.registry_path))
    st = cluster.state
    with sqlrouter.connect(f"sqlrouter://app:{st.app.password}@sandbox/appdb") as conn:
        assert server_id(conn) == 1


def test_a_changed_registry_environment_is_honoured_at_the_next_connect(
    cluster: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """connect() keeps what it found for a URL (a connect plan): a URL that names no
    registry still follows $SQLROUTER_REGISTRY, and the directory, at each connect."""
    url = f"sqlrouter://app:{cluster.state.app.password}@sandbox/appdb?qos=RO_RELAXED"
    monkeypatch.setenv("SQLROUTER_REGISTRY", str(cluster.registry_path))
    with sqlrouter.connect(url, autocommit=True) as conn:
        assert node_of(cluster, conn) in {"db2", "db3"}
    missing = tmp_path / "elsewhere.toml"
    monkeypatch.setenv("SQLROUTER_REGISTRY", str(missing))
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(url, autocommit=True)
    assert str(missing) in str(info.value)
    # A relative registry= is found from the current directory.
    monkeypatch.delenv("SQLROUTER_REGISTRY")
    relative = url + "&registry=sqlrouter.toml"
    monkeypatch.chdir(cluster.registry_path.parent)
    with sqlrouter.connect(relative, autocommit=True) as conn:
        assert node_of(cluster, conn) in {"db2", "db3"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(relative, autocommit=True)
    assert str(tmp_path) in str(info.value)


def test_connect_after_shutdown_watches_the_service_again(cluster: Sandbox) -> None:
    """After shutdown() a connect with a URL used before watches its service anew (it
    does not reuse the handle shutdown() stopped)."""
    url = cluster.url("RO_RELAXED")
    with sqlrouter.connect(url) as conn:
        before = conn._handle
    sqlrouter.shutdown()
    with sqlrouter.connect(url) as conn:
        assert conn._handle is not before
        assert conn._handle in handles()
        assert conn._handle.monitor.running


def test_unknown_service_and_missing_registry(cluster: Sandbox, tmp_path: object) -> None:
    url = cluster.url().replace("@sandbox/", "@sandbx/")
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(url)
    assert "sandbx" in str(info.value) and "sandbox" in str(info.value)
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(
            cluster.url().replace(str(cluster.registry_path), "/nonexistent/sqlrouter.toml")
        )
    assert "/nonexistent/sqlrouter.toml" in str(info.value)


def test_dbapi_surface(cluster: Sandbox) -> None:
    assert sqlrouter.apilevel == "2.0"
    assert sqlrouter.threadsafety == 1
    assert sqlrouter.paramstyle == "pyformat"
    with sqlrouter.connect(cluster.url("RW_STRICT")) as conn:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS dbapi")
            cur.execute(
                "CREATE TABLE dbapi (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) UNIQUE)"
            )
            cur.execute("INSERT INTO dbapi (name) VALUES (%s)", ("a",))
            assert cur.rowcount == 1 and cur.lastrowid == 1
            cur.executemany("INSERT INTO dbapi (name) VALUES (%s)", [("b",), ("c",)])
            assert cur.rowcount == 2
            conn.commit()
            cur.execute("SELECT id, name FROM dbapi ORDER BY id")
            assert cur.description is not None
            assert [d[0] for d in cur.description] == ["id", "name"]
            assert cur.fetchone() == (1, "a")
            assert cur.fetchmany(1) == ((2, "b"),)
            assert cur.fetchall() == ((3, "c"),)
            cur.execute("SELECT name FROM dbapi ORDER BY id")
            assert [row[0] for row in cur] == ["a", "b", "c"]
            with pytest.raises(sqlrouter.IntegrityError) as info:
                cur.execute("INSERT INTO dbapi (name) VALUES ('a')")
            assert info.value.args[0] == 1062
            assert isinstance(info.value, pymysql.err.IntegrityError)
            cur.execute("DROP PROCEDURE IF EXISTS twice")
            cur.execute("CREATE PROCEDURE twice(IN x INT) SELECT x * 2")
            cur.callproc("twice", (21,))
            assert cur.fetchall() == ((42,),)
            assert cur.nextset() is True  # the procedure's final status
            assert cur.nextset() is None
        with conn.cursor(sqlrouter.cursors.DictCursor) as dcur:
            dcur.execute("SELECT name FROM dbapi WHERE id = %(id)s", {"id": 2})
            assert dcur.fetchone() == {"name": "b"}
        with conn.cursor(sqlrouter.cursors.SSCursor) as scur:
            scur.execute("SELECT id FROM dbapi ORDER BY id")
            assert [r[0] for r in scur.fetchall_unbuffered()] == [1, 2, 3]
        conn.autocommit(False)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO dbapi (name) VALUES ('rolled back')")
        conn.rollback()
        conn.ping()
        with conn.cursor() as cur:
            assert cur.execute("SELECT * FROM dbapi WHERE name = 'rolled back'") == 0
    assert not conn.open
    # cursorclass given to connect()
    with (
        sqlrouter.connect(
            cluster.url("RO_RELAXED"), cursorclass=sqlrouter.cursors.DictCursor
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT 1 AS one")
        row: Any = cur.fetchone()
        assert row == {"one": 1}


def test_delayed_replica_drops_out_and_returns(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    assert set(relaxed_nodes(sb, 6, max_lag=1)) == {"db2", "db3"}
    sb.fault("db2", "delay", 3)
    try:
        wait_until(lambda: lag_over("db2", 1.0), timeout=10)
        seen = relaxed_nodes(sb, 10, max_lag=1)
        assert seen == Counter({"db3": 10}), seen
    finally:
        sb.fault("db2", "resume")
    wait_until(lambda: lag_within("db2", 1.0), timeout=10)
    assert "db2" in relaxed_nodes(sb, 6, max_lag=1)


def test_stopped_io_thread_is_excluded(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    assert "db3" in relaxed_nodes(sb, 4)
    (handle,) = handles()
    interval = handle.service.monitor_interval
    sb.fault("db3", "stop-io")
    # Seconds_Behind_Master is NULL now, and the heartbeat age grows while the master
    # keeps writing (the monitor's heartbeat is a write every round).
    # Excluded once its lag is over max_lag, or unknown (no heartbeat applied yet).
    # Excluded by its lag, measured by the monitor (a deadline to wait, no duration
    # asserted: how soon depends on the machine's load), while it still answers.
    wait_until(lambda: not lag_within("db3", 1.0), timeout=10 + 2 * interval)
    assert relaxed_nodes(sb, 6) == Counter({"db2": 6})
    health = handle.monitor.snapshot.health_of("db3")
    assert health.reachable and health.read_only is True
    assert health.io_running is False
    assert health.lag is None or (health.lag_source == "heartbeat" and health.lag > 1.0)


def test_frozen_replica_relaxed_connect_is_bounded(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    relaxed_nodes(sb, 2)  # monitor running
    sb.fault("db2", "freeze")
    try:
        for _ in range(6):
            # Bounded by connect_timeout: it returns, elsewhere, while db2 stays frozen.
            conn = returns_before(
                lambda: sqlrouter.connect(sb.url("RO_RELAXED", connect_timeout=1)),
                "the frozen db2 to be thawed",
            )
            with conn:
                assert node_of(sb, conn) != "db2"
    finally:
        sb.fault("db2", "thaw")


def test_master_killed(fresh_cluster: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = fresh_cluster
    # What this thread sleeps: a RW_STRICT connect waits for a master by polling.
    slept: list[float] = []
    me = threading.get_ident()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.get_ident() == me:
            slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with sqlrouter.connect(sb.url("RW_STRICT")) as conn:
        assert server_id(conn) == 1
    sb.fault("db1", "kill")
    (handle,) = handles()
    wait_until(lambda: not handle.monitor.snapshot.health_of("db1").reachable, timeout=5)
    slept.clear()
    with pytest.raises(sqlrouter.NoMasterAvailable) as info:
        sqlrouter.connect(sb.url("RW_STRICT"))
    assert slept == []  # failover_timeout=0 (the default): it fails without waiting
    message = str(info.value)
    assert "sandbox" in message and "db1" in message
    assert info.value.args[0] == sqlrouter.errors.ER_NO_MASTER
    assert isinstance(info.value, pymysql.err.OperationalError)
    # Reads keep working on the replicas.
    assert set(relaxed_nodes(sb, 6)) <= {"db2", "db3"}
    # failover_timeout: a RW_STRICT connect waits that long for a master, then fails.
    slept.clear()
    start = time.monotonic()
    with pytest.raises(sqlrouter.NoMasterAvailable):
        sqlrouter.connect(sb.url("RW_STRICT", failover_timeout=0.5))
    assert slept  # it polled for a master...
    assert time.monotonic() - start >= 0.5  # ... for that long at least (a load only adds)


def test_fallback_error_and_master(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    relaxed_nodes(sb, 1)
    sb.fault("db2", "stop-sql")
    sb.fault("db3", "stop-sql")
    wait_until(lambda: not any(lag_within(n, 0.5) for n in ("db2", "db3")), timeout=10)
    with sqlrouter.connect(sb.url("RO_RELAXED", max_lag=0.5)) as conn:
        assert server_id(conn) == 1
        assert conn.decision is not None and conn.decision.is_fallback
    with pytest.raises(sqlrouter.NoReplicaAvailable) as info:
        sqlrouter.connect(sb.url("RO_RELAXED", max_lag=0.5, fallback="error"))
    assert "db2" in str(info.value) and "db3" in str(info.value)


def test_no_password_in_repr_errors_or_debug_logs(
    cluster: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    password = cluster.state.app.password
    caplog.set_level(logging.DEBUG, logger="sqlrouter")
    with sqlrouter.connect(cluster.url("RO_RELAXED")) as conn:
        assert password not in repr(conn)
        assert password not in str(conn.url) and password not in repr(conn.url)
    bad = cluster.url().replace("@sandbox/", "@nosuch/")
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(bad)
    assert password not in str(info.value) and password not in repr(info.value)
    with pytest.raises(sqlrouter.OperationalError) as info2:
        sqlrouter.connect(cluster.url().replace(password, password + "x"))
    assert password not in str(info2.value)
    assert caplog.records, "expected DEBUG log lines from sqlrouter"
    assert all(password not in r.getMessage() for r in caplog.records)
    for handle in handles():
        assert password not in repr(handle)


def test_tls_preferred_with_one_context_per_process(cluster: Sandbox) -> None:
    """PyMySQL's default (TLS PREFERRED) is kept, with its SSL context built once."""
    a = sqlrouter.connect(cluster.url("RO_RELAXED"))
    b = sqlrouter.connect(cluster.url("RW_STRICT"))
    plain = pymysql.connections.Connection(
        host="127.0.0.1", port=cluster.master.port, defer_connect=True
    )
    try:
        assert a.ssl is True and a._ssl_required is False  # PREFERRED, as PyMySQL's
        ctx_a, ctx_b, ctx_plain = (getattr(c, "ctx") for c in (a, b, plain))  # noqa: B009
        assert ctx_a is ctx_b
        assert ctx_a.verify_mode == ctx_plain.verify_mode
        assert ctx_a.check_hostname == ctx_plain.check_hostname
        with sqlrouter.connect(cluster.url("RO_RELAXED"), ssl_disabled=True) as off:
            assert off.ssl is False
    finally:
        a.close()
        b.close()
