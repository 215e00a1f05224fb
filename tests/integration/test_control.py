"""The control socket of a running process, and ``sqlrouter admin``, on real servers.

The process under control is this test process: it connects to the sandbox with the
control socket enabled, and the tests talk to it over the socket (raw JSON lines, and
the ``sqlrouter admin`` command in a subprocess), then check what routing does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import sqlrouter
from sqlrouter import control
from sqlrouter.control import request
from sqlrouter.registry import write_registry_file
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import reap

pytestmark = pytest.mark.sandbox

NOBODY = 65534


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    yield  # before the shared _stop_monitors shuts the control socket down
    for raw in Raw.opened:
        raw.close()
    Raw.opened.clear()


@pytest.fixture
def ctl_dir() -> Iterator[Path]:
    """A socket directory not created yet, with a short path (Unix sockets: 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="sqlrctl"))
    try:
        yield base / "d"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def env_control(ctl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SQLROUTER_CONTROL", str(ctl_dir))
    return ctl_dir


def _registry(sb: Sandbox, directory: Path, **settings: Any) -> Path:
    """A registry file for ``sb``'s service with ``[control]`` settings."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_registry_file(directory / "sqlrouter.toml", [sb.service()], control=settings)


def _server() -> control.ControlServer:
    server = control.current()
    assert server is not None and server.running
    return server


def _socket() -> Path:
    path = _server().socket_path
    assert path is not None
    return path


class Raw:
    """A control client speaking raw bytes (closed at the end of the test, at the latest)."""

    opened: ClassVar[list[Raw]] = []

    def __init__(self, path: Path | None = None, *, tcp: tuple[str, int] | None = None) -> None:
        Raw.opened.append(self)
        if tcp is not None:
            self.sock = socket.create_connection(tcp, timeout=10)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(os.fspath(path or _socket()))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(request).encode() + b"\n")
        return self.line()

    def line(self, timeout: float = 10.0) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; received {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def at_eof(self, timeout: float = 10.0) -> bool:
        """Read what is left; True when the server closed the connection."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _admin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlrouter.cli", "admin", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def _landing(url: str, n: int = 12) -> Counter[str]:
    """Where ``n`` new connections land."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        conn = sqlrouter.connect(url)
        try:
            assert conn.datasource is not None
            seen[conn.datasource.name] += 1
        finally:
            conn.close()
    return seen


def _wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.1)


class QueryLoop:
    """An application thread running ``SELECT 1`` in a loop: must never be blocked."""

    def __init__(self, url: str) -> None:
        self.conn = sqlrouter.connect(url)
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    self.count += 1
        except Exception as exc:  # noqa: BLE001 - handed to the test, which fails on it
            self.error = exc

    def progresses(self) -> bool:
        before = self.count
        deadline = time.monotonic() + 5
        while self.count == before and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count > before and self.error is None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()
        assert self.error is None, self.error


def _control_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sqlrouter-control")]


# --------------------------------------------------------------------------- life cycle


def test_socket_starts_private_and_is_removed_by_shutdown(
    cluster: Sandbox, env_control: Path
) -> None:
    assert control.current() is None
    conn = sqlrouter.connect(cluster.url("RO_RELAXED"))
    path = _socket()
    assert path == env_control / f"{os.getpid()}.sock"
    assert env_control.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(_control_threads()) == ["sqlrouter-control", "sqlrouter-control-worker"]

    status = request(path, {"cmd": "status"})
    assert status["ok"] is True
    assert status["process"]["pid"] == os.getpid()
    (svc,) = status["services"]
    assert svc["service"] == "sandbox" and svc["master"] == "db1"
    by_name = {ds["name"]: ds for ds in svc["datasources"]}
    assert by_name["db1"]["role"] == "master"
    assert by_name["db2"]["role"] == by_name["db3"]["role"] == "replica"
    assert all(ds["admin"] == "online" and ds["reachable"] for ds in by_name.values())
    assert by_name["db2"]["lag"] is not None and by_name["db2"]["gtid"]
    assert conn.datasource is not None
    assert by_name[conn.datasource.name]["open_connections"] == 1
    assert svc["open_connections"] == 1
    text = json.dumps(status)
    for secret in (cluster.state.app, cluster.state.monitor, cluster.state.admin):
        assert secret.password not in text
    conn.close()
    assert request(path, {"cmd": "status"})["services"][0]["open_connections"] == 0

    sqlrouter.shutdown()
    assert not path.exists()
    assert _control_threads() == []
    assert control.current() is None
    # A new first connect starts it again.
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    assert _socket() == path and path.exists()


def test_no_socket_unless_enabled(cluster: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLROUTER_CONTROL", raising=False)
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    assert control.current() is None and _control_threads() == []
    monkeypatch.setenv("SQLROUTER_CONTROL", "off")
    sqlrouter.shutdown()
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    assert control.current() is None


def test_a_bad_setting_never_breaks_the_application(
    cluster: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    registry = _registry(cluster, tmp_path / "reg", enabled=True, socket_dir=str(shared))
    with caplog.at_level(logging.ERROR, logger="sqlrouter.control"):
        conn = sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry)))
    conn.close()
    assert control.current() is None
    assert "control socket not started" in caplog.text
    assert f"control socket directory {shared} has mode 0755" in caplog.text
    assert f"chmod 700 {shared}" in caplog.text


def test_a_forked_child_gets_a_socket_of_its_own(cluster: Sandbox, env_control: Path) -> None:
    """A pre-forking server: the child's shutdown never removes the parent's socket."""
    url = cluster.url("RO_RELAXED")
    sqlrouter.connect(url).close()
    parent_socket = _socket()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        report = "?"
        try:
            sqlrouter.shutdown()  # forget the parent's monitors and control socket
            kept = parent_socket.exists()
            sqlrouter.connect(url).close()
            mine = control.current()
            report = json.dumps(
                {
                    "kept": kept,
                    "socket": str(mine.socket_path) if mine else None,
                    "status": request(parent_socket, {"cmd": "status"})["ok"],
                }
            )
            sqlrouter.shutdown()
        except Exception as exc:  # noqa: BLE001 - the child reports any error through the pipe
            report = json.dumps({"error": repr(exc)})
        finally:
            os.write(w, report.encode())
            os._exit(0)
    os.close(w)
    assert reap(pid, give_up=30) == 0
    with os.fdopen(r, "rb") as pipe:
        result = json.loads(pipe.read())
    assert result == {
        "kept": True,
        "socket": str(env_control / f"{pid}.sock"),
        "status": True,
    }
    assert parent_socket.exists() and not (env_control / f"{pid}.sock").exists()
    assert request(parent_socket, {"cmd": "status"})["ok"]


# --------------------------------------------------------------------------- commands


def test_offline_and_online_change_routing(cluster: Sandbox, env_control: Path) -> None:
    url = cluster.url("RO_RELAXED")
    assert set(_landing(url)) == {"db2", "db3"}
    on_db2 = sqlrouter.connect(url)
    for _ in range(10):  # connections alternate between the replicas
        if on_db2.datasource_name == "db2":
            break
        on_db2.close()
        on_db2 = sqlrouter.connect(url)
    assert on_db2.datasource_name == "db2"

    res = _admin("--socket", str(_socket()), "offline", "db2")
    assert res.returncode == 0, res.stderr
    assert "service 'sandbox': db2 is offline" in res.stdout
    assert "1 open connections are invalidated" in res.stdout
    assert set(_landing(url, 20)) == {"db3"}
    status = request(_socket(), {"cmd": "status"})
    admin = {ds["name"]: ds["admin"] for ds in status["services"][0]["datasources"]}
    assert admin == {"db1": "online", "db2": "offline", "db3": "online"}
    # The open connection on db2 leaves it at its next transaction boundary.
    with contextlib.suppress(sqlrouter.ConnectionInvalidated), on_db2.cursor() as cur:
        cur.execute("SELECT 1")
    assert on_db2.datasource_name != "db2"
    on_db2.close()

    res = _admin("--socket", str(_socket()), "online", "db2")
    assert res.returncode == 0, res.stderr
    assert "db2 is online" in res.stdout
    assert set(_landing(url)) == {"db2", "db3"}

    res = _admin("--socket", str(_socket()), "offline", "db9")
    assert res.returncode == 1
    assert "no service of this process has datasource 'db9'" in res.stdout
    assert "sandbox: db1, db2, db3" in res.stdout


def test_promote_decides_between_writable_servers(
    fresh_cluster: Sandbox, env_control: Path
) -> None:
    url = fresh_cluster.url("RW_STRICT")
    sqlrouter.connect(url).close()
    path = _socket()
    answer = request(path, {"cmd": "promote", "datasource": "db3"})
    assert answer["ok"] and answer["applied"][0]["promoted"] == "db3"
    assert "db3 is not writable now" in answer["applied"][0]["warning"]
    assert set(_landing(url, 3)) == {"db1"}  # never a write to a read-only server

    # A replica made writable still replicates: a promotion cannot make it the master.
    fresh_cluster.query("db2", "SET GLOBAL read_only = 0")
    handle = sqlrouter._runtime.handles()[0]
    handle.monitor.wait_for_round()
    handle.monitor.wait_for_round()
    answer = request(path, {"cmd": "promote", "datasource": "db2"})
    assert answer["ok"] and answer["applied"][0]["master"] == "db1"
    assert answer["applied"][0]["warning"] == (
        "db2 is not the master: the promotion only breaks a tie between writable servers "
        "that do not replicate, when the replicas do not tell them apart; now: master db1 "
        "(writable; split brain: db2 also writable; promoted db2 is not the master): db2 "
        "writable but replicating from db1: a misconfigured replica, never the master"
    )
    assert set(_landing(url, 3)) == {"db1"}

    # db2 stops replicating (a tool sqlrouter cannot see): db1 and db2 are both writable
    # and not replicating.  db3 replicates from db1, which stays the master.
    fresh_cluster.query("db2", "STOP SLAVE")
    fresh_cluster.query("db2", "RESET SLAVE ALL")
    _wait_for(lambda: not handle.monitor.snapshot.health_of("db2").replicating, what="db2 reset")
    assert set(_landing(url, 3)) == {"db1"}
    # With no replica to tell them apart (db3 down), the promotion breaks the tie.
    fresh_cluster.fault("db3", "kill")
    _wait_for(lambda: not handle.monitor.snapshot.health_of("db3").reachable, what="db3 down")
    assert set(_landing(url, 3)) == {"db2"}
    res = _admin("--socket", str(path), "promote", "--clear")
    assert res.returncode == 0, res.stderr
    assert "no datasource promoted; master now: (none)" in res.stdout
    with pytest.raises(sqlrouter.NoMasterAvailable) as refused:
        sqlrouter.connect(url)
    assert "split brain: db1 and db2 are writable and not replicating; no reachable " in str(
        refused.value
    )


def test_set_max_lag_changes_routing(fresh_cluster: Sandbox, env_control: Path) -> None:
    url = fresh_cluster.url("RO_RELAXED")
    sqlrouter.connect(url).close()
    path = _socket()
    fresh_cluster.fault("db3", "delay", 4)

    def db3_lag() -> float:
        status = request(path, {"cmd": "status"})
        lag = {ds["name"]: ds["lag"] for ds in status["services"][0]["datasources"]}["db3"]
        return float(lag) if lag is not None else 0.0

    _wait_for(lambda: db3_lag() > 2.0, what="db3 lagging")
    assert set(_landing(url)) == {"db2"}

    res = _admin("--socket", str(path), "set", "sandbox", "max_lag", "30")
    assert res.returncode == 0, res.stderr
    assert "max_lag 30.00s (set in this process; registry: 1.00s)" in res.stdout
    handle = sqlrouter._runtime.handles()[0]
    for _ in range(3):  # the monitor re-reads the registry every round: the change stays
        handle.monitor.wait_for_round()
    assert handle.service.max_lag == 30.0
    assert set(_landing(url)) == {"db2", "db3"}
    status = request(path, {"cmd": "status"})["services"][0]
    assert status["max_lag"] == 30.0 and status["overrides"] == {"max_lag": 30.0}

    res = _admin("--socket", str(path), "set", "sandbox", "max_lag", "default")
    assert res.returncode == 0, res.stderr
    assert handle.service.max_lag == 1.0
    assert set(_landing(url)) == {"db2"}

    res = _admin("--socket", str(path), "set", "sandbox", "max_lag", "-1")
    assert res.returncode == 2
    assert "expected a number of seconds >= 0 or 'default', got '-1'" in res.stderr
    answer = request(path, {"cmd": "set", "service": "shop", "setting": "max_lag", "value": 1})
    assert answer["code"] == "not_found"
    assert "does not use service 'shop' (it uses: sandbox)" in answer["error"]


def test_reload_rereads_the_registry_and_ends_a_set(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path
) -> None:
    registry = _registry(cluster, tmp_path, enabled=True, socket_dir=str(ctl_dir))
    sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry))).close()
    path = _socket()  # enabled by the registry this time
    assert request(path, {"cmd": "set", "service": "sandbox", "setting": "max_lag", "value": 7})[
        "ok"
    ]
    answer = request(path, {"cmd": "reload"})
    assert answer["ok"] and answer["registries"][0]["changed"] is False
    assert answer["services"] == [
        {"service": "sandbox", "max_lag": 7.0, "overrides": {"max_lag": 7.0}}
    ]

    service = cluster.service()
    write_registry_file(
        registry,
        [type(service)(**{**_fields(service), "max_lag": 2.5})],
        control={"enabled": True, "socket_dir": str(ctl_dir)},
    )
    answer = request(path, {"cmd": "reload"})
    assert answer["ok"] and answer["registries"][0]["changed"] is True
    # The registry redefined the service: the operator's max_lag no longer applies.
    assert answer["services"] == [{"service": "sandbox", "max_lag": 2.5, "overrides": {}}]

    good = registry.read_text()
    registry.write_text(good + "\n[services.broken\n")
    res = _admin("--socket", str(path), "reload")
    assert res.returncode == 1
    assert f"registry {registry}: invalid TOML" in res.stdout
    assert "the last good registry content is kept" in res.stdout
    # The error names the registry once, not as "file X: registry X: ...".
    assert res.stdout.count(str(registry)) == 2, res.stdout  # the error, then the list
    assert request(path, {"cmd": "status"})["services"][0]["max_lag"] == 2.5

    # Fixed back to the same content: the answer says the error is gone, not "unchanged".
    registry.write_text(good)
    res = _admin("--socket", str(path), "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"file {registry}: valid, no change; fixed since the last error" in res.stdout
    assert "invalid TOML" in res.stdout
    res = _admin("--socket", str(path), "reload")
    assert res.stdout.strip() == f"file {registry}: valid, no change"


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def test_explain_as_the_process_sees_it(cluster: Sandbox, env_control: Path) -> None:
    url = cluster.url("RO_RELAXED")
    sqlrouter.connect(url).close()
    path = _socket()
    request(path, {"cmd": "offline", "datasource": "db3"})
    answer = request(path, {"cmd": "explain", "url": url})
    assert answer["ok"]
    text = answer["text"]
    assert "service 'sandbox'" in text and "qos=RO_RELAXED" in text
    assert "offline (operator)" in text and "-> db2" in text
    assert cluster.state.app.password not in text
    # The application never logs in as whoever asks (only `sqlrouter route` does).
    assert "login as" not in text

    res = _admin("--socket", str(path), "explain", cluster.url("RW_STRICT"))
    assert res.returncode == 0, res.stderr
    assert "-> db1" in res.stdout

    answer = request(path, {"cmd": "explain", "url": url.replace("qos=RO_RELAXED", "qos=FAST")})
    assert answer["code"] == "bad_request" and "FAST" in answer["error"]
    assert cluster.state.app.password not in answer["error"]
    answer = request(path, {"cmd": "explain", "url": "sqlrouter://app@shop/db"})
    assert answer["code"] == "not_found" and "does not use service 'shop'" in answer["error"]


def _tcp_registry(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path, **settings: Any
) -> tuple[Path, str, str]:
    """A registry with a TCP listener; (its path, the operator token, the read-only token)."""
    operator, readonly = secrets.token_hex(16), secrets.token_hex(16)
    for name, token in (("op.token", operator), ("ro.token", readonly)):
        (tmp_path / name).write_text(token + "\n")
        (tmp_path / name).chmod(0o600)
    registry = _registry(
        cluster,
        tmp_path,
        enabled=True,
        socket_dir=str(ctl_dir),
        tcp="127.0.0.1:0",
        token_file="op.token",
        readonly_token_file="ro.token",
        **settings,
    )
    return registry, operator, readonly


def _fifo_has_reader(path: Path) -> bool:
    """Whether some process has the FIFO ``path`` open for reading (or waits to)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)  # a reader blocked in open() gets EOF and goes on
    return True


