"""Switchover and failover on real sandbox clusters, under a continuous writer."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any

import pytest

import sqlrouter
from sqlrouter import events
from sqlrouter._runtime import handles
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.router import observed_master
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import (
    Step,
    TopologyError,
    failover,
    plan_failover,
    plan_switchover,
    switchover,
)
from sqlrouter.topology import Credentials
from tests.fixtures.helpers import wait_until

pytestmark = pytest.mark.sandbox

TABLE = "appdb.sw_writes"


class Writer(threading.Thread):
    """Inserts rows with increasing ids through RW_STRICT connections, reconnecting on
    errors and retrying the same id (the primary key tells a retry from a new row)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="test-writer", daemon=True)
        self.url = url
        #: id -> datasource that acknowledged it ("retry" when found by a duplicate key).
        self.acked: dict[int, str] = {}
        #: ids whose insert failed without an answer: the row may or may not exist.
        self.unknown: set[int] = set()
        self.errors: list[str] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"

    def acked_by(self, name: str) -> int:
        return sum(1 for ds in self.acked.values() if ds == name)

    def run(self) -> None:
        conn: sqlrouter.Connection | None = None
        next_id = 1
        while not self._halt.is_set():
            try:
                if conn is None:
                    conn = sqlrouter.connect(self.url)
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO {TABLE} (id, payload) VALUES (%s, %s)",
                        (next_id, f"row-{next_id}"),
                    )
                conn.commit()
                assert conn.datasource is not None
                self.acked[next_id] = conn.datasource.name
                self.unknown.discard(next_id)
                next_id += 1
                time.sleep(0.002)
            except sqlrouter.IntegrityError:
                # The first attempt committed although its answer was lost.
                self.acked[next_id] = "retry"
                self.unknown.discard(next_id)
                next_id += 1
            except sqlrouter.Error as exc:
                self.errors.append(str(exc))
                self.unknown.add(next_id)
                if conn is not None:
                    with contextlib.suppress(sqlrouter.Error):
                        conn.close()
                    conn = None
                time.sleep(0.02)
        if conn is not None:
            with contextlib.suppress(sqlrouter.Error):
                conn.close()


def create_table(sb: Sandbox, master: str = "db1") -> None:
    sb.query(
        master,
        f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, payload VARCHAR(64) NOT NULL) ENGINE=InnoDB",
    )


def writer_url(sb: Sandbox) -> str:
    # failover_timeout: while no server is writable a connect waits for the new master.
    return sb.url("RW_STRICT", failover_timeout=20, connect_timeout=5)


def writable_nodes(sb: Sandbox) -> list[str]:
    return [s.name for s in sb.status() if s.running and s.read_only is False]


def topology(sb: Sandbox) -> dict[str, tuple[Any, ...]]:
    """What a topology operation changes, per running node."""
    out: dict[str, tuple[Any, ...]] = {}
    for s in sb.status():
        if not s.running:
            continue
        port = sb.query(s.name, "SHOW SLAVE STATUS")
        master_port = port[0][3] if port else None
        out[s.name] = (s.read_only, s.io_running, s.sql_running, master_port, s.gtid_pos)
    return out


def caught_up(sb: Sandbox, master: str, replica: str) -> None:
    """Wait until ``replica`` applied everything ``master`` wrote.

    Not ``Sandbox.wait_caught_up``: it asks every node, and a failed-over master is dead.
    """
    pos = sb.query(master, "SELECT @@gtid_binlog_pos")[0][0]
    done = sb.query(replica, f"SELECT MASTER_GTID_WAIT('{pos}', 30)", timeout=35)[0][0]
    assert done == 0, f"{replica} did not reach {master}'s position {pos}"


def contents(sb: Sandbox, node: str) -> tuple[set[int], tuple[int, int]]:
    ids = {int(r[0]) for r in sb.query(node, f"SELECT id FROM {TABLE}")}
    count, crc = sb.query(
        node, f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT(id, ':', payload))), 0) FROM {TABLE}"
    )[0]
    return ids, (int(count), int(crc))


def check_no_write_lost(sb: Sandbox, writer: Writer, master: str) -> None:
    """Every acknowledged row is on the master, every row there was at least attempted,
    and every running replica has exactly the master's rows."""
    ids, summary = contents(sb, master)
    lost = set(writer.acked) - ids
    assert not lost, f"acknowledged rows missing on {master}: {sorted(lost)[:20]}"
    assert ids - set(writer.acked) <= writer.unknown, "rows nobody wrote"
    assert summary[0] == len(ids)
    for s in sb.status():
        if s.running and s.name != master and s.io_running == "Yes":
            caught_up(sb, master, s.name)
            assert contents(sb, s.name) == (ids, summary), s.name


