"""A private HAProxy in front of a sandbox cluster: the classic way to route MySQL.

:class:`HAProxy` starts Debian's ``haproxy`` (``apt-get install haproxy``) as a child
process with a generated configuration, on free 127.0.0.1 ports, for the lifetime of a
benchmark:

- a *writer* frontend whose backend holds every server, each health-checked as a
  writer: only the writable master (``read_only = 0``) is up;
- a *reader* frontend balancing (round robin) over the replicas, each checked as a
  reader (``read_only = 1``, both replication threads running,
  ``Seconds_Behind_Master`` known and at most ``max_lag``), with the master as a
  ``backup`` server (checked as a writer) for when no replica qualifies.

HAProxy's own ``option mysql-check`` only proves that a server answers the MySQL
handshake, so every server line also has an ``agent-check``: HAProxy connects to a
small agent (:class:`CheckAgent`, run in a process of its own by :class:`HAProxy`)
and sends ``"NAME ROLE\\n"``; the agent queries that server on a persistent connection
and answers ``up`` or ``down #reason`` (HAProxy's agent protocol).  One ``down`` takes
the server out at once; ``up`` brings it back when its ``mysql-check`` passes.  Both
checks run every ``check_interval`` seconds, like sqlrouter's monitor.

Only loopback addresses are used; the stats socket (``show stat``) is a Unix socket in
the private directory.  The pure parts (:func:`render_config`, :func:`agent_answer`,
:func:`parse_stat`) are unit-tested in ``tests/unit/test_bench_haproxy.py``.

Run as ``python -m benchmarks._haproxy agent`` the module is the agent itself: it reads
its settings (one JSON line, credentials included) from standard input, prints
``listening PORT`` and serves until standard input closes.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import pymysql
import pymysql.cursors

__all__ = [
    "CHECK_USER",
    "READER",
    "WRITER",
    "CheckAgent",
    "HAProxy",
    "HAProxyError",
    "NodeState",
    "Server",
    "agent_answer",
    "find_haproxy",
    "parse_stat",
    "render_config",
    "spawn_haproxy",
    "stop_process",
]

#: The user HAProxy's ``option mysql-check`` logs in as (no password, no privilege).
CHECK_USER: Final = "haproxy_check"
WRITER: Final = "writer"
READER: Final = "reader"
ROLES: Final = (WRITER, READER)
#: Frontend and backend names in the generated configuration.
WRITER_BACKEND: Final = "writer_be"
READER_BACKEND: Final = "reader_be"

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 5.0
_SEARCH_DIRS: Final = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_INSTALL_HINT: Final = (
    "install it with: apt-get install haproxy (Debian/Ubuntu), or ./scripts/bench"
)


class HAProxyError(Exception):
    """HAProxy or its agent could not be started or asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Server:
    """One MySQL server behind the proxy."""

    name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(
                f"server name {self.name!r}: expected letters, digits, '_' or '-' only"
            )
        if not self.host.startswith("127."):
            raise ValueError(f"server {self.name}: host {self.host!r} is not a loopback address")
        if not 0 < self.port < 65536:
            raise ValueError(f"server {self.name}: port {self.port} is not between 1 and 65535")


# --------------------------------------------------------------------------- pure parts


