"""One datasource as the monitor sees it: its probe and heartbeat connections.

A :class:`Prober` reads, in one round trip (a multi-statement query), what
:class:`~sqlrouter.routing.lag.Observation` holds, and writes the heartbeat row on the
master; :class:`~sqlrouter.routing.monitor.Monitor` runs one per datasource in its
worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import pymysql
from pymysql.constants import CLIENT

from .._forksafe import tls_section
from .._pymysql import abandon_after_fork
from ..errors import PRIVILEGE_ERRNOS
from ..topology import Credentials, DataSource, Service
from .lag import Observation

__all__ = ["HEARTBEAT_SQL", "Clock", "Connect", "Prober", "describe_error", "heartbeat_lock"]

logger = logging.getLogger("sqlrouter.monitor")


#: Error numbers meaning "the heartbeat table is not there or not readable".
_NO_HEARTBEAT_ERRNOS = frozenset({1049, 1142, 1146})


#: The heartbeat write.  The monitor sends it only to the master the rule singles out;
#: the statement itself also writes nothing on a server that is read-only (which an
#: account with READ ONLY ADMIN could write to) or whose replication SQL thread runs
#: (``Slaves_running``, readable without privilege): a row written there would give the
#: server GTIDs of its own, which ``gtid_strict_mode`` refuses to follow with its
#: master's.  A writable server whose replication is configured but stopped cannot be
#: told in one statement: the rule alone keeps the heartbeat off it.
HEARTBEAT_SQL = (
    "INSERT INTO {table} (server_id, ts) SELECT @@server_id, NOW(6) FROM DUAL "
    "WHERE @@global.read_only = 0 AND (SELECT VARIABLE_VALUE FROM "
    "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVES_RUNNING') = 0 "
    "ON DUPLICATE KEY UPDATE ts = VALUES(ts)"
)


def heartbeat_lock(table: str) -> str:
    """The name of the ``GET_LOCK()`` that the heartbeat writer of a cluster holds on
    its master: ``sqlrouter.heartbeat:TABLE``, or, longer than the 64 characters the
    server accepts, its start and a hash of the whole table name (cut, two tables of
    one master with a long common prefix would share one writer)."""
    name = f"sqlrouter.heartbeat:{table}"
    if len(name) <= _LOCK_NAME_MAX:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:24]
    return f"{name[: _LOCK_NAME_MAX - len(digest) - 1]}~{digest}"


_LOCK_NAME_MAX = 64
#: ``KILL`` of a connection that ended meanwhile (another process ended it first).
_ER_NO_SUCH_THREAD = 1094


#: Whether the writer's lock is held by a connection, and how old the heartbeat this
#: master wrote is (seconds; NULL when it never wrote one).
_WRITER_SQL = (
    "SELECT IS_USED_LOCK(%s), TIMESTAMPDIFF(MICROSECOND, MAX(ts), NOW(6)) / 1e6 "
    "FROM {table} WHERE server_id = @@server_id"
)


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return None


Connect = Callable[..., Any]


Clock = Callable[[], float]


class Prober:
    """The monitoring connection of one datasource, used by one worker at a time."""

    def __init__(
        self,
        ds: DataSource,
        service: Service,
        credentials: Credentials,
        connect: Connect,
        clock: Clock,
    ) -> None:
        self.ds = ds
        self.service = service
        self.credentials = credentials
        self._connect = connect
        self._clock = clock
        self._conn: Any = None
        self._hb_conn: Any = None
        self._heartbeat_ok = service.heartbeat.enabled
        #: This process holds the cluster's heartbeat lock on ``_hb_conn``.
        self.writer = False
        #: The connection id of the stalled writer last reported.
        self._stalled_holder: object = None

    def _dial(self, **kwargs: Any) -> Any:
        with tls_section():  # a fork meanwhile waits for it (see sqlrouter._forksafe)
            return self._connect(**kwargs)

    def _drop(self, attr: str) -> None:
        """Close the connection held in ``attr`` and let it go, its TLS objects freed
        in the section (see :meth:`_dial`): no other reference to it is left."""
        with tls_section():
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            del conn

    def _open(self) -> Any:
        timeout = self.service.probe_timeout
        return self._dial(
            host=self.ds.host,
            port=self.ds.port,
            user=self.credentials.user,
            password=self.credentials.password,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
            client_flag=CLIENT.MULTI_STATEMENTS,
            program_name="sqlrouter-monitor",
        )

    def _close_probe(self) -> None:
        self._drop("_conn")

    def close(self) -> None:
        self.writer = False  # the lock lived on the heartbeat connection
        self._drop("_conn")
        self._drop("_hb_conn")

    def forget(self) -> None:
        """In a forked child: drop the connections without a word to the server (they
        are the parent's: only this process's copies of the sockets are closed).  The
        writer's lock is the parent's too."""
        self.writer = False
        for attr in ("_conn", "_hb_conn"):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                abandon_after_fork(conn, "a monitoring connection of the parent process")

    def probe(self) -> Observation:
        try:
            if self._conn is None:
                self._conn = self._open()
            return self._query()
        except pymysql.err.MySQLError as exc:
            self._close_probe()
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            return Observation(
                self.ds.name,
                self._clock(),
                reachable=False,
                error=describe_error(exc, self.credentials.user),
                error_code=code,
            )
        except OSError as exc:
            self._close_probe()
            return Observation(self.ds.name, self._clock(), reachable=False, error=str(exc))

    def _query(self) -> Observation:
        hb = self.service.heartbeat.table
        heartbeat = f"(SELECT MAX(ts) FROM {hb})" if self._heartbeat_ok else "NULL"
        sql = (
            "SELECT @@server_id, @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, "
            f"NOW(6), {heartbeat}, @@global.session_track_system_variables; "
            "SHOW SLAVE STATUS"
        )
        with self._conn.cursor() as cur:
            try:
                cur.execute(sql)
            except pymysql.err.MySQLError as exc:
                if self._heartbeat_ok and exc.args and exc.args[0] in _NO_HEARTBEAT_ERRNOS:
                    logger.warning(
                        "service %r: %s: heartbeat table %s unusable (%s); measuring lag "
                        "with Seconds_Behind_Master",
                        self.service.name,
                        self.ds.name,
                        hb,
                        exc.args[-1],
                    )
                    self._heartbeat_ok = False
                    return self._query()
                raise
            server_id, read_only, binlog_pos, slave_pos, now, beat, tracked = cur.fetchone()
            cur.nextset()
            slave = cur.fetchone()
            cols = [d[0] for d in cur.description] if cur.description else []
        observed_at = self._clock()
        base = Observation(
            name=self.ds.name,
            observed_at=observed_at,
            reachable=True,
            server_id=int(server_id),
            read_only=bool(read_only),
            gtid_binlog_pos=binlog_pos or "",
            gtid_slave_pos=slave_pos or "",
            now=_epoch(now),
            heartbeat=_epoch(beat),
            tracks_last_gtid="last_gtid" in str(tracked or "").split(","),
        )
        if slave is None:
            return base
        st = dict(zip(cols, slave, strict=False))
        sbm = st.get("Seconds_Behind_Master")
        master_id = st.get("Master_Server_Id")
        master_port = st.get("Master_Port")
        error = st.get("Last_IO_Error") or st.get("Last_SQL_Error") or None
        return replace(
            base,
            replicating=True,
            master_server_id=None if master_id is None else int(master_id),
            master_host=str(st.get("Master_Host") or ""),
            master_port=None if master_port is None else int(master_port),
            io_running=st.get("Slave_IO_Running") == "Yes",
            sql_running=st.get("Slave_SQL_Running") == "Yes",
            seconds_behind_master=None if sbm is None else int(sbm),
            error=str(error) if error else None,
        )

    @property
    def has_heartbeat_connection(self) -> bool:
        return self._hb_conn is not None

    def close_heartbeat(self) -> None:
        """Close the heartbeat connection (and so give up the writer's lock on it)."""
        if self.writer:
            logger.info(
                "service %r: %s: this process no longer writes the heartbeat",
                self.service.name,
                self.ds.name,
            )
        self.writer = False
        self._drop("_hb_conn")

    def write_heartbeat(self, stale_after: float) -> bool:
        """Write the heartbeat row if this process is the cluster's heartbeat writer.

        One writer per cluster, whatever the number of processes and hosts: the writer
        holds ``GET_LOCK(heartbeat_lock(table), 0)`` on its heartbeat connection to the
        master; every other monitor's attempt returns 0 and writes nothing (``GET_LOCK``
        is not binlogged, in any format).  The server frees the lock when the writer's
        connection ends (the process died or exited): the next monitor round of another
        process takes it.  A writer that holds it but has not written for
        ``stale_after`` seconds (a stopped process) has its connection ended
        (``KILL CONNECTION``, allowed on the account's own sessions) so that the next
        round of another process takes over.

        The write runs on a connection of its own: it may wait for a semi-sync
        acknowledgement, which must not delay the probes.  True when a row was written.
        """
        if self._hb_conn is None:
            self._hb_conn = self._dial(
                host=self.ds.host,
                port=self.ds.port,
                user=self.credentials.user,
                password=self.credentials.password,
                connect_timeout=self.service.probe_timeout,
                read_timeout=max(5.0, self.service.probe_timeout),
                write_timeout=self.service.probe_timeout,
                autocommit=True,
                program_name="sqlrouter-heartbeat",
            )
        table = self.service.heartbeat.table
        lock = heartbeat_lock(table)
        try:
            with self._hb_conn.cursor() as cur:
                if not self.writer:
                    cur.execute("SELECT GET_LOCK(%s, 0)", (lock,))
                    row = cur.fetchone()
                    if row is None or row[0] != 1:
                        self._end_stalled_writer(cur, lock, table, stale_after)
                        return False
                    self.writer = True
                    logger.info(
                        "service %r: this process writes the heartbeat on %s",
                        self.service.name,
                        self.ds.name,
                    )
                written = cur.execute(HEARTBEAT_SQL.format(table=table))
        except BaseException:
            self.close_heartbeat()
            raise
        if not written:
            logger.debug(
                "service %r: %s: heartbeat not written: the server is read-only or its "
                "replication SQL thread runs",
                self.service.name,
                self.ds.name,
            )
        return bool(written)

    def _end_stalled_writer(self, cur: Any, lock: str, table: str, stale_after: float) -> None:
        """Another connection holds the writer's lock: end it if its heartbeat is older
        than ``stale_after`` seconds (see :meth:`write_heartbeat`)."""
        cur.execute(_WRITER_SQL.format(table=table), (lock,))
        holder, age = cur.fetchone()
        if holder is None or age is None or float(age) <= stale_after:
            return
        # Each round of each publisher finds it until it is gone: say it once per holder.
        first = holder != self._stalled_holder
        self._stalled_holder = holder
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "service %r: %s: the heartbeat writer (connection %s) holds %r but its last "
            "heartbeat is %.1fs old: ending its connection so that another process "
            "takes over",
            self.service.name,
            self.ds.name,
            holder,
            lock,
            float(age),
        )
        try:
            cur.execute(f"KILL CONNECTION {int(holder)}")
        except pymysql.err.MySQLError as exc:
            gone = bool(exc.args) and exc.args[0] == _ER_NO_SUCH_THREAD
            logger.log(
                logging.WARNING if first and not gone else logging.DEBUG,
                "service %r: %s: cannot end the stalled heartbeat writer's connection: "
                "%s; lag is measured from its last heartbeat until it resumes or exits",
                self.service.name,
                self.ds.name,
                describe_error(exc),
            )


def describe_error(exc: BaseException, user: str | None = None) -> str:
    """An error as a short line, without credentials (PyMySQL never includes them).

    A privilege the monitor's account lacks is named with the grant that gives it.
    """
    args: tuple[object, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"({args[0]}) {args[1]}"
        if args[0] in PRIVILEGE_ERRNOS:
            who = f"'{user}'@'<host>'" if user else "the monitor's account"
            return (
                f"the monitor's account lacks a privilege: {text}; the probe runs SHOW "
                f"SLAVE STATUS: GRANT SLAVE MONITOR ON *.* TO {who} (REPLICATION CLIENT "
                "before MariaDB 10.5.9 and on MySQL)"
            )
        return text
    return str(exc) or type(exc).__name__
