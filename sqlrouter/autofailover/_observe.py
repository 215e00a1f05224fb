"""One agent's look at a service's servers: who is reachable, writable, replicating from whom.

Each server is probed on its own connection (connect, ``@@read_only`` and ``SHOW SLAVE
STATUS`` within ``timeout``), closed at once: an agent keeps no connection between
rounds.  :func:`resolve_master` is the agent's idea of the master, from observations
only, by the router's rule (:func:`sqlrouter.routing.router.resolve_master`: the one
writable, non-replicating server the replicas' chains end at; a replica's source by its
``Master_Host:Master_Port``, else its ``Master_Server_Id``); when that rule names no
master, a dead one: the source every reachable replica's chain ends at, when that
server does not answer and no server is writable.

:func:`end_older_sessions` is the leaders' fence on the servers: a new leader ends every
other session of the failover's account (``KILL CONNECTION``) before its first action, so
that a statement an older leader was about to send runs on a dead connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import pymysql
import pymysql.cursors

from ..routing.health import Health
from ..routing.router import resolve_master as resolve_mastership
from ..routing.router import upstream_of
from ..switchover import Connected, accepted
from ..topology import Credentials, DataSource, Service

__all__ = [
    "Address",
    "OnConnect",
    "ServerView",
    "connect",
    "end_older_sessions",
    "fence",
    "observe",
    "resolve_master",
    "restart_io_thread",
    "source_of",
]

#: Where an agent reaches a datasource: ``(host, port)``.  The registry's address,
#: unless the agent is given another route (a relay in the tests).
Address = Callable[[DataSource], tuple[str, int]]


#: Called with each connection a leader's action opens, before its first statement:
#: the leadership checked again, older leaders' sessions ended; raising refuses it.
OnConnect = Connected

#: Sessions of the failover's account that are not a leader's: the replication threads
#: (a master's ``Binlog Dump`` when replicas connect with the same account) and the
#: server's own.  Never ended.
_NOT_SESSIONS: Final = (
    "Binlog Dump",
    "Binlog Dump GTID",
    "Daemon",
    "Slave_IO",
    "Slave_SQL",
    "Slave_worker",
    "Killed",
)


def registry_address(ds: DataSource) -> tuple[str, int]:
    return ds.host, ds.port


@dataclass(frozen=True, slots=True)
class ServerView:
    name: str
    reachable: bool
    read_only: bool = True
    #: ``(host, port)`` of its replication source, ``None`` when not a replica.
    source_address: tuple[str, int] | None = None
    io_connected: bool = False
    detail: str = ""
    server_id: int | None = None
    #: ``Master_Server_Id`` of ``SHOW SLAVE STATUS`` (0 or ``None``: never connected).
    master_server_id: int | None = None

    def health(self) -> Health:
        """This view as the router's observation (its rule of the master is shared)."""
        host, port = self.source_address or ("", None)
        return Health(
            self.name,
            self.reachable,
            0.0,
            read_only=self.read_only if self.reachable else None,
            server_id=self.server_id,
            replicating=self.reachable and self.source_address is not None,
            master_server_id=self.master_server_id,
            master_host=host,
            master_port=port,
            io_running=self.io_connected,
        )


def connect(
    ds: DataSource,
    creds: Credentials,
    timeout: float,
    address: Address,
    on_connect: OnConnect | None = None,
) -> pymysql.connections.Connection[pymysql.cursors.DictCursor]:
    """A connection to ``ds`` on which ``on_connect`` ran (the caller closes it)."""
    return accepted(ds, _open(ds, creds, timeout, address), on_connect)


