"""Automatic failover's safety rules, against a real sandbox and a local 3-member etcd.

Each test drives one :class:`Runner` round by round (``run_round()``, no thread), so
what it checks does not depend on timing: what the store holds, which server is
writable, which server was fenced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

from sqlrouter.autofailover import (
    Decision,
    Detection,
    Runner,
    Store,
    StoreError,
    acknowledge,
    read_status,
)
from sqlrouter.autofailover.runner import NotLeading
from sqlrouter.cli.autofailover import format_autofailover
from sqlrouter.registry.file import load_registry_file
from sqlrouter.sandbox import EtcdCluster, Sandbox
from sqlrouter.switchover import TopologyError, failover
from sqlrouter.switchover._servers import _Servers
from sqlrouter.switchover._steps import _Run
from sqlrouter.topology import DataSource, Service
from tests.fixtures.helpers import wait_until

pytestmark = pytest.mark.sandbox

SERVICE = "sandbox"


def service_of(sb: Sandbox, etcd: EtcdCluster, tmp_path: Path, extra: str = "") -> Service:
    registry = tmp_path / "agents.toml"
    table = f"\n[services.{SERVICE}.autofailover]\nenabled = true\n"
    table += f"etcd = {json.dumps(etcd.endpoints)}\nrounds = 3\nlease_ttl = 2\n{extra}"
    registry.write_text(sb.registry_path.read_text() + table, encoding="utf-8")
    os.chmod(registry, 0o600)
    return load_registry_file(str(registry)).lookup(SERVICE)


def read_only(sb: Sandbox, name: str) -> int:
    return int(sb.query(name, "SELECT @@read_only")[0][0])


def test_a_stale_outcome_and_no_single_master_fence_nothing(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """An old outcome names db1 as the old master; the observations single out no master
    (a replica was moved to db2 by hand): db1, the only writable server, stays writable."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    Store(etcd_cluster.endpoints, service=SERVICE, agent="x").put(
        "outcome", {"ok": True, "old_master": "db1", "new_master": "db2", "term": 7}
    )
    sb.query("db3", "STOP SLAVE")
    sb.query("db3", f"CHANGE MASTER TO MASTER_PORT={sb.node('db2').port}")
    runner = Runner(svc, agent="a0")
    try:
        for _ in range(3):
            runner.run_round()
    finally:
        runner.stop()
    assert read_only(sb, "db1") == 0
    assert read_status(etcd_cluster.endpoints, SERVICE)["fenced"] is None


def test_two_agents_with_one_id_never_both_lead(etcd_cluster: EtcdCluster) -> None:
    """Two agents given the same id (hostname-pid in two containers): the second is
    refused, and it can neither campaign nor write as the leader of the first's term."""
    first = Store(etcd_cluster.endpoints, service=SERVICE, agent="host-1", lease_ttl=30)
    second = Store(etcd_cluster.endpoints, service=SERVICE, agent="host-1", lease_ttl=30)
    try:
        first.register()
        term = first.campaign()
        assert term is not None
        with pytest.raises(StoreError, match="registered by another live agent"):
            second.register()
        assert second.campaign() is None
        assert not second.is_leader(term)
        assert not second.put_as_leader(term, {"decision": {"verdict": "failover"}})
        assert first.is_leader(term)
        assert first.put_as_leader(term, {"decision": {"verdict": "healthy"}})
    finally:
        first.close()
        second.close()


def test_default_agent_ids_differ_within_one_process(etcd_cluster: EtcdCluster) -> None:
    a = Store(etcd_cluster.endpoints, service=SERVICE)
    b = Store(etcd_cluster.endpoints, service=SERVICE)
    try:
        assert a.agent != b.agent
    finally:
        a.close()
        b.close()