def test_explain_never_opens_resolves_or_reads_what_a_request_names(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path
) -> None:
    """A read-only client names a registry the process does not use: nothing is touched."""
    registry, _, readonly = _tcp_registry(cluster, tmp_path, ctl_dir, command_timeout=3.0)
    sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry))).close()
    address = _server().tcp_address
    assert address is not None
    fifo = tmp_path / "password.fifo"
    os.mkfifo(fifo, 0o600)
    secret = tmp_path / "secret.password"
    secret.write_text("the-secret-content\n")
    secret.chmod(0o600)
    missing = tmp_path / "missing.password"
    ro = Raw(tcp=address)
    try:
        answers = {}
        for name, target in (("fifo", fifo), ("secret", secret), ("missing", missing)):
            spec = f"dns:x.test?monitor_user=a&monitor_password_file={target}"
            url = cluster.url("RO_RELAXED", registry=spec)
            answer = ro.ask({"cmd": "explain", "url": url, "token": readonly})
            assert answer["ok"] is False and answer["code"] == "not_found", (name, answer)
            answers[name] = answer["error"]
            assert not _fifo_has_reader(fifo), f"{name}: the FIFO was opened"
        # The answers do not depend on the file: neither its content nor its existence.
        assert "the-secret-content" not in json.dumps(answers)
        assert answers["secret"].replace(str(secret), "X") == answers["missing"].replace(
            str(missing), "X"
        )
        assert answers["fifo"].replace(str(fifo), "X") == answers["missing"].replace(
            str(missing), "X"
        )
        assert "this process uses service 'sandbox' from" in answers["secret"]
        # A registry file that is not the process's: not read either.
        answer = ro.ask(
            {
                "cmd": "explain",
                "url": cluster.url("RO_RELAXED", registry=str(secret)),
                "token": readonly,
            }
        )
        assert answer["code"] == "not_found" and "the-secret-content" not in answer["error"]
        # No registry was created for any of them: nothing cached, no thread started.
        dns = sys.modules.get("sqlrouter.registry.find")
        assert dns is None or not dns._dns_registries
        assert str(secret) not in repr(sqlrouter.registry.file._CACHE)
        assert not [t for t in threading.enumerate() if t.name.startswith("sqlrouter-dns")]
        # The URL the application uses is explained as before.
        answer = ro.ask(
            {
                "cmd": "explain",
                "url": cluster.url("RO_RELAXED", registry=str(registry)),
                "token": readonly,
            }
        )
        assert answer["ok"] is True and "service 'sandbox'" in answer["text"]
    finally:
        _fifo_has_reader(fifo)  # never leave a thread of this process blocked on it
        ro.close()


