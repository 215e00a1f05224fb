"""The administrative connections to the servers, and what one inspection reads."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pymysql

from ..gtid import Gtid
from ..routing.health import Health
from ..routing.router import upstream_of
from ..topology import Credentials, DataSource, Service
from ._history import _history, _tail

__all__ = [
    "Connected",
    "_Node",
    "_Server",
    "_Servers",
    "accepted",
]


#: Shortest timeout of one connection or short statement to a server.
_MIN_IO_TIMEOUT: Final = 2.0


#: Sessions never disconnected from a demoted master.
_SYSTEM_USERS: Final = frozenset({"system user", "event_scheduler", "unauthenticated user"})


_SYSTEM_COMMANDS: Final = frozenset(
    {"Binlog Dump", "Binlog Dump GTID", "Daemon", "Slave_IO", "Slave_SQL", "Slave_worker"}
)


#: Called with each administrative connection an operation opens, before its first
#: statement; raising refuses the connection (it is closed).  An automatic failover checks
#: its leadership there, and ends older leaders' sessions (docs/autofailover.md).
Connected = Callable[[DataSource, "pymysql.connections.Connection[Any]"], None]


def accepted(
    ds: DataSource,
    conn: pymysql.connections.Connection[Any],
    on_connect: Connected | None,
) -> pymysql.connections.Connection[Any]:
    """``conn`` to ``ds``, once ``on_connect`` (when given) accepted it; closed, and what
    ``on_connect`` raised raised, when it did not."""
    if on_connect is not None:
        try:
            on_connect(ds, conn)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
    return conn


#: A session the server ended: gone away, lost, killed, disconnected for inactivity.
_SESSION_ENDED: Final = frozenset({2006, 2013, 1927, 4031})


def _describe(exc: BaseException) -> str:
    args: tuple[object, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


class _Failure(Exception):
    """A step could not be done; the message says why (no password in it)."""


class _Stopped(_Failure):
    """The guard said no to a new connection: nothing was run on it (an automatic
    failover's leader that lost, or cannot confirm, its lease)."""


@dataclass(frozen=True, slots=True)
class _Node:
    """What one inspection read from one server."""

    ds: DataSource
    reachable: bool
    error: str = ""
    server_id: int = 0
    read_only: bool = True
    version: str = ""
    binlog_pos: str = ""
    slave_pos: str = ""
    current_pos: str = ""
    binlog_state: str = ""
    log_bin: bool = False
    log_slave_updates: bool = False
    #: ``None`` when the server has no such variable (no semi-sync support).
    semi_master: bool | None = None
    semi_slave: bool | None = None
    semi_master_on: bool | None = None
    semi_master_clients: int | None = None
    slave: Mapping[str, Any] | None = None
    #: Heartbeat rows: ``{server_id: UNIX timestamp}``.
    heartbeats: Mapping[int, float] = field(default_factory=dict)
    #: Not inspected: the guard said no (nothing is known of the server).
    stopped: bool = False

    @property
    def name(self) -> str:
        return self.ds.name

    @property
    def health(self) -> Health:
        """What the routing rule needs of this inspection (who replicates from whom)."""
        host, port = self.master_address
        return Health(
            name=self.name,
            reachable=self.reachable,
            observed_at=0.0,
            read_only=self.read_only if self.reachable else None,
            server_id=self.server_id if self.reachable else None,
            replicating=self.is_replica,
            master_server_id=self.master_id,
            master_host=host,
            master_port=port or None,
        )

    @property
    def is_replica(self) -> bool:
        return self.slave is not None

    def slave_str(self, key: str) -> str:
        value = self.slave.get(key) if self.slave is not None else None
        return "" if value is None else str(value)

    def slave_int(self, key: str) -> int | None:
        value = self.slave.get(key) if self.slave is not None else None
        return None if value is None else int(value)

    @property
    def io_thread(self) -> str:
        """``Slave_IO_Running``: ``Yes``, ``No`` or ``Connecting``."""
        return self.slave_str("Slave_IO_Running")

    @property
    def io_running(self) -> bool:
        return self.io_thread == "Yes"

    @property
    def sql_running(self) -> bool:
        return self.slave_str("Slave_SQL_Running") == "Yes"

    @property
    def master_id(self) -> int:
        return self.slave_int("Master_Server_Id") or 0

    @property
    def master_address(self) -> tuple[str, int]:
        return self.slave_str("Master_Host"), self.slave_int("Master_Port") or 0

    @property
    def io_pos(self) -> str:
        return self.slave_str("Gtid_IO_Pos")

    @property
    def sql_delay(self) -> int:
        return self.slave_int("SQL_Delay") or 0

    @property
    def sql_error(self) -> str:
        if not self.slave_int("Last_SQL_Errno"):
            return ""
        return f"({self.slave_int('Last_SQL_Errno')}) {self.slave_str('Last_SQL_Error')}"

    @property
    def io_error(self) -> str:
        if not self.slave_int("Last_IO_Errno"):
            return ""
        return f"({self.slave_int('Last_IO_Errno')}) {self.slave_str('Last_IO_Error')}"

    @property
    def history(self) -> dict[tuple[int, int], int]:
        return _history(self.binlog_state, self.slave_pos)

    @property
    def tail(self) -> dict[int, Gtid]:
        return _tail(self.current_pos)

    @property
    def demote_supported(self) -> bool:
        """``CHANGE MASTER TO MASTER_DEMOTE_TO_SLAVE=1`` exists (MariaDB 10.10+)."""
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return m is not None and (int(m[1]), int(m[2])) >= (10, 10)

    def describe_replication(self) -> str:
        if self.slave is None:
            return "not a replica"
        host, port = self.master_address
        text = f"replicates from {host}:{port} (IO {self.io_thread}, SQL "
        text += "Yes" if self.sql_running else self.slave_str("Slave_SQL_Running")
        text += ")"
        errors = [e for e in (self.io_error, self.sql_error) if e]
        if errors:
            text += ": " + "; ".join(errors)
        return text


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a socket's timeout."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Server:
    """The administrative connection to one datasource."""

    def __init__(
        self,
        ds: DataSource,
        credentials: Credentials,
        io_timeout: float,
        on_connect: Connected | None = None,
    ) -> None:
        self.ds = ds
        self._credentials = credentials
        self.io_timeout = io_timeout
        self._on_connect = on_connect
        self._conn: pymysql.connections.Connection[Any] | None = None

    def _open(self, read_timeout: float) -> pymysql.connections.Connection[Any]:
        """A new connection; ``on_connect`` is asked before it runs anything."""
        return accepted(self.ds, self._connect(read_timeout), self._on_connect)

    def _connect(self, read_timeout: float) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=self.ds.host,
            port=self.ds.port,
            user=self._credentials.user,
            password=self._credentials.password,
            connect_timeout=self.io_timeout,
            read_timeout=read_timeout,
            write_timeout=self.io_timeout,
            autocommit=True,
            program_name="sqlrouter-admin",
        )

    @staticmethod
    def _fetch(cur: pymysql.cursors.Cursor) -> list[dict[str, Any]]:
        if cur.description is None:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def rows(self, sql: str, args: Sequence[object] | None = None) -> list[dict[str, Any]]:
        """Run a short statement (bounded by the I/O timeout) and return its rows.

        With an ``on_connect`` hook (an automatic failover), a kept connection the server
        ended (``KILL CONNECTION`` by a leader's sweep: docs/autofailover.md) is opened
        again, which asks the hook (the guard) again, and the statement is sent once more:
        it did not run (the session was idle) or was cut off, and every statement of the
        failover may run twice.  A leader that lost its lease is refused there.
        """
        reused = self._conn is not None
        try:
            return self._rows(sql, args)
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            if not reused or self._on_connect is None or code not in _SESSION_ENDED:
                raise
            if _timed_out(exc):
                # The statement may still run on the server (2013 "timed out" is
                # PyMySQL's read timeout, not a session the server ended): not again.
                raise
        return self._rows(sql, args)

    def _rows(self, sql: str, args: Sequence[object] | None) -> list[dict[str, Any]]:
        try:
            if self._conn is None:
                self._conn = self._open(self.io_timeout)
            with self._conn.cursor() as cur:
                cur.execute(sql, args)
                return self._fetch(cur)
        except BaseException:
            self.close()
            raise

    def one(self, sql: str, args: Sequence[object] | None = None) -> dict[str, Any]:
        rows = self.rows(sql, args)
        if not rows:
            raise _Failure(f"{self.ds.name}: {sql.split(maxsplit=1)[0]} returned no row")
        return rows[0]

    def value(self, sql: str, args: Sequence[object] | None = None) -> Any:
        return next(iter(self.one(sql, args).values()))

    def run(self, *statements: str | tuple[str, Sequence[object]]) -> None:
        for stmt in statements:
            sql, args = (stmt, None) if isinstance(stmt, str) else stmt
            self.rows(sql, args)

    def long(
        self, statements: Sequence[tuple[str, Sequence[object] | None]], seconds: float
    ) -> list[dict[str, Any]]:
        """Run statements that may wait up to ``seconds`` on a connection of their own;
        returns the rows of the last one."""
        conn = self._open(seconds + self.io_timeout)
        try:
            rows: list[dict[str, Any]] = []
            with conn.cursor() as cur:
                for sql, args in statements:
                    cur.execute(sql, args)
                    rows = self._fetch(cur)
            return rows
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def inspect(self, heartbeat_table: str | None) -> _Node:
        try:
            top = self.one(
                "SELECT @@server_id AS server_id, @@read_only AS read_only, "
                "@@version AS version, @@gtid_binlog_pos AS binlog_pos, "
                "@@gtid_slave_pos AS slave_pos, @@gtid_current_pos AS current_pos, "
                "@@gtid_binlog_state AS binlog_state, @@log_bin AS log_bin, "
                "@@log_slave_updates AS log_slave_updates"
            )
            variables = {
                str(r["Variable_name"]).lower(): str(r["Value"])
                for r in self.rows(
                    "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                    "('rpl_semi_sync_master_enabled', 'rpl_semi_sync_slave_enabled')"
                )
            }
            status = {
                str(r["Variable_name"]).lower(): str(r["Value"])
                for r in self.rows(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN "
                    "('Rpl_semi_sync_master_status', 'Rpl_semi_sync_master_clients')"
                )
            }
            slave = self.rows("SHOW SLAVE STATUS")
        except pymysql.err.MySQLError as exc:
            error = _describe(exc)
            if exc.args and exc.args[0] == 1193:  # unknown system variable
                error = f"it answers, but is not a MariaDB server with GTIDs: {error}"
            return _Node(self.ds, reachable=False, error=error)
        except _Stopped as exc:
            return _Node(self.ds, reachable=False, error=_describe(exc), stopped=True)
        except (OSError, _Failure) as exc:
            return _Node(self.ds, reachable=False, error=_describe(exc))
        heartbeats: dict[int, float] = {}
        if heartbeat_table:
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                for r in self.rows(
                    f"SELECT server_id AS sid, UNIX_TIMESTAMP(ts) AS ts FROM {heartbeat_table}"
                ):
                    heartbeats[int(r["sid"])] = float(r["ts"])

        def flag(name: str, source: Mapping[str, str]) -> bool | None:
            value = source.get(name)
            return None if value is None else value.upper() in ("ON", "1", "YES")

        clients = status.get("rpl_semi_sync_master_clients")
        return _Node(
            self.ds,
            reachable=True,
            server_id=int(top["server_id"]),
            read_only=bool(int(top["read_only"])),
            version=str(top["version"]),
            binlog_pos=str(top["binlog_pos"] or ""),
            slave_pos=str(top["slave_pos"] or ""),
            current_pos=str(top["current_pos"] or ""),
            binlog_state=str(top["binlog_state"] or ""),
            log_bin=bool(int(top["log_bin"])),
            log_slave_updates=bool(int(top["log_slave_updates"])),
            semi_master=flag("rpl_semi_sync_master_enabled", variables),
            semi_slave=flag("rpl_semi_sync_slave_enabled", variables),
            semi_master_on=flag("rpl_semi_sync_master_status", status),
            semi_master_clients=None if clients is None else int(clients),
            slave=slave[0] if slave else None,
            heartbeats=heartbeats,
        )