def check_healthy(sb: Sandbox, master: str, replicas: list[str]) -> None:
    rows = {s.name: s for s in sb.status()}
    assert rows[master].read_only is False
    for name in replicas:

        def ok(name: str = name) -> bool:
            s = next(r for r in sb.status() if r.name == name)
            return s.io_running == "Yes" and s.sql_running == "Yes" and s.read_only is True

        wait_until(ok, 10, f"{name} replicating")
        slave = sb.query(name, "SHOW SLAVE STATUS")[0]
        assert slave[3] == sb.node(master).port, f"{name} replicates from port {slave[3]}"


def history_covers(sb: Sandbox, big: str, small: str) -> bool:
    """Every transaction in ``small``'s binlog is in ``big``'s (by server and sequence)."""

    def state(node: str) -> dict[tuple[int, int], int]:
        text = sb.query(node, "SELECT @@gtid_binlog_state")[0][0]
        out = {}
        for g in text.split(","):
            d, s, n = (int(x) for x in g.split("-"))
            out[(d, s)] = n
        return out

    theirs = state(small)  # first: ``big`` may only move forward meanwhile
    mine = state(big)
    return all(mine.get(k, -1) >= n for k, n in theirs.items())


def landing(sb: Sandbox) -> str | None:
    """Where a RW_STRICT connect lands now (no waiting for a master)."""
    try:
        with sqlrouter.connect(sb.url("RW_STRICT")) as conn:
            return conn.datasource.name if conn.datasource else None
    except sqlrouter.NoMasterAvailable:
        return None


# --------------------------------------------------------------------------- switchover


def test_switchover_there_and_back_under_writes(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    service = sb.service()
    create_table(sb)
    assert landing(sb) == "db1"
    writer = Writer(writer_url(sb))
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) > 50, 20, "writes before the switchover")
        reported: list[Step] = []
        (handle,) = handles()
        # The generation of the snapshot in which this process's monitor saw db2 master.
        seen_in: list[int] = []

        def on_master_changed(event: events.Event) -> None:
            if event.datasource == "db2":  # in the monitor's thread, after it published
                seen_in.append(handle.monitor.snapshot.generation)

        with events.subscribe("master_changed", on_master_changed):
            steps = switchover(service, "db2", report=reported.append)
            returned_in = handle.monitor.snapshot.generation
            # Observed, not configured: this process's monitor follows without a restart.
            wait_until(lambda: landing(sb) == "db2", 10, "RW_STRICT lands on db2")
        assert steps == reported
        assert all(s.ok for s in steps), steps
        names = [s.name for s in steps if s.kind == "step"]
        assert names[:3] == ["plan", "read-only db1", "catch up db2"]
        # Nothing left out, no warning on a healthy sandbox; the waits say what they wait for.
        assert {s.kind for s in steps} <= {"step", "wait"}, steps
        assert steps[0].kind == "wait" and steps[0].detail.startswith("inspecting db1, db2, db3")
        assert "demote db1" in names and "repoint db3" in names and names[-1] == "verify"
        # ... at the latest in the first round that began after the switchover returned
        # (rounds, not seconds: a loaded machine makes both sides slower).
        assert seen_in and seen_in[0] <= returned_in + 2, (seen_in, returned_in)
        # Nothing that db1 accepted is missing from db2.
        assert history_covers(sb, "db2", "db1")
        assert writable_nodes(sb) == ["db2"]
        acked_db2 = writer.acked_by("db2")
        wait_until(lambda: writer.acked_by("db2") > acked_db2 + 50, 20, "writes on db2")

        switchover(service, "db1")
        assert history_covers(sb, "db1", "db2")
        acked_db1 = writer.acked_by("db1")
        wait_until(lambda: writer.acked_by("db1") > acked_db1 + 50, 20, "writes on db1 again")
    finally:
        writer.stop()
    assert writable_nodes(sb) == ["db1"]
    check_healthy(sb, "db1", ["db2", "db3"])
    check_no_write_lost(sb, writer, "db1")
    assert writer.acked_by("db2") > 50