# --------------------------------------------------------------------------- bad clients


def test_bad_input_gets_an_error_and_the_server_carries_on(
    cluster: Sandbox, env_control: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    caplog.set_level(logging.ERROR, logger="sqlrouter.control")
    raw = Raw()
    for line, code in [
        (b"garbage", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"cmd": "nope"}', "unknown_command"),
        (b'{"cmd": "offline"}', "bad_request"),
        (b'{"cmd": "offline", "datasource": "db2", "extra": 1}', "bad_request"),
        (b"\xff\xfe{}", "bad_request"),
        (b'{"cmd": "status", "id": {"a": 1}}', "bad_request"),
        (b"[" * 5000, "bad_request"),
        # Numbers no field takes: an error answer, never an OverflowError in the server.
        (b'{"cmd":"set","service":"s","setting":"max_lag","value":1e400}', "bad_request"),
        (
            b'{"cmd":"set","service":"s","setting":"max_lag","value":1' + b"0" * 400 + b"}",
            "bad_request",
        ),
        (
            b'{"cmd":"set","service":"s","setting":"max_lag","value":1' + b"0" * 5000 + b"}",
            "bad_request",
        ),
        (b'{"cmd":"status","id":1' + b"0" * 4000 + b"}", "bad_request"),
    ]:
        raw.send(line + b"\n")
        answer = raw.line()
        assert answer["ok"] is False and answer["code"] == code, (line, answer)
    # Blank lines are ignored; answers come in order; ids are echoed; \r\n is fine.
    raw.send(b'\n  \n{"cmd": "status", "id": 1}\r\n{"cmd": "reload", "id": 2}\n')
    assert raw.line()["id"] == 1
    assert raw.line() == {
        "ok": True,
        "id": 2,
        "registries": [
            {"registry": f"file {cluster.registry_path}", "changed": False, "error": None}
        ],
        "services": [{"service": "sandbox", "max_lag": 1.0, "overrides": {}}],
    }
    raw.close()

    # A line over 64 KiB: an error, then the connection is closed.
    long = Raw()
    long.send(b'{"cmd": "status", "pad": "' + b"x" * 70_000)
    answer = long.line()
    assert answer["code"] == "too_long" and "65536" in answer["error"]
    assert long.at_eof()
    long.close()
    long = Raw()
    long.send(b" " * 65_537 + b'{"cmd": "status"}\n')
    assert long.line()["code"] == "too_long"
    assert long.at_eof()
    long.close()

    # The last request may end at EOF without a newline.
    last = Raw()
    last.send(b'{"cmd": "status"}')
    last.sock.shutdown(socket.SHUT_WR)
    assert last.line()["ok"] is True
    assert last.at_eof()
    last.close()

    # A client that disconnects before its answer does no harm.
    for _ in range(5):
        gone = Raw()
        gone.send(b'{"cmd": "reload"}\n{"cmd": "status"}\n')
        gone.close()
    assert Raw().ask({"cmd": "status"})["ok"] is True
    assert sorted(_control_threads()) == ["sqlrouter-control", "sqlrouter-control-worker"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_slow_and_silent_clients_are_dropped_while_others_are_served(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path
) -> None:
    registry = _registry(
        cluster, tmp_path, enabled=True, socket_dir=str(ctl_dir), client_timeout=5.0
    )
    url = cluster.url("RO_RELAXED", registry=str(registry))
    app = QueryLoop(url)
    try:
        started = time.monotonic()
        slow = Raw()
        slow.send(b'{"cmd": "sta')  # never ends its line
        silent = Raw()
        trickle = Raw()
        stop_trickle = threading.Event()

        def trickling() -> None:
            with contextlib.suppress(OSError):
                for _ in range(100):
                    trickle.send(b" ")
                    if stop_trickle.wait(0.2):
                        return

        feeder = threading.Thread(target=trickling, daemon=True)
        feeder.start()

        assert Raw().ask({"cmd": "status"})["ok"] is True
        # Served while the slow clients still hold their connections, not after them.
        waiting, _, _ = select.select([slow.sock, silent.sock, trickle.sock], [], [], 0)
        assert waiting == [], "status was answered only after the slow clients were dropped"
        assert app.progresses()

        for client in (slow, silent, trickle):
            answer = client.line(timeout=15)
            assert answer["code"] == "timeout"
            assert "no complete request line within 5s" in answer["error"]
            assert client.at_eof()
        assert time.monotonic() - started > 4.5  # not before client_timeout (load only adds)
        stop_trickle.set()
        feeder.join(5)
        assert app.progresses()
        assert Raw().ask({"cmd": "status"})["ok"] is True
        _wait_for(lambda: _server().clients == 0, what="clients closed")
    finally:
        app.stop()


def test_fifty_clients_at_once(cluster: Sandbox, env_control: Path) -> None:
    app = QueryLoop(cluster.url("RO_RELAXED"))
    try:
        barrier = threading.Barrier(50, timeout=30)
        answers: list[dict[str, Any]] = []
        errors: list[BaseException] = []

        def client() -> None:
            try:
                raw = Raw()
                barrier.wait()
                answers.append(raw.ask({"cmd": "status"}))
                raw.close()
            except Exception as exc:  # noqa: BLE001 - handed to the test, which fails on it
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(50)]
        for t in threads:
            t.start()
        assert app.progresses()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(answers) == 50 and all(a["ok"] for a in answers)
        assert app.progresses()
    finally:
        app.stop()


def test_clients_over_the_limit_are_turned_away(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path
) -> None:
    registry = _registry(cluster, tmp_path, enabled=True, socket_dir=str(ctl_dir), max_clients=3)
    sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry))).close()
    held = [Raw() for _ in range(3)]
    for raw in held:
        assert raw.ask({"cmd": "status"})["ok"]  # accepted and served
    extra = Raw()
    answer = extra.line()
    assert answer["code"] == "busy" and "3 unix clients are connected already" in answer["error"]
    assert extra.at_eof()
    held.pop().close()
    _wait_for(lambda: _server().clients == 2, what="a client gone")
    assert Raw().ask({"cmd": "status"})["ok"]
    for raw in held:
        raw.close()


