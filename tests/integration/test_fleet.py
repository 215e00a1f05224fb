"""Fleets: many application processes, on simulated hosts (distinct shared snapshot
directories), each holding an idle RW_STRICT and RO_RELAXED connection (the worker is
benchmarks/_fleet_worker.py).  One heartbeat writer per cluster, one publisher per
host; takeover when either is killed, stopped or exits, or the master changes; writes
follow a switchover in every process; nothing routes on a stale snapshot meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import sqlrouter
from sqlrouter import control
from sqlrouter._runtime import handles
from sqlrouter.agent import Agent
from sqlrouter.control import request
from sqlrouter.registry import write_registry_file
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import reap, wait_until

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
LOCK = "sqlrouter.heartbeat:sqlrouter.heartbeat"


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], status: Path, host: Path) -> None:
        self.proc = proc
        self.status_path = status
        self.host = host

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return out

    def __repr__(self) -> str:
        return f"<Worker {self.pid} {self.host.name} {self.status()}>"


Spawn = Callable[..., Worker]


def urls(sb: Sandbox, *, autocommit: bool = False) -> dict[str, str]:
    """The worker's service URLs, in its environment (they hold the password)."""
    extra = {"autocommit": "true"} if autocommit else {}
    return {
        "FLEET_RW_URL": sb.url("RW_STRICT", hide_password=False, **extra),
        "FLEET_RO_URL": sb.url("RO_RELAXED", hide_password=False, **extra),
    }


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start fleet workers; each is killed (then reaped) at the end of the test."""
    made: list[Worker] = []

    def start(sb: Sandbox, host: str = "host1", *, check: bool = False) -> Worker:
        share = tmp_path / host
        share.mkdir(mode=0o700, exist_ok=True)
        status = tmp_path / f"worker-{len(made)}.json"
        env = {**os.environ, "SQLROUTER_SHARE": str(share), **urls(sb, autocommit=True)}
        cmd = [sys.executable, "-m", "benchmarks._fleet_worker", str(status)]
        if check:
            cmd.append("--check")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        worker = Worker(proc, status, share)
        made.append(worker)
        wait_until(lambda: bool(worker.status()), 60, f"worker {proc.pid} connected")
        return worker

    try:
        yield start
    finally:
        for worker in made:
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
                worker.proc.kill()
            worker.proc.wait(10)


def roles(workers: list[Worker]) -> list[str]:
    return [w.status().get("role", "?") for w in workers if w.proc.poll() is None]


def writers(workers: list[Worker]) -> list[Worker]:
    return [w for w in workers if w.proc.poll() is None and w.status().get("writer")]


def lock_holder(sb: Sandbox, node: str) -> int | None:
    ((holder,),) = sb.query(node, f"SELECT IS_USED_LOCK('{LOCK}')")
    return None if holder is None else int(holder)


def binlog_commits(sb: Sandbox, node: str) -> int:
    ((_, value),) = sb.query(node, "SHOW GLOBAL STATUS LIKE 'Binlog_commits'")
    return int(value)


def settled(workers: list[Worker], hosts: int) -> bool:
    """One publisher per host, every other process a follower, one heartbeat writer."""
    live = [w for w in workers if w.proc.poll() is None]
    by_host: dict[Path, list[str]] = {}
    for w in live:
        by_host.setdefault(w.host, []).append(w.status().get("role", "?"))
    return (
        len(by_host) == hosts
        and all(
            r.count("publisher") == 1 and r.count("follower") == len(r) - 1
            for r in by_host.values()
        )
        and len(writers(live)) == 1
    )


def test_no_password_on_a_fleet_worker_s_command_line(cluster: Sandbox, spawn: Spawn) -> None:
    # Every user of the host reads every process's command line (/proc/PID/cmdline,
    # ps): the URLs, which hold the password, go in the environment.
    worker = spawn(cluster)
    password = cluster.state.app.password
    assert password
    assert worker.status().get("role") in ("publisher", "follower")
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline
    assert quote(password, safe="").encode() not in cmdline


def test_one_monitor_per_host_and_one_heartbeat_writer_per_cluster(
    cluster: Sandbox, spawn: Spawn
) -> None:
    sb = cluster
    workers = [spawn(sb, f"host{i % 2 + 1}") for i in range(6)]
    wait_until(lambda: settled(workers, hosts=2), 60, "one publisher per host, one writer")
    # Followers probe nothing: no monitoring connection of theirs.
    wait_until(
        lambda: all(
            (s["probers"] > 0) == (s["role"] == "publisher") for s in (w.status() for w in workers)
        ),
        30,
        "monitoring connections in the publishers only",
    )
    # The writer holds the lock on the master; the master's binlog gets one heartbeat
    # commit per round of that one writer (its rounds are >= 0.9 interval apart).
    (writer,) = writers(workers)
    assert lock_holder(sb, "db1") is not None
    interval = sb.service().monitor_interval
    before, started = binlog_commits(sb, "db1"), time.monotonic()
    time.sleep(3.0)
    commits = binlog_commits(sb, "db1") - before
    elapsed = time.monotonic() - started
    assert commits <= elapsed / (0.9 * interval) + 2, (commits, elapsed)
    assert writers(workers) == [writer]


def test_takeover_when_the_publisher_or_writer_is_killed_stopped_or_exits(
    cluster: Sandbox, spawn: Spawn
) -> None:
    sb = cluster
    workers = [spawn(sb, "host1", check=True) for _ in range(3)]
    wait_until(lambda: settled(workers, hosts=1), 60, "a publisher and a writer")

    def publisher() -> Worker:
        (p,) = [w for w in workers if w.proc.poll() is None and w.status()["role"] == "publisher"]
        return p

    def taken_over(old: Worker) -> Callable[[], bool]:
        def check() -> bool:
            live = [w for w in workers if w.proc.poll() is None and w is not old]
            return any(w.status().get("role") == "publisher" for w in live) and any(
                w.status().get("writer") for w in live
            )

        return check

    # SIGKILL: the kernel ends its lock's connection and the pid disappears.
    first = publisher()
    first.proc.kill()
    first.proc.wait(10)
    wait_until(taken_over(first), 30, "a new publisher and writer after SIGKILL")
    # SIGSTOP: its lease expires, its stalled heartbeat connection is ended.
    second = publisher()
    os.kill(second.pid, signal.SIGSTOP)
    try:
        wait_until(taken_over(second), 30, "a new publisher and writer after SIGSTOP")
    finally:
        os.kill(second.pid, signal.SIGCONT)
    # It resumes as a follower: one publisher, one writer again.
    wait_until(lambda: settled(workers, hosts=1), 30, "the stopped one follows once resumed")
    # A clean exit (SIGTERM: atexit, the publisher resigns).
    third = publisher()
    third.proc.terminate()
    assert third.proc.wait(10) == 0
    wait_until(taken_over(third), 30, "a new publisher and writer after an exit")
    # Meanwhile no worker wrote anywhere but the master: every RW_STRICT query of every
    # worker, all along (not only its last), ran on db1 (writable); no query failed.
    sid = {n.name: n.server_id for n in sb.nodes}
    for w in workers:
        status = w.status()
        assert status["rw_seen"] == [[sid["db1"], 0]], w
        assert status["error_count"] == 0, w
        assert status.get("queries", 0) > 0, w
    # And no worker that ran throughout saw its snapshot older than the bound routing
    # trusts (Snapshot.max_age): each takeover came soon enough that nothing went
    # stale.  (The stopped one's own snapshot is stale when it resumes: by design.)
    for w in workers:
        if w is not second:
            status = w.status()
            assert status["bound"] is not None, w
            assert status["stale"] == 0, (w, status["max_age"], status["bound"])


def test_writes_follow_a_switchover_in_twenty_processes(
    fresh_cluster: Sandbox, spawn: Spawn
) -> None:
    sb = fresh_cluster
    workers = [spawn(sb, f"host{i % 2 + 1}", check=True) for i in range(20)]
    wait_until(lambda: settled(workers, hosts=2), 120, "one publisher per host, one writer")
    sid = {n.name: n.server_id for n in sb.nodes}
    switchover(sb.service(), "db2")

    def all_on_db2() -> bool:
        return all(w.status().get("rw_on") == [sid["db2"], 0] for w in workers)

    wait_until(all_on_db2, 60, "every process writes to db2")
    # The heartbeat writer moved with the master: one holds the lock on db2.
    wait_until(lambda: lock_holder(sb, "db2") is not None, 30, "a heartbeat writer on db2")
    wait_until(lambda: settled(workers, hosts=2), 30, "one writer after the switchover")
    switchover(sb.service(), "db1")
    wait_until(
        lambda: all(w.status().get("rw_on") == [sid["db1"], 0] for w in workers),
        60,
        "every process writes to db1 again",
    )


def _agent(sb: Sandbox, registry: Path, share: Path, control_dir: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SQLROUTER_SHARE": str(share),
        "SQLROUTER_CONTROL": str(control_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sqlrouter", "agent", "--registry", str(registry)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_agent_publishes_shows_in_status_and_hands_over_on_sigterm(
    cluster: Sandbox, spawn: Spawn, tmp_path: Path
) -> None:
    sb = cluster
    worker = spawn(sb, "host1")
    wait_until(lambda: worker.status().get("role") == "publisher", 60, "the worker publishes")
    control_dir = tmp_path / "ctl"
    agent = _agent(sb, sb.registry_path, worker.host, control_dir)
    try:
        wait_until(
            lambda: (
                worker.status().get("role") == "follower"
                and worker.status().get("publisher_pid") == agent.pid
            ),
            60,
            "the worker follows the agent",
        )
        socket = control_dir / f"{agent.pid}.sock"
        status = request(socket, {"cmd": "status"})
        (svc,) = status["services"]
        assert svc["monitor"]["shared"]["role"] == "publisher"
        assert svc["monitor"]["shared"]["agent"] is True
        res = subprocess.run(
            [sys.executable, "-m", "sqlrouter", "admin", "--socket", str(socket), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "snapshots: published by this process (an agent) in " in res.stdout
        # The worker stopped probing (its monitoring connections close once its last
        # probes are done).
        wait_until(lambda: worker.status().get("probers") == 0, 30, "the worker stops probing")
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        assert "SIGTERM received: stopping" in err
        assert not socket.exists()
        wait_until(lambda: worker.status().get("role") == "publisher", 30, "the worker again")
        for secret in (sb.state.monitor, sb.state.app, sb.state.admin):
            assert secret.password not in out + err
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate(timeout=10)


def test_the_agent_needs_a_monitor_account(cluster: Sandbox, tmp_path: Path) -> None:
    service = dataclasses.replace(cluster.service(), monitor_credentials=None)
    registry = write_registry_file(tmp_path / "sqlrouter.toml", [service])
    (tmp_path / "share").mkdir(mode=0o700)
    agent = _agent(cluster, registry, tmp_path / "share", tmp_path / "ctl")
    _out, err = agent.communicate(timeout=60)
    assert agent.returncode == 1
    assert "service 'sandbox'" in err and "[services.sandbox.monitor]" in err, err


def _report_in_child(path: Path, rw: str, ro: str) -> None:  # pragma: no cover - a child
    code = 0
    try:
        sid = {}
        for name, url in (("rw", rw), ("ro", ro)):
            conn = sqlrouter.connect(url)
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only")
                row = cur.fetchone()
            assert row is not None
            sid[name] = int(row[0])
            conn.close()
        (h,) = handles()
        share = h.monitor.share
        assert share is not None
        path.write_text(
            json.dumps(
                {
                    "role": share.role,
                    "probers": len(h.monitor._probers),
                    "publisher_pid": share.describe(time.monotonic()).get("publisher_pid"),
                    "rw_read_only": sid["rw"],
                }
            )
        )
        sqlrouter.shutdown()
    except BaseException:  # noqa: BLE001 - reported by the missing file
        code = 1
    os._exit(code)


@pytest.fixture
def private_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's shared snapshots in a directory of the test's own."""
    share = tmp_path / "share"
    share.mkdir(mode=0o700)
    monkeypatch.setenv("SQLROUTER_SHARE", str(share))
    return share


