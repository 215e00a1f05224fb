"""Forked processes (gunicorn --preload, Celery prefork, multiprocessing): a child watches
the cluster for itself, never uses or closes its parent's sockets, and no process routes
on a snapshot that nobody refreshes.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import sqlrouter
from sqlrouter._runtime import handles
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import reap, scalar, server_id, wait_until

pytestmark = pytest.mark.sandbox


def handle() -> ServiceHandle:
    (h,) = handles()
    return h


def monitor_sessions(h: ServiceHandle) -> dict[str, int]:
    """The server-side connection id of each monitoring connection of this process."""
    out = {}
    for name, prober in h.monitor._probers.items():
        conn = prober._conn
        if conn is not None and conn.open:
            out[name] = conn.thread_id()
    return out


def in_child(body: Callable[[], dict[str, Any]], timeout: float = 90.0) -> dict[str, Any]:
    """Run ``body`` in a child made by ``os.fork()``; its JSON result, or its traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            out = json.dumps(body())
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails
            out = json.dumps({"error": traceback.format_exc()})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        assert time.monotonic() < deadline
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b'{"error": "no output"}')
    assert "error" not in result, result["error"]
    return result


def test_forked_child_watches_for_itself(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    rw = sqlrouter.connect(sb.url("RW_STRICT", autocommit="true"))
    ro = sqlrouter.connect(sb.url("RO_RELAXED", autocommit="true", max_lag=1))
    parent_handle = handle()
    before = monitor_sessions(parent_handle)
    assert set(before) == {"db1", "db2", "db3"}
    sb.fault("db2", "stop-io")  # the parent's snapshot still shows db2 healthy
    try:

        def child() -> dict[str, Any]:
            out: dict[str, Any] = {}
            # The parent's RW_STRICT connection: a clear error, nothing sent on its socket.
            try:
                server_id(rw)
            except sqlrouter.ConnectionInvalidated as exc:
                out["rw_error"] = str(exc)
            rw.close()  # forgets it; never a COM_QUIT on the parent's socket
            # The parent's relaxed connection moves to a socket of its own.
            out["ro_server"] = server_id(ro)
            names = [t.name for t in threading.enumerate()]
            out["monitor_thread"] = any(n.startswith("sqlrouter-monitor-") for n in names)
            # The child's own monitor sees db2's IO thread stopped: relaxed reads leave it.
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (len(seen) < 20 or "db2" in seen[-20:]):
                conn = sqlrouter.connect(sb.url("RO_RELAXED", max_lag=1))
                assert conn.datasource is not None
                seen.append(conn.datasource.name)
                conn.close()
                time.sleep(0.05)
            out["last_reads"] = seen[-20:]
            return out

        result = in_child(child)
    finally:
        sb.fault("db2", "resume")
    assert "opened by process" in result["rw_error"] and "before fork()" in result["rw_error"]
    assert result["ro_server"] in {1, 2, 3}
    assert result["monitor_thread"]
    assert len(result["last_reads"]) == 20 and "db2" not in result["last_reads"]
    # The parent's connections and monitoring sessions are untouched.
    assert server_id(rw) == 1
    assert server_id(ro) in {2, 3}
    after = monitor_sessions(parent_handle)
    assert {k: after.get(k) for k in before} == before
    rw.close()
    ro.close()


_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import sqlrouter

    rw_url, ro_url = sys.argv[1], sys.argv[2]
    rw = sqlrouter.connect(rw_url)
    ro = sqlrouter.connect(ro_url)
    (handle,) = sqlrouter._runtime.handles()
    sessions = {n: p._conn.thread_id() for n, p in handle.monitor._probers.items()}

    def sid(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT @@server_id")
            return cur.fetchone()[0]

    pid = os.fork()
    if pid == 0:
        c = sqlrouter.connect(rw_url)
        sid(c)
        sid(ro)
        # A normal exit: atexit runs sqlrouter.shutdown() in the child.
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    after = {n: p._conn.thread_id() for n, p in handle.monitor._probers.items() if p._conn}
    print(json.dumps({
        "child_status": status,
        "rw": sid(rw),
        "ro": sid(ro),
        "monitor_sessions_kept": all(after.get(n) == t for n, t in sessions.items()),
    }))
    """
)


def test_child_exit_leaves_the_parents_sockets_alone(cluster: Sandbox) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _SCRIPT,
            cluster.url("RW_STRICT", hide_password=False, autocommit="true"),
            cluster.url("RO_RELAXED", hide_password=False, autocommit="true"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"child_status": 0, "rw": 1, "ro": result["ro"], "monitor_sessions_kept": True}
    assert result["ro"] in {2, 3}


def _rw_server(url: str) -> tuple[int, int]:
    """(this worker's pid, the server id its RW_STRICT connection writes to; 0: an
    error, as while a switchover runs)."""
    try:
        conn = sqlrouter.connect(url)
        try:
            return os.getpid(), server_id(conn)
        finally:
            conn.close()
    except sqlrouter.Error:
        return os.getpid(), 0


def test_multiprocessing_fork_workers_follow_a_switchover(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster
    url = sb.url("RW_STRICT", hide_password=False, failover_timeout=10)
    assert _rw_server(url)[1] == 1  # the parent watches the service
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        first = pool.map(_rw_server, [url] * 16)
        assert {sid for _, sid in first} == {1}
        switchover(sb.service(), "db2")
        try:
            # Every worker, alone and on its own snapshot, writes to the new master.
            latest: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for pid, sid in pool.map(_rw_server, [url] * 16):
                    latest[pid] = sid
                if len(latest) == 4 and set(latest.values()) == {2}:
                    break
            assert len(latest) == 4 and set(latest.values()) == {2}, latest
        finally:
            switchover(sb.service(), "db1")


def test_a_stale_snapshot_is_not_routed_on(fresh_cluster: Sandbox) -> None:
    """A monitor that stopped publishing (here: stopped by hand): once its snapshot is
    older than the freshness bound, the next connect restarts it and waits for a round."""
    sb = fresh_cluster
    conn = sqlrouter.connect(sb.url("RO_RELAXED"))
    conn.close()
    h = handle()
    h.monitor.stop()
    snap = h.monitor.snapshot
    wait_until(
        lambda: time.monotonic() - snap.taken_at > snap.max_age,
        timeout=snap.max_age + 5,
        what="the snapshot going stale",
    )
    conn = sqlrouter.connect(sb.url("RO_RELAXED"))
    try:
        assert h.monitor.running
        assert h.monitor.snapshot.generation > snap.generation
        assert conn.datasource is not None and conn.datasource.name in {"db2", "db3"}
    finally:
        conn.close()


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_gunicorn_preload_workers_follow_the_cluster(fresh_cluster: Sandbox) -> None:
    """gunicorn --preload, 3 workers forked from a master that watches the service, serve
    the Django test project: each worker's reads leave a replica whose IO thread stopped,
    and each worker's writes follow a switchover."""
    sb = fresh_cluster
    workers = 3
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "SQLROUTER_DJANGO_URL": sb.url("RW_STRICT", hide_password=False),
        "SQLROUTER_DJANGO_WARM_UP": "1",
        "SQLROUTER_DJANGO_MAX_LAG": "1",
        "PYTHONPATH": str(root),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            f"--workers={workers}",
            f"--bind=127.0.0.1:{port}",
            "--graceful-timeout=5",
            "tests.django_project.wsgi:application",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[dict[str, Any]] = []

    def ask(rounds: int = 1) -> None:
        # Concurrent requests keep every (sync) worker busy, so each answers some.
        with ThreadPoolExecutor(2 * workers) as pool:
            for _ in range(rounds):
                answers.extend(pool.map(lambda _: _get(port, "/where/"), range(2 * workers)))

    def per_worker(key: str, last: int) -> dict[int, list[int]]:
        seen: dict[int, list[int]] = {}
        for a in answers:
            seen.setdefault(a["pid"], []).append(a[key])
        return {pid: values[-last:] for pid, values in seen.items()}

    def settled(key: str, last: int, ok: Callable[[int], bool]) -> bool:
        ask()
        tail = per_worker(key, last)
        return len(tail) == workers and all(
            len(v) == last and all(ok(x) for x in v) for v in tail.values()
        )

    try:
        wait_until(lambda: _answers(port), timeout=60, what="gunicorn answering")

        def every_worker_answered() -> bool:
            # Which sync worker accepts a request is the kernel's choice: on a quiet
            # machine one worker can take many rounds alone, so ask until each has answered.
            ask()
            return len(per_worker("pid", 1)) == workers

        wait_until(
            every_worker_answered,
            timeout=60,
            what=f"each of the {workers} workers answering",
        )
        assert all(a["write"] == 1 for a in answers)
        sb.fault("db2", "stop-io")
        try:
            answers.clear()
            wait_until(
                lambda: settled("read", 10, lambda sid: sid != 2),
                timeout=60,
                what=f"every worker reading off db2: {per_worker('read', 10)}",
            )
        finally:
            sb.fault("db2", "resume")
        switchover(sb.service(), "db3")
        try:
            answers.clear()
            wait_until(
                lambda: settled("write", 5, lambda sid: sid == 3),
                timeout=60,
                what=f"every worker writing to db3: {per_worker('write', 5)}",
            )
        finally:
            switchover(sb.service(), "db1")
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err


def _answers(port: int) -> bool:
    try:
        _get(port, "/where/")
    except OSError:
        return False
    return True


def _fork_and_wait(timeout: float) -> int | None:
    """fork(); the child exits at once.  The child's exit status, or None when it did
    not come back from fork() within ``timeout`` seconds (then it is killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os._exit(7)
    return reap(pid, give_up=timeout, fail=False)


def test_fork_while_threads_read_from_connections(cluster: Sandbox) -> None:
    """A fork while other threads wait for results (an application query, the monitor's
    probes): the child comes back from fork() (nothing it runs at fork waits for a lock
    that one of those threads holds)."""
    conns = [
        sqlrouter.connect(cluster.url(q, autocommit="true")) for q in ("RW_STRICT", "RO_RELAXED")
    ]
    started = threading.Barrier(len(conns) + 1)

    def busy(conn: sqlrouter.Connection) -> None:
        with conn.cursor() as cur:
            started.wait(10)
            cur.execute("SELECT SLEEP(3)")
            cur.fetchall()

    threads = [threading.Thread(target=busy, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    started.wait(10)
    time.sleep(0.3)  # the threads are inside their reads
    try:
        # 60 s: a child that is merely slow comes back in well under a second; one
        # stuck in fork() never does.
        assert _fork_and_wait(60) == 7
    finally:
        for t in threads:
            t.join(30)
    for conn in conns:  # the parent's connections are as they were
        assert server_id(conn) in {1, 2, 3}
        conn.close()


_INHERITED: list[sqlrouter.Connection] = []


def _sessions(url: str) -> set[int]:
    conn = sqlrouter.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST")
            return {int(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.parametrize("qos", ["RW_STRICT", "RO_RELAXED"])
def test_an_inherited_connection_opened_again_and_dropped_in_the_child_closes(
    cluster: Sandbox, qos: str
) -> None:
    """The child keeps what it must not free of its parent's connections (their TLS
    objects), not the connection objects: one the child opens again (a relaxed one moves
    by itself, any other after ping(reconnect=True)) and then drops without close() ends
    its session, as any dropped connection does."""
    url = cluster.url(qos, hide_password=False, autocommit="true")
    _INHERITED.append(sqlrouter.connect(url))
    server_id(_INHERITED[0])

    def child() -> dict[str, Any]:
        conn = _INHERITED.pop()
        try:
            session = scalar(conn, "SELECT CONNECTION_ID()")
        except sqlrouter.ConnectionInvalidated:
            assert qos == "RW_STRICT"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # PyMySQL's, on reconnect
                conn.ping(reconnect=True)
            session = scalar(conn, "SELECT CONNECTION_ID()")
        del conn
        gc.collect()
        wait_until(lambda: session not in _sessions(url), 30, f"session {session} ended")
        return {}

    try:
        in_child(child)
    finally:
        for conn in _INHERITED:
            conn.close()
        _INHERITED.clear()


def test_inherited_stream_says_its_rows_are_the_parents(cluster: Sandbox) -> None:
    import pymysql.cursors

    conn = sqlrouter.connect(cluster.url("RO_RELAXED", autocommit="true", consistency="none"))
    ss = conn.cursor(pymysql.cursors.SSCursor)
    ss.execute("SELECT seq FROM seq_1_to_10000")
    assert ss.fetchone() == (1,)

    def child() -> dict[str, Any]:
        try:
            ss.fetchall()
        except sqlrouter.OperationalError as exc:
            error = str(exc)
        else:
            error = "no error"
        sid = server_id(conn)  # the relaxed connection moves to a socket of its own
        return {"message": error, "sid": sid}

    result = in_child(child)
    assert "the rest of this result is lost" in result["message"], result
    assert "before fork()" in result["message"]
    assert result["sid"] in {2, 3}
    # The parent still streams its rows.
    assert len(ss.fetchall()) == 9999
    conn.close()


@pytest.mark.parametrize("qos", ["RW_STRICT", "RO_RELAXED"])
def test_sqlalchemy_pool_used_before_fork_works_in_the_child(cluster: Sandbox, qos: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine("mysql+" + cluster.url(qos, hide_password=False))
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))

        def child() -> dict[str, Any]:
            with engine.connect() as c:
                return {"sid": c.execute(sa.text("SELECT @@server_id")).scalar_one()}

        result = in_child(child)
        assert result["sid"] == 1 if qos == "RW_STRICT" else result["sid"] in {2, 3}
        with engine.connect() as c:  # the parent's pool is intact
            c.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