def test_idle_tcp_clients_never_lock_out_the_unix_socket(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path
) -> None:
    """Clients without a token fill the TCP places only, and are dropped soon."""
    registry, _, readonly = _tcp_registry(
        cluster, tmp_path, ctl_dir, max_clients=2, max_tcp_clients=2, tcp_auth_timeout=1.0
    )
    sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry))).close()
    address = _server().tcp_address
    assert address is not None
    idle = [Raw(tcp=address) for _ in range(2)]  # connect, say nothing
    extra = Raw(tcp=address)
    answer = extra.line()
    assert answer["code"] == "busy" and "2 tcp clients are connected already" in answer["error"]
    assert extra.at_eof()
    # The operators on the Unix socket are served all the same, up to their own limit.
    held = [Raw() for _ in range(2)]
    for raw in held:
        assert raw.ask({"cmd": "status"})["ok"]
    answer = Raw().line()
    assert answer["code"] == "busy" and "2 unix clients are connected already" in answer["error"]
    # The idle TCP clients are dropped at the authentication deadline...
    for raw in idle:
        answer = raw.line(timeout=15)
        assert answer == {
            "ok": False,
            "code": "timeout",
            "error": "timeout: no request with a valid token within 1s",
        }
        assert raw.at_eof()
    # ... which no longer applies once a client has sent a valid token.
    _wait_for(lambda: _server().clients == 2, what="the idle TCP clients gone")
    ro = Raw(tcp=address)
    assert ro.ask({"cmd": "status", "token": readonly})["ok"]
    time.sleep(1.5)  # past the authentication deadline, within client_timeout (10s)
    assert ro.ask({"cmd": "status", "token": readonly})["ok"]
    for raw in (*held, ro):
        raw.close()