class _Servers:
    """One :class:`_Server` per datasource, closed at the end of the operation."""

    def __init__(
        self,
        service: Service,
        credentials: Credentials,
        timeout: float,
        on_connect: Connected | None = None,
    ) -> None:
        self.service = service
        io = min(timeout, max(_MIN_IO_TIMEOUT, 2 * service.probe_timeout))
        self.io_timeout = io
        #: Asked on every connection of the operation: the servers' own, and those the
        #: check of the old master opens (``_liveness``).
        self.on_connect = on_connect
        self._servers = {
            ds.name: _Server(ds, credentials, io, on_connect) for ds in service.datasources
        }

    def __getitem__(self, name: str) -> _Server:
        return self._servers[name]

    def __enter__(self) -> _Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers.values():
            server.close()

    def inspect(self, names: Sequence[str] | None = None) -> dict[str, _Node]:
        """Inspect servers in parallel; every inspection is bounded by the I/O timeout."""
        hb = self.service.heartbeat
        table = hb.table if hb.enabled else None
        targets = [self._servers[n] for n in (names or list(self._servers))]
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=len(targets), thread_name_prefix="sqlrouter-admin"
        ) as pool:
            nodes = list(pool.map(lambda s: s.inspect(table), targets))
        return {n.name: n for n in nodes}


