"""Automatic failover against real servers: a sandbox cluster, a local 3-member etcd,
and three agent processes (tests/fixtures/agent.py) standing in for agents on three
hosts, each running the runner of the opted-in service.

Every test waits for what the agents publish in etcd (deadlines, never timing
assertions), and checks what a user would notice: how many failovers, which server is
writable, whether an acknowledged write was lost, whether the old master got a write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlrouter.autofailover import AutofailoverTask, Store, StoreError, read_status
from sqlrouter.cli import main as cli_main
from sqlrouter.sandbox import EtcdCluster, Sandbox
from sqlrouter.sandbox._process import _free_ports
from tests.fixtures.helpers import wait_until
from tests.fixtures.relay import Relay
from tests.integration.test_switchover import (
    TABLE,
    Writer,
    caught_up,
    check_no_write_lost,
    create_table,
    writable_nodes,
    writer_url,
)

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "sandbox"
#: Detection: 3 rounds 0.5 s apart (the sandbox's monitor_interval); leases of 2 s.
SETTINGS = "rounds = 3\nlease_ttl = 2\nperiod = 3600\n"


class Agents:
    """Agent processes of one service; each logs to its own file."""

    def __init__(self, sb: Sandbox, etcd: EtcdCluster, directory: Path) -> None:
        self.sb = sb
        self.etcd = etcd
        self.dir = directory
        self.registry = directory / "agents.toml"
        table = f"\n[services.{SERVICE}.autofailover]\nenabled = true\n"
        table += f"etcd = {json.dumps(etcd.endpoints)}\n{SETTINGS}"
        self.registry.write_text(sb.registry_path.read_text() + table, encoding="utf-8")
        os.chmod(self.registry, 0o600)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, via: dict[str, tuple[str, int]] | None = None) -> None:
        args = [sys.executable, "-m", "tests.fixtures.agent", str(self.registry), name]
        args += [f"--via={ds}={h}:{p}" for ds, (h, p) in (via or {}).items()]
        with (self.dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
            )
        assert proc.stdout is not None
        started = proc.stdout.readline()
        proc.stdout.close()
        self.procs[name] = proc
        assert started == b"started\n", self.log(name)

    def start_three(self) -> dict[str, Any]:
        """Agents a0, a1 and a2, once they agree that the master is healthy: the status."""
        for name in ("a0", "a1", "a2"):
            self.start(name)
        return self.wait_ready(3)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                pytest.fail(f"agent {name} did not stop on SIGTERM: {self.log(name)[-2000:]}")
        self.procs.clear()

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "".join(self.log(p.stem) for p in sorted(self.dir.glob("*.log")))

    def status(self) -> dict[str, Any]:
        return read_status(self.etcd.endpoints, SERVICE)

    def admin(self, action: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        """``sqlrouter admin autofailover ACTION sandbox``: exit status, output, errors."""
        capsys.readouterr()
        argv = ["admin", "autofailover", action, SERVICE, "--registry", str(self.registry)]
        status = cli_main(argv)
        out, err = capsys.readouterr()
        return status, out, err

    def wait_ready(self, count: int) -> dict[str, Any]:
        """Until ``count`` agents reach the master and a leader decided it is healthy."""

        def ready() -> bool:
            st = self.status()
            decision = st.get("decision") or {}
            views = [v for v in st["views"] if v["reachable"]]
            return len(views) == count and decision.get("verdict") == "healthy"

        wait_until(ready, 30, f"{count} agents and a healthy decision")
        return self.status()

    def wait_outcome(self, timeout: float = 60) -> dict[str, Any]:
        def done() -> bool:
            try:
                outcome = self.status().get("outcome")
            except StoreError:  # etcd coming back
                return False
            return bool(outcome and outcome.get("ok"))

        wait_until(done, timeout, f"an automatic failover (agents' logs:\n{self.logs()[-3000:]})")
        outcome: dict[str, Any] = self.status()["outcome"]
        return outcome


@pytest.fixture
def agents(fresh_cluster: Sandbox, etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[Agents]:
    directory = tmp_path / "agents"
    directory.mkdir()
    group = Agents(fresh_cluster, etcd_cluster, directory)
    try:
        yield group
    finally:
        group.stop()


def failovers_started(logs: str) -> int:
    return logs.count("automatic failover of db1 by")


def test_a_killed_master_is_failed_over_once_by_the_leader_and_fenced_when_back(
    agents: Agents,
) -> None:
    sb = agents.sb
    # etcd losing one member of three still works: the first one, which every client
    # (the agents', their leases', the status's) asks first and must fall back from
    agents.etcd.kill_member(0)
    leader = agents.start_three()["leader"]
    create_table(sb)
    writer = Writer(writer_url(sb))
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) > 50, 20, "writes before the kill")
        killed = time.monotonic()
        sb.fault("db1", "kill")
        outcome = agents.wait_outcome()
        new = outcome["new_master"]
        wait_until(lambda: writer.acked_by(new) > 0, 30, f"a write acknowledged by {new}")
        to_first_write = time.monotonic() - killed
        assert outcome["old_master"] == "db1" and new in ("db2", "db3")
        # by the leader elected before the death, under its term
        assert (outcome["leader"], outcome["term"]) == (leader["agent"], leader["term"])
        assert writable_nodes(sb) == [new]
        wait_until(lambda: writer.acked_by(new) > 50, 30, f"writes on {new}")
        # The old master restarts writable (read_only=0 as in a careless my.cnf).
        on_db1 = writer.acked_by("db1")
        sb.fault("db1", "restart")
        db1_position = sb.query("db1", "SELECT @@gtid_binlog_pos")[0][0]
        sb.query("db1", "SET GLOBAL read_only = 0")
        wait_until(
            lambda: (agents.status().get("fenced") or {}).get("datasource") == "db1",
            30,
            "db1 fenced by an agent",
        )
        assert sb.query("db1", "SELECT @@read_only")[0][0] == 1
        count = len(writer.acked)
        wait_until(lambda: len(writer.acked) > count + 50, 30, "writes after db1 is back")
    finally:
        writer.stop()
    assert writer.acked_by("db1") == on_db1, "the fenced old master got a write"
    # nor did anything else write there (a heartbeat, a statement of the agents)
    assert sb.query("db1", "SELECT @@gtid_binlog_pos")[0][0] == db1_position
    check_no_write_lost(sb, writer, new)
    status = agents.status()
    assert status["history"]["term"] == leader["term"] and status["failover"] is None
    assert failovers_started(agents.logs()) == 1, agents.logs()[-3000:]
    print(f"master death to first acknowledged write on {new}: {to_first_write:.2f}s")


def test_etcd_losing_the_member_the_agents_use_while_they_run_still_fails_over(
    agents: Agents,
) -> None:
    """The agents run, each asking etcd's first member (their rounds, their leases'
    refreshes); it dies.  They go on through the other two, a quorum: a master killed
    afterwards is failed over, once, and the status still answers."""
    sb = agents.sb
    agents.start_three()
    agents.etcd.kill_member(0)
    sb.fault("db1", "kill")
    outcome = agents.wait_outcome()
    assert outcome["old_master"] == "db1"
    assert writable_nodes(sb) == [outcome["new_master"]]
    assert len(agents.status()["agents"]) == 3  # no agent lost its registration
    assert failovers_started(agents.logs()) == 1, agents.logs()[-3000:]


def test_a_master_frozen_for_less_than_the_detection_time_is_not_failed_over(
    agents: Agents,
) -> None:
    sb = agents.sb
    agents.start_three()
    sb.fault("db1", "freeze")
    try:
        # Thawed as soon as the leader saw one failed round: less than the 3 rounds
        # (each at least a probe timeout long) that detection takes.
        wait_until(
            lambda: (agents.status().get("decision") or {}).get("verdict") == "suspect",
            30,
            "the leader suspecting the frozen master",
        )
    finally:
        sb.fault("db1", "thaw")
    agents.wait_ready(3)  # the leader sees it answer again
    st = agents.status()
    assert st["outcome"] is None and st["failover"] is None, st
    assert writable_nodes(sb) == ["db1"]
    # The agents were watching: a real death is failed over.
    sb.fault("db1", "kill")
    assert agents.wait_outcome()["old_master"] == "db1"


def test_one_agent_that_cannot_reach_the_master_does_not_fail_it_over(
    agents: Agents,
) -> None:
    sb = agents.sb
    relay = Relay(("127.0.0.1", sb.node("db1").port))
    try:
        # a0 reaches db1 through a relay that the test cuts; a0 leads (started first).
        agents.start("a0", via={"db1": relay.address})
        wait_until(
            lambda: (agents.status().get("leader") or {}).get("agent") == "a0", 20, "a0 leads"
        )
        agents.start("a1")
        agents.start("a2")
        agents.wait_ready(3)
        relay.cut()

        def disagreement() -> bool:
            decision = agents.status().get("decision") or {}
            return decision.get("verdict") == "disagreement"

        wait_until(disagreement, 30, "the leader's disagreement")
        decision = agents.status()["decision"]
        assert decision["reason"] == "1 of 3 live agents cannot reach db1: no majority"
        assert "agent a0: cannot reach db1" in " ".join(decision["evidence"])
        # rounds go on; still no failover
        rounds = agents.status()["decision"]["at"]
        wait_until(lambda: agents.status()["decision"]["at"] > rounds + 2, 30, "more rounds")
        st = agents.status()
        assert st["outcome"] is None and st["failover"] is None
        assert writable_nodes(sb) == ["db1"]
    finally:
        relay.close()


@pytest.mark.parametrize("kill_at", ["plan", "freeze"])
def test_the_leader_killed_mid_failover_the_next_one_finishes_never_two_masters(
    agents: Agents, kill_at: str
) -> None:
    """Killed while it plans (nothing changed yet), or once it froze a replica."""
    sb = agents.sb
    leader = agents.start_three()["leader"]["agent"]
    create_table(sb)
    writer = Writer(writer_url(sb))
    writer.start()
    store = Store(agents.etcd.endpoints, service=SERVICE, agent="test")
    try:
        wait_until(lambda: len(writer.acked) > 50, 20, "writes before the kill")
        sb.fault("db1", "kill")

        def reached() -> bool:
            record = store.get("failover")
            steps = [s["name"] for s in (record or {}).get("steps", [])]
            return record is not None and (
                kill_at == "plan" or any(s.startswith("freeze") for s in steps)
            )

        wait_until(reached, 30, f"the failover at {kill_at!r}", step=0.005)
        agents.kill(leader)
        interrupted = agents.status()["failover"]
        outcome = agents.wait_outcome()
        assert outcome["term"] != interrupted["term"] or outcome["leader"] != leader
        new = outcome["new_master"]
        assert writable_nodes(sb) == [new]
        wait_until(lambda: writer.acked_by(new) > 50, 30, f"writes on {new}")
    finally:
        writer.stop()
        store.close()
    assert writable_nodes(sb) == [new]
    check_no_write_lost(sb, writer, new)


def test_a_second_death_within_the_period_waits_for_an_acknowledgement(
    agents: Agents, capsys: pytest.CaptureFixture[str]
) -> None:
    sb = agents.sb
    agents.start_three()
    sb.fault("db1", "kill")
    first = agents.wait_outcome()
    new = first["new_master"]
    (last,) = {"db2", "db3"} - {new}
    # The old master back (read-only, as the sandbox starts every server): the existing
    # failover refuses while a server of the service is unreachable.
    sb.fault("db1", "restart")
    wait_until(lambda: agents.status()["decision"]["master"] == new, 30, f"{new} watched")
    sb.fault(new, "kill")

    def blocked() -> bool:
        decision = agents.status().get("decision") or {}
        return decision.get("verdict") == "blocked" and decision.get("master") == new

    wait_until(blocked, 30, "automation blocked")
    assert "until an operator acknowledges it" in agents.status()["decision"]["reason"]
    assert agents.status()["outcome"]["new_master"] == new  # no second failover
    assert writable_nodes(sb) == []
    status, shown, _ = agents.admin("status", capsys)
    assert status == 0 and "decision: blocked" in shown and "not acknowledged" in shown, shown
    status, said, _ = agents.admin("acknowledge", capsys)
    assert status == 0 and "acknowledged the last automatic failover" in said

    def second() -> bool:
        outcome = agents.status().get("outcome") or {}
        return outcome.get("old_master") == new and bool(outcome.get("ok"))

    wait_until(second, 60, "the second failover, once acknowledged")
    assert writable_nodes(sb) == [last]


def test_a_refused_candidate_blocks_automation_and_says_why(
    agents: Agents, capsys: pytest.CaptureFixture[str]
) -> None:
    sb = agents.sb
    create_table(sb)
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    agents.start_three()
    # The replicas' histories diverge: db2 stops receiving and is written directly (root
    # bypasses read_only); db1's next transaction reaches db3 only.
    sb.fault("db2", "stop-io")
    sb.query("db2", f"INSERT INTO {TABLE} VALUES (2, 'written on db2 directly')")
    sb.query("db1", f"INSERT INTO {TABLE} VALUES (1, 'acknowledged, on db3 only')")
    caught_up(sb, "db1", "db3")
    sb.fault("db1", "kill")
    wait_until(lambda: agents.status().get("blocked") is not None, 60, "automation blocked")
    st = agents.status()
    assert "diverged" in st["blocked"]["reason"], st["blocked"]
    assert st["outcome"]["ok"] is False and st["outcome"]["new_master"] is None
    assert writable_nodes(sb) == []
    wait_until(
        lambda: (agents.status().get("decision") or {}).get("verdict") == "blocked",
        30,
        "the leader's decision: blocked",
    )
    status, shown, _ = agents.admin("status", capsys)
    assert status == 0 and "BLOCKED until acknowledged" in shown and "diverged" in shown, shown
    assert writable_nodes(sb) == []  # nothing was promoted


def test_etcd_without_quorum_means_no_automatic_action_and_says_so(
    agents: Agents, capsys: pytest.CaptureFixture[str]
) -> None:
    sb = agents.sb
    agents.start_three()
    agents.etcd.kill_member(0)
    agents.etcd.kill_member(1)
    sb.fault("db1", "kill")
    wait_until(
        lambda: all(
            "no automatic failover while the store cannot be used" in agents.log(n)
            for n in ("a0", "a1", "a2")
        ),
        60,
        "every agent saying that the store cannot be used",
    )
    status, _, err = agents.admin("status", capsys)
    assert status == 1
    assert "the etcd store cannot be used, so no automatic failover can happen" in err, err
    with pytest.raises(StoreError):
        agents.status()
    assert writable_nodes(sb) == []
    # Quorum back: the agents act again.
    agents.etcd.start_member(0)
    agents.etcd.start_member(1)
    outcome = agents.wait_outcome(90)
    assert outcome["old_master"] == "db1"
    assert writable_nodes(sb) == [outcome["new_master"]]


def test_the_agent_task_runs_the_opted_in_services_and_stops_them(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    (port,) = _free_ports(1)  # nothing listens: the runner's rounds find no master
    registry = tmp_path / "agent.toml"
    service = (
        '[[services.{name}.datasources]]\nname = "db1"\nhost = "127.0.0.1"\n'
        f'port = {port}\nrole = "master"\n'
        '[services.{name}.admin]\nuser = "admin"\n'
    )
    endpoints = json.dumps(etcd_cluster.endpoints)
    registry.write_text(
        service.format(name="auto")
        + f"[services.auto.autofailover]\nenabled = true\netcd = {endpoints}\n"
        + service.format(name="manual"),
        encoding="utf-8",
    )

    class AgentStandIn:
        registry_spec = str(registry)
        only: tuple[str, ...] = ()

    task = AutofailoverTask(agent_id="host1")
    task.start(AgentStandIn())
    try:
        assert [r.service.name for r in task.runners] == ["auto"]
        wait_until(
            lambda: read_status(etcd_cluster.endpoints, "auto")["agents"] == ["host1"],
            20,
            "the agent registered in etcd",
        )
    finally:
        task.stop(10)
    assert task.runners == []
    assert read_status(etcd_cluster.endpoints, "auto")["agents"] == []  # lease revoked
    AgentStandIn.only = ("manual",)
    task.start(AgentStandIn())
    assert task.runners == []
