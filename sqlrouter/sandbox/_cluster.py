"""The :class:`Sandbox`: create, start, stop, inspect and break a local cluster.

Kept whole (over 600 lines): one class whose methods share the cluster's state file
and its servers; the processes (:mod:`._process`) and the state (:mod:`._state`) are
apart."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pymysql

from ..registry._write import write_registry_file
from ..topology import Credentials, DataSource, HeartbeatSettings, Role, Service
from ._process import (
    _CHILDREN,
    Binaries,
    _free_ports,
    _pdeathsig,
    _pid_alive,
    _pid_state,
    _port_free,
    _wait_stopped,
    find_server_binaries,
)
from ._state import (
    FAULTS,
    HEARTBEAT_TABLE,
    REGISTRY_FILE,
    START_TIMEOUT,
    STATE_FILE,
    STOP_TIMEOUT,
    NodeSpec,
    NodeStatus,
    SandboxError,
    SandboxState,
)

__all__ = [
    "Sandbox",
]

logger = logging.getLogger("sqlrouter.sandbox")


def _password() -> str:
    return secrets.token_urlsafe(18)


class Sandbox:
    """A local MariaDB cluster living in one directory.

    ``Sandbox(DIR).up(replicas=2)`` creates (or restarts) it; ``down()`` stops the
    servers and keeps the data; ``destroy()`` stops them and deletes ``DIR``.

    With ``ephemeral=True`` (what the test fixtures use) every server is started with
    ``PR_SET_PDEATHSIG``: the kernel kills it when the process that started it dies,
    so an interrupted test run leaves no server behind.
    """

    __module__ = "sqlrouter.sandbox"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        ephemeral: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.dir = Path(directory).absolute()
        self.ephemeral = ephemeral
        self._progress = progress or (lambda msg: logger.info("%s", msg))
        self._state: SandboxState | None = None

    def __repr__(self) -> str:
        nodes = len(self._state.nodes) if self._state else 0
        return f"<Sandbox {str(self.dir)!r} nodes={nodes}>"

    # -- state ---------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.dir / STATE_FILE).is_file()

    @property
    def state(self) -> SandboxState:
        if self._state is None:
            path = self.dir / STATE_FILE
            if not path.is_file():
                if not self.dir.exists():
                    raise SandboxError(f"{self.dir} does not exist: no sandbox there")
                raise SandboxError(
                    f"{self.dir} is not a sandbox (no {STATE_FILE}); "
                    f"create one with: sqlrouter sandbox up --dir {self.dir}"
                )
            try:
                self._state = SandboxState.from_json(path.read_text(encoding="utf-8"))
            except (ValueError, KeyError, TypeError) as exc:
                raise SandboxError(f"{path} is damaged ({exc}); destroy and recreate it") from None
        return self._state

    @property
    def nodes(self) -> list[NodeSpec]:
        return self.state.nodes

    @property
    def registry_path(self) -> Path:
        return self.dir / REGISTRY_FILE

    def node(self, name: str) -> NodeSpec:
        for n in self.state.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.state.nodes)
        raise SandboxError(f"sandbox {self.dir} has no node {name!r} (nodes: {known})")

    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def socket_path(self, name: str) -> Path:
        return self.node_dir(name) / "mariadbd.sock"

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.node_dir(name) / "mariadbd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @property
    def master(self) -> NodeSpec:
        """The node recorded as master: the one created as master, until a restart or
        ``down`` finds that topology operations moved the role."""
        return self.node(self.state.master)

    @property
    def replicas(self) -> list[NodeSpec]:
        return [n for n in self.state.nodes if n.initial_role != "master"]

    def url(
        self,
        qos: str = "RW_STRICT",
        *,
        hide_password: bool = False,
        **params: str | float | int,
    ) -> str:
        """The service URL of the application user, with this sandbox's registry."""
        st = self.state
        pw = "***" if hide_password else quote(st.app.password, safe="")
        query = {"qos": qos, "registry": str(self.registry_path), **params}
        return (
            f"sqlrouter://{quote(st.app.user, safe='')}:{pw}@{st.service}/{st.database}"
            f"?{urlencode(query, safe='/')}"
        )

    def service(self) -> Service:
        """The :class:`~sqlrouter.topology.Service` this sandbox describes."""
        st = self.state
        return Service(
            name=st.service,
            datasources=tuple(
                DataSource(
                    name=n.name,
                    host="127.0.0.1",
                    port=n.port,
                    role=Role.MASTER if n.initial_role == "master" else Role.REPLICA,
                )
                for n in st.nodes
            ),
            max_lag=1.0,
            monitor_interval=0.5,
            probe_timeout=1.0,
            heartbeat=HeartbeatSettings(enabled=True, table=HEARTBEAT_TABLE),
            monitor_credentials=st.monitor,
            admin_credentials=st.admin,
            replication_credentials=st.repl,
            source=str(self.registry_path),
        )

    # -- connections ---------------------------------------------------------------

    def connect(
        self, name: str, *, timeout: float = 5.0, database: str | None = None
    ) -> pymysql.connections.Connection[Any]:
        """A root connection to node ``name`` through its Unix socket."""
        path = str(self.socket_path(name))
        # PyMySQL leaks its socket when connecting to a Unix socket fails: check first.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect(path)
            except OSError as exc:
                raise pymysql.err.OperationalError(
                    2002, f"cannot connect to {name} through {path} ({exc.strerror or exc})"
                ) from None
        return pymysql.connect(
            unix_socket=path,
            user="root",
            database=database,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )

    @contextlib.contextmanager
    def cursor(self, name: str, *, timeout: float = 5.0) -> Iterator[pymysql.cursors.Cursor]:
        conn = self.connect(name, timeout=timeout)
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def query(self, name: str, sql: str, *, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        with self.cursor(name, timeout=timeout) as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    # -- lifecycle -----------------------------------------------------------------

    def up(self, *, replicas: int = 2, base_port: int | None = None) -> bool:
        """Create and start the cluster, or start the servers of an existing one.

        Returns False when everything was already running (nothing changed).
        """
        if self.exists:
            return self._start_existing()
        if self.dir.exists() and any(self.dir.iterdir()):
            raise SandboxError(
                f"{self.dir} exists and is not empty, and it is not a sandbox "
                f"(no {STATE_FILE}): choose an empty or new directory"
            )
        if replicas < 0 or replicas > 9:
            raise SandboxError(f"--replicas must be between 0 and 9, got {replicas}")
        binaries = find_server_binaries()
        count = replicas + 1
        if base_port is not None:
            if not 1024 <= base_port <= 65535 - count:
                raise SandboxError(f"--base-port must be between 1024 and {65535 - count}")
            ports = list(range(base_port, base_port + count))
            for p in ports:
                if not _port_free(p):
                    raise SandboxError(
                        f"port {p} on 127.0.0.1 is already in use; choose another "
                        f"--base-port (the sandbox needs {count} consecutive free ports) "
                        "or leave it out to pick free ports"
                    )
        else:
            ports = _free_ports(count)
        nodes = [
            NodeSpec(
                name=f"db{i + 1}",
                port=ports[i],
                server_id=i + 1,
                initial_role="master" if i == 0 else "replica",
            )
            for i in range(count)
        ]
        state = SandboxState(
            nodes=nodes,
            app=Credentials("app", _password()),
            monitor=Credentials("sqlrouter_monitor", _password()),
            admin=Credentials("sqlrouter_admin", _password()),
            repl=Credentials("repl", _password()),
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        try:
            self._create(state, binaries)
        except BaseException:
            self._progress("creation failed: stopping what was started")
            self._stop_all(graceful=False)
            raise
        return True

    def _create(self, state: SandboxState, binaries: Binaries) -> None:
        started = time.monotonic()
        self._progress(
            f"creating sandbox in {self.dir}: 1 master + {len(state.nodes) - 1} replicas "
            f"({binaries.server})"
        )
        template = self.dir / "nodes" / ".template"
        for spec in state.nodes:
            self._write_config(spec)
        # Initialise one data directory and copy it: much faster than one install each.
        first = state.nodes[0]
        self._run_install_db(binaries, first, template)
        for spec in state.nodes:
            shutil.copytree(template, self.node_dir(spec.name) / "data", symlinks=True)
        shutil.rmtree(template)
        # The state is written before starting so that a failed start can be cleaned up.
        self._state = state
        self._write_state()
        for spec in state.nodes:
            self._start_node(spec, binaries)
        master = state.nodes[0]
        self._progress(f"configuring master {master.name}: users, database, heartbeat table")
        self._setup_master(state, master)
        for spec in state.nodes[1:]:
            self._progress(f"configuring replica {spec.name}: GTID replication from {master.name}")
            self._setup_replica(state, spec, master)
        for spec in state.nodes[1:]:
            self.wait_caught_up(spec.name, timeout=30)
        self._write_registry()
        self._progress(f"sandbox ready in {time.monotonic() - started:.1f}s")

    def _run_install_db(self, binaries: Binaries, spec: NodeSpec, datadir: Path) -> None:
        self._progress("initialising data directory (mariadb-install-db)")
        cmd = [
            str(binaries.install_db),
            f"--defaults-file={self.node_dir(spec.name) / 'my.cnf'}",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *self._user_args(),
        ]
        res = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace").strip().splitlines()
            errors = [line for line in out if "ERROR" in line.upper()][-3:] or out[-3:]
            raise SandboxError(
                f"mariadb-install-db failed (exit {res.returncode}): "
                + " | ".join(errors)
                + f"; {self._log_tail(spec.name)}"
            )

    @staticmethod
    def _user_args() -> list[str]:
        # mariadbd refuses to run as root unless told to; elsewhere it runs as the caller.
        if os.geteuid() == 0:
            return ["--user=root"]
        return [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"]

    def _write_config(self, spec: NodeSpec) -> None:
        d = self.node_dir(spec.name)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        (d / "tmp").mkdir(exist_ok=True)
        is_master = spec.initial_role == "master"
        lines = [
            "# written by sqlrouter sandbox: a development server, not tuned for durability",
            "[mariadbd]",
            f"datadir = {d / 'data'}",
            f"port = {spec.port}",
            "bind-address = 127.0.0.1",
            f"socket = {d / 'mariadbd.sock'}",
            f"pid-file = {d / 'mariadbd.pid'}",
            f"log-error = {d / 'error.log'}",
            # A private tmpdir: servers sharing /tmp can trip over each other's files.
            f"tmpdir = {d / 'tmp'}",
            f"server-id = {spec.server_id}",
            "report-host = 127.0.0.1",
            f"report-port = {spec.port}",
            "log-bin = mariadb-bin",
            "relay-log = relay-bin",
            "log-slave-updates = 1",
            "gtid-strict-mode = 1",
            "binlog-format = ROW",
            # Every server starts read-only; the sandbox makes the master writable, so
            # that a master that restarts after losing its role stays fenced off.
            "read-only = 1",
            "rpl-semi-sync-master-enabled = " + ("1" if is_master else "0"),
            "rpl-semi-sync-slave-enabled = 1",
            "rpl-semi-sync-master-wait-point = AFTER_SYNC",
            "rpl-semi-sync-master-timeout = 2000",
            # Every session reports the GTID of its writes in OK packets (sqlrouter's
            # session consistency then needs no SET at connect).
            "session-track-system-variables = autocommit,character_set_client,"
            "character_set_connection,character_set_results,time_zone,last_gtid",
            "skip-name-resolve",
            "skip-host-cache",
            "performance-schema = 0",
            "innodb-buffer-pool-size = 64M",
            "innodb-log-file-size = 16M",
            "innodb-flush-log-at-trx-commit = 2",
            "sync-binlog = 0",
            "max-connections = 500",
            "character-set-server = utf8mb4",
            "collation-server = utf8mb4_general_ci",
        ]
        (d / "my.cnf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_state(self) -> None:
        path = self.dir / STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.state.to_json())

    def _write_registry(self) -> None:
        write_registry_file(self.registry_path, [self.service()])

    def _start_node(self, spec: NodeSpec, binaries: Binaries | None = None) -> None:
        binaries = binaries or find_server_binaries()
        if self.pid(spec.name) is not None:
            return
        if not _port_free(spec.port):
            raise SandboxError(
                f"cannot start {spec.name}: port {spec.port} on 127.0.0.1 is in use by "
                "another process"
            )
        self._progress(f"starting {spec.name} ({self._role_label(spec)}) on 127.0.0.1:{spec.port}")
        d = self.node_dir(spec.name)
        cmd = [str(binaries.server), f"--defaults-file={d / 'my.cnf'}", *self._user_args()]
        log = open(d / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig if self.ephemeral else None,  # noqa: PLW1509
            )
        finally:
            log.close()
        _CHILDREN[proc.pid] = proc
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                _CHILDREN.pop(proc.pid, None)
                raise SandboxError(
                    f"{spec.name} exited at start (code {proc.returncode}): "
                    f"{self._log_tail(spec.name)}"
                )
            try:
                self.connect(spec.name, timeout=2).close()
            except pymysql.err.MySQLError as exc:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    _CHILDREN.pop(proc.pid, None)
                    raise SandboxError(
                        f"{spec.name} did not accept connections within {START_TIMEOUT:.0f}s "
                        f"({exc}); {self._log_tail(spec.name)}"
                    ) from None
            else:
                return
            time.sleep(0.05)

    def _role_label(self, spec: NodeSpec, master: str | None = None) -> str:
        """What node ``spec`` is while it is not running, as far as its files tell: the
        master (``master``, default the recorded one), a replica (it has a
        ``master.info``), or read-only and not a replica (an old master that lost its
        role: it starts read-only, fenced off until it is rebuilt)."""
        if spec.name == (master or self.state.master):
            return "master"
        if (self.node_dir(spec.name) / "data" / "master.info").is_file():
            return "replica"
        return "read-only, not a replica"

    def _log_tail(self, name: str, lines: int = 5) -> str:
        path = self.node_dir(name) / "error.log"
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return f"no log at {path}"
        return f"last lines of {path}: " + " | ".join(tail)

    def _setup_master(self, state: SandboxState, spec: NodeSpec) -> None:
        app, mon, adm, repl = state.app, state.monitor, state.admin, state.repl
        db = state.database
        statements = [
            f"CREATE DATABASE IF NOT EXISTS `{db}`",
            "CREATE DATABASE IF NOT EXISTS sqlrouter",
            "CREATE TABLE IF NOT EXISTS sqlrouter.heartbeat ("
            " server_id INT UNSIGNED NOT NULL PRIMARY KEY,"
            " ts DATETIME(6) NOT NULL) ENGINE=InnoDB",
            f"CREATE USER '{app.user}'@'127.0.0.1' IDENTIFIED BY %(app)s",
            f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{app.user}'@'127.0.0.1'",
            f"CREATE USER '{mon.user}'@'127.0.0.1' IDENTIFIED BY %(mon)s",
            f"GRANT SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{mon.user}'@'127.0.0.1'",
            f"GRANT SELECT, INSERT, UPDATE ON sqlrouter.heartbeat TO '{mon.user}'@'127.0.0.1'",
            f"CREATE USER '{adm.user}'@'127.0.0.1' IDENTIFIED BY %(adm)s",
            f"GRANT ALL PRIVILEGES ON *.* TO '{adm.user}'@'127.0.0.1' WITH GRANT OPTION",
            f"CREATE USER '{repl.user}'@'127.0.0.1' IDENTIFIED BY %(repl)s",
            f"GRANT REPLICATION SLAVE ON *.* TO '{repl.user}'@'127.0.0.1'",
        ]
        params = {
            "app": app.password,
            "mon": mon.password,
            "adm": adm.password,
            "repl": repl.password,
        }
        with self.cursor(spec.name, timeout=30) as cur:
            cur.execute("SET GLOBAL read_only = 0")
            for sql in statements:
                cur.execute(sql, params if "%(" in sql else None)

    def _setup_replica(self, state: SandboxState, spec: NodeSpec, master: NodeSpec) -> None:
        with self.cursor(spec.name, timeout=30) as cur:
            cur.execute("SET GLOBAL gtid_slave_pos = ''")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, "
                "MASTER_USER=%s, MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, "
                "MASTER_CONNECT_RETRY=1",
                (master.port, state.repl.user, state.repl.password),
            )
            cur.execute("START SLAVE")

    def _start_existing(self) -> bool:
        state = self.state
        stopped = [n for n in state.nodes if self.pid(n.name) is None]
        if not stopped:
            self._progress(f"sandbox in {self.dir} is already running; nothing changed")
            return False
        binaries = find_server_binaries()
        self._remember_master()  # the running nodes say who is the master now
        for spec in stopped:
            self._start_node(spec, binaries)
        self._restore_master()
        self._progress(f"started {', '.join(n.name for n in stopped)}")
        return True

    def _writable_nodes(self) -> list[str]:
        writable = []
        for n in self.state.nodes:
            if self.pid(n.name) is None:
                continue
            try:
                rows = self.query(n.name, "SELECT @@read_only", timeout=2)
            except pymysql.err.MySQLError:
                continue
            if rows and not rows[0][0]:
                writable.append(n.name)
        return writable

    def _remember_master(self) -> None:
        """Record which node is the master now (before stopping servers)."""
        writable = self._writable_nodes()
        if len(writable) == 1 and writable[0] != self.state.master:
            self.state.master = writable[0]
            self._write_state()

    def _restore_master(self) -> None:
        """Make the recorded master writable again, unless another node already is."""
        name = self.state.master
        if self.pid(name) is None or self._writable_nodes():
            return
        self.query(name, "SET GLOBAL read_only = 0")

    def down(self) -> list[str]:
        """Stop every server (data kept).  Returns the names of the nodes stopped."""
        _ = self.state  # a clear error when DIR is not a sandbox
        self._remember_master()
        return self._stop_all(graceful=True)

    def _stop_all(self, *, graceful: bool) -> list[str]:
        names = [n.name for n in self.state.nodes] if self.exists or self._state else []
        return [name for name in names if self._stop_node(name, graceful=graceful)]

    def _stop_node(self, name: str, *, graceful: bool = True) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        if graceful:
            self._progress(f"stopping {name} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a frozen server cannot shut down
                os.kill(pid, signal.SIGTERM)
            if self._wait_exit(name, pid, STOP_TIMEOUT):
                return True
            self._progress(f"{name} did not stop within {STOP_TIMEOUT:.0f}s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_exit(name, pid, 10)
        return True

    def _wait_exit(self, name: str, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = _CHILDREN.get(pid)
        while time.monotonic() < deadline:
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.05)
            if not _pid_alive(pid):
                if child is not None:
                    # A zombie of ours: reap it (a Popen dropped unreaped warns).
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=1.0)
                _CHILDREN.pop(pid, None)
                return True
            time.sleep(0.02)
        return False

    def destroy(self) -> None:
        """Stop every server and delete the sandbox directory."""
        if not self.exists:
            if not self.dir.exists():
                return
            raise SandboxError(
                f"{self.dir} is not a sandbox (no {STATE_FILE}): refusing to delete it"
            )
        self._stop_all(graceful=False)
        shutil.rmtree(self.dir)
        self._state = None

    # -- status --------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        rows = [self._node_status(n) for n in self.state.nodes]
        masters = [r.name for r in rows if r.running and r.role == "master"]
        if len(masters) == 1:
            # A node down since a topology operation moved the master is not the master.
            rows = [
                r
                if r.running or r.role != "master" or r.name == masters[0]
                else dataclasses.replace(r, role=self._role_label(self.node(r.name), masters[0]))
                for r in rows
            ]
        return rows

    def _node_status(self, spec: NodeSpec) -> NodeStatus:
        pid = self.pid(spec.name)
        if pid is None:
            return NodeStatus(spec.name, spec.port, None, "stopped", self._role_label(spec))
        if _pid_state(pid) == "T":
            return NodeStatus(spec.name, spec.port, pid, "frozen", self._role_label(spec))
        try:
            conn = self.connect(spec.name, timeout=2)
        except pymysql.err.MySQLError as exc:
            return NodeStatus(
                spec.name, spec.port, pid, "unresponsive", self._role_label(spec), error=str(exc)
            )
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SELECT @@read_only AS ro, @@gtid_current_pos AS pos")
                top = cur.fetchone()
                cur.execute("SHOW SLAVE STATUS")
                slave = cur.fetchone()
        except pymysql.err.MySQLError as exc:
            return NodeStatus(
                spec.name, spec.port, pid, "unresponsive", self._role_label(spec), error=str(exc)
            )
        finally:
            conn.close()
        read_only = bool(top and top["ro"])
        gtid_pos = top["pos"] if top else None
        if slave:
            return NodeStatus(
                spec.name,
                spec.port,
                pid,
                "running",
                "replica",
                read_only=read_only,
                io_running=slave["Slave_IO_Running"],
                sql_running=slave["Slave_SQL_Running"],
                gtid_pos=gtid_pos,
                seconds_behind_master=slave["Seconds_Behind_Master"],
                sql_delay=slave["SQL_Delay"],
                error=slave["Last_IO_Error"] or slave["Last_SQL_Error"] or None,
            )
        return NodeStatus(
            spec.name,
            spec.port,
            pid,
            "running",
            "master" if not read_only else "read-only, not a replica",
            read_only=read_only,
            gtid_pos=gtid_pos,
        )

    def rejoin(self, name: str) -> None:
        """Rebuild node ``name`` as a replica of the current master (the one writable
        node): stop it, delete its data, initialise it again, and replicate everything
        from the master's binlog (the sandbox never purges binlogs).

        For an old master after a failover (it must not come back as it was) or a
        replica a failover left out.  What the node held that the master lacks is lost.
        """
        spec = self.node(name)
        writable = self._writable_nodes()
        if len(writable) != 1:
            found = ", ".join(writable) if writable else "none"
            raise SandboxError(
                f"cannot rejoin {name}: it needs exactly one writable master to replicate "
                f"from (writable nodes: {found}); fail over or switch over first"
            )
        master = self.node(writable[0])
        if master.name == name:
            raise SandboxError(
                f"{name} is the master (the writable node): there is nothing to rejoin"
            )
        binaries = find_server_binaries()
        self._progress(f"rebuilding {name} as a replica of {master.name} (its data is deleted)")
        self._stop_node(name, graceful=False)
        data = self.node_dir(name) / "data"
        fresh = self.node_dir(name) / "data.new"
        shutil.rmtree(fresh, ignore_errors=True)
        self._run_install_db(binaries, spec, fresh)
        shutil.rmtree(data, ignore_errors=True)
        fresh.rename(data)
        if self.state.master != master.name:
            self.state.master = master.name
            self._write_state()
        self._start_node(spec, binaries)
        self._progress(f"configuring replica {name}: GTID replication from {master.name}")
        self._setup_replica(self.state, spec, master)
        self.wait_caught_up(name, timeout=60)
        self._progress(f"{name} replicates from {master.name} and has caught up")

    def wait_caught_up(self, name: str, *, timeout: float = 30.0) -> None:
        """Wait until replica ``name`` has applied everything the master has written."""
        writable = self._writable_nodes()
        source = writable[0] if len(writable) == 1 else self.state.master
        pos = self.query(source, "SELECT @@gtid_binlog_pos")[0][0]
        if not pos:
            return
        rows = self.query(
            name,
            f"SELECT MASTER_GTID_WAIT('{pos}', {timeout:.3f})",
            timeout=timeout + 5,
        )
        if rows[0][0] != 0:
            raise SandboxError(f"{name} did not reach the master's position {pos} in {timeout}s")

    # -- faults --------------------------------------------------------------------

    def fault(self, name: str, action: str, seconds: float | None = None) -> str:
        """Inject a fault into node ``name``; returns a one-line description."""
        spec = self.node(name)
        if action not in FAULTS:
            raise SandboxError(f"unknown fault {action!r}; expected one of: {', '.join(FAULTS)}")
        if action == "delay":
            if seconds is None or seconds < 0:
                raise SandboxError("delay needs a number of seconds >= 0, e.g. 'delay 3'")
            secs = round(seconds)
            self._replication(
                spec,
                ["STOP SLAVE", f"CHANGE MASTER TO MASTER_DELAY={secs}", "START SLAVE"],
            )
            return f"{name}: replication delayed by {secs}s (MASTER_DELAY)"
        if action == "stop-io":
            self._replication(spec, ["STOP SLAVE IO_THREAD"])
            return f"{name}: replication IO thread stopped"
        if action == "stop-sql":
            self._replication(spec, ["STOP SLAVE SQL_THREAD"])
            return f"{name}: replication SQL thread stopped"
        if action == "resume":
            self._replication(
                spec, ["STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY=0", "START SLAVE"]
            )
            return f"{name}: replication resumed (no delay, both threads running)"
        pid = self.pid(name)
        if action == "restart":
            self._remember_master()
            if pid is not None:
                self._stop_node(name, graceful=True)
            self._start_node(spec)
            self._restore_master()
            return f"{name}: restarted"
        if pid is None:
            raise SandboxError(f"{name} is not running; start it with 'restart' or 'sandbox up'")
        sig = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP, "thaw": signal.SIGCONT}[action]
        os.kill(pid, sig)
        if action == "kill":
            self._wait_exit(name, pid, 10)
            return f"{name}: killed (SIGKILL, pid {pid})"
        if action == "freeze":
            if not _wait_stopped(pid, 5.0):
                raise SandboxError(f"{name}: SIGSTOP sent to pid {pid}, but it did not stop")
            return f"{name}: frozen (SIGSTOP, pid {pid}); undo with 'thaw'"
        return f"{name}: thawed (SIGCONT, pid {pid})"

    def _replication(self, spec: NodeSpec, statements: list[str]) -> None:
        pid = self.pid(spec.name)
        if pid is None:
            raise SandboxError(f"{spec.name} is not running")
        try:
            with self.cursor(spec.name, timeout=10) as cur:
                cur.execute("SHOW SLAVE STATUS")
                if cur.fetchone() is None:
                    raise SandboxError(
                        f"{spec.name} is not a replica (it has no replication to change)"
                    )
                for sql in statements:
                    cur.execute(sql)
        except pymysql.err.MySQLError as exc:
            raise SandboxError(f"{spec.name}: {exc.args[-1]}") from None