# --------------------------------------------------------------------------- who may


def _as_nobody(path: Path) -> str:
    """Connect to ``path`` as uid nobody (a forked child) and send status: what happened."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no logging, only the socket
        result = b""
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect(os.fspath(path))
            except PermissionError:
                result = b"EACCES"
            else:
                with contextlib.suppress(OSError):  # the server may have closed already
                    sock.sendall(b'{"cmd": "offline", "datasource": "db2"}\n')
                data = b""
                with contextlib.suppress(ConnectionResetError):
                    while b"\n" not in data and (chunk := sock.recv(65536)):
                        data += chunk
                result = b"ANSWER " + data
        except Exception as exc:  # noqa: BLE001 - the child reports any error through the pipe
            result = f"ERROR {exc!r}".encode()
        finally:
            os.write(w, result)
            os._exit(0)
    os.close(w)
    reap(pid, give_up=20)
    with os.fdopen(r, "rb") as pipe:
        return pipe.read().decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_other_users_are_refused(
    cluster: Sandbox, env_control: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    path = _socket()
    # The private directory keeps them out.
    assert _as_nobody(path) == "EACCES"
    # Even when the files are opened up by mistake, the peer credentials keep them out.
    env_control.parent.chmod(0o711)
    env_control.chmod(0o711)
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="sqlrouter.control.audit"):
        result = _as_nobody(path)
    assert result.startswith("ANSWER "), result
    answer = json.loads(result.removeprefix("ANSWER "))
    assert answer["code"] == "refused"
    assert f"serves uid {os.getuid()} and root only" in answer["error"]
    assert "uid 65534 pid " in caplog.text and "refused" in caplog.text
    status = request(path, {"cmd": "status"})
    assert status["services"][0]["offline"] == []  # nothing was done
    env_control.chmod(0o700)


def test_tcp_needs_the_right_token_and_role(
    cluster: Sandbox, tmp_path: Path, ctl_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    operator, readonly = secrets.token_hex(16), secrets.token_hex(16)
    for name, token in (("op.token", operator), ("ro.token", readonly)):
        (tmp_path / name).write_text(token + "\n")
        (tmp_path / name).chmod(0o600)
    registry = _registry(
        cluster,
        tmp_path,
        enabled=True,
        socket_dir=str(ctl_dir),
        tcp="127.0.0.1:0",
        token_file="op.token",
        readonly_token_file="ro.token",
    )
    caplog.set_level(logging.INFO, logger="sqlrouter.control.audit")
    sqlrouter.connect(cluster.url("RO_RELAXED", registry=str(registry))).close()
    address = _server().tcp_address
    assert address is not None and address[0] == "127.0.0.1"

    bad_tokens: tuple[str | None, ...] = (None, "wrong-" + operator, operator[:-1])
    for bad in bad_tokens:
        raw = Raw(tcp=address)
        req: dict[str, Any] = {"cmd": "status"}
        if bad is not None:
            req["token"] = bad
        answer = raw.ask(req)
        assert answer["code"] == "unauthorized", answer
        assert raw.at_eof()
        raw.close()

    garbage = Raw(tcp=address)  # no token yet: a malformed line ends the connection
    garbage.send(b"GET / HTTP/1.0\r\n")
    assert garbage.line()["code"] == "bad_request"
    assert garbage.at_eof()

    ro = Raw(tcp=address)
    assert ro.ask({"cmd": "status", "token": readonly})["ok"]
    assert ro.ask({"cmd": "nope"})["code"] == "unknown_command"  # kept: it has a token
    answer = ro.ask({"cmd": "offline", "datasource": "db2", "token": readonly})
    assert answer["code"] == "forbidden" and "needs the operator role" in answer["error"]
    explain = {"cmd": "explain", "url": cluster.url("RW_STRICT", registry=str(registry))}
    assert ro.ask({**explain, "token": readonly})["ok"]
    ro.close()

    op = Raw(tcp=address)
    assert op.ask({"cmd": "offline", "datasource": "db2", "token": operator})["ok"]
    assert op.ask({"cmd": "online", "datasource": "db2", "token": operator})["ok"]
    op.close()

    res = _admin(
        "--tcp", "{}:{}".format(*address), "--token-file", str(tmp_path / "ro.token"), "status"
    )
    assert res.returncode == 0, res.stderr
    assert "service 'sandbox'" in res.stdout

    logged = caplog.text
    assert "(tcp, operator): offline datasource='db2': ok" in logged
    assert "(tcp, readonly): refused offline" in logged
    assert "refused status: a wrong token" in logged and "refused status: no token" in logged
    for secret in (operator, readonly, operator[:-1], cluster.state.app.password):
        assert secret not in logged


def test_unix_operator_commands_are_audited(
    cluster: Sandbox, env_control: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    caplog.set_level(logging.INFO, logger="sqlrouter.control.audit")
    request(_socket(), {"cmd": "offline", "datasource": "db3"})
    request(_socket(), {"cmd": "offline", "datasource": "nope"})
    records = [r for r in caplog.records if r.name == "sqlrouter.control.audit"]
    assert [r.levelname for r in records] == ["INFO", "INFO"]
    assert records[0].getMessage() == (
        f"uid {os.getuid()} pid {os.getpid()} (unix socket): offline datasource='db3': ok"
    )
    assert "offline datasource='nope': failed: no service of this process" in (
        records[1].getMessage()
    )


# --------------------------------------------------------------------------- sqlrouter admin

_HELPER = """
import sys, sqlrouter
conn = sqlrouter.connect(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
conn.close()
"""


def test_admin_all_reaches_every_process(cluster: Sandbox, env_control: Path) -> None:
    url = cluster.url("RO_RELAXED")
    res = _admin("status")
    assert res.returncode == 1
    assert f"no control socket in {env_control}" in res.stderr
    assert "Traceback" not in res.stderr

    with subprocess.Popen(
        [sys.executable, "-c", _HELPER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as helper:
        _all_processes(cluster, env_control, helper)
    assert helper.returncode == 0
    assert not (env_control / f"{helper.pid}.sock").exists()  # removed at its exit


def _all_processes(cluster: Sandbox, env_control: Path, helper: subprocess.Popen[str]) -> None:
    url = cluster.url("RO_RELAXED")
    try:
        assert helper.stdout is not None and helper.stdin is not None
        assert helper.stdout.readline() == "ready\n"
        res = _admin("status")  # the only socket: the helper's
        assert res.returncode == 0, res.stderr
        assert f"process {helper.pid} (-c)" in res.stdout

        sqlrouter.connect(url).close()  # now this process has a socket too
        res = _admin("status")
        assert res.returncode == 1
        assert "2 processes have a control socket" in res.stderr
        assert "give --socket PATH or --all" in res.stderr

        # A socket left by a dead process is reported and removed.
        stale = _stale_socket(env_control)
        dead = int(stale.stem)

        res = _admin("--all", "status")
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert f"process {helper.pid} (-c)" in out and f"process {os.getpid()} " in out
        assert f"stale socket (process {dead} is gone): removed" in out
        assert "2 processes: 2 ok; 1 stale socket removed" in out
        assert "all processes:" in out and "sandbox  db2" in out
        assert not stale.exists()
        assert cluster.state.app.password not in out + res.stderr

        res = _admin("--all", "offline", "db2")
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("service 'sandbox': db2 is offline") == 2
        helper_socket = env_control / f"{helper.pid}.sock"
        assert request(helper_socket, {"cmd": "status"})["services"][0]["offline"] == ["db2"]
        assert set(_landing(url)) == {"db3"}

        res = _admin("--all", "--json", "online", "db2")
        assert res.returncode == 0, res.stderr
        answers = json.loads(res.stdout)["answers"]
        assert sorted(a["pid"] for a in answers) == sorted([helper.pid, os.getpid()])
        assert all(a["response"]["ok"] for a in answers)

        res = _admin("--all", "offline", "db9")
        assert res.returncode == 1
        assert "2 processes: 0 ok, 2 not using it" in res.stdout
    finally:
        if helper.stdin is not None:
            helper.stdin.close()
        helper.wait(30)


def _dead_pid() -> int:
    dead = 4_000_000
    while True:
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            return dead
        dead -= 1


def _stale_socket(directory: Path) -> Path:
    """A socket file left by a process that is gone (killed by SIGTERM, say)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stale = directory / f"{_dead_pid()}.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(stale))
    return stale


def test_admin_all_json_with_no_process_at_all(env_control: Path) -> None:
    env_control.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = _admin("--all", "--json", "status")
    assert res.returncode == 1
    answer = json.loads(res.stdout)
    assert answer["ok"] is False and answer["answers"] == []
    assert answer["error"].startswith("no control socket in ")


def test_admin_all_fails_when_it_reached_nobody(env_control: Path) -> None:
    stale = _stale_socket(env_control)
    res = _admin("--all", "offline", "db2")
    assert res.returncode == 1, res.stdout
    assert "no process was reached (nothing was done); 1 stale socket removed" in res.stdout
    assert not stale.exists()
    _stale_socket(env_control)
    res = _admin("--all", "--json", "offline", "db2")
    assert res.returncode == 1
    answer = json.loads(res.stdout)
    assert answer["ok"] is False and answer["answers"][0]["stale"] is True


def test_admin_finds_the_live_process_past_a_stale_socket(
    cluster: Sandbox, env_control: Path
) -> None:
    """A process killed by SIGTERM leaves its socket: plain ``status`` still works."""
    sqlrouter.connect(cluster.url("RO_RELAXED")).close()
    stale = _stale_socket(env_control)
    res = _admin("status")
    assert res.returncode == 0, res.stderr
    assert f"process {os.getpid()} " in res.stdout
    assert f"removed {stale}: a stale control socket" in res.stderr
    assert not stale.exists()
    res = _admin("--all", "status")
    assert res.returncode == 0 and "1 process: 1 ok" in res.stdout, res.stdout


def test_admin_checks_the_directory_before_talking_or_removing(ctl_dir: Path) -> None:
    """A directory another user could write to: nothing is sent to it, nothing removed."""
    ctl_dir.mkdir(mode=0o700)
    stale = _stale_socket(ctl_dir)
    ctl_dir.chmod(0o755)  # as a socket_dir could be left, or made by someone else
    res = _admin("--dir", str(ctl_dir), "--all", "status")
    assert res.returncode == 1
    assert f"control socket directory {ctl_dir} has mode 0755" in res.stderr
    assert f"chmod 700 {ctl_dir}" in res.stderr
    assert "a private directory of its own user only" in res.stderr
    assert "Traceback" not in res.stderr
    assert stale.exists()  # not removed
    res = _admin("--socket", str(stale), "status")
    assert res.returncode == 1 and "has mode 0755" in res.stderr

    ctl_dir.chmod(0o700)
    os.chown(ctl_dir, NOBODY, NOBODY)  # private, but another user's
    for args in (("--all",), ()):
        res = _admin("--dir", str(ctl_dir), *args, "status")
        assert res.returncode == 1
        assert f"belongs to uid {NOBODY}, not to this process's uid {os.getuid()}" in res.stderr
        assert "run it as that user" in res.stderr
    assert stale.exists()

    link = ctl_dir.parent / "link"
    os.chown(ctl_dir, os.getuid(), os.getgid())
    link.symlink_to(ctl_dir)
    res = _admin("--dir", str(link), "--all", "status")
    assert res.returncode == 1 and f"{link} is not a directory (a symlink" in res.stderr
    assert stale.exists()

    # Private and ours: the stale socket is found, reported and removed.
    res = _admin("--dir", str(ctl_dir), "--all", "status")
    assert "stale socket" in res.stdout and not stale.exists()


def test_admin_usage_errors(env_control: Path) -> None:
    res = _admin("promote")
    assert res.returncode == 1 and "give either DATASOURCE or --clear" in res.stderr
    res = _admin("frobnicate")
    assert res.returncode == 2 and "invalid choice: 'frobnicate'" in res.stderr
    res = _admin("--all", "--socket", "x", "status")
    assert res.returncode == 2 and "not allowed with argument" in res.stderr
    res = _admin("--tcp", "127.0.0.1:1", "status")
    assert res.returncode == 1 and "--tcp needs --token-file" in res.stderr
    res = _admin("--socket", str(env_control / "nope.sock"), "status")
    assert res.returncode == 1 and "no such socket" in res.stderr
    res = _admin("--all", "switchover", "sandbox", "--to", "db2")
    assert res.returncode == 1 and "--socket, --all and --tcp do not apply" in res.stderr
    # Without a registry, the error names the option to give.
    env = {k: v for k, v in os.environ.items() if k != "SQLROUTER_REGISTRY"}
    res = subprocess.run(
        [sys.executable, "-m", "sqlrouter", "admin", "switchover", "sandbox", "--to", "db2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=env_control.parent,
    )
    assert res.returncode == 1
    assert "looked at --registry (not given)" in res.stderr and "registry=" not in res.stderr
    res = _admin("status", "--help")
    assert "--service SERVICE  show this service only" in res.stdout


# --------------------------------------------------------------------------- topology


def test_admin_switchover_and_failover_dry_runs(cluster: Sandbox) -> None:
    registry = str(cluster.registry_path)
    res = _admin("switchover", "sandbox", "--to", "db2", "--dry-run", "--registry", registry)
    assert res.returncode == 0, res.stderr
    assert "dry run, nothing was changed" in res.stdout
    assert "db1 -> db2" in res.stdout
    res = _admin("failover", "sandbox", "--dry-run", "--registry", registry)
    assert res.returncode == 1
    assert "failover" in res.stderr and "Traceback" not in res.stderr
    res = _admin("switchover", "nosuch", "--to", "db2", "--registry", registry)
    assert res.returncode == 1 and "no service 'nosuch'" in res.stderr
    for secret in (cluster.state.admin, cluster.state.repl, cluster.state.app):
        assert secret.password not in res.stdout + res.stderr


def test_admin_switchover_is_seen_by_running_processes(
    fresh_cluster: Sandbox, env_control: Path
) -> None:
    url = fresh_cluster.url("RW_STRICT")
    sqlrouter.connect(url).close()
    path = _socket()
    res = _admin(
        "switchover", "sandbox", "--to", "db2", "--registry", str(fresh_cluster.registry_path)
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[ok]" in res.stdout and "switchover of service 'sandbox': done in" in res.stdout
    _wait_for(
        lambda: request(path, {"cmd": "status"})["services"][0]["master"] == "db2",
        what="this process sees db2 as the master",
    )
    assert set(_landing(url, 3)) == {"db2"}
    for secret in (fresh_cluster.state.admin, fresh_cluster.state.repl):
        assert secret.password not in res.stdout + res.stderr


def test_admin_topology_prints_warnings_and_left_out_in_a_real_run(
    fresh_cluster: Sandbox,
) -> None:
    """Not only --dry-run: a real switchover or failover says what it leaves out (and the
    statements to repoint it) and every warning, never as an "[ok]" step."""
    sb = fresh_cluster
    registry = str(sb.registry_path)
    sb.fault("db3", "kill")
    res = _admin("switchover", "sandbox", "--to", "db2", "--registry", registry)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.startswith("... inspecting db1, db2, db3"), out
    left = [line for line in out.splitlines() if line.startswith("LEFT OUT: db3: unreachable")]
    assert len(left) == 1, out
    assert f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={sb.node('db2').port}" in left[0]
    assert "[ok] left out" not in out and "[ok] warning" not in out
    assert "done in" in out and "(1 server left out: see above)" in out

    sb.fault("db2", "kill")
    res = _admin("--json", "failover", "sandbox", "--force", "--registry", registry)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = json.loads(res.stdout)["steps"]
    kinds = {s["kind"] for s in steps}
    assert kinds == {"wait", "step", "warning", "left out"}, kinds
    warnings = [s["detail"] for s in steps if s["kind"] == "warning"]
    assert any(w.startswith("db2 must not come back as it was") for w in warnings), warnings
    assert any(w.startswith("forced: db3 unreachable") for w in warnings), warnings
    waits = [s["detail"] for s in steps if s["kind"] == "wait"]
    assert any(w.startswith("checking that the master db2 is dead") for w in waits), waits
    (left,) = [s["detail"] for s in steps if s["kind"] == "left out"]
    assert left.startswith("db3: unreachable") and "CHANGE MASTER TO" in left
    for secret in (sb.state.admin, sb.state.repl):
        assert secret.password not in res.stdout + res.stderr


def test_nothing_blocks_a_query_while_a_client_is_stuck(
    cluster: Sandbox, env_control: Path
) -> None:
    """A client stuck mid-line holds no lock the application needs."""
    app = QueryLoop(cluster.url("RO_RELAXED"))
    try:
        stuck = [Raw() for _ in range(10)]
        for raw in stuck:
            raw.send(b'{"cmd": "offline", "datasource": ')
        assert app.progresses()
        conn = sqlrouter.connect(cluster.url("RW_STRICT"))
        with conn.cursor() as cur:
            cur.execute("SELECT @@hostname")
        conn.close()
        for raw in stuck:
            raw.close()
    finally:
        app.stop()