def test_switchover_dry_run_changes_nothing(cluster: Sandbox) -> None:
    service = cluster.service()
    before = topology(cluster)
    plan = plan_switchover(service, "db3")
    assert (plan.kind, plan.old_master, plan.new_master) == ("switchover", "db1", "db3")
    assert plan.repointed == ("db1", "db2")
    assert plan.steps[0].startswith("read-only db1: SET GLOBAL read_only=1")
    assert any("MASTER_GTID_WAIT" in s for s in plan.steps)
    text = str(plan)
    assert "db1 -> db3" in text and cluster.state.repl.password not in text
    steps = [s for s in switchover(service, "db3", dry_run=True) if s.kind == "step"]
    assert steps[0].name == "plan" and steps[-1].detail == "nothing was changed"
    assert [s.name for s in steps[1:4]] == [
        "would read-only db1",
        "would catch up db3",
        "would stop replication db3",
    ]
    assert topology(cluster) == before
    for secret in (cluster.state.repl.password, cluster.state.admin.password):
        assert all(secret not in s.detail for s in steps)


def test_switchover_refusals_change_nothing(cluster: Sandbox) -> None:
    service = cluster.service()
    before = topology(cluster)

    def refused(to: str, **kw: Any) -> TopologyError:
        with pytest.raises(TopologyError) as info:
            switchover(service, to, **kw)
        err = info.value
        assert err.args[0] == 3920 and "nothing was changed" in err.args[1]
        assert isinstance(err, sqlrouter.OperationalError)
        assert topology(cluster) == before
        return err

    err = refused("db9")
    assert "no datasource 'db9'" in str(err) and "db1, db2, db3" in str(err)
    assert "service 'sandbox'" in str(err) and err.step == "plan"
    err = refused("db1")
    assert "db1 is already the master" in str(err)
    assert err.transient is False  # about the request: asking again changes nothing
    with pytest.raises(TopologyError) as info:
        failover(service)
    assert "db1 is writable: the service has a master" in str(info.value)
    assert "use switchover" in str(info.value)
    # About the moment (a master is there now): automation tries again, not blocks.
    assert info.value.refused and info.value.transient
    assert topology(cluster) == before