def test_children_forked_after_connect_follow_and_probe_nothing(
    cluster: Sandbox, tmp_path: Path, private_share: Path
) -> None:
    rw, ro = cluster.url("RW_STRICT"), cluster.url("RO_RELAXED")
    parent = sqlrouter.connect(rw)
    (h,) = handles()
    assert h.monitor.share is not None
    wait_until(lambda: h.monitor.share is not None and h.monitor.share.role == "publisher", 30)
    pids = []
    for batch in range(5):  # 50 children, 10 at a time
        started = []
        for i in range(batch * 10, batch * 10 + 10):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                _report_in_child(tmp_path / f"child-{i}.json", rw, ro)
            started.append(pid)
        for pid in started:
            assert reap(pid) == 0
        pids += started
    reports = [json.loads((tmp_path / f"child-{i}.json").read_text()) for i in range(50)]
    # Every child wrote to the master, and followed: its parent, or, where the parent
    # was starved of CPU long enough on a loaded machine, a child that took over for a
    # while (by design); a follower probes nothing.
    assert {r["rw_read_only"] for r in reports} == {0}
    followers = [r for r in reports if r["role"] == "follower"]
    assert {r["probers"] for r in followers} == {0}
    assert {r["role"] for r in reports} <= {"follower", "publisher"}
    assert {r["publisher_pid"] for r in followers} <= {os.getpid(), *pids}
    assert any(r["publisher_pid"] == os.getpid() for r in followers)
    parent.close()


