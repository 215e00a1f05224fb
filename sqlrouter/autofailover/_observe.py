"""One agent's look at a service's servers: who is reachable, writable, replicating from whom.

Each server is probed on its own connection (connect, ``@@read_only`` and ``SHOW SLAVE
STATUS`` within ``timeout``), closed at once: an agent keeps no connection between
rounds.  :func:`resolve_master` is the agent's idea of the master, from observations
only: the source that the reachable replicas share, else the one writable server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pymysql
import pymysql.cursors

from ..topology import Credentials, DataSource, Service

__all__ = ["Address", "ServerView", "fence", "observe", "resolve_master"]

#: Where an agent reaches a datasource: ``(host, port)``.  The registry's address,
#: unless the agent is given another route (a relay in the tests).
Address = Callable[[DataSource], tuple[str, int]]


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


def _connect(
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
        conn = _connect(ds, creds, timeout, address)
    except (pymysql.err.MySQLError, OSError) as exc:
        return ServerView(ds.name, False, detail=_describe(exc))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@read_only AS ro")
            row = cur.fetchone()
            cur.execute("SHOW SLAVE STATUS")
            slave = cur.fetchone()
    except (pymysql.err.MySQLError, OSError) as exc:
        return ServerView(ds.name, False, detail=_describe(exc))
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    read_only = bool(row and int(row["ro"]))
    if not slave or not slave.get("Master_Host"):
        return ServerView(ds.name, True, read_only)
    io = str(slave.get("Slave_IO_Running") or "No")
    error = str(slave.get("Last_IO_Error") or "")
    return ServerView(
        ds.name,
        True,
        read_only,
        (str(slave["Master_Host"]), int(slave["Master_Port"])),
        io == "Yes",
        f"Slave_IO_Running {io}" + (f": {error}" if error else ""),
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
    """The master by observation: the replicas' shared source, else the one writable server.

    ``None`` when the observations do not single one out (replicas of different
    sources, or no replica and several or no writable servers).
    """
    by_address = {(ds.host, ds.port): ds.name for ds in service.datasources}
    sources = {
        by_address.get(v.source_address)
        for v in views.values()
        if v.reachable and v.source_address is not None
    }
    if len(sources) == 1:
        return sources.pop()
    if sources:
        return None
    writable = [v.name for v in views.values() if v.reachable and not v.read_only]
    return writable[0] if len(writable) == 1 else None


def fence(ds: DataSource, creds: Credentials, timeout: float, address: Address) -> str:
    """Make ``ds`` read-only (an old master come back); what was done, as a sentence."""
    conn = _connect(ds, creds, timeout, address)
    try:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")
            cur.execute("SHOW SLAVE STATUS")
            slave = cur.fetchone()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    where = "its replication is left stopped" if not slave else "its replication is left as it is"
    return f"{ds.name} is read-only (SET GLOBAL read_only=1); {where}: rebuild it as a replica"