def test_switchover_refuses_a_bad_candidate(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    cases = [
        ("delay", "db3 is a delayed replica (MASTER_DELAY=30s)"),
        ("stop-sql", "db3's replication is not running"),
        ("stop-io", "db3's replication is not running"),
        ("kill", "db3 (127.0.0.1:"),  # last: the node stays down
    ]
    for fault, expected in cases:
        sb.fault("db3", fault, 30 if fault == "delay" else None)
        try:
            before = topology(sb)
            with pytest.raises(TopologyError) as info:
                switchover(sb.service(), "db3")
            message = str(info.value)
            assert expected in message, message
            assert "service 'sandbox'" in message and "nothing was changed" in message
            if fault == "kill":
                assert "unreachable" in message
            assert topology(sb) == before, fault
            assert writable_nodes(sb) == ["db1"]
        finally:
            if fault != "kill":
                sb.fault("db3", "resume")


def test_switchover_with_the_documented_admin_privileges(fresh_cluster: Sandbox) -> None:
    """docs/operations.md lists the privileges the admin account needs: exactly these."""
    sb = fresh_cluster
    password = "Topo:@/%pw"
    sb.query(
        "db1",
        f"CREATE USER 'topo'@'127.0.0.1' IDENTIFIED BY '{password}'",
    )
    sb.query(
        "db1",
        "GRANT READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, "
        "SLAVE MONITOR, BINLOG MONITOR, CONNECTION ADMIN, PROCESS, RELOAD ON *.* "
        "TO 'topo'@'127.0.0.1'",
    )
    sb.query("db1", "GRANT SELECT ON sqlrouter.heartbeat TO 'topo'@'127.0.0.1'")
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    service = dataclasses.replace(sb.service(), admin_credentials=Credentials("topo", password))
    app = sqlrouter.connect(sb.url("RW_STRICT"))  # a session left on the old master
    try:
        steps = switchover(service, "db2")
        assert all(s.ok for s in steps), steps
        killed = next(s for s in steps if s.name == "disconnect clients db1")
        assert killed.detail.startswith("1 application session(s)"), killed.detail
        assert all(password not in s.detail for s in steps)
        steps = switchover(service, "db1")
        assert all(s.ok for s in steps), steps
    finally:
        app.close()
    check_healthy(sb, "db1", ["db2", "db3"])


def test_switchover_rolls_back_when_the_candidate_cannot_catch_up(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    create_table(sb)
    sb.wait_caught_up("db2")
    # A session on db2 holds a table lock: its SQL thread cannot apply the next insert.
    locker = sb.connect("db2")
    try:
        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLES {TABLE} WRITE")
        sb.query("db1", f"INSERT INTO {TABLE} VALUES (1, 'blocked on db2')")
        reported: list[Step] = []
        with pytest.raises(TopologyError) as info:
            switchover(sb.service(), "db2", timeout=2, report=reported.append)
        err = info.value
        assert err.step == "catch up db2" and err.server == "db2"
        assert "did not apply db1's last transactions" in err.reason
        assert err.state.startswith("rolled back: db1 is the master again")
        assert [s.name for s in reported if s.name.startswith("rollback")] == [
            "rollback: writable db1"
        ]
        assert writable_nodes(sb) == ["db1"]
        sb.query("db1", f"INSERT INTO {TABLE} VALUES (2, 'db1 writable again')")
    finally:
        locker.close()
    check_healthy(sb, "db1", ["db2", "db3"])
    sb.wait_caught_up("db2")
    assert len(sb.query("db2", f"SELECT id FROM {TABLE}")) == 2


# --------------------------------------------------------------------------- failover


def test_failover_promotes_the_most_advanced_replica(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    service = sb.service()
    create_table(sb)
    writer = Writer(writer_url(sb))
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) > 50, 20, "writes before the faults")
        # db2 stops receiving: from now on only db3 acknowledges (semi-sync).
        sb.fault("db2", "stop-io")
        count = len(writer.acked)
        wait_until(lambda: len(writer.acked) > count + 50, 20, "writes acknowledged by db3")
        sb.fault("db1", "kill")
        plan = plan_failover(service)
        assert (plan.kind, plan.old_master, plan.new_master) == ("failover", "db1", "db3")
        assert plan.repointed == ("db2",)
        steps = failover(service)
        assert all(s.ok for s in steps), steps
        names = [s.name for s in steps if s.kind == "step"]
        assert names[:2] == ["plan", "check master db1"]
        warnings = [s.detail for s in steps if s.kind == "warning"]
        assert any(w.startswith("db1 must not come back as it was") for w in warnings)
        assert "choose" in names and "repoint db2" in names and names[-1] == "verify"
        choose = next(s for s in steps if s.name == "choose")
        assert choose.detail.startswith("promote db3")
        wait_until(lambda: writer.acked_by("db3") > 50, 20, "writes through RW_STRICT on db3")
    finally:
        writer.stop()
    assert writable_nodes(sb) == ["db3"]
    check_healthy(sb, "db3", ["db2"])
    check_no_write_lost(sb, writer, "db3")


def test_an_old_master_back_writable_after_a_failover_gets_no_write(
    fresh_cluster: Sandbox,
) -> None:
    sb = fresh_cluster
    service = sb.service()
    create_table(sb)
    writer = Writer(writer_url(sb))
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) > 20, 20, "writes before the failover")
        sb.fault("db1", "kill")
        steps = failover(service)
        assert all(s.ok for s in steps), steps
        (new,) = writable_nodes(sb)
        wait_until(lambda: writer.acked_by(new) > 20, 20, f"writes on {new}")
        # The old master restarts writable (as with read_only=0 in its my.cnf), not
        # replicating: the replicas replicate from the new master, so it is fenced off.
        sb.fault("db1", "restart")
        sb.query("db1", "SET GLOBAL read_only = 0")
        (handle,) = handles()
        wait_until(
            lambda: handle.monitor.snapshot.health_of("db1").writable, 10, "db1 seen writable"
        )
        on_db1 = writer.acked_by("db1")
        count = len(writer.acked)
        wait_until(lambda: len(writer.acked) > count + 50, 20, "writes after db1 is back")
        assert writer.acked_by("db1") == on_db1
        master = observed_master(handle.monitor.snapshot)
        assert master is not None and master.name == new
        # A process that starts now, with no past to remember, agrees.
        newcomer = Monitor(service)
        newcomer.start()
        try:
            master = observed_master(newcomer.wait_for_round(after=0, timeout=10))
        finally:
            newcomer.stop()
        assert master is not None and master.name == new
    finally:
        writer.stop()
    assert writer.acked_by("db1") == on_db1


