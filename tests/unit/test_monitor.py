"""The monitor through its seams: ``connect=`` gives it fake servers that answer the
probe with canned rows, so rounds, the credentials it tries, ``after_fork`` and where it
writes the heartbeat are checked without a server (the lag arithmetic is
test_monitor_lag.py)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest

from sqlrouter.routing._probe import Prober, heartbeat_lock
from sqlrouter.routing.monitor import Monitor
from sqlrouter.routing.router import observed_master
from sqlrouter.topology import Credentials, DataSource, Role, Service

APP = Credentials("app", "app-pw")
OTHER = Credentials("other", "other-pw")
WALL = 1_800_000_000.0
#: Half an hour past a tick of the test service's hourly rounds.
HALF_PAST = 1_800_001_800.0


@dataclass
class Server:
    """What one fake server answers to the monitor's probe."""

    server_id: int
    read_only: bool
    #: ``(Master_Host, Master_Port)`` when it replicates, else ``None``.
    source: tuple[str, int] | None = None
    #: ``Master_Server_Id`` (of the server its IO thread last connected to).
    source_id: int = 1
    binlog_pos: str = "0-1-10"
    #: Users whose login it accepts.
    users: frozenset[str] = frozenset({"app"})
    #: Statements it ran, by the connection's program_name.
    statements: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self._sets: list[tuple[list[str] | None, list[tuple[Any, ...]]]] = []
        self.description: list[tuple[str]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        server = self.conn.server
        with server.lock:
            server.statements.append((self.conn.program, sql))
        if sql.startswith("INSERT INTO"):  # the heartbeat
            return 0 if server.read_only else 1
        if sql.startswith("SELECT GET_LOCK"):  # the heartbeat writer's lock: free
            self._sets = [(None, [(1,)])]
            self._next()
            return 1
        now = dt.datetime.fromtimestamp(WALL)
        first = (
            server.server_id,
            int(server.read_only),
            server.binlog_pos,
            "",
            now,
            now - dt.timedelta(seconds=0.5),
            "last_gtid",
        )
        slave: list[tuple[Any, ...]] = []
        cols = [
            "Master_Host",
            "Master_Port",
            "Master_Server_Id",
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Seconds_Behind_Master",
        ]
        if server.source is not None:
            host, port = server.source
            slave.append((host, port, server.source_id, "Yes", "Yes", 0))
        self._sets = [(None, [first]), (cols, slave)]
        self._next()
        return 1

    def _next(self) -> None:
        cols, rows = self._sets.pop(0)
        self.description = [(c,) for c in cols] if cols is not None else None
        self._rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows.pop(0) if self._rows else None

    def nextset(self) -> bool:
        self._next()
        return True


class FakeSocket:
    """A socket's descriptor (a real one: the read end of a pipe)."""

    def __init__(self) -> None:
        self.fd, self._other = os.pipe()
        os.close(self._other)
        self.detached = False

    def detach(self) -> int:
        self.detached = True
        return self.fd


class FakeReader:
    """A buffered reader whose close() must never be called in a forked child."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    def __init__(self, server: Server, program: str) -> None:
        self.server = server
        self.program = program
        self.closed = False
        self.socket = FakeSocket()
        self._sock: FakeSocket | None = self.socket
        self.reader = FakeReader()
        self._rfile: FakeReader | None = self.reader
        self._result: object = None

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


class Cluster:
    """Fake servers by port, and every connection and login the monitor made."""

    def __init__(self, servers: dict[int, Server]) -> None:
        self.servers = servers
        self.connections: list[FakeConnection] = []
        self.logins: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        #: While set to an unset event, logins wait for it (a round held in flight).
        self.gate: threading.Event | None = None

    def connect(self, **kw: Any) -> FakeConnection:
        server = self.servers[kw["port"]]
        gate = self.gate
        if gate is not None:
            gate.wait(10)
        with self.lock:
            self.logins.append((kw["port"], kw["user"]))
        if kw["user"] not in server.users:
            raise pymysql.err.OperationalError(1045, f"Access denied for user '{kw['user']}'")
        conn = FakeConnection(server, kw["program_name"])
        with self.lock:
            self.connections.append(conn)
        return conn

    def heartbeats(self, port: int) -> int:
        server = self.servers[port]
        with server.lock:
            return sum(1 for program, _ in server.statements if program == "sqlrouter-heartbeat")


def service(*, monitor: Credentials | None = None) -> Service:
    datasources = tuple(
        DataSource(name, "127.0.0.1", 3310 + i, Role.MASTER if i == 0 else Role.REPLICA)
        for i, name in enumerate(("db1", "db2", "db3"))
    )
    # A round every hour: the test runs the rounds it wants (run_round, a kick).
    return Service(
        "shop", datasources, monitor_interval=3600.0, probe_timeout=1.0, monitor_credentials=monitor
    )


def healthy() -> Cluster:
    """db1 the master; db2 and db3 replicate from it."""
    return Cluster(
        {
            3310: Server(1, read_only=False),
            3311: Server(2, read_only=True, source=("127.0.0.1", 3310)),
            3312: Server(3, read_only=True, source=("127.0.0.1", 3310)),
        }
    )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.01)


@pytest.fixture
def started() -> Iterator[Callable[..., Monitor]]:
    monitors: list[Monitor] = []

    def start(cluster: Cluster, svc: Service | None = None, **kw: Any) -> Monitor:
        # The wall clock at half past a tick: the heartbeat is written at once.
        kw.setdefault("wall", lambda: HALF_PAST)
        monitor = Monitor(svc or service(), connect=cluster.connect, **kw)
        monitors.append(monitor)
        monitor.start()
        monitor.wait_for_round(after=0, timeout=10)
        return monitor

    yield start
    for monitor in monitors:
        monitor.stop()


def test_a_round_observes_every_server(started: Callable[..., Monitor]) -> None:
    monitor = started(healthy(), credentials=APP)
    snap = monitor.snapshot
    assert snap.generation >= 1 and monitor.rounds >= 1
    db1, db2 = snap.health_of("db1"), snap.health_of("db2")
    assert db1.writable and not db1.replicating and db1.server_id == 1
    assert db2.reachable and db2.read_only and db2.replicating
    assert (db2.master_host, db2.master_port) == ("127.0.0.1", 3310)
    assert db2.lag == 0.0 and db2.tracks_last_gtid


def test_each_round_publishes_the_next_generation(started: Callable[..., Monitor]) -> None:
    monitor = started(healthy(), credentials=APP)
    before = monitor.snapshot.generation
    assert monitor.run_round().generation == before + 1
    assert monitor.run_round().generation == before + 2
    assert monitor.snapshot.generation == before + 2


def test_the_clock_seam_stamps_the_observations(started: Callable[..., Monitor]) -> None:
    monitor = started(healthy(), credentials=APP, clock=lambda: 42.0)
    snap = monitor.run_round()
    assert snap.taken_at == 42.0
    assert {snap.health_of(n).observed_at for n in ("db1", "db2", "db3")} == {42.0}


def test_the_heartbeat_goes_to_the_master_only(started: Callable[..., Monitor]) -> None:
    cluster = healthy()
    started(cluster, credentials=APP)
    wait_until(lambda: cluster.heartbeats(3310) >= 1, "a heartbeat on db1")
    assert cluster.heartbeats(3311) == cluster.heartbeats(3312) == 0


def test_the_heartbeat_waits_for_half_an_interval_after_the_tick(
    started: Callable[..., Monitor],
) -> None:
    """At the tick, when every host probes, nothing is written: the write waits until
    half an interval later (here half an hour), and stop() does not wait for it."""
    cluster = healthy()
    monitor = started(cluster, credentials=APP, wall=lambda: 1_800_003_600.0)
    monitor.run_round()
    future = monitor._heartbeat_future
    assert future is not None and not future.done()
    assert sum(cluster.heartbeats(p) for p in (3310, 3311, 3312)) == 0
    monitor.stop()
    # The write's wait ends with the stop (not half an hour later), writing nothing.
    future.result(timeout=30)
    assert sum(cluster.heartbeats(p) for p in (3310, 3311, 3312)) == 0


def test_no_heartbeat_while_no_master_is_singled_out(started: Callable[..., Monitor]) -> None:
    cluster = healthy()
    cluster.servers[3311].read_only = False  # db2 writable too, and still replicating
    cluster.servers[3312].source = ("127.0.0.1", 3399)  # db3 from no datasource
    cluster.servers[3312].source_id = 9
    monitor = started(cluster, credentials=APP)
    snap = monitor.run_round()
    assert snap.health_of("db1").writable
    assert observed_master(snap) is None
    # The heartbeat write is submitted by the round itself, after publishing: none was.
    assert monitor._heartbeat_future is None
    assert sum(cluster.heartbeats(p) for p in (3310, 3311, 3312)) == 0


def test_a_refused_login_gives_way_to_a_connects_credentials(
    started: Callable[..., Monitor],
) -> None:
    cluster = healthy()
    for server in cluster.servers.values():
        server.users = frozenset({"other"})
    monitor = started(cluster, credentials=APP)
    refused = monitor.snapshot.health_of("db1")
    assert not refused.reachable and refused.error_code == 1045
    after = monitor.offer_credentials(OTHER)
    assert after is not None
    snap = monitor.wait_for_round(after=after, timeout=10)
    assert snap.health_of("db1").reachable
    assert (3310, "other") in cluster.logins
    # Logged in: a later connect's credentials change nothing.
    assert monitor.offer_credentials(APP) is None


def test_credentials_taken_wait_for_the_round_made_with_them(
    started: Callable[..., Monitor],
) -> None:
    """Between the round that takes a connect's credentials and its snapshot, a connect
    with the same credentials waits for that snapshot (it must not route on the one
    that shows every login refused)."""
    cluster = healthy()
    for server in cluster.servers.values():
        server.users = frozenset({"other"})
    monitor = started(cluster, credentials=APP)
    cluster.gate = gate = threading.Event()  # the next round's logins wait
    try:
        after = monitor.offer_credentials(OTHER)
        assert after is not None
        wait_until(lambda: monitor._credentials == OTHER, "the round taking the credentials")
        assert monitor.snapshot.generation == after  # not published yet
        assert monitor.offer_credentials(OTHER) == after
    finally:
        gate.set()
    snap = monitor.wait_for_round(after=after, timeout=10)
    assert snap.health_of("db1").reachable
    assert monitor.offer_credentials(OTHER) is None


def test_one_refusal_lets_a_new_password_in(started: Callable[..., Monitor]) -> None:
    """A password changed on the servers: the monitor's sessions that stay open keep
    working, the one that logs in again is refused; a connect's new credentials then
    replace the monitor's."""
    cluster = healthy()
    monitor = started(cluster, credentials=APP)
    assert monitor.offer_credentials(OTHER) is None  # logged in: kept
    for server in cluster.servers.values():
        server.users = frozenset({"other"})
    monitor._probers["db1"]._close_probe()  # its session ends (a restart, wait_timeout)
    snap = monitor.run_round()
    assert snap.health_of("db2").reachable and snap.health_of("db1").error_code == 1045
    after = monitor.offer_credentials(OTHER)
    assert after is not None
    snap = monitor.wait_for_round(after=after, timeout=10)
    assert all(snap.health_of(n).reachable for n in ("db1", "db2", "db3"))
    assert monitor._credentials == OTHER


def test_the_registrys_monitor_account_is_kept(started: Callable[..., Monitor]) -> None:
    cluster = healthy()
    monitor = started(cluster, service(monitor=APP), credentials=OTHER)
    assert monitor.offer_credentials(OTHER) is None
    assert {user for _, user in cluster.logins} == {"app"}


def test_after_fork_forgets_the_parents_connections(started: Callable[..., Monitor]) -> None:
    cluster = healthy()
    monitor = started(cluster, credentials=APP)
    probes = [c for c in cluster.connections if c.program == "sqlrouter-monitor"]
    assert len(probes) == 3
    monitor.after_fork()
    # The parent's sockets: this process's descriptors closed, nothing said to the
    # server, and the buffered readers left alone (a parent's thread may hold their lock).
    assert all(c._sock is None and c.socket.detached and not c.closed for c in probes)
    assert not any(c.reader.closed for c in probes)
    assert not monitor.running
    assert monitor.snapshot.taken_at == float("-inf")  # stale: its age is unknown here
    monitor.start()
    snap = monitor.wait_for_round(timeout=10)
    assert snap.health_of("db1").reachable
    fresh = [c for c in cluster.connections if c.program == "sqlrouter-monitor"]
    assert len(fresh) == 6  # each server probed on a connection of the child's own


def test_a_closed_or_forgotten_prober_is_no_heartbeat_writer(
    started: Callable[..., Monitor],
) -> None:
    # The writer's lock lives on the heartbeat connection: a prober without it (closed,
    # or a forked child's copy) holds no lock and must take it again before writing.
    cluster = healthy()
    monitor = started(cluster, credentials=APP)
    wait_until(lambda: monitor.heartbeat_writer, "it writes the heartbeat")
    prober = monitor._probers["db1"]
    monitor.stop()
    prober.close()
    assert not prober.writer
    monitor = started(cluster, credentials=APP)
    wait_until(lambda: monitor.heartbeat_writer, "it writes the heartbeat")
    prober = monitor._probers["db1"]
    monitor.stop()
    monitor.after_fork()  # forgets its probers (each forget()s its connections)
    assert not prober.writer


def test_the_heartbeat_lock_names_the_whole_table() -> None:
    # GET_LOCK names are 64 characters at most: two long tables of one master that
    # share the first 44 characters must not share one writer's lock.
    common = "heartbeats_of_the_cluster_with_a_long_name_"
    one, two = heartbeat_lock(f"db.{common}one"), heartbeat_lock(f"db.{common}two")
    assert one != two
    assert len(one) <= 64 and len(two) <= 64
    assert heartbeat_lock("sqlrouter.heartbeat") == "sqlrouter.heartbeat:sqlrouter.heartbeat"


class StalledWriterCursor:
    """A master whose writer's lock is held by connection 7, its heartbeat 60 s old;
    ``KILL`` fails with ``kill_errno``."""

    def __init__(self, kill_errno: int) -> None:
        self.kill_errno = kill_errno
        self.kills = 0

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        if sql.startswith("KILL"):
            self.kills += 1
            raise pymysql.err.OperationalError(self.kill_errno, "refused")
        return 1

    def fetchone(self) -> tuple[Any, ...]:
        return (7, 60.0)


@pytest.mark.parametrize("kill_errno", [1094, 1095])
def test_a_stalled_writer_that_cannot_be_ended_is_logged_once(
    kill_errno: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Every round of every publisher finds the stalled writer: its WARNINGs once per
    # holder, not once per round; no "cannot end" when another process ended it first
    # (1094: no such thread).
    svc = service()
    prober = Prober(svc.datasources[0], svc, APP, Cluster({}).connect, time.monotonic)
    cur = StalledWriterCursor(kill_errno)
    with caplog.at_level(logging.INFO, logger="sqlrouter.monitor"):
        for _ in range(5):
            prober._end_stalled_writer(cur, "lock", "t", 10.0)
    assert cur.kills == 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == (1 if kill_errno == 1094 else 2), [r.getMessage() for r in warnings]
