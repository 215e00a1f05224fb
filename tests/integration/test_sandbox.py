"""The sandbox against real MariaDB servers: lifecycle, replication, faults, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

import sqlrouter.sandbox._process as sandbox_mod
from sqlrouter.cli import main
from sqlrouter.sandbox import Sandbox, SandboxError
from tests.fixtures.helpers import mariadbd_pids, returns_before

pytestmark = pytest.mark.sandbox


def write_row(sb: Sandbox, table: str, node: str | None = None) -> str:
    """Insert a unique row on the master (or ``node``) and return its marker."""
    marker = uuid.uuid4().hex
    with sb.cursor(node or sb.master.name) as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS appdb.{table} (m CHAR(32) PRIMARY KEY)")
        cur.execute(f"INSERT INTO appdb.{table} VALUES (%s)", (marker,))
    return marker


def has_row(sb: Sandbox, node: str, table: str, marker: str) -> bool:
    try:
        rows = sb.query(node, f"SELECT COUNT(*) FROM appdb.{table} WHERE m = '{marker}'")
    except pymysql.err.ProgrammingError:  # table not replicated yet
        return False
    return bool(rows[0][0])


def seconds_until_seen(
    sb: Sandbox, node: str, table: str, marker: str, *, start: float, limit: float
) -> float | None:
    while time.monotonic() - start < limit:
        if has_row(sb, node, table, marker):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_cluster_topology_and_replication(cluster: Sandbox) -> None:
    rows = {r.name: r for r in cluster.status()}
    assert rows["db1"].role == "master" and rows["db1"].read_only is False
    for name in ("db2", "db3"):
        assert rows[name].role == "replica"
        assert rows[name].read_only is True
        assert (rows[name].io_running, rows[name].sql_running) == ("Yes", "Yes")
    # GTID replication with the settings the issue asks for, on every node.
    for node in cluster.nodes:
        (settings,) = cluster.query(
            node.name,
            "SELECT @@log_bin, @@log_slave_updates, @@gtid_strict_mode, @@server_id, "
            "@@bind_address",
        )
        assert settings == (1, 1, 1, node.server_id, "127.0.0.1")
    for name in ("db2", "db3"):
        with cluster.cursor(name) as cur:
            cur.execute("SHOW SLAVE STATUS")
            assert cur.description is not None
            cols = [d[0] for d in cur.description]
            row = cur.fetchone()
        assert row is not None
        assert dict(zip(cols, row, strict=True))["Using_Gtid"] == "Slave_Pos"
    marker = write_row(cluster, "flow")
    start = time.monotonic()
    for name in ("db2", "db3"):
        assert seconds_until_seen(cluster, name, "flow", marker, start=start, limit=10) is not None


def test_users_registry_and_urls(cluster: Sandbox) -> None:
    st = cluster.state
    # The application user works over TCP, on the application database only.
    conn = pymysql.connect(
        host="127.0.0.1",
        port=cluster.master.port,
        user=st.app.user,
        password=st.app.password,
        database=st.database,
    )
    conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(
            host="127.0.0.1", port=cluster.master.port, user=st.app.user, password="wrong"
        )
    text = cluster.registry_path.read_text()
    assert "[services.sandbox]" in text
    for node in cluster.nodes:
        assert str(node.port) in text
    assert oct(cluster.registry_path.stat().st_mode & 0o777) == "0o600"
    assert oct((cluster.dir / "sandbox.json").stat().st_mode & 0o777) == "0o600"
    assert st.app.password not in cluster.url(hide_password=True)
    assert st.app.password in cluster.url()


def test_lifecycle_up_status_down_up_destroy(make_cluster: Callable[..., Sandbox]) -> None:
    sb = make_cluster(replicas=1)
    pids = mariadbd_pids(sb.dir)
    assert len(pids) == 2
    marker = write_row(sb, "life")
    # up on a running sandbox changes nothing.
    assert sb.up() is False
    assert mariadbd_pids(sb.dir) == pids
    assert sorted(sb.down()) == ["db1", "db2"]
    assert mariadbd_pids(sb.dir) == []
    assert [r.state for r in sb.status()] == ["stopped", "stopped"]
    # up on a stopped sandbox starts the existing servers, data kept.
    assert Sandbox(sb.dir, ephemeral=True).up() is True
    assert [r.state for r in sb.status()] == ["running", "running"]
    assert has_row(sb, "db1", "life", marker)
    sb.wait_caught_up("db2")
    assert has_row(sb, "db2", "life", marker)
    sb.destroy()
    assert not sb.dir.exists()
    assert mariadbd_pids(sb.dir) == []


def test_delay_fault(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    write_row(sb, "delay")  # create the table before delaying
    sb.wait_caught_up("db2")
    print(sb.fault("db2", "delay", 3))
    try:
        # MASTER_DELAY compares with the event's timestamp, which has a resolution of
        # one second: write right after a second boundary so the delay is the full 3 s.
        time.sleep(1.02 - time.time() % 1)
        start = time.monotonic()
        marker = write_row(sb, "delay")
        assert seconds_until_seen(sb, "db3", "delay", marker, start=start, limit=5) is not None
        seen = seconds_until_seen(sb, "db2", "delay", marker, start=start, limit=10)
        assert seen is not None
        assert seen >= 2.9, f"delayed replica had the row after {seen:.2f}s"
        rows = {r.name: r for r in sb.status()}
        assert rows["db2"].sql_delay == 3
    finally:
        sb.fault("db2", "resume")
    assert {r.name: r for r in sb.status()}["db2"].sql_delay == 0


@pytest.mark.parametrize("action", ["stop-io", "stop-sql"])
def test_stopped_thread_faults_and_resume(fresh_cluster: Sandbox, action: str) -> None:
    sb = fresh_cluster
    write_row(sb, "stop")
    sb.wait_caught_up("db3")
    sb.fault("db3", action)
    try:
        row = {r.name: r for r in sb.status()}["db3"]
        if action == "stop-io":
            assert (row.io_running, row.sql_running) == ("No", "Yes")
            assert row.seconds_behind_master is None
        else:
            assert (row.io_running, row.sql_running) == ("Yes", "No")
        start = time.monotonic()
        marker = write_row(sb, "stop")
        assert seconds_until_seen(sb, "db2", "stop", marker, start=start, limit=5) is not None
        later = time.monotonic()
        assert seconds_until_seen(sb, "db3", "stop", marker, start=later, limit=1.5) is None
    finally:
        sb.fault("db3", "resume")
    assert (
        seconds_until_seen(sb, "db3", "stop", marker, start=time.monotonic(), limit=10) is not None
    )


def test_kill_restart_freeze_thaw(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    pid = sb.pid("db2")
    assert pid is not None
    sb.fault("db2", "kill")
    assert sb.pid("db2") is None
    assert pid not in mariadbd_pids(sb.dir)
    assert {r.name: r.state for r in sb.status()}["db2"] == "stopped"
    marker = write_row(sb, "kill")
    sb.fault("db2", "restart")
    assert {r.name: r.state for r in sb.status()}["db2"] == "running"
    assert (
        seconds_until_seen(sb, "db2", "kill", marker, start=time.monotonic(), limit=15) is not None
    )

    sb.fault("db3", "freeze")
    try:
        assert {r.name: r.state for r in sb.status()}["db3"] == "frozen"

        def query() -> None:
            with pytest.raises(pymysql.err.OperationalError):
                sb.query("db3", "SELECT 1", timeout=1)

        returns_before(query, "the frozen db3 to be thawed")  # bounded by its timeout
    finally:
        sb.fault("db3", "thaw")
    assert sb.query("db3", "SELECT 1") == [(1,)]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlrouter.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_status_and_clear_errors(cluster: Sandbox, tmp_path: Path) -> None:
    res = run_cli("sandbox", "status", "--dir", str(cluster.dir))
    assert res.returncode == 0, res.stderr
    header, _, *lines = res.stdout.splitlines()
    assert header.split()[:5] == ["node", "role", "port", "pid", "state"]
    assert [line.split()[:2] for line in lines] == [
        ["db1", "master"],
        ["db2", "replica"],
        ["db3", "replica"],
    ]
    assert cluster.state.app.password not in res.stdout

    res = run_cli("sandbox", "fault", "--dir", str(cluster.dir), "db9", "kill")
    assert res.returncode == 1
    assert "has no node 'db9' (nodes: db1, db2, db3)" in res.stderr
    assert "Traceback" not in res.stderr

    res = run_cli("sandbox", "fault", "--dir", str(cluster.dir), "db1", "stop-io")
    assert res.returncode == 1 and "db1 is not a replica" in res.stderr

    notsb = tmp_path / "notsb"
    notsb.mkdir()
    (notsb / "data.txt").write_text("precious")
    for action in ("status", "down", "destroy"):
        res = run_cli("sandbox", action, "--dir", str(notsb))
        assert res.returncode == 1, res
        assert "is not a sandbox" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("sandbox", "up", "--dir", str(notsb))
    assert "is not a sandbox" in res.stderr and "choose an empty or new directory" in res.stderr
    assert (notsb / "data.txt").read_text() == "precious"

    # A port in use: the master's port is taken by the running cluster.
    res = run_cli(
        "sandbox", "up", "--dir", str(tmp_path / "new"), "--base-port", str(cluster.master.port)
    )
    assert res.returncode == 1
    assert f"port {cluster.master.port} on 127.0.0.1 is already in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())

    res = run_cli("sandbox", "--help")
    for word in ("up", "status", "down", "destroy", "fault", "url"):
        assert word in res.stdout


def test_missing_server_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sandbox_mod, "_SEARCH_DIRS", ())
    with pytest.raises(SandboxError, match=r"apt-get install mariadb-server"):
        sandbox_mod.find_server_binaries()
    assert main(["sandbox", "up", "--dir", str(tmp_path / "sb")]) == 1
    err = capsys.readouterr().err
    assert "mariadbd was not found" in err
    assert "apt-get install mariadb-server" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_interrupted_run_leaves_no_server(tmp_path: Path) -> None:
    """A process that dies without tearing down its ephemeral sandbox leaves nothing."""
    script = (
        "import os, sys\n"
        "from sqlrouter.sandbox import Sandbox\n"
        f"Sandbox({str(tmp_path / 'sb')!r}, ephemeral=True).up(replicas=1)\n"
        "print('up', flush=True)\n"
        "os._exit(3)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 3 and "up" in res.stdout, res.stderr
    deadline = time.monotonic() + 10
    while mariadbd_pids(tmp_path / "sb") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mariadbd_pids(tmp_path / "sb") == []


def test_rejoin_rebuilds_the_old_master_after_a_failover(fresh_cluster: Sandbox) -> None:
    """After a failover the old master restarts fenced, is labelled as what it is now,
    and ``sandbox rejoin`` makes it a replica of the new master again."""
    from sqlrouter.switchover import failover

    sb = fresh_cluster
    before = write_row(sb, "rejoin")
    for node in ("db2", "db3"):
        sb.wait_caught_up(node)
    sb.fault("db1", "kill")
    failover(sb.service())
    new = next(r.name for r in sb.status() if r.running and r.role == "master")
    assert new in ("db2", "db3")
    after = write_row(sb, "rejoin", new)

    said: list[str] = []
    Sandbox(sb.dir, ephemeral=True, progress=said.append).up()
    assert any(line.startswith("starting db1 (read-only, not a replica)") for line in said), said
    assert not any("db1 (master)" in line for line in said), said
    rows = {r.name: r for r in sb.status()}
    assert rows["db1"].running and rows["db1"].read_only is True
    assert rows["db1"].role == "read-only, not a replica"

    res = run_cli("sandbox", "rejoin", "--dir", str(sb.dir), new)
    assert res.returncode == 1 and f"{new} is the master" in res.stderr

    said.clear()
    Sandbox(sb.dir, ephemeral=True, progress=said.append).rejoin("db1")
    assert f"rebuilding db1 as a replica of {new} (its data is deleted)" in said
    rows = {r.name: r for r in sb.status()}
    assert rows["db1"].role == "replica" and rows["db1"].read_only is True
    assert (rows["db1"].io_running, rows["db1"].sql_running) == ("Yes", "Yes")
    assert sb.query("db1", "SHOW SLAVE STATUS")[0][3] == sb.node(new).port
    assert has_row(sb, "db1", "rejoin", before) and has_row(sb, "db1", "rejoin", after)
    # It follows the new master from now on.
    third = write_row(sb, "rejoin", new)
    sb.wait_caught_up("db1")
    assert has_row(sb, "db1", "rejoin", third)
    # A restart labels it by what it is now.
    said.clear()
    Sandbox(sb.dir, ephemeral=True, progress=said.append).fault("db1", "restart")
    assert any(line.startswith("starting db1 (replica)") for line in said), said


def test_status_cuts_long_errors_and_json_has_them_whole(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    # A replica that cannot connect to its master has MariaDB's long error text.
    with sb.cursor("db3") as cur:
        cur.execute("STOP SLAVE")
        cur.execute("CHANGE MASTER TO MASTER_PASSWORD='wrong', MASTER_CONNECT_RETRY=1")
        cur.execute("START SLAVE")

    def full_error() -> str | None:
        return next(r.error for r in sb.status() if r.name == "db3")

    deadline = time.monotonic() + 30
    while not full_error() and time.monotonic() < deadline:
        time.sleep(0.1)
    error = full_error()
    assert error and len(error) > 80, error

    res = run_cli("sandbox", "status", "--dir", str(sb.dir))
    assert res.returncode == 0, res.stderr
    assert error not in res.stdout
    assert "--json shows them in full" in res.stdout
    assert all(len(line) < 200 for line in res.stdout.splitlines()), res.stdout
    res = run_cli("sandbox", "status", "--dir", str(sb.dir), "--json")
    rows = {row["name"]: row for row in json.loads(res.stdout)}
    assert rows["db3"]["error"].startswith(error[:40]) and len(rows["db3"]["error"]) > 80