def render_config(
    *,
    writers: Sequence[Server],
    readers: Sequence[Server],
    backups: Sequence[Server],
    writer_port: int,
    reader_port: int,
    agent_port: int,
    stats_socket: Path,
    check_interval: float = 0.5,
) -> str:
    """The ``haproxy.cfg`` text (see the module docstring for what it does).

    ``writers`` are checked as writers in the writer backend, ``readers`` as readers in
    the reader backend, ``backups`` as writers in the reader backend, used only when no
    reader is up.
    """
    if not writers or not readers:
        raise ValueError("render_config needs at least one writer and one reader server")
    if check_interval <= 0:
        raise ValueError(f"check_interval={check_interval!r}: expected seconds > 0")
    for name, port in (
        ("writer_port", writer_port),
        ("reader_port", reader_port),
        ("agent_port", agent_port),
    ):
        if not 0 < port < 65536:
            raise ValueError(f"{name}={port}: expected a port between 1 and 65535")
    inter = f"{max(1, round(check_interval * 1000))}ms"

    def server_line(s: Server, role: str, *, backup: bool = False) -> str:
        suffix = "_master" if backup else ""
        return (
            f"    server {s.name}{suffix} {s.host}:{s.port}{' backup' if backup else ''} "
            f"check inter {inter} rise 1 fall 1 "
            f"agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter {inter} "
            f'agent-send "{s.name} {role}\\n"'
        )

    lines = [
        "# Generated by benchmarks/_haproxy.py for one benchmark run; loopback only.",
        "global",
        "    maxconn 4096",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        # Benchmark connections stay open, idle, across phases of several minutes.
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 1s",
        "",
        "frontend writer",
        f"    bind 127.0.0.1:{writer_port}",
        f"    default_backend {WRITER_BACKEND}",
        "",
        "frontend reader",
        f"    bind 127.0.0.1:{reader_port}",
        f"    default_backend {READER_BACKEND}",
        "",
        f"backend {WRITER_BACKEND}",
        f"    option mysql-check user {CHECK_USER} post-41",
        *(server_line(s, WRITER) for s in writers),
        "",
        f"backend {READER_BACKEND}",
        "    balance roundrobin",
        f"    option mysql-check user {CHECK_USER} post-41",
        *(server_line(s, READER) for s in readers),
        *(server_line(s, WRITER, backup=True) for s in backups),
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the agent read from one server (``SELECT @@read_only``, ``SHOW SLAVE STATUS``)."""

    reachable: bool
    read_only: bool | None = None
    #: ``SHOW SLAVE STATUS`` returned a row.
    replica: bool = False
    io_running: str | None = None
    sql_running: str | None = None
    seconds_behind_master: int | None = None
    error: str | None = None


def agent_answer(role: str, state: NodeState, max_lag: float) -> str:
    """The agent's answer for a server checked in ``role``: ``up`` or ``down #why``.

    The classic checks: a writer is up when it answers with ``read_only = 0``; a reader
    when it answers with ``read_only = 1``, replicates with both threads running, and
    ``Seconds_Behind_Master`` (whole seconds; NULL when a thread is stopped) is at most
    ``max_lag``.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not state.reachable:
        return f"down #unreachable: {state.error or 'no answer'}"
    if role == WRITER:
        return "up" if state.read_only is False else "down #read_only=1"
    if state.read_only is not True:
        return "down #writable: not a replica"
    if not state.replica:
        return "down #not replicating"
    if state.io_running != "Yes" or state.sql_running != "Yes":
        return f"down #threads io={state.io_running} sql={state.sql_running}"
    lag = state.seconds_behind_master
    if lag is None:
        return "down #Seconds_Behind_Master is NULL"
    if lag > max_lag:
        return f"down #Seconds_Behind_Master={lag} > {max_lag:g}"
    return "up"


def parse_stat(text: str) -> dict[tuple[str, str], str]:
    """``show stat`` CSV -> ``{(proxy, server): status}`` for server rows.

    ``status`` is HAProxy's: ``UP``, ``DOWN``, ``UP 1/2`` (going down), ``DOWN (agent)``,
    ``MAINT``...; the FRONTEND and BACKEND summary rows are left out.
    """
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"not HAProxy 'show stat' output: {text[:80]!r}")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    out: dict[tuple[str, str], str] = {}
    for row in reader:
        proxy, server = row.get("pxname") or "", row.get("svname") or ""
        if server in ("FRONTEND", "BACKEND") or not proxy:
            continue
        out[(proxy, server)] = row.get("status") or ""
    return out


def is_up(status: str) -> bool:
    """Whether a ``show stat`` status means the server takes new connections."""
    return status.split(" ", 1)[0] == "UP"