def _open(
    ds: DataSource, creds: Credentials, timeout: float, address: Address
) -> pymysql.connections.Connection[pymysql.cursors.DictCursor]:
    host, port = address(ds)
    return pymysql.connect(
        host=host,
        port=port,
        user=creds.user,
        password=creds.password,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        cursorclass=pymysql.cursors.DictCursor,
        program_name="sqlrouter-agent",
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


def probe(ds: DataSource, creds: Credentials, timeout: float, address: Address) -> ServerView:
    """``ds`` as seen now; unreachable (with why) when it does not answer in time."""
    try:
        conn = _open(ds, creds, timeout, address)
    except (pymysql.err.MySQLError, OSError) as exc:
        return ServerView(ds.name, False, detail=_describe(exc))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@read_only AS ro, @@server_id AS sid")
            row = cur.fetchone()
            cur.execute("SHOW SLAVE STATUS")
            slave = cur.fetchone()
    except (pymysql.err.MySQLError, OSError) as exc:
        return ServerView(ds.name, False, detail=_describe(exc))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    read_only = bool(row and int(row["ro"]))
    sid = int(row["sid"]) if row and row.get("sid") is not None else None
    if not slave or not slave.get("Master_Host"):
        return ServerView(ds.name, True, read_only, server_id=sid)
    io = str(slave.get("Slave_IO_Running") or "No")
    error = str(slave.get("Last_IO_Error") or "")
    return ServerView(
        ds.name,
        True,
        read_only,
        (str(slave["Master_Host"]), int(slave["Master_Port"])),
        io == "Yes",
        f"Slave_IO_Running {io}" + (f": {error}" if error else ""),
        sid,
        int(slave.get("Master_Server_Id") or 0) or None,
    )


def observe(
    service: Service,
    creds: Credentials,
    timeout: float,
    address: Address = registry_address,
) -> dict[str, ServerView]:
    """Every datasource of ``service``, probed one after the other."""
    return {ds.name: probe(ds, creds, timeout, address) for ds in service.datasources}


def resolve_master(service: Service, views: Mapping[str, ServerView]) -> str | None:
    """The master by observation (the module's docstring); ``None`` when the
    observations do not single one out."""
    health = {name: v.health() for name, v in views.items()}
    ship = resolve_mastership(service.datasources, health)
    if ship.master is not None:
        return ship.master.name
    ends = {src.datasource for src in ship.source.values()}
    if ship.writable or len(ends) != 1:
        return None
    (end,) = ends
    dead = end is not None and end in views and not views[end].reachable
    return end if dead else None


def source_of(service: Service, views: Mapping[str, ServerView], name: str) -> str | None:
    """The datasource the replica ``name`` replicates from directly (the router's rule)."""
    health = {n: v.health() for n, v in views.items()}
    return upstream_of(name, service.datasources, health).datasource


def end_older_sessions(conn: pymysql.connections.Connection[Any], user: str) -> list[int]:
    """End (``KILL CONNECTION``) every session of ``user`` but ``conn``'s own; their ids.

    ``user`` is the failover's account: the sessions of an older leader are among them
    (and the agents' probes, and anyone else's using that account: it must not be shared
    for manual work while automation is on).  Replication and server threads are kept.
    Only ``information_schema.PROCESSLIST`` is read, which every server has (connection
    attributes would need ``performance_schema``).
    """
    ended = []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s "
            "AND ID <> CONNECTION_ID() AND COMMAND NOT IN %s",
            (user, _NOT_SESSIONS),
        )
        ids = [int(row["ID"] if isinstance(row, dict) else row[0]) for row in cur.fetchall()]
        for session in ids:
            try:
                cur.execute("KILL CONNECTION %s", (session,))
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1094:  # unknown thread: it ended by itself
                    continue
                raise
            ended.append(session)
    return ended


def _run(
    ds: DataSource,
    creds: Credentials,
    timeout: float,
    address: Address,
    on_connect: OnConnect | None,
    *statements: str,
) -> Any:
    """Run ``statements`` on a connection of their own to ``ds``: the last one's first
    row (``None``: none)."""
    conn = connect(ds, creds, timeout, address, on_connect)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
            return cur.fetchone()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def fence(
    ds: DataSource,
    creds: Credentials,
    timeout: float,
    address: Address,
    on_connect: OnConnect | None = None,
) -> str:
    """Make ``ds`` read-only (an old master come back); what was done, as a sentence."""
    slave = _run(
        ds, creds, timeout, address, on_connect, "SET GLOBAL read_only = 1", "SHOW SLAVE STATUS"
    )
    where = "its replication is left stopped" if not slave else "its replication is left as it is"
    return f"{ds.name} is read-only (SET GLOBAL read_only=1); {where}: rebuild it as a replica"


def restart_io_thread(
    ds: DataSource,
    creds: Credentials,
    timeout: float,
    address: Address,
    on_connect: OnConnect | None = None,
) -> str:
    """``START SLAVE IO_THREAD`` on ``ds`` (a replica an interrupted failover froze)."""
    _run(ds, creds, timeout, address, on_connect, "START SLAVE IO_THREAD")
    return f"{ds.name} receiving again (START SLAVE IO_THREAD)"
