"""Automatic failover's safety rules, against a real sandbox and a local 3-member etcd.

Each test drives one :class:`Runner` round by round (``run_round()``, no thread), so
what it checks does not depend on timing: what the store holds, which server is
writable, which server was fenced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sqlrouter.autofailover import Runner, Store, StoreError, read_status
from sqlrouter.registry.file import load_registry_file
from sqlrouter.sandbox import EtcdCluster, Sandbox
from sqlrouter.topology import Service
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
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "agent.log").read_text(errors="replace")
        log.close()
    assert read_status(etcd_cluster.endpoints, SERVICE)["agents"] == []