# --------------------------------------------------------------------------- the agent


@dataclass(slots=True)
class _Node:
    server: Server
    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Any = None


class CheckAgent:
    """The agent-check server: answers ``NAME ROLE`` with :func:`agent_answer`.

    One persistent monitoring connection per server (reopened after an error), each
    query bounded by ``timeout``.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        user: str,
        password: str,
        max_lag: float,
        timeout: float = 1.0,
        connect: Callable[..., Any] = pymysql.connect,
    ) -> None:
        self._nodes = {s.name: _Node(s) for s in servers}
        self._user = user
        self._password = password
        self.max_lag = max_lag
        self._timeout = timeout
        self._connect = connect
        self.answers = 0

    def __repr__(self) -> str:
        return f"<CheckAgent servers={sorted(self._nodes)} max_lag={self.max_lag:g}>"

    def observe(self, name: str) -> NodeState:
        node = self._nodes[name]
        with node.lock:
            try:
                if node.conn is None:
                    node.conn = self._connect(
                        host=node.server.host,
                        port=node.server.port,
                        user=self._user,
                        password=self._password,
                        connect_timeout=self._timeout,
                        read_timeout=self._timeout,
                        write_timeout=self._timeout,
                        autocommit=True,
                    )
                with node.conn.cursor(pymysql.cursors.DictCursor) as cur:
                    cur.execute("SELECT @@read_only AS ro")
                    top = cur.fetchone() or {}
                    cur.execute("SHOW SLAVE STATUS")
                    slave = cur.fetchone()
            except (pymysql.err.MySQLError, OSError) as exc:
                if node.conn is not None:
                    with contextlib.suppress(Exception):
                        node.conn.close()
                node.conn = None
                return NodeState(reachable=False, error=str(exc.args[-1] if exc.args else exc))
        if not slave:
            return NodeState(reachable=True, read_only=bool(top.get("ro")))
        sbm = slave.get("Seconds_Behind_Master")
        return NodeState(
            reachable=True,
            read_only=bool(top.get("ro")),
            replica=True,
            io_running=slave.get("Slave_IO_Running"),
            sql_running=slave.get("Slave_SQL_Running"),
            seconds_behind_master=None if sbm is None else int(sbm),
        )

    def answer(self, request: str) -> str:
        """The answer to one agent request line (``"db2 reader"``)."""
        parts = request.split()
        if len(parts) != 2 or parts[1] not in ROLES:
            return f"down #bad request {request[:60]!r}: expected 'NAME {'|'.join(ROLES)}'"
        name, role = parts
        if name not in self._nodes:
            return f"down #unknown server {name!r}"
        self.answers += 1
        return agent_answer(role, self.observe(name), self.max_lag)

    def close(self) -> None:
        for node in self._nodes.values():
            with node.lock:
                if node.conn is not None:
                    with contextlib.suppress(Exception):
                        node.conn.close()
                    node.conn = None


class _AgentHandler(socketserver.StreamRequestHandler):
    timeout = 2.0

    def handle(self) -> None:
        try:
            line = self.rfile.readline(256).decode("utf-8", errors="replace")
        except OSError:
            return
        server = self.server
        assert isinstance(server, _AgentServer)
        reply = server.agent.answer(line.strip())
        with contextlib.suppress(OSError):
            self.wfile.write(reply.encode("utf-8") + b"\n")


class _AgentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, agent: CheckAgent) -> None:
        super().__init__(("127.0.0.1", 0), _AgentHandler)
        self.agent = agent


def serve_agent(stdin: IO[str], stdout: IO[str]) -> int:
    """The agent process: settings from ``stdin``, ``listening PORT`` on ``stdout``."""
    try:
        settings = json.loads(stdin.readline())
        servers = [Server(n, h, int(p)) for n, (h, p) in settings["servers"].items()]
        agent = CheckAgent(
            servers,
            user=str(settings["user"]),
            password=str(settings["password"]),
            max_lag=float(settings["max_lag"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        print(f"error: bad agent settings on stdin: {exc}", file=sys.stderr)
        return 2
    server = _AgentServer(agent)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    print(f"listening {server.server_address[1]}", file=stdout, flush=True)
    try:
        stdin.read()  # until the parent closes our stdin (or dies)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
        agent.close()
    return 0


# --------------------------------------------------------------------------- the proxy


def find_haproxy() -> Path:
    """The ``haproxy`` binary; :class:`HAProxyError` saying how to install it if missing."""
    found = shutil.which("haproxy")
    if found:
        return Path(found)
    for d in _SEARCH_DIRS:
        candidate = Path(d) / "haproxy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise HAProxyError(
        f"haproxy was not found on PATH nor in {', '.join(_SEARCH_DIRS)}; {_INSTALL_HINT}"
    )


def haproxy_version(binary: Path) -> str:
    """``2.6.12-1+deb12u4``: the version ``haproxy -v`` prints."""
    res = subprocess.run(
        [str(binary), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    words = res.stdout.split()
    return words[2] if len(words) > 2 and words[0] == "HAProxy" else res.stdout.strip()[:40]


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGKILL the child when the thread that started it dies (no orphan proxy)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class HAProxy:
    """A private HAProxy and its check agent, in ``directory`` (created, mode 0700).

    ``start()`` writes the configuration, starts the agent and HAProxy (both killed by
    the kernel if this process dies), and waits until every server is in the state its
    checks give it.  ``stop()`` stops both (bounded time).  Use it as a context manager.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        master: Server,
        replicas: Sequence[Server],
        user: str,
        password: str,
        max_lag: float,
        check_interval: float = 0.5,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("HAProxy needs at least one replica for its reader frontend")
        self.dir = Path(directory)
        self.master = master
        self.replicas = list(replicas)
        self.max_lag = max_lag
        self.check_interval = check_interval
        self._user = user
        self._password = password
        self._progress = progress or (lambda message: None)
        self.binary = find_haproxy()
        self.version = haproxy_version(self.binary)
        self.writer_port = 0
        self.reader_port = 0
        self.agent_port = 0
        self.stats_socket = self.dir / "haproxy.sock"
        self.config_path = self.dir / "haproxy.cfg"
        self._proc: subprocess.Popen[bytes] | None = None
        self._agent: subprocess.Popen[str] | None = None
        self._task_stats: list[Path] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<HAProxy {self.version} writer=127.0.0.1:{self.writer_port} "
            f"reader=127.0.0.1:{self.reader_port} {state}>"
        )

    @property
    def servers(self) -> list[Server]:
        return [self.master, *self.replicas]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        try:
            self._start_agent()
            self.writer_port, self.reader_port = _free_ports(2)
            config = render_config(
                writers=self.servers,
                readers=self.replicas,
                backups=[self.master],
                writer_port=self.writer_port,
                reader_port=self.reader_port,
                agent_port=self.agent_port,
                stats_socket=self.stats_socket,
                check_interval=self.check_interval,
            )
            self.config_path.write_text(config, encoding="utf-8")
            self._proc = spawn_haproxy(self.binary, self.config_path, self.dir / "haproxy.log")
            self._progress(
                f"haproxy {self.version} (pid {self._proc.pid}): writer 127.0.0.1:"
                f"{self.writer_port}, reader 127.0.0.1:{self.reader_port}"
            )
            self.wait_ready(timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _start_agent(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self._agent = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._haproxy", "agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "agent.log", "ab"),  # noqa: SIM115 - handed to the child
            text=True,
            env=env,
            preexec_fn=_pdeathsig,  # noqa: PLW1509 - only prctl, no lock taken
        )
        assert self._agent.stdin is not None and self._agent.stdout is not None
        settings = {
            "servers": {s.name: [s.host, s.port] for s in self.servers},
            "user": self._user,
            "password": self._password,
            "max_lag": self.max_lag,
        }
        self._agent.stdin.write(json.dumps(settings) + "\n")
        self._agent.stdin.flush()
        line = _readline(self._agent.stdout, timeout=START_TIMEOUT)
        if not line.startswith("listening "):
            raise HAProxyError(
                f"the check agent did not start (it said {line.strip()!r}); "
                f"see {self.dir / 'agent.log'}"
            )
        self.agent_port = int(line.split()[1])
        self._progress(f"check agent on 127.0.0.1:{self.agent_port} (pid {self._agent.pid})")

    def expected(self) -> dict[tuple[str, str], bool]:
        """Every server's expected state when the cluster is healthy."""
        out = {(WRITER_BACKEND, s.name): s is self.master for s in self.servers}
        out.update({(READER_BACKEND, s.name): True for s in self.replicas})
        out[(READER_BACKEND, f"{self.master.name}_master")] = True
        return out

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = self.expected()
        last: dict[tuple[str, str], str] | str = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise HAProxyError(
                    f"haproxy exited at start (code {self._proc.returncode}): {self._log_tail()}"
                )
            try:
                states = self.states()
            except HAProxyError as exc:
                last = str(exc)
            else:
                last = states
                if all(is_up(states.get(k, "")) == v for k, v in want.items()):
                    self._task_stats = sorted(Path(f"/proc/{self.pid}/task").glob("*/schedstat"))
                    return
            time.sleep(0.05)
        raise HAProxyError(
            f"haproxy's servers did not reach their expected states within {timeout:g}s "
            f"(want {want}, last seen {last}); {self._log_tail()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        agent, self._agent = self._agent, None
        if agent is not None:
            if agent.stdin is not None:
                with contextlib.suppress(OSError):
                    agent.stdin.close()
            try:
                agent.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(STOP_TIMEOUT)
            if agent.stdout is not None:
                agent.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            self.stats_socket.unlink()

    def _log_tail(self, lines: int = 5) -> str:
        path = self.dir / "haproxy.log"
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"no log at {path}"
        return f"last lines of {path}: " + " | ".join(tail)

    # -- asking it -------------------------------------------------------------------

    def command(self, cmd: str, *, timeout: float = 2.0) -> str:
        """Run one command on the stats socket (``show stat``...); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.stats_socket))
                sock.sendall(cmd.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise HAProxyError(
                    f"haproxy stats socket {self.stats_socket}: {exc.strerror or exc}"
                ) from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def states(self) -> dict[tuple[str, str], str]:
        """``{(backend, server): status}`` now (``show stat``)."""
        try:
            return parse_stat(self.command("show stat"))
        except ValueError as exc:
            raise HAProxyError(f"haproxy stats socket: {exc}") from None

    def readers_up(self) -> set[str]:
        """The servers the reader frontend sends new connections to now."""
        states = self.states()
        primary = {s.name for s in self.replicas if is_up(states.get((READER_BACKEND, s.name), ""))}
        if primary:
            return primary
        backup = states.get((READER_BACKEND, f"{self.master.name}_master"), "")
        return {self.master.name} if is_up(backup) else set()

    def cpu_ns(self) -> int:
        """CPU time HAProxy's threads have used so far (ns, from the scheduler)."""
        total = 0
        for path in self._task_stats:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(path.read_text().split()[0])
        return total


def spawn_haproxy(binary: Path, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Check ``config`` (``haproxy -c``), then run haproxy on it in the foreground as a
    child that dies with this thread, its output appended to ``log_path``."""
    check = subprocess.run(
        [str(binary), "-c", "-q", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        raise HAProxyError(f"haproxy rejected {config}: {(check.stderr or check.stdout).strip()}")
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [str(binary), "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pdeathsig,  # noqa: PLW1509 - only prctl, no lock taken
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; waits for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def _readline(stream: IO[str], timeout: float) -> str:
    """One line from a child's pipe, or ``""`` after ``timeout`` seconds."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["agent"]:
        print("usage: python -m benchmarks._haproxy agent  (settings as JSON on stdin)")
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return serve_agent(sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