def _master_of(service: Service, node: _Node, nodes: Mapping[str, _Node]) -> DataSource | None:
    """The datasource replica ``node`` replicates from, by the routing rule
    (:func:`~sqlrouter.routing.router.upstream_of`: its ``Master_Host:Master_Port``,
    else the reachable server with its ``Master_Server_Id``), as every monitor sees it."""
    health = {name: n.health for name, n in nodes.items()}
    source = upstream_of(node.name, service.datasources, health)
    return None if source.datasource is None else service.datasource(source.datasource)


def _positions(nodes: Mapping[str, _Node]) -> tuple[tuple[str, str], ...]:
    return tuple((n.name, n.current_pos if n.reachable else "unreachable") for n in nodes.values())


def _repointing(server: _Server, master: DataSource, done: str) -> Callable[[], str]:
    """A step making ``server`` replicate from ``master`` (its replication account
    kept); ``done`` says so."""

    def action() -> str:
        server.run("STOP SLAVE", _change_master(master, credentials=None), "START SLAVE")
        return done

    return action


def _repoint_sql(master: DataSource) -> str:
    """The statements an operator runs on a replica to make it replicate from ``master``."""
    return (
        f"STOP SLAVE; CHANGE MASTER TO MASTER_HOST='{master.host}', "
        f"MASTER_PORT={master.port}, MASTER_USE_GTID=slave_pos; START SLAVE"
    )


def _change_master(
    target: DataSource,
    *,
    credentials: Credentials | None,
    connect_retry: int | None = None,
    demote: bool = False,
) -> tuple[str, list[object]]:
    sql = "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s"
    args: list[object] = [target.host, target.port]
    if credentials is not None:
        sql += ", MASTER_USER=%s, MASTER_PASSWORD=%s"
        args += [credentials.user, credentials.password]
    sql += ", MASTER_USE_GTID=slave_pos"
    if connect_retry:
        sql += ", MASTER_CONNECT_RETRY=%s"
        args.append(connect_retry)
    if demote:
        sql += ", MASTER_DEMOTE_TO_SLAVE=1"
    return sql, args