def test_workers_forked_before_connect_elect_one_publisher(
    cluster: Sandbox, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir(mode=0o700)
    status = tmp_path / "status"
    status.mkdir()
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks._fleet_worker",
            str(status),
            "--fork",
            "50",
            "--hosts",
            str(share),
        ],
        cwd=ROOT,
        env={**os.environ, **urls(cluster)},
        stderr=subprocess.DEVNULL,
    )
    try:

        def roles() -> list[str]:
            found = []
            for path in status.glob("*.json"):
                with contextlib.suppress(json.JSONDecodeError, FileNotFoundError):
                    found.append(json.loads(path.read_text())["role"])
            return found

        wait_until(lambda: len(roles()) == 50, 120, "50 workers connected")
        wait_until(
            lambda: (
                sorted(set(roles())) == ["follower", "publisher"]
                and roles().count("publisher") == 1
            ),
            60,
            "one publisher, 49 followers",
        )
    finally:
        launcher.terminate()
        launcher.wait(60)


class RecordingTask:
    """A task attached to an agent: records what it saw when started and stopped."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], bool]] = []

    def start(self, agent: Agent) -> None:
        running = all(h.monitor.running for h in agent.services.values())
        self.seen.append(("start", sorted(agent.services), running))

    def stop(self, timeout: float) -> None:
        running = all(h.monitor.running for h in handles())
        self.seen.append(("stop", sorted(h.name for h in handles()), running))


def test_agent_tasks_run_inside_the_monitors_and_the_registry_is_followed(
    cluster: Sandbox, tmp_path: Path, private_share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQLROUTER_CONTROL", str(tmp_path / "ctl"))
    registry = write_registry_file(tmp_path / "sqlrouter.toml", [cluster.service()])
    agent = Agent(str(registry))
    task = RecordingTask()
    agent.add_task(task)
    agent.start()
    try:
        assert task.seen == [("start", ["sandbox"], True)]
        assert repr(agent).startswith(f"<Agent {str(registry)!r} running services=['sandbox']")
        (h,) = agent.services.values()
        assert h.monitor.share is not None and h.monitor.share.agent
        assert control.current() is not None  # its own control socket, unasked
        other = dataclasses.replace(cluster.service(), name="other")
        write_registry_file(registry, [cluster.service(), other])
        agent.follow_registry()
        assert sorted(agent.services) == ["other", "sandbox"]
        write_registry_file(registry, [other])
        agent.follow_registry()
        assert sorted(agent.services) == ["other"]
    finally:
        agent.stop()
    # Tasks stop first, while the monitors still run; then everything is stopped.
    assert task.seen[-1] == ("stop", ["other"], True)
    assert handles() == [] and control.current() is None