def test_failover_applies_relay_logs_before_choosing(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    create_table(sb)
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    sb.fault("db2", "stop-io")  # db2 receives nothing more
    sb.fault("db3", "stop-sql")  # db3 receives but does not apply
    for i in range(1, 21):
        sb.query("db1", f"INSERT INTO {TABLE} VALUES ({i}, 'acknowledged')")
    assert len(sb.query("db3", f"SELECT id FROM {TABLE}")) == 0
    sb.fault("db1", "kill")
    steps = failover(sb.service())
    details = {s.name: s.detail for s in steps if s.kind == "step"}
    assert "start SQL thread db3" in details
    assert "has applied everything it received" in details["apply relay log db3"]
    assert details["choose"].startswith("promote db3")
    check_healthy(sb, "db3", ["db2"])
    caught_up(sb, "db3", "db2")
    for node in ("db2", "db3"):
        assert len(sb.query(node, f"SELECT id FROM {TABLE}")) == 20


def test_a_server_writable_again_before_the_choice_is_a_transient_refusal(
    fresh_cluster: Sandbox,
) -> None:
    """The plan is made again once the replicas are frozen; a server found writable then
    (the service has a master again) is a refusal of the moment, as in the first plan:
    automatic failover tries again after its backoff instead of blocking."""
    sb = fresh_cluster
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    sb.fault("db1", "kill")

    def report(step: Step) -> None:
        if step.name == "check master db1":  # after the first plan, before the second
            sb.query("db2", "SET GLOBAL read_only = 0")

    with pytest.raises(TopologyError) as info:
        failover(sb.service(), report=report)
    err = info.value
    assert err.step == "choose" and "db2 is writable" in err.reason, str(err)
    assert err.refused and err.transient


def test_a_guard_that_stops_the_inspection_is_a_transient_refusal(
    fresh_cluster: Sandbox,
) -> None:
    """An automatic failover's guard that says no as the servers are inspected (its
    leader cannot confirm its lease right now) leaves the replicas uninspected: that is
    no fact about the cluster ("no reachable replica") that would block automation, but
    a refusal of the moment, tried again after the backoff."""
    sb = fresh_cluster
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    sb.fault("db1", "kill")
    before = topology(sb)

    def guard(step: str) -> str:
        return "the store cannot confirm that a1 still leads (term 3): timed out"

    with pytest.raises(TopologyError) as info:
        failover(sb.service(), guard=guard)
    err = info.value
    assert err.step == "plan" and "was not checked" in err.reason, str(err)
    assert err.refused and err.transient
    assert topology(sb) == before


def test_failover_refuses_diverged_replicas_unless_forced(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    service = sb.service()
    create_table(sb)
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    sb.fault("db2", "stop-io")
    sb.query("db1", f"INSERT INTO {TABLE} VALUES (1, 'acknowledged, on db3 only')")
    caught_up(sb, "db1", "db3")
    sb.fault("db1", "kill")
    # Someone writes directly on db2 (root bypasses read_only): same sequence number,
    # another server id. Neither replica has the other's last transaction.
    sb.query("db2", f"INSERT INTO {TABLE} VALUES (2, 'written on db2 directly')")
    before = topology(sb)
    with pytest.raises(TopologyError) as info:
        plan_failover(service)
    message = str(info.value)
    assert "diverged" in message and "use force" in message, message
    assert "db3 lacks 0-2-" in message and "(on db2)" in message, message
    assert "db2 lacks 0-1-" in message and "(on db3)" in message, message
    with pytest.raises(TopologyError):
        failover(service, dry_run=True)
    with pytest.raises(TopologyError):
        failover(service)
    assert topology(sb) == before
    assert writable_nodes(sb) == []

    steps = failover(service, force=True)
    details = {s.name: s.detail for s in steps if s.kind == "step"}
    assert details["choose"].startswith("promote db3"), details["choose"]
    assert "not repointed" in details["leave db2"]
    assert writable_nodes(sb) == ["db3"]
    assert sb.query("db3", f"SELECT id FROM {TABLE}") == [(1,)]
    slave = next(s for s in sb.status() if s.name == "db2")
    assert (slave.io_running, slave.sql_running) == ("No", "No")


def test_a_statement_that_timed_out_is_not_sent_again(cluster: Sandbox) -> None:
    """An automatic failover's kept session that the server ended is opened again and
    the statement sent once more; one that timed out on the client is not (it may
    still run on the server)."""
    from sqlrouter.switchover._servers import _Server

    creds = cluster.service().admin_credentials
    assert creds is not None
    connected: list[str] = []
    db1 = next(ds for ds in cluster.service().datasources if ds.name == "db1")
    server = _Server(db1, creds, 1.0, lambda ds, conn: connected.append(ds.name))
    try:
        assert server.value("SELECT 1") == 1
        with pytest.raises(Exception, match="timed out"):
            server.value("SELECT SLEEP(3)")
        assert connected == ["db1"]
    finally:
        server.close()