def test_hostile_store_contents_never_arm_automation_or_crash(etcd_cluster: EtcdCluster) -> None:
    """A view without a lease or under another agent's name is not counted; a history
    with a string time or a string "false" blocks (never reads as acknowledged); a
    leader key that is not UTF-8 neither crashes a round's snapshot nor the status."""
    store = Store(etcd_cluster.endpoints, service=SERVICE, agent="a0", lease_ttl=30)
    raw = Store(etcd_cluster.endpoints, service=SERVICE, agent="raw")
    try:
        store.register()
        view = {"agent": "ghost", "master": "db1", "reachable": False, "at": 9e12, "detail": ""}
        raw.put("seen/ghost", view)  # no lease: an agent long gone, or forged
        raw.put("seen/a9", view, leased=False)
        store.put("seen/a1", {**view, "agent": "a2"}, leased=True)  # another's name
        store.put("seen/a3", {**view, "agent": "a3", "reachable": "false"}, leased=True)
        store.put("seen/a0", {**view, "agent": "a0"}, leased=True)
        assert [v.agent for v in store.views()] == ["a0"]

        raw.put("history", {"at": "1", "acknowledged": "false"})
        hist = store.history()
        assert hist.blocked is not None and "history record is malformed" in hist.blocked
        raw.put("history", {"at": 1.0, "acknowledged": False})
        raw.put("blocked", {"reason": 42})
        assert "block record is malformed" in str(store.history().blocked)
        raw.delete("blocked")
        raw._etcd.call("put", lambda c: c.put(raw.prefix + "history", b"\xff{"))
        assert "malformed" in str(store.history().blocked)

        raw._etcd.call("put", lambda c: c.put(raw.prefix + "leader", b"\xff\xfe"))
        assert store.snapshot()["leader"]["agent"] == "\ufffd\ufffd"
        assert read_status(etcd_cluster.endpoints, SERVICE)["leader"]["agent"] == "\ufffd\ufffd"
    finally:
        store.close()
        raw.close()


def test_sqlrouter_agent_runs_the_automatic_failover_of_opted_in_services(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """``sqlrouter agent --registry FILE``: an opted-in service gets a runner (it
    registers in etcd and leads), and SIGTERM stops it (its lease revoked)."""
    service_of(fresh_cluster, etcd_cluster, tmp_path)
    registry = tmp_path / "agents.toml"
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlrouter", "agent", "--registry", str(registry)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    try:

        def healthy() -> bool:
            st = read_status(etcd_cluster.endpoints, SERVICE)
            return len(st["agents"]) == 1 and (st.get("decision") or {}).get("verdict") == (
                "healthy"
            )

        wait_until(healthy, 60, "the agent's runner registered and decided")
        socket = tmp_path / "sqlrouter" / f"{proc.pid}.sock"
        res = subprocess.run(
            [sys.executable, "-m", "sqlrouter", "admin", "--socket", str(socket), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "automatic failover: agent " in res.stdout
        assert ", leader (term " in res.stdout and "healthy (db1): db1 answers" in res.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "agent.log").read_text(errors="replace")
        log.close()
    assert read_status(etcd_cluster.endpoints, SERVICE)["agents"] == []


def io_running(sb: Sandbox, name: str) -> bool:
    with sb.cursor(name) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        assert cur.description is not None
        cols = [d[0] for d in cur.description]
    return row is not None and dict(zip(cols, row, strict=True))["Slave_IO_Running"] == "Yes"


def record(*steps: str) -> dict[str, object]:
    """The failover record a leader of term 1 (now dead) left behind."""
    return {
        "term": 1,
        "leader": "dead",
        "old_master": "db1",
        "steps": [{"name": s, "ok": True, "detail": ""} for s in steps],
    }


def test_the_next_leader_restores_what_an_interrupted_failover_froze(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """A leader died after freezing the replicas (IO threads stopped) and the master is
    fine: the next leader starts their IO threads again and settles the record."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    for name in ("db2", "db3"):
        sb.query(name, "STOP SLAVE IO_THREAD")
    Store(etcd_cluster.endpoints, service=SERVICE, agent="x").put(
        "failover", record("check master db1", "start SQL thread db2", "freeze db2", "freeze db3")
    )
    runner = Runner(svc, agent="a0")
    try:
        runner.run_round()
    finally:
        runner.stop()
    st = read_status(etcd_cluster.endpoints, SERVICE)
    assert st["failover"] is None and st["blocked"] is None
    assert "restored: db2 receiving again" in st["outcome"]["detail"]
    assert "SQL thread left running on db2" in st["outcome"]["detail"]
    for name in ("db2", "db3"):
        wait_until(lambda n=name: io_running(sb, n), 30, f"{name}'s IO thread")  # type: ignore[misc]


def test_a_failover_interrupted_past_its_point_of_no_return_blocks_automation(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The dead leader stopped a candidate's replication and repointed a replica: the next
    leader neither rolls back nor starts another failover; automation is blocked, loudly."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    Store(etcd_cluster.endpoints, service=SERVICE, agent="x").put(
        "failover", record("freeze db2", "freeze db3", "stop replication db2", "repoint db3")
    )
    runner = Runner(svc, agent="a0")
    try:
        runner.run_round()
        decision = runner.run_round()
    finally:
        runner.stop()
    st = read_status(etcd_cluster.endpoints, SERVICE)
    reason = st["blocked"]["reason"]
    assert "term 1 by dead was interrupted: steps stop replication db2, repoint db3 ran" in reason
    assert st["failover"] is not None  # kept for the operator
    assert decision is not None and decision.verdict in ("healthy", "blocked")
    assert runner.store.history().blocked == reason


def test_a_guard_that_refuses_stops_rollback_steps_too() -> None:
    """A leader that lost its lease runs no step at all, not even a rollback's."""
    svc = Service("shop", (DataSource("db1", "127.0.0.1", 1),))
    asked: list[str] = []

    def guard(step: str) -> str | None:
        asked.append(step)
        return "a0 no longer leads (term 7)"

    ran: list[str] = []

    def action() -> str:
        ran.append("restart")
        return "db2 receiving again"

    run = _Run(svc, "failover", None, [], guard)
    assert not run.step("rollback: restart IO thread db2", "db2", action, fatal=False)
    assert ran == [] and asked == ["rollback: restart IO thread db2"]
    assert "not run: a0 no longer leads (term 7)" in run.steps[0].detail


def test_the_leaders_guard_past_the_point_of_no_return_goes_on_without_the_store(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Leadership lost: every step refused, rollback included.  The store unreachable:
    steps before the point of no return refused, those past it run (leaving half way
    would leave no writable master)."""
    svc = service_of(fresh_cluster, etcd_cluster, tmp_path)
    runner = Runner(svc, agent="a0")
    other = Store(etcd_cluster.endpoints, service=SERVICE, agent="a1", lease_ttl=30)
    try:
        runner.store.register()
        term = runner.store.campaign()
        assert term is not None
        assert runner._may_run(term, "freeze db2") is None
        other.register()
        runner.store._etcd.call("revoke", lambda c: runner.store._lease.revoke())  # type: ignore[union-attr]
        assert other.campaign() is not None
        for step in ("freeze db2", "rollback: restart IO thread db2", "writable db2"):
            assert runner._may_run(term, step) == f"a0 no longer leads (term {term})"
        etcd_cluster.stop()
        assert "cannot confirm" in str(runner._may_run(term, "freeze db2"))
        assert "cannot confirm" in str(runner._may_run(term, "rollback: stop SQL thread db2"))
        assert runner._may_run(term, "writable db2") is None
        assert runner._may_run(term, "repoint db3") is None
    finally:
        runner.store._lease = None
        runner.stop()
        other._lease = None
        other.close()


def test_acknowledge_is_one_transaction_over_what_it_read(etcd_cluster: EtcdCluster) -> None:
    """A block written between the acknowledgement's reads and its writes is not
    deleted unseen: the acknowledgement fails and says so."""
    store = Store(etcd_cluster.endpoints, service=SERVICE, agent="admin")
    writer = Store(etcd_cluster.endpoints, service=SERVICE, agent="leader")
    try:
        writer.put("history", {"at": 1.0, "term": 3, "acknowledged": False})
        real = store._etcd.call

        def racing(what: str, op: Any) -> Any:
            if what == "acknowledge":
                writer.put("blocked", {"reason": "a second failover was refused"})
            return real(what, op)

        store._etcd.call = racing  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="changed while it was being acknowledged"):
            store.acknowledge("ops")
        assert writer.get("blocked") == {"reason": "a second failover was refused"}
        assert writer.get("history") == {"at": 1.0, "term": 3, "acknowledged": False}
        store._etcd.call = real  # type: ignore[method-assign]
        done = store.acknowledge("ops")
        assert done["blocked"] == {"reason": "a second failover was refused"}
        assert writer.get("blocked") is None
        assert writer.get("history") == {
            "at": 1.0,
            "term": 3,
            "acknowledged": True,
            "acknowledged_by": "ops",
        }
    finally:
        store.close()
        writer.close()


def test_a_leader_that_lost_its_lease_while_paused_runs_no_step(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The leader decided "failover" and was paused past its lease; another agent leads
    now.  Resumed, it goes on with the failover it had started: the guard refuses the first
    step and every other, so no replica is frozen, none promoted (this fails if the guard
    is not asked, or answers without etcd)."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    runner = Runner(svc, agent="a0", failover_timeout=10)
    other = Store(etcd_cluster.endpoints, service=SERVICE, agent="a1", lease_ttl=30)
    try:
        runner.run_round()
        term = runner.status()["term"]
        assert term is not None
        sb.fault("db1", "kill")
        decision = Decision("failover", "db1", "db1 is dead", (), Detection("db1", 3))
        write = runner.store.put_as_leader

        def paused_after_the_record(*args: Any, **kwargs: Any) -> bool:
            """The record is written; then the leader is paused past its lease (revoked
            here, not waited for) and a1 takes over; then it resumes."""
            done = write(*args, **kwargs)
            if "failover" in args[1] and other.lease_id is None:
                store = runner.store
                store._etcd.call("revoke", lambda c: store._lease.revoke())  # type: ignore[union-attr]
                other.register()
                assert other.campaign() is not None
            return done

        runner.store.put_as_leader = paused_after_the_record  # type: ignore[method-assign]
        runner._failover(term, decision)
        for name in ("db2", "db3"):
            assert read_only(sb, name) == 1
            with sb.cursor(name) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                assert cur.description is not None
                status = dict(zip([d[0] for d in cur.description], row or (), strict=False))
            assert status["Slave_IO_Running"] != "No", f"{name} was frozen"
            assert status["Master_Port"] == sb.node("db1").port
        st = read_status(etcd_cluster.endpoints, SERVICE)
        assert st["outcome"] is None  # it could not write it either
        steps = [s for s in st["failover"]["steps"]]
        assert steps == []  # nor report a step
    finally:
        runner.store._lease = None
        runner.stop()
        other.close()


def test_a_paused_old_leaders_statement_dies_with_its_session_when_a_new_leader_acts(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """a0 leads, froze db3, passed its guard for "freeze db2" and opened its session to
    db2; then it is paused past its lease and a1 leads.  Before a1 restores what was
    frozen, it ends the older sessions of the failover's account on every server: when
    a0 resumes, its statement fails on a dead connection (db2 keeps receiving), and a
    reconnection of a0 is refused by its guard (this fails without the leaders' fence)."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    creds = svc.admin_credentials
    assert creds is not None
    old = Runner(svc, agent="a0")
    new = Runner(svc, agent="a1")
    db2 = svc.datasource("db2")
    try:
        old.run_round()
        term = old.status()["term"]
        assert term is not None
        sb.query("db3", "STOP SLAVE IO_THREAD")
        frozen = {**record("check master db1", "freeze db3"), "term": term, "leader": "a0"}
        assert old.store.put_as_leader(term, {"failover": frozen})
        assert old._may_run(term, "freeze db2") is None  # the guard said yes ...
        held = pymysql.connect(
            host=db2.host, port=db2.port, user=creds.user, password=creds.password
        )  # ... and the step's session to db2 is open: then a0 is paused
        old.store._etcd.call("revoke", lambda c: old.store._lease.revoke())  # type: ignore[union-attr]
        new.run_round()
        assert new.status()["term"] is not None and new.status()["term"] > term
        st = read_status(etcd_cluster.endpoints, SERVICE)
        assert st["failover"] is None and "restored: db3" in st["outcome"]["detail"]
        # a0 resumes: its session is gone
        with pytest.raises(pymysql.err.MySQLError), held.cursor() as cur:
            cur.execute("STOP SLAVE IO_THREAD")
        with contextlib.suppress(Exception):
            held.close()
        with pytest.raises(NotLeading, match="a0 no longer leads"):  # and cannot reconnect
            old._take_over(term, None, "freeze db2")
        for name in ("db2", "db3"):
            wait_until(lambda n=name: io_running(sb, n), 30, f"{name}'s IO thread")  # type: ignore[misc]
    finally:
        old.store._lease = None
        old.stop()
        new.stop()


def test_a_connection_opened_after_the_guard_answered_is_asked_again(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """The guard said yes to "freeze db2", then the leader lost its lease before the
    step's connection was opened (a pause, a reconnection): the connection, once open,
    is refused before it runs anything, so it cannot have escaped the next leader's
    end of the older sessions."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    creds = svc.admin_credentials
    assert creds is not None
    answers: list[str | None] = [None]  # yes once, then the lease is gone

    def guard(step: str) -> str | None:
        return answers.pop(0) if answers else f"a0 no longer leads ({step})"

    run = _Run(svc, "failover", None, [], guard)
    with _Servers(svc, creds, 10, lambda ds, conn: run.connected(ds)) as servers:

        def freeze() -> str:
            servers["db2"].run("STOP SLAVE IO_THREAD")
            return "db2 frozen"

        ran = run.step("freeze db2", "db2", freeze, fatal=False)
    assert not ran
    assert "not connected to db2: a0 no longer leads (freeze db2)" in run.steps[0].detail
    assert io_running(sb, "db2")


def test_a_deposed_leaders_check_of_the_master_is_refused(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """a0 leads and runs a failover of db1, which is alive but read-only.  The plan has
    inspected the servers; as it is about to check that db1 is dead, a0 is paused past
    its lease and a1 leads.  The check's connection to db1 asks a0's guard (etcd) before
    its first statement: the failover is refused there, its ``SELECT @@read_only`` never
    sent (without the guard, the deposed a0 would have asked db1 and found it alive), and
    nothing is written in the store."""
    sb = fresh_cluster
    svc = service_of(sb, etcd_cluster, tmp_path)
    runner = Runner(svc, agent="a0", failover_timeout=10)
    other = Store(etcd_cluster.endpoints, service=SERVICE, agent="a1", lease_ttl=30)
    attempted: list[dict[str, Any]] = []
    deposed: list[int] = []
    try:
        runner.run_round()
        term = runner.status()["term"]
        assert term is not None
        sb.query("db1", "SET GLOBAL read_only = 1")
        write = runner.store.put_as_leader

        def paused_before_the_check(*args: Any, **kwargs: Any) -> bool:
            """Each write as the leader is kept; once the plan says it checks db1, a0 is
            paused past its lease (revoked here, not waited for) and a1 takes over."""
            attempted.append(args[1])
            done = write(*args, **kwargs)
            steps = args[1].get("failover", {}).get("steps", [])
            checking = "checking that the master db1 is dead"
            if not deposed and any(st["detail"].startswith(checking) for st in steps):
                store = runner.store
                store._etcd.call("revoke", lambda c: store._lease.revoke())  # type: ignore[union-attr]
                other.register()
                deposed.append(other.campaign() or 0)
            return done

        runner.store.put_as_leader = paused_before_the_check  # type: ignore[method-assign]
        runner._failover(term, Decision("failover", "db1", "db1 is dead", (), Detection("db1", 3)))
    finally:
        runner.store._lease = None
        runner.stop()
        other.close()
    assert deposed and deposed[0] > term, "a1 never led: the plan did not reach the check"
    (outcome,) = [a["outcome"] for a in attempted if "outcome" in a]
    assert (
        "refused at step 'plan' on db1: the master db1 was not checked: not connected to db1: "
        f"a0 no longer leads (term {term})" in outcome["detail"]
    )
    st = read_status(etcd_cluster.endpoints, SERVICE)
    assert st["outcome"] is None and st["blocked"] is None and st["retry"] is None
    assert read_only(sb, "db1") == 1 and read_only(sb, "db2") == 1


def test_a_deposed_leaders_check_master_step_is_refused(fresh_cluster: Sandbox) -> None:
    """db1 is dead for the plan; the guard says yes to the step "check master db1",
    then the leader is deposed and db1 comes back before the step's connection.  That
    connection asks the guard before its first statement: the step fails on the guard,
    and the deposed leader never reads db1's ``@@read_only`` (without the guard it
    would have, and found db1 answering again)."""
    sb = fresh_cluster
    sb.fault("db1", "kill")
    asked: list[str] = []

    def guard(step: str) -> str | None:
        asked.append(step)
        if step != "check master db1":
            return None
        if asked.count(step) == 1:  # yes; then db1 comes back, and the lease is lost
            sb.fault("db1", "restart")
            return None
        return "a0 no longer leads (term 7)"

    with pytest.raises(TopologyError) as info:
        failover(sb.service(), timeout=10, guard=guard)
    assert not info.value.refused
    assert (info.value.step, info.value.server) == ("check master db1", "db1")
    assert info.value.reason == "not connected to db1: a0 no longer leads (term 7)"
    assert asked.count("check master db1") == 2
    assert "nothing was changed" in info.value.state
    for name in ("db2", "db3"):
        assert read_only(sb, name) == 1


@pytest.mark.parametrize(
    ("settings", "waits"),
    [("", (10, 20)), ("backoff_base = 3\nbackoff_cap = 5\n", (3, 5))],
    ids=["defaults", "backoff_base-3-cap-5"],
)
def test_failed_failovers_back_off_and_the_status_says_when_the_next_may_run(
    fresh_cluster: Sandbox,
    etcd_cluster: EtcdCluster,
    tmp_path: Path,
    settings: str,
    waits: tuple[float, float],
) -> None:
    """Two failovers that fail without blocking (db1 is found alive and writable): the
    store counts them and says when the next may run (by default 10s, then 20s later;
    the service's backoff_base and backoff_cap when it sets them); the status shows it;
    a success or an acknowledgement starts the count over."""
    svc = service_of(fresh_cluster, etcd_cluster, tmp_path, settings)
    runner = Runner(svc, agent="a0", failover_timeout=10)
    decision = Decision("failover", "db1", "db1 is dead", (), Detection("db1", 3))
    try:
        runner.run_round()
        term = runner.status()["term"]
        assert term is not None
        runner._failover(term, decision, None, runner.store.history())
        first = read_status(etcd_cluster.endpoints, SERVICE)["retry"]
        assert (first["failures"], first["backoff"]) == (1, waits[0])
        runner._failover(term, decision, None, runner.store.history())
        st = read_status(etcd_cluster.endpoints, SERVICE)
        retry = st["retry"]
        assert (retry["failures"], retry["backoff"]) == (2, waits[1])
        assert retry["next_at"] == pytest.approx(retry["at"] + waits[1])
        assert "db1 is writable: the service has a master" in retry["detail"]
        assert runner.store.history().failures == 2
        text = format_autofailover(st, 3600, retry["at"])
        assert "retrying: 2 automatic failover(s) failed in a row, the last " in text
        assert f"(backoff {float(waits[1])}s)" in text
        runner.run_round()
        assert runner.status()["retry"]["failures"] == 2
        acknowledge(etcd_cluster.endpoints, SERVICE, "ops")
        assert read_status(etcd_cluster.endpoints, SERVICE)["retry"] is None
        assert runner.store.history().failures == 0
    finally:
        runner.stop()


def test_a_dead_master_waits_out_the_services_backoff(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """backoff_base 30, backoff_cap 50: two failovers failed (db1 was alive), then db1
    dies.  The leader's decision is "backoff", for the service's 50s (30 doubled, capped),
    not the defaults' 20s; the runner's clock is held still, so the wait never ends and
    no attempt runs."""
    sb = fresh_cluster
    extra = "min_agents = 1\nbackoff_base = 30\nbackoff_cap = 50\n"
    svc = service_of(sb, etcd_cluster, tmp_path, extra)
    now = time.time()
    runner = Runner(svc, agent="a0", failover_timeout=10, clock=lambda: now)
    failing = Decision("failover", "db1", "db1 is dead", (), Detection("db1", 3))
    decisions: list[Decision] = []
    try:
        runner.run_round()
        term = runner.status()["term"]
        assert term is not None
        for _ in range(2):
            runner._failover(term, failing, None, runner.store.history())
        sb.fault("db1", "kill")

        def backing_off() -> bool:
            runner.store.keepalive()  # no lease thread here: rounds are driven by the test
            decision = runner.run_round()
            decisions.extend([decision] if decision is not None else [])
            return decision is not None and decision.verdict == "backoff"

        wait_until(backing_off, 60, "the leader's backoff decision")
        assert decisions[-1].reason == (
            "db1 is dead, but 2 automatic failover(s) failed in a row, the last 0s ago: "
            "next attempt in 50s (backoff 50s, at most 50s)"
        )
        assert [d.verdict for d in decisions if d.verdict == "failover"] == []
        assert read_only(sb, "db2") == 1 and read_only(sb, "db3") == 1
    finally:
        runner.stop()


def test_the_lease_is_refreshed_while_a_round_waits_on_the_store(etcd_cluster: EtcdCluster) -> None:
    """A round's request holds the store's request lock (a slow snapshot, a transaction
    waiting out its timeout): the keepalive does not wait for it, it has its own clients
    (this test would hang until the lock is released, and fail, if it shared them)."""
    store = Store(etcd_cluster.endpoints, service=SERVICE, agent="a0", lease_ttl=30)
    refreshed = threading.Event()
    failed: list[StoreError] = []

    def keepalive() -> None:
        try:
            store.keepalive()
            refreshed.set()
        except StoreError as exc:
            failed.append(exc)

    try:
        store.register()
        with store._etcd._lock:  # a round's request in progress, as long as it likes
            keeper = threading.Thread(target=keepalive)
            keeper.start()
            answered = refreshed.wait(20)  # not a speed bound: it never ends if it waits
        keeper.join(30)
        assert answered and not failed, failed
    finally:
        store.close()


def test_the_lease_is_refreshed_through_another_member_when_its_own_is_gone(
    etcd_cluster: EtcdCluster,
) -> None:
    """The member that granted the lease dies: the refresh goes to another (the lease
    object's own client was the only one tried before)."""
    store = Store(etcd_cluster.endpoints, service=SERVICE, agent="a0", lease_ttl=30)
    try:
        store.register()
        lease = store.lease_id
        etcd_cluster.kill_member(0)
        store.keepalive()
        assert store.lease_id == lease  # refreshed, not registered anew
        assert store.campaign() is not None
    finally:
        store.close()


def sweep_then_step(sb: Sandbox, svc: Service, leads: bool) -> tuple[list[str], _Run]:
    """Open the failover's session to db2, end it as a sweep would, then run a step on it;
    the guard says yes to the first two questions (the connection, the step), then yes
    again only if ``leads``."""
    creds = svc.admin_credentials
    assert creds is not None
    asked: list[str] = []

    def guard(step: str) -> str | None:
        asked.append(step)
        return None if leads or len(asked) <= 2 else "a0 no longer leads"

    run = _Run(svc, "failover", None, [], guard)
    with _Servers(svc, creds, 10, lambda ds, conn: run.connected(ds)) as servers:
        session = servers["db2"].value("SELECT CONNECTION_ID()")
        sb.query("db2", f"KILL CONNECTION {int(session)}")
        run.step(
            "freeze db2",
            "db2",
            lambda: f"{session} -> {servers['db2'].value('SELECT CONNECTION_ID()')}",
            fatal=False,
        )
    return asked, run


def test_a_leaders_session_ended_by_a_sweep_is_opened_again_through_the_guard(
    fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """An older leader's delayed sweep ends the current leader's session to db2: its next
    statement reconnects, the guard says yes, and the statement runs.  For a leader that
    lost its lease, the guard says no on reconnecting: the statement does not run."""
    svc = service_of(fresh_cluster, etcd_cluster, tmp_path)
    asked, run = sweep_then_step(fresh_cluster, svc, leads=True)
    assert asked == ["connect db2", "freeze db2", "freeze db2"]
    assert run.steps[0].ok, run.steps
    before, after = run.steps[0].detail.split(" -> ")
    assert before != after
    asked, run = sweep_then_step(fresh_cluster, svc, leads=False)
    assert asked == ["connect db2", "freeze db2", "freeze db2"]
    assert not run.steps[0].ok
    assert "not connected to db2: a0 no longer leads" in run.steps[0].detail
