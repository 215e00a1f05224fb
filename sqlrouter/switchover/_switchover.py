"""Topology operations on the real servers: switchover (planned) and failover (master dead).

Both connect to every datasource of a :class:`~sqlrouter.topology.Service` with its
administrative credentials (``[services.NAME.admin]``), inspect what each server really
is, build a :class:`Plan`, then (unless ``dry_run``) run it step by step, reporting each
:class:`Step` as it ends.  Nothing here tells running applications anything: roles are
observed, not configured, so every process's monitor sees the new master within one
monitor interval.

:func:`switchover` (the master is alive)::

    old master   SET GLOBAL read_only=1           application writes stop; waits (bounded)
                                                  for statements and commits in progress
    candidate    MASTER_GTID_WAIT(old master's @@gtid_binlog_pos)
    candidate    STOP SLAVE; semi-sync master on
    old master   semi-sync master off; CHANGE MASTER TO candidate,
                 MASTER_USE_GTID=slave_pos, MASTER_DEMOTE_TO_SLAVE=1; START SLAVE
    replicas     STOP SLAVE; CHANGE MASTER TO candidate; START SLAVE
    candidate    SET GLOBAL read_only=0            the point of no return
    candidate    RESET SLAVE ALL; old master: application sessions disconnected
    everyone     verified: one writable master, every replica replicating from it

A failure before the point of no return rolls every step back (the old master is
writable again, nothing else changed); after it, the error says what is left to fix.

:func:`failover` (the master is dead): check that it is dead (refused connections, not
a slow answer), start the stopped SQL threads, then stop every IO thread so that what
the replicas hold stops changing (in that order: MariaDB discards the relay log of a GTID
replica whose two threads are stopped when one starts), let each replica apply its relay
log, choose the replica whose history contains every other replica's position, promote
it and repoint the others to it.  With MariaDB's
semi-synchronous replication (wait point ``AFTER_SYNC``), every commit acknowledged to a
client was received by at least one replica, so the chosen replica has all of them.
When no replica contains every other's position (the histories diverged), failover
refuses, naming the transactions that would be lost, unless ``force=True``.

docs/operations.md describes both procedures, what a cluster without semi-sync can
lose, and how it is reported.  No password ever appears in a plan, a step, a log line
or an error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pymysql

from ..errors import OperationalError
from ..topology import Credentials, DataSource, Service

__all__ = [
    "ER_TOPOLOGY",
    "Plan",
    "Step",
    "TopologyError",
    "failover",
    "plan_failover",
    "plan_switchover",
    "switchover",
]

logger = logging.getLogger("sqlrouter.switchover")

#: Client-side error number of :class:`TopologyError` (see :mod:`sqlrouter.errors`).
ER_TOPOLOGY: Final = 3920
#: Shortest timeout of one connection or short statement to a server.
_MIN_IO_TIMEOUT: Final = 2.0
#: How often the verification looks again.
_POLL: Final = 0.1
#: Pause between two attempts to reach a master believed dead.
_RETRY_PAUSE: Final = 0.2
#: Attempts to reach a master believed dead before failover takes it as dead.
_DEAD_ATTEMPTS: Final = 3
#: ``Slave_SQL_Running_State`` of an SQL thread with nothing left to apply.
_SQL_IDLE: Final = "Slave has read all relay log"
#: Sessions never disconnected from a demoted master.
_SYSTEM_USERS: Final = frozenset({"system user", "event_scheduler", "unauthenticated user"})
_SYSTEM_COMMANDS: Final = frozenset(
    {"Binlog Dump", "Binlog Dump GTID", "Daemon", "Slave_IO", "Slave_SQL", "Slave_worker"}
)


# --------------------------------------------------------------------------- values


class TopologyError(OperationalError):
    """A topology operation was refused, or failed part way.

    ``args`` is ``(ER_TOPOLOGY, message)``; the message names the service, the step,
    the server, the reason, and the state the cluster is left in.  The same are
    attributes, with :attr:`steps` (what ran before the error, rollback included).
    """

    __module__ = "sqlrouter.switchover"

    def __init__(
        self,
        errno: int,
        message: str,
        *,
        service: str = "",
        server: str = "",
        step: str = "",
        reason: str = "",
        state: str = "",
        steps: Sequence[Step] = (),
    ) -> None:
        super().__init__(errno, message)
        self.service = service
        self.server = server
        self.step = step
        self.reason = reason
        self.state = state
        self.steps: tuple[Step, ...] = tuple(steps)


#: What a :class:`Step` reports: a step that ended (``step``), something the operator
#: must know or do (``warning``, ``left out``: a server the operation leaves as it is),
#: or a wait about to begin (``wait``: what it waits for, and for how long at most).
StepKind = Literal["step", "warning", "left out", "wait"]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an operation as it ended, or a warning or wait note (``kind``)."""

    name: str
    ok: bool
    detail: str
    seconds: float
    kind: StepKind = "step"

    def __str__(self) -> str:
        if self.kind == "wait":
            return f"... {self.detail}"
        if self.kind != "step":
            return f"{self.kind.upper()}: {self.detail}"
        mark = "ok" if self.ok else "FAILED"
        return f"[{mark}] {self.name} ({self.seconds:.3f}s): {self.detail}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What an operation will do, computed from the servers as they are now."""

    service: str
    kind: Literal["switchover", "failover"]
    old_master: str | None
    new_master: str
    #: The steps in order, each ``"NAME: what it does"``.
    steps: tuple[str, ...]
    warnings: tuple[str, ...]
    #: Replicas that will be repointed to the new master.
    repointed: tuple[str, ...] = ()
    #: Datasources left as they are, each ``"NAME: why"``.
    left_out: tuple[str, ...] = ()
    #: ``(datasource, GTID position)`` of each server inspected, for the operator.
    positions: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        old = self.old_master or "(none)"
        text = f"{self.kind} of service {self.service!r}: {old} -> {self.new_master}"
        if self.repointed:
            text += f"; repoint {', '.join(self.repointed)}"
        if self.left_out:
            text += f"; {len(self.left_out)} left out"
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s)"
        return text

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.positions:
            lines.append(
                "positions: " + ", ".join(f"{n} {p or '(empty)'}" for n, p in self.positions)
            )
        lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        lines += [f"  left out: {s}" for s in self.left_out]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- GTIDs

_GTID_RE: Final = re.compile(r"\s*(\d{1,10})-(\d{1,10})-(\d{1,20})\s*\Z", re.ASCII)

Gtid = tuple[int, int, int]
#: What a server's binlog and slave state contain: ``{(domain, server_id): seq}``, the
#: highest sequence number seen from each server in each domain.
History = Mapping[tuple[int, int], int]


def _parse_gtids(text: str | None) -> list[Gtid]:
    """``"0-1-5,0-2-9"`` as ``[(0, 1, 5), (0, 2, 9)]``; ValueError names a bad part."""
    if text is None or not text.strip():
        return []
    out = []
    for part in text.split(","):
        m = _GTID_RE.match(part)
        if m is None:
            raise ValueError(f"{part.strip()!r} is not a GTID (domain-server_id-sequence)")
        out.append((int(m[1]), int(m[2]), int(m[3])))
    return out


def _gtid_text(gtids: Iterable[Gtid]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, s, n in sorted(gtids))


def _history(*lists: str | None) -> dict[tuple[int, int], int]:
    """The merged history of GTID lists (``@@gtid_binlog_state``, ``@@gtid_slave_pos``)."""
    hist: dict[tuple[int, int], int] = {}
    for text in lists:
        for d, s, n in _parse_gtids(text):
            if hist.get((d, s), -1) < n:
                hist[(d, s)] = n
    return hist


def _tail(*lists: str | None) -> dict[int, Gtid]:
    """The last GTID of each domain (highest sequence number) in GTID lists."""
    tail: dict[int, Gtid] = {}
    for text in lists:
        for g in _parse_gtids(text):
            cur = tail.get(g[0])
            if cur is None or (g[2], g[1]) > (cur[2], cur[1]):
                tail[g[0]] = g
    return tail


def _missing(history: History, gtids: Iterable[Gtid]) -> list[Gtid]:
    """The GTIDs of ``gtids`` that ``history`` does not contain.

    A history contains ``d-s-n`` when it holds a transaction of server ``s`` in domain
    ``d`` with a sequence number of at least ``n``: the check MariaDB's GTID strict mode
    makes when a replica connects at position ``d-s-n``.
    """
    return [(d, s, n) for d, s, n in gtids if history.get((d, s), -1) < n]


# --------------------------------------------------------------------------- failover choice


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica considered by :func:`choose_candidate` (pure data, for unit tests)."""

    name: str
    #: Transactions applied: ``@@gtid_binlog_state`` merged with ``@@gtid_slave_pos``.
    history: History
    #: Its position: the last GTID of each domain it applied or received.
    tail: Mapping[int, Gtid]
    #: GTIDs received but not applied yet (``Gtid_IO_Pos``), if it can apply them.
    pending: tuple[Gtid, ...] = ()
    #: Can it become the master (binlog with log_slave_updates, not delayed, SQL ok)?
    eligible: bool = True
    why_not: str = ""

    @property
    def projected(self) -> dict[tuple[int, int], int]:
        """Its history once the pending GTIDs are applied."""
        hist = dict(self.history)
        for d, s, n in self.pending:
            if hist.get((d, s), -1) < n:
                hist[(d, s)] = n
        return hist


@dataclass(frozen=True, slots=True)
class Choice:
    """The outcome of :func:`choose_candidate`."""

    chosen: str | None
    #: True when the chosen replica contains every other replica's position.
    covers_all: bool
    #: Replicas whose position the chosen one lacks, with the GTIDs it lacks.
    diverged: Mapping[str, tuple[Gtid, ...]]
    reason: str


def choose_candidate(candidates: Sequence[Candidate], old_master_id: int | None) -> Choice:
    """Pick the replica to promote: the one whose history contains every other's position.

    Among those, the one with the most transactions of the old master, then the
    furthest position, then the first in the service.  When none contains every other's
    position, the histories diverged: ``covers_all`` is False and ``chosen`` is the best
    by the same order (what ``force`` promotes), with what each other replica would lose.
    """
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        why = "; ".join(f"{c.name}: {c.why_not}" for c in candidates) or "no replica reachable"
        return Choice(None, False, {}, f"no replica can be promoted ({why})")

    def lost(c: Candidate) -> dict[str, tuple[Gtid, ...]]:
        mine = c.projected
        out: dict[str, tuple[Gtid, ...]] = {}
        for other in candidates:
            if other.name == c.name:
                continue
            wanted = list(other.tail.values()) + list(other.pending)
            gone = _missing(mine, wanted)
            if gone:
                out[other.name] = tuple(sorted(set(gone)))
        return out

    def rank(item: tuple[int, Candidate]) -> tuple[int, int, int]:
        index, c = item
        hist = c.projected
        from_master = sum(n for (_, s), n in hist.items() if s == old_master_id)
        top: dict[int, int] = {}
        for (d, _), n in hist.items():
            top[d] = max(top.get(d, 0), n)
        return (from_master, sum(top.values()), -index)

    ordered = sorted(enumerate(eligible), key=rank, reverse=True)
    for _, c in ordered:
        if not lost(c):
            others = [o.name for o in candidates if o.name != c.name]
            if others:
                reason = f"{c.name} has every transaction of {', '.join(others)}"
            else:
                reason = f"{c.name} is the only replica"
            return Choice(c.name, True, {}, reason)
    best = ordered[0][1]
    detail = "; ".join(
        f"{c.name} lacks " + ", ".join(f"{_gtid_text(g)} (on {n})" for n, g in lost(c).items())
        for _, c in ordered
    )
    return Choice(
        best.name,
        False,
        lost(best),
        f"the replicas diverged: no replica has every other replica's transactions ({detail})",
    )


# --------------------------------------------------------------------------- servers


def _describe(exc: BaseException) -> str:
    args: tuple[object, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


class _Failure(Exception):
    """A step could not be done; the message says why (no password in it)."""


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

    @property
    def name(self) -> str:
        return self.ds.name

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
    def io_state(self) -> str:
        return self.slave_str("Slave_IO_Running")

    @property
    def io_running(self) -> bool:
        return self.io_state == "Yes"

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
        text = f"replicates from {host}:{port} (IO {self.io_state}, SQL "
        text += "Yes" if self.sql_running else self.slave_str("Slave_SQL_Running")
        text += ")"
        errors = [e for e in (self.io_error, self.sql_error) if e]
        if errors:
            text += ": " + "; ".join(errors)
        return text


class _Server:
    """The administrative connection to one datasource."""

    def __init__(self, ds: DataSource, credentials: Credentials, io_timeout: float) -> None:
        self.ds = ds
        self._credentials = credentials
        self.io_timeout = io_timeout
        self._conn: pymysql.connections.Connection[Any] | None = None

    def _open(self, read_timeout: float) -> pymysql.connections.Connection[Any]:
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
        """Run a short statement (bounded by the I/O timeout) and return its rows."""
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

    def __init__(self, service: Service, credentials: Credentials, timeout: float) -> None:
        self.service = service
        io = min(timeout, max(_MIN_IO_TIMEOUT, 2 * service.probe_timeout))
        self.io_timeout = io
        self._servers = {ds.name: _Server(ds, credentials, io) for ds in service.datasources}

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


# --------------------------------------------------------------------------- running steps


class _StepFailed(Exception):
    def __init__(self, name: str, server: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.server = server
        self.reason = reason


class _Run:
    """Runs and records the steps of one operation, reporting each as it ends."""

    def __init__(
        self,
        service: Service,
        kind: str,
        report: Callable[[Step], None] | None,
        secrets: Sequence[str],
    ) -> None:
        self.service = service
        self.kind = kind
        self.steps: list[Step] = []
        #: ``(step, server, reason)`` of each step that failed.
        self.failures: list[tuple[str, str, str]] = []
        self._report = report
        self._secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        """``text`` without any password (a server may echo a statement in an error)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def add(self, step: Step) -> None:
        step = Step(step.name, step.ok, self.scrub(step.detail), step.seconds, step.kind)
        self.steps.append(step)
        log = logger.info if step.ok else logger.warning
        log("service %r: %s: %s", self.service.name, self.kind, step)
        if self._report is not None:
            try:
                self._report(step)
            except Exception:  # a broken reporter must not stop an operation half way
                logger.exception("service %r: step reporter failed", self.service.name)

    def note(self, name: str, detail: str, kind: StepKind = "wait") -> None:
        """Report a warning, a server left out, or a wait about to begin."""
        self.add(Step(name, True, detail, 0.0, kind))

    def step(
        self, name: str, server: str, action: Callable[[], str], *, fatal: bool = True
    ) -> bool:
        started = time.monotonic()
        try:
            detail = action()
        except (_Failure, pymysql.err.MySQLError, OSError) as exc:
            reason = self.scrub(_describe(exc))
            self.failures.append((name, server, reason))
            self.add(Step(name, False, f"{server}: {reason}", time.monotonic() - started))
            if fatal:
                raise _StepFailed(name, server, reason) from None
            return False
        self.add(Step(name, True, detail, time.monotonic() - started))
        return True

    def error(self, verb: str, step: str, server: str, reason: str, state: str) -> TopologyError:
        message = self.scrub(
            f"service {self.service.name!r}: {self.kind} {verb} at step {step!r} "
            f"on {server}: {reason}; {state}"
        )
        return TopologyError(
            ER_TOPOLOGY,
            message,
            service=self.service.name,
            server=server,
            step=step,
            reason=self.scrub(reason),
            state=self.scrub(state),
            steps=self.steps,
        )


@dataclass(slots=True)
class _Undo:
    """Actions that put back what the steps so far changed, run in reverse order."""

    run: _Run
    actions: list[tuple[str, str, Callable[[], str], str]] = field(default_factory=list)

    def push(self, name: str, server: str, action: Callable[[], str], if_failed: str) -> None:
        self.actions.append((name, server, action, if_failed))

    def clear(self) -> None:
        self.actions.clear()

    def rollback(self, done: str) -> str:
        """Run every undo action; the state the cluster is left in, as a sentence."""
        problems = []
        for name, server, action, if_failed in reversed(self.actions):
            if not self.run.step(f"rollback: {name}", server, action, fatal=False):
                problems.append(if_failed)
        self.actions.clear()
        if not problems:
            return done
        return "rolled back, except: " + "; ".join(problems)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


def _check_seconds(name: str, value: float, *, zero_ok: bool = False) -> None:
    expected = f"a number of seconds {'>=' if zero_ok else '>'} 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_timeout(timeout: float) -> None:
    _check_seconds("timeout", timeout)


def _refuse(service: Service, kind: str, step: str, server: str, reason: str) -> TopologyError:
    return TopologyError(
        ER_TOPOLOGY,
        f"service {service.name!r}: {kind} refused at step {step!r} on {server}: {reason}; "
        "nothing was changed",
        service=service.name,
        server=server,
        step=step,
        reason=reason,
        state="nothing was changed",
    )


def _admin(service: Service, kind: str) -> Credentials:
    creds = service.admin_credentials
    if creds is None:
        raise _refuse(
            service,
            kind,
            "plan",
            "-",
            f"the service has no administrative credentials: add a "
            f"[services.{service.name}.admin] table (user, password) to the registry "
            f"{service.source}",
        )
    return creds


def _secrets(service: Service, replication: Credentials | None) -> list[str]:
    creds = [service.admin_credentials, service.replication_credentials, replication]
    return [c.password for c in creds if c is not None and c.password]


def _ds_of_address(service: Service, host: str, port: int) -> DataSource | None:
    """The datasource a replica's ``Master_Host:Master_Port`` names."""
    exact = [
        ds for ds in service.datasources if ds.host.lower() == host.lower() and ds.port == port
    ]
    if exact:
        return exact[0]
    same_port = [ds for ds in service.datasources if ds.port == port]
    return same_port[0] if len(same_port) == 1 else None


def _master_of(service: Service, node: _Node, nodes: Mapping[str, _Node]) -> DataSource | None:
    """The datasource replica ``node`` replicates from, by server id, else by address."""
    if node.master_id:
        for other in nodes.values():
            if other.reachable and other.server_id == node.master_id and other is not node:
                return other.ds
    return _ds_of_address(service, *node.master_address)


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


# --------------------------------------------------------------------------- switchover


@dataclass(frozen=True, slots=True)
class _SwitchoverPlan:
    plan: Plan
    nodes: Mapping[str, _Node]
    old: _Node
    cand: _Node
    others: tuple[_Node, ...]
    semisync: bool
    replication: Credentials


def plan_switchover(
    service: Service,
    to: str,
    *,
    timeout: float = 30.0,
    replication: Credentials | None = None,
    max_lag: float = 5.0,
) -> Plan:
    """Inspect the servers and plan a switchover to ``to``; changes nothing.

    Raises :class:`TopologyError` explaining why when it cannot be done: ``to`` is not
    a datasource, is unreachable, is not a replica of the current master, has a stopped
    replication thread, lags more than ``max_lag`` seconds or is delayed, has no binlog;
    the service has no single master, or no administrative or replication credentials.
    """
    _check_timeout(timeout)
    _check_seconds("max_lag", max_lag, zero_ok=True)
    creds = _admin(service, f"switchover to {to!r}")
    with _Servers(service, creds, timeout) as servers:
        return _plan_switchover(service, to, servers, replication, max_lag).plan


def _plan_switchover(
    service: Service,
    to: str,
    servers: _Servers,
    replication: Credentials | None,
    max_lag: float,
) -> _SwitchoverPlan:
    kind = f"switchover to {to!r}"
    names = [ds.name for ds in service.datasources]
    if to not in names:
        raise _refuse(
            service, kind, "plan", to, f"no datasource {to!r} (datasources: {', '.join(names)})"
        )
    nodes = servers.inspect()
    cand = nodes[to]

    def refuse(server: str, reason: str) -> TopologyError:
        return _refuse(service, kind, "plan", server, reason)

    if not cand.reachable:
        raise refuse(to, f"{to} ({cand.ds.address}) is unreachable: {cand.error}")
    writable = [n for n in nodes.values() if n.reachable and not n.read_only]
    if len(writable) > 1:
        raise refuse(
            ", ".join(n.name for n in writable),
            "more than one server is writable (split brain): "
            f"{', '.join(n.name for n in writable)}; make all but one read-only first",
        )
    if not cand.is_replica:
        if not cand.read_only:
            raise refuse(to, f"{to} is already the master (writable, not a replica)")
        raise refuse(to, f"{to} is not a replica (read-only, no replication configured)")
    old_ds = _master_of(service, cand, nodes)
    if old_ds is None:
        host, port = cand.master_address
        raise refuse(
            to,
            f"{to} replicates from {host}:{port}, which is not a datasource of the service",
        )
    old = nodes[old_ds.name]
    if not old.reachable:
        raise refuse(
            old.name,
            f"the master {old.name} ({old.ds.address}) is unreachable ({old.error}): "
            f"use failover, not switchover",
        )
    if writable and writable[0].name != old.name:
        raise refuse(
            to,
            f"{to} replicates from {old.name}, but the writable master is {writable[0].name}",
        )
    if old.is_replica:
        raise refuse(
            old.name,
            f"{old.name}, the master of {to}, is itself a replica "
            f"({old.describe_replication()}): chained topologies are not supported",
        )
    if cand.slave_str("Using_Gtid").lower() not in ("slave_pos", "current_pos"):
        raise refuse(
            to,
            f"{to} does not replicate with GTIDs (Using_Gtid={cand.slave_str('Using_Gtid')}); "
            "switch it with CHANGE MASTER TO MASTER_USE_GTID=slave_pos",
        )
    if not (cand.io_running and cand.sql_running):
        raise refuse(to, f"{to}'s replication is not running: {cand.describe_replication()}")
    if cand.master_id != old.server_id:
        raise refuse(
            to, f"{to} is connected to server id {cand.master_id}, not {old.name} ({old.server_id})"
        )
    if not (cand.log_bin and cand.log_slave_updates):
        raise refuse(
            to,
            f"{to} has no binlog with log_slave_updates: the other replicas could not "
            "continue from it; set log_bin and log_slave_updates",
        )
    if cand.sql_delay > 0:
        raise refuse(
            to,
            f"{to} is a delayed replica (MASTER_DELAY={cand.sql_delay}s): it would take that "
            f"long to catch up; run CHANGE MASTER TO MASTER_DELAY=0 on it first",
        )
    lag = cand.slave_int("Seconds_Behind_Master")
    beat_old = old.heartbeats.get(old.server_id)
    beat_cand = cand.heartbeats.get(old.server_id)
    if beat_old is not None and beat_cand is not None:
        lag = max(lag or 0, round(beat_old - beat_cand))
    if lag is None or lag > max_lag:
        shown = "unknown" if lag is None else f"{lag}s"
        raise refuse(
            to,
            f"{to} lags behind {old.name} ({shown}, more than max_lag {max_lag:g}s): "
            "writes would stop while it catches up; wait until it has caught up",
        )
    repl = replication or service.replication_credentials
    if repl is None:
        raise refuse(
            old.name,
            f"{old.name} must become a replica of {to}, which needs the replication "
            f"account: add a [services.{service.name}.replication] table (user, password) "
            "to the registry, or pass replication=Credentials(...)",
        )
    lacking = _missing(cand.history, old.tail.values())
    warnings: list[str] = []
    others: list[_Node] = []
    left_out: list[str] = []
    for node in nodes.values():
        if node.name in (old.name, to):
            continue
        if not node.reachable:
            left_out.append(
                f"{node.name}: unreachable ({node.error}), so not repointed; when it is back "
                f"it still replicates from {old.name}, then a replica of {to}: run on it "
                f"{_repoint_sql(cand.ds)}"
            )
        elif not node.is_replica:
            left_out.append(f"{node.name}: not a replica; left as it is")
        elif _master_of(service, node, nodes) != old.ds:
            left_out.append(
                f"{node.name}: {node.describe_replication()}, not from {old.name}; left as "
                f"it is (to make it a replica of {to}: {_repoint_sql(cand.ds)})"
            )
        else:
            others.append(node)
    semisync = bool(old.semi_master)
    if semisync and not old.semi_master_on:
        warnings.append(
            f"semi-sync is enabled on {old.name} but off right now (it timed out waiting "
            "for a replica and fell back to asynchronous replication)"
        )
    if old.semi_master is None:
        warnings.append(f"{old.name} has no semi-synchronous replication support")
    if lacking and not cand.sql_running:
        warnings.append(f"{to} lacks {_gtid_text(lacking)} and its SQL thread is stopped")
    if lag:
        warnings.append(f"{to} lags {lag}s behind {old.name}: writes stop while it catches up")
    for node in (old, *others):
        if node.semi_slave is False and semisync:
            warnings.append(
                f"{node.name} has rpl_semi_sync_slave_enabled=OFF: it will not acknowledge "
                f"{to}'s commits"
            )
    c, o = cand.ds, old.ds
    steps = [
        f"read-only {o.name}: SET GLOBAL read_only=1 on {o.name}; application writes stop "
        "(statements and commits in progress finish first, waiting at most the timeout)",
        f"catch up {c.name}: MASTER_GTID_WAIT on {c.name} until it has applied "
        f"{o.name}'s @@gtid_binlog_pos (now {old.binlog_pos or 'empty'})",
        f"stop replication {c.name}: STOP SLAVE on {c.name}",
    ]
    if semisync:
        steps.append(f"semi-sync {c.name}: SET GLOBAL rpl_semi_sync_master_enabled=1 on {c.name}")
    demote = (
        "MASTER_DEMOTE_TO_SLAVE=1"
        if old.demote_supported
        else ("after SET GLOBAL gtid_slave_pos=@@gtid_binlog_pos")
    )
    steps.append(
        f"demote {o.name}: "
        + ("SET GLOBAL rpl_semi_sync_master_enabled=0; " if semisync else "")
        + f"CHANGE MASTER TO {c.name} ({c.address}) MASTER_USE_GTID=slave_pos, {demote}, "
        f"as {repl.user}; START SLAVE"
    )
    steps += [
        f"repoint {n.name}: STOP SLAVE; CHANGE MASTER TO {c.name} ({c.address}) "
        "MASTER_USE_GTID=slave_pos; START SLAVE"
        for n in others
    ]
    steps += [
        f"writable {c.name}: SET GLOBAL read_only=0 on {c.name}: it is the master; every "
        "process's monitor sees it within one monitor interval",
        f"reset {c.name}: RESET SLAVE ALL on {c.name}",
        f"disconnect clients {o.name}: KILL the application sessions left on {o.name} "
        f"(they reconnect to {c.name})",
        f"verify: {c.name} writable, {', '.join([o.name, *[n.name for n in others]])} "
        f"read-only and replicating from {c.name}"
        + (f", semi-sync acknowledged on {c.name}" if semisync else ""),
    ]
    plan = Plan(
        service=service.name,
        kind="switchover",
        old_master=o.name,
        new_master=c.name,
        steps=tuple(steps),
        warnings=tuple(warnings),
        repointed=tuple([o.name, *[n.name for n in others]]),
        left_out=tuple(left_out),
        positions=_positions(nodes),
    )
    return _SwitchoverPlan(plan, nodes, old, cand, tuple(others), semisync, repl)


def switchover(
    service: Service,
    to: str,
    *,
    dry_run: bool = False,
    timeout: float = 30.0,
    report: Callable[[Step], None] | None = None,
    replication: Credentials | None = None,
    max_lag: float = 5.0,
    disconnect_clients: bool = True,
) -> list[Step]:
    """Make datasource ``to`` the master of ``service``, the current master alive.

    Writes stop from the moment the old master is read-only until ``to`` is writable:
    typically well under a second, at most ``timeout`` (the catch-up of ``to`` and the
    wait for statements in progress on the old master count against it).  A failure
    before ``to`` is writable rolls everything back.  ``replication`` is the account the
    old master replicates with (default: the service's ``replication_credentials``).
    ``disconnect_clients`` kills the application sessions left on the old master once
    the new one is writable, so that pools reconnect at once.

    Returns the steps (``dry_run``: the plan as steps, nothing changed).  Raises
    :class:`TopologyError` when refused or when a step failed, saying the state left.
    """
    _check_timeout(timeout)
    _check_seconds("max_lag", max_lag, zero_ok=True)
    kind = "switchover"
    creds = _admin(service, f"{kind} to {to!r}")
    run = _Run(service, f"{kind} to {to}", report, _secrets(service, replication))
    started = time.monotonic()
    with _Servers(service, creds, timeout) as servers:
        _note_inspection(run, service, servers)
        sp = _plan_switchover(service, to, servers, replication, max_lag)
        run.add(Step("plan", True, sp.plan.summary(), time.monotonic() - started))
        _report_plan_notes(run, sp.plan)
        if dry_run:
            _report_dry_run(run, sp.plan)
            return run.steps
        _run_switchover(sp, servers, run, timeout, disconnect_clients)
    return run.steps


def _note_inspection(run: _Run, service: Service, servers: _Servers) -> None:
    names = ", ".join(ds.name for ds in service.datasources)
    run.note(
        "plan",
        f"inspecting {names} (in parallel; a server that does not answer within "
        f"{servers.io_timeout:g}s counts as unreachable)",
    )


def _report_plan_notes(run: _Run, plan: Plan) -> None:
    """What the operator must know before anything changes, in every run: the servers
    left as they are (and how to repoint them) and the warnings."""
    for text in plan.left_out:
        run.note("left out", text, "left out")
    for text in plan.warnings:
        run.note("warning", text, "warning")


def _report_dry_run(run: _Run, plan: Plan) -> None:
    for text in plan.steps:
        name, _, what = text.partition(": ")
        run.add(Step(f"would {name}", True, what, 0.0))
    run.add(Step("dry run", True, "nothing was changed", 0.0))


def _run_switchover(
    sp: _SwitchoverPlan, servers: _Servers, run: _Run, timeout: float, disconnect: bool
) -> None:
    old, cand = sp.old, sp.cand
    o, c = old.name, cand.name
    so, sc = servers[o], servers[c]
    deadline = _Deadline(timeout)
    undo = _Undo(run)
    svc = run.service.name

    refused_since: list[float] = []

    def read_only() -> str:
        secs = max(1, math.ceil(deadline.remaining()))
        began = time.monotonic()
        refused_since.append(began)
        try:
            so.long(
                [
                    ("SET SESSION lock_wait_timeout = %s", [secs]),
                    ("SET GLOBAL read_only = 1", None),
                ],
                secs,
            )
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1205:
                raise _Failure(
                    f"{o} could not be made read-only within {secs}s: a long statement, "
                    "LOCK TABLES or FLUSH TABLES WITH READ LOCK holds the lock"
                ) from None
            raise
        return (
            f"{o} is read-only: application writes fail from now on (waited "
            f"{time.monotonic() - began:.3f}s for statements and commits in progress)"
        )

    def catch_up() -> str:
        rounds = 0
        while True:
            target = str(so.value("SELECT @@gtid_binlog_pos") or "")
            tail = _tail(target)
            current = _tail(str(sc.value("SELECT @@gtid_current_pos") or ""))
            behind = [g for d, g in tail.items() if current.get(d, (d, 0, -1))[2] < g[2]]
            if behind:
                left = deadline.remaining()
                run.note(
                    f"catch up {c}",
                    f"waiting up to {left:.1f}s for {c} to apply {o}'s last transactions "
                    f"(up to {_gtid_text(behind)})",
                )
                rows = sc.long(
                    [("SELECT MASTER_GTID_WAIT(%s, %s) AS r", [_gtid_text(behind), left])], left
                )
                result = rows[0]["r"] if rows else None
                if result != 0:
                    now = sc.value("SELECT @@gtid_current_pos")
                    raise _Failure(
                        f"{c} did not apply {o}'s last transactions ({target}) within "
                        f"{deadline.seconds:g}s: it is at {now or 'empty'}"
                    )
            after = str(so.value("SELECT @@gtid_binlog_pos") or "")
            if after != target:
                rounds += 1
                if deadline.expired:
                    raise _Failure(f"{o} keeps writing while read-only (now at {after})")
                continue  # a user with READ ONLY ADMIN wrote: wait for that too
            node = sc.inspect(None)
            lacking = _missing(node.history, tail.values())
            if lacking:
                raise _Failure(
                    f"{c} reached {o}'s sequence numbers but not its transactions "
                    f"({_gtid_text(lacking)} are missing): the histories diverged"
                )
            extra = f" ({rounds} writes by privileged users after read-only)" if rounds else ""
            return f"{c} has applied everything {o} wrote, up to {target or 'empty'}{extra}"

    def stop_candidate() -> str:
        sc.long([("STOP SLAVE", None)], deadline.remaining() or 1.0)
        return f"{c} stopped replicating from {o}"

    def semisync_on() -> str:
        sc.run("SET GLOBAL rpl_semi_sync_master_enabled = 1")
        return f"{c} waits for a replica's acknowledgement of each commit (AFTER_SYNC)"

    def demote() -> str:
        stmts: list[str | tuple[str, Sequence[object]]] = []
        if old.is_replica:
            stmts += ["STOP SLAVE", "RESET SLAVE ALL"]
        if sp.semisync:
            stmts += [
                "SET GLOBAL rpl_semi_sync_master_enabled = 0",
                "SET GLOBAL rpl_semi_sync_slave_enabled = 1",
            ]
        if not old.demote_supported:
            stmts.append("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
        retry = cand.slave_int("Connect_Retry")
        stmts += [
            _change_master(
                cand.ds,
                credentials=sp.replication,
                connect_retry=retry,
                demote=old.demote_supported,
            ),
            "START SLAVE",
        ]
        so.run(*stmts)
        return f"{o} replicates from {c} ({cand.ds.address}) as {sp.replication.user}"

    def writable() -> str:
        sc.run("SET GLOBAL read_only = 0")
        window = time.monotonic() - refused_since[0]
        return f"{c} is writable: it is the master (writes were refused for {window:.3f}s)"

    # -- undo actions ---------------------------------------------------------------
    def undo_read_only() -> str:
        so.run(f"SET GLOBAL read_only = {1 if old.read_only else 0}")
        return f"{o} is writable again" if not old.read_only else f"{o} left read-only"

    def undo_stop_candidate() -> str:
        sc.run("START SLAVE")
        return f"{c} replicates from {o} again"

    def undo_semisync() -> str:
        sc.run(f"SET GLOBAL rpl_semi_sync_master_enabled = {1 if cand.semi_master else 0}")
        return f"{c}: semi-sync master setting restored"

    def undo_demote() -> str:
        stmts = ["STOP SLAVE", "RESET SLAVE ALL"]
        if sp.semisync:
            stmts.append("SET GLOBAL rpl_semi_sync_master_enabled = 1")
            if old.semi_slave is not None:
                stmts.append(
                    f"SET GLOBAL rpl_semi_sync_slave_enabled = {1 if old.semi_slave else 0}"
                )
        so.run(*stmts)
        return f"{o} no longer replicates"

    go_back = f"run `sqlrouter admin switchover {svc} --to {o}` once it is healthy"
    try:
        undo.push(
            f"writable {o}",
            o,
            undo_read_only,
            f"{o} is still read-only and no server is writable: run SET GLOBAL read_only=0 on {o}",
        )
        run.step(f"read-only {o}", o, read_only)
        run.step(f"catch up {c}", c, catch_up)
        undo.push(
            f"restart replication {c}",
            c,
            undo_stop_candidate,
            f"{c} does not replicate: run START SLAVE on {c}",
        )
        run.step(f"stop replication {c}", c, stop_candidate)
        if sp.semisync:
            undo.push(f"semi-sync {c}", c, undo_semisync, f"{c} keeps semi-sync master enabled")
            run.step(f"semi-sync {c}", c, semisync_on)
        undo.push(
            f"undo demote {o}",
            o,
            undo_demote,
            f"{o} still replicates from {c}: run STOP SLAVE; RESET SLAVE ALL on {o}",
        )
        run.step(f"demote {o}", o, demote)
        for node in sp.others:
            undo.push(
                f"repoint {node.name} to {o}",
                node.name,
                _repointing(servers[node.name], old.ds, f"{node.name} replicates from {o} again"),
                f"{node.name} still replicates from {c}: repoint it to {o}",
            )
            run.step(
                f"repoint {node.name}",
                node.name,
                _repointing(
                    servers[node.name],
                    cand.ds,
                    f"{node.name} replicates from {c} ({cand.ds.address})",
                ),
            )
        try:
            run.step(f"writable {c}", c, writable)
        except _StepFailed:
            # The statement may have run even though its answer was lost.
            with contextlib.suppress(pymysql.err.MySQLError, OSError, _Failure):
                if not int(sc.value("SELECT @@read_only")):
                    run.add(Step(f"writable {c}", True, f"{c} is writable after all", 0.0))
                    undo.clear()
            if undo.actions:
                raise
        undo.clear()
    except _StepFailed as failed:
        state = undo.rollback(
            f"rolled back: {o} is the master again and every replica replicates from it, as "
            "before the switchover"
        )
        raise run.error("failed", failed.name, failed.server, failed.reason, state) from None
    except BaseException:
        undo.rollback("rolled back")
        raise

    # The point of no return is behind: report what is left, do not undo.
    run.failures.clear()

    def reset() -> str:
        sc.run("RESET SLAVE ALL")
        return f"{c} has no master"

    run.step(f"reset {c}", c, reset, fatal=False)
    if disconnect:
        run.step(
            f"disconnect clients {o}",
            o,
            lambda: _disconnect_clients(so, run.service, sp.replication),
            fatal=False,
        )
    run.step(
        "verify",
        c,
        lambda: _verify(
            servers, cand, [old, *sp.others], sp.semisync, _Deadline(timeout), note=run.note
        ),
        fatal=False,
    )
    if run.failures:
        step, server, reason = run.failures[0]
        raise run.error(
            "finished with errors",
            step,
            server,
            reason,
            f"{c} is the writable master and {o} is read-only; fix what the failed steps "
            f"say, or {go_back}",
        )


def _disconnect_clients(server: _Server, service: Service, replication: Credentials | None) -> str:
    keep = set(_SYSTEM_USERS)
    for creds in (service.admin_credentials, service.monitor_credentials, replication):
        if creds is not None:
            keep.add(creds.user)
    rows = server.rows(
        "SELECT ID AS id, USER AS user, COMMAND AS command FROM information_schema.PROCESSLIST "
        "WHERE ID <> CONNECTION_ID()"
    )
    killed = 0
    for r in rows:
        if str(r["user"]) in keep or str(r["command"]) in _SYSTEM_COMMANDS:
            continue
        try:
            server.run(("KILL CONNECTION %s", [int(r["id"])]))
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1094:  # the session ended by itself
                continue
            raise
        killed += 1
    return f"{killed} application session(s) on {server.ds.name} disconnected"


def _verify(
    servers: _Servers,
    master: _Node,
    replicas: Sequence[_Node],
    semisync: bool,
    deadline: _Deadline,
    *,
    note: Callable[[str, str], None] | None = None,
) -> str:
    """Wait (bounded) until ``master`` is the only writable server and every replica of
    ``replicas`` replicates from it with both threads running; ``note`` is told once
    what is waited for."""
    names = [master.name, *[r.name for r in replicas]]
    noted = False
    while True:
        nodes = servers.inspect(names)
        problems = []
        m = nodes[master.name]
        if not m.reachable:
            problems.append(f"{m.name} is unreachable: {m.error}")
        else:
            if m.read_only:
                problems.append(f"{m.name} is read-only")
            if m.is_replica:
                problems.append(f"{m.name} still has a master ({m.describe_replication()})")
            if semisync and replicas and not (m.semi_master_on and m.semi_master_clients):
                problems.append(f"{m.name} has no semi-sync replica connected yet")
        for r in replicas:
            n = nodes[r.name]
            if not n.reachable:
                problems.append(f"{n.name} is unreachable: {n.error}")
                continue
            if not n.read_only:
                problems.append(f"{n.name} is writable")
            if not (n.io_running and n.sql_running and n.master_id == m.server_id):
                problems.append(f"{n.name} {n.describe_replication()}")
        if not problems:
            with_semi = ", semi-sync on" if semisync and replicas else ""
            return (
                f"{master.name} is the only writable server; "
                f"{', '.join(r.name for r in replicas) or 'no replica'} replicating from it"
                f"{with_semi}"
            )
        if deadline.expired:
            raise _Failure("; ".join(problems))
        if note is not None and not noted:
            noted = True
            note("verify", f"waiting up to {deadline.remaining():.1f}s: {'; '.join(problems)}")
        time.sleep(min(_POLL, deadline.remaining()))


# --------------------------------------------------------------------------- failover


@dataclass(frozen=True, slots=True)
class _FailoverPlan:
    plan: Plan
    old: DataSource
    old_id: int | None
    replicas: tuple[_Node, ...]
    choice: Choice
    semisync: bool
    #: Reasons to refuse unless ``force``.
    risks: tuple[str, ...]


def _liveness(
    ds: DataSource, credentials: Credentials, io_timeout: float, attempts: int = _DEAD_ATTEMPTS
) -> tuple[str, str]:
    """``("dead" | "unresponsive" | "alive", detail)`` for the master ``ds``.

    Dead means no TCP connection at all (refused, unreachable, timed out) on every one
    of a few attempts; a server that accepts TCP connections but does not answer is
    ``unresponsive`` (frozen or overloaded): it may come back, writable.
    """
    seen: list[str] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(_RETRY_PAUSE)
        try:
            sock = socket.create_connection((ds.host, ds.port), timeout=io_timeout)
        except OSError as exc:
            seen.append(exc.strerror or type(exc).__name__)
            continue
        sock.close()
        try:
            conn = pymysql.connect(
                host=ds.host,
                port=ds.port,
                user=credentials.user,
                password=credentials.password,
                connect_timeout=io_timeout,
                read_timeout=io_timeout,
                write_timeout=io_timeout,
                program_name="sqlrouter-admin",
            )
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1040, 1045, 1129, 1130, 1203, 1226):
                return "alive", f"it answers ({_describe(exc)})"
            return "unresponsive", (
                f"it accepts TCP connections but does not answer ({_describe(exc)})"
            )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only")
                row = cur.fetchone()
        except (pymysql.err.MySQLError, OSError) as exc:
            return "unresponsive", f"it accepts connections but does not answer ({_describe(exc)})"
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return "alive", f"it answers ({'read-only' if row and int(row[0]) else 'writable'})"
    tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
    return "dead", f"no TCP connection to {ds.address} in {tries} ({seen[-1]})"


def plan_failover(
    service: Service,
    *,
    force: bool = False,
    timeout: float = 30.0,
) -> Plan:
    """Inspect the servers and plan a failover; changes nothing.

    Raises :class:`TopologyError` when the master is alive (use :func:`switchover`), when
    no replica can be promoted, or, unless ``force``, when the failover could lose
    acknowledged writes: the replicas diverged, a replica is unreachable, the master
    accepts connections but does not answer, or a replica is still connected to it.
    """
    _check_timeout(timeout)
    creds = _admin(service, "failover")
    with _Servers(service, creds, timeout) as servers:
        return _plan_failover(service, servers, creds, force, timeout).plan


def _candidates(replicas: Sequence[_Node], *, include_pending: bool) -> list[Candidate]:
    """The replicas as :func:`choose_candidate` sees them.

    ``include_pending``: count what each replica received but has not applied yet as
    its own (before the relay logs are applied).  A replica that cannot apply (SQL
    error, delayed) is never a candidate, but the chosen one must have what it received.
    """
    out = []
    for n in replicas:
        why = ""
        if not (n.log_bin and n.log_slave_updates):
            why = "no binlog with log_slave_updates"
        elif n.sql_delay > 0:
            why = f"delayed replica (MASTER_DELAY={n.sql_delay}s)"
        elif n.sql_error:
            why = f"its SQL thread failed: {n.sql_error}"
        elif not _can_apply(n):
            why = f"its relay log (up to {n.io_pos}) cannot be applied: {_BOTH_STOPPED}"
        if not _can_apply(n):
            tail = _tail(n.current_pos, n.io_pos)
            out.append(Candidate(n.name, n.history, tail, (), False, why))
            continue
        pending = tuple(_parse_gtids(n.io_pos)) if include_pending else ()
        out.append(Candidate(n.name, n.history, _tail(n.current_pos), pending, not why, why))
    return out


_BOTH_STOPPED: Final = (
    "both replication threads are stopped, and MariaDB discards the relay log when GTID "
    "replication restarts"
)


def _unapplied(n: _Node) -> list[Gtid]:
    """What replica ``n`` received (``Gtid_IO_Pos``) but has not applied."""
    return _missing(n.history, _parse_gtids(n.io_pos))


def _can_apply(n: _Node) -> bool:
    """Can failover let replica ``n`` apply its relay log?

    Not when its SQL thread failed, when it is delayed (that takes the delay), nor when
    both its threads are stopped with transactions still unapplied: starting either
    thread then discards the relay log (GTID mode).
    """
    if n.sql_error or n.sql_delay > 0:
        return False
    return n.sql_running or n.io_state != "No" or not _unapplied(n)


def _plan_failover(
    service: Service,
    servers: _Servers,
    creds: Credentials,
    force: bool,
    timeout: float,
    *,
    frozen: bool = False,
    note: Callable[[str, str], None] | None = None,
) -> _FailoverPlan:
    kind = "failover"
    say = note or (lambda name, detail: None)

    def refuse(server: str, reason: str) -> TopologyError:
        return _refuse(service, kind, "plan", server, reason)

    nodes = servers.inspect()
    writable = [n for n in nodes.values() if n.reachable and not n.read_only]
    if writable:
        raise refuse(
            writable[0].name,
            f"{', '.join(n.name for n in writable)} is writable: the service has a master, "
            "there is nothing to fail over (use switchover to change the master)",
        )
    replicas = [n for n in nodes.values() if n.reachable and n.is_replica]
    if not replicas:
        raise refuse(
            "-",
            "no reachable replica: "
            + "; ".join(f"{n.name}: {n.error or 'not a replica'}" for n in nodes.values()),
        )
    sources = {n.name: _ds_of_address(service, *n.master_address) for n in replicas}
    masters = {ds.name for ds in sources.values() if ds is not None}
    if len(masters) != 1 or None in sources.values():
        shown = ", ".join(
            f"{n} from {ds.name if ds else '{}:{}'.format(*nodes[n].master_address)}"
            for n, ds in sources.items()
        )
        raise refuse("-", f"the replicas do not share one master in the service ({shown})")
    old = next(ds for ds in sources.values() if ds is not None)
    old_ids = {n.master_id for n in replicas if n.master_id}
    old_id = old_ids.pop() if len(old_ids) == 1 else None
    if not frozen:
        say(
            "plan",
            f"checking that the master {old.name} is dead: {_DEAD_ATTEMPTS} TCP connection "
            f"attempts {_RETRY_PAUSE:g}s apart, each within {servers.io_timeout:g}s",
        )
    state, how = ("dead", "checked") if frozen else _liveness(old, creds, servers.io_timeout)
    if state == "alive":
        raise refuse(old.name, f"the master {old.name} is alive: {how}; use switchover")
    risks: list[str] = []
    warnings: list[str] = []
    if state == "unresponsive":
        risks.append(
            f"the master {old.name} is not dead: {how}; it may come back writable and "
            "split the cluster: kill it (or make sure it stays down) first"
        )
    connected = [n for n in replicas if n.io_running]
    if connected and not frozen:
        wait = _Deadline(min(timeout, 3 * servers.io_timeout))
        say(
            "plan",
            f"waiting up to {wait.seconds:g}s for {', '.join(n.name for n in connected)} to "
            f"notice that {old.name} is gone (IO thread still connected to it)",
        )
        while connected and not wait.expired:
            time.sleep(_RETRY_PAUSE)
            again = servers.inspect([n.name for n in connected])
            connected = [n for n in again.values() if n.reachable and n.io_running]
        if connected:
            risks.append(
                f"{', '.join(n.name for n in connected)} still receive(s) from {old.name} "
                "(IO thread connected): the master may be alive for them"
            )
    unreachable = [n for n in nodes.values() if not n.reachable and n.name != old.name]
    if unreachable:
        risks.append(
            f"{', '.join(n.name for n in unreachable)} unreachable: it may hold acknowledged "
            "commits that no reachable replica has"
        )
    strays = [n for n in nodes.values() if n.reachable and not n.is_replica]
    for n in strays:
        warnings.append(f"{n.name} is read-only and not a replica: it is left as it is")
    candidates = _candidates(replicas, include_pending=not frozen)
    choice = choose_candidate(candidates, old_id)
    if choice.chosen is None:
        raise refuse("-", choice.reason)
    if not choice.covers_all:
        risks.append(choice.reason + ": promoting anyway loses them")
    semisync = any(n.semi_slave for n in replicas)
    if not semisync:
        warnings.append(
            "semi-synchronous replication is off on the replicas: commits that "
            f"{old.name} acknowledged but no replica received are lost, and sqlrouter "
            "cannot count them"
        )
    else:
        warnings.append(
            f"if {old.name} had fallen back to asynchronous replication "
            "(rpl_semi_sync_master_timeout) before it died, commits it acknowledged since "
            "then may exist only on it"
        )
    for n in replicas:
        if not _can_apply(n) and _unapplied(n):
            cause = n.sql_error or (
                f"delayed by {n.sql_delay}s" if n.sql_delay > 0 else _BOTH_STOPPED
            )
            warnings.append(
                f"{n.name} received {_gtid_text(_unapplied(n))} but cannot apply it ({cause}); "
                f"the new master must have it"
            )
    warnings.append(
        f"{old.name} must not come back as it was: start it read-only (read_only=1 in its "
        f"configuration), then rebuild it from {choice.chosen} (it may hold transactions "
        "that no replica received)"
    )
    if risks and not force:
        raise refuse(
            old.name,
            "failover could lose acknowledged writes: "
            + "; ".join(risks)
            + " (use force to fail over anyway)",
        )
    warnings = [f"forced: {r}" for r in risks] + warnings
    new = nodes[choice.chosen]
    rest = [n for n in replicas if n.name != new.name]
    repointed = [n for n in rest if n.name not in choice.diverged]
    left_out = [
        f"{n}: has {_gtid_text(g)} that {new.name} lacks; replication stopped, rebuild it "
        f"from {new.name}"
        for n, g in choice.diverged.items()
    ]
    left_out += [
        f"{n.name}: unreachable ({n.error}); when it is back, if it has nothing {new.name} "
        f"lacks, repoint it: {_repoint_sql(new.ds)}; else rebuild it from {new.name}"
        for n in unreachable
    ]
    appliers = [n for n in replicas if _can_apply(n)]
    steps = [f"check master {old.name}: {old.name} is dead ({how})"]
    steps += [
        f"start SQL thread {n.name}: START SLAVE SQL_THREAD on {n.name}, before its IO "
        "thread stops (GTID replication discards the relay log of a replica whose two "
        "threads are stopped)"
        for n in appliers
        if not n.sql_running
    ]
    steps += [
        f"freeze {n.name}: STOP SLAVE IO_THREAD on {n.name} (what the replicas hold stops changing)"
        for n in replicas
        if n.io_state != "No"
    ]
    steps += [
        f"apply relay log {n.name}: MASTER_GTID_WAIT(Gtid_IO_Pos) on {n.name}" for n in appliers
    ]
    steps += [
        f"choose: {choice.reason}",
        f"stop replication {new.name}: STOP SLAVE on {new.name}",
    ]
    if semisync:
        steps.append(
            f"semi-sync {new.name}: SET GLOBAL rpl_semi_sync_master_enabled=1 on {new.name}"
        )
    steps += [
        f"repoint {n.name}: STOP SLAVE; CHANGE MASTER TO {new.name} ({new.ds.address}) "
        "MASTER_USE_GTID=slave_pos; START SLAVE"
        for n in repointed
    ]
    steps += [f"leave {n}: STOP SLAVE on {n} (diverged)" for n in choice.diverged]
    steps += [
        f"writable {new.name}: SET GLOBAL read_only=0 on {new.name}: it is the master; "
        "every process's monitor sees it within one monitor interval",
        f"reset {new.name}: RESET SLAVE ALL on {new.name}",
        f"verify: {new.name} writable, "
        + (", ".join(n.name for n in repointed) or "no replica")
        + f" replicating from {new.name}",
    ]
    plan = Plan(
        service=service.name,
        kind="failover",
        old_master=old.name,
        new_master=new.name,
        steps=tuple(steps),
        warnings=tuple(warnings),
        repointed=tuple(n.name for n in repointed),
        left_out=tuple(left_out),
        positions=_positions(nodes),
    )
    return _FailoverPlan(plan, old, old_id, tuple(replicas), choice, semisync, tuple(risks))


def failover(
    service: Service,
    *,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 30.0,
    report: Callable[[Step], None] | None = None,
) -> list[Step]:
    """Promote the most advanced replica of ``service``, whose master is dead.

    Refuses (see :func:`plan_failover`) when acknowledged writes could be lost, unless
    ``force``.  The repointed replicas keep the replication account they use, so no
    replication credentials are needed.  The dead master is left alone: it must not
    come back as it was (see docs/operations.md).  Returns the steps; raises
    :class:`TopologyError` saying which step failed and the state the cluster is left in.
    """
    _check_timeout(timeout)
    creds = _admin(service, "failover")
    run = _Run(service, "failover", report, _secrets(service, None))
    started = time.monotonic()
    with _Servers(service, creds, timeout) as servers:
        _note_inspection(run, service, servers)
        fp = _plan_failover(service, servers, creds, force, timeout, note=run.note)
        run.add(Step("plan", True, fp.plan.summary(), time.monotonic() - started))
        _report_plan_notes(run, fp.plan)
        if dry_run:
            _report_dry_run(run, fp.plan)
            return run.steps
        _run_failover(fp, servers=servers, run=run, creds=creds, force=force, timeout=timeout)
    return run.steps


def _run_failover(
    fp: _FailoverPlan,
    *,
    servers: _Servers,
    run: _Run,
    creds: Credentials,
    force: bool,
    timeout: float,
) -> None:
    service = run.service
    deadline = _Deadline(timeout)
    undo = _Undo(run)
    replicas = {n.name: n for n in fp.replicas}
    old = fp.old.name

    def check_dead() -> str:
        # The plan found it dead a moment ago: one more look, just before acting.
        state, how = _liveness(fp.old, creds, servers.io_timeout, attempts=1)
        if state == "alive":
            raise _Failure(f"{old} answers again ({how}): use switchover")
        if state != "dead" and not force:
            raise _Failure(f"{old} is {state}: {how}")
        return f"{old} is {state}: {how}"

    def statement(node: _Node, sql: str, done: str) -> Callable[[], str]:
        """A step running ``sql`` on ``node``; ``done`` says what it did."""

        def action() -> str:
            servers[node.name].run(sql)
            return done

        return action

    def apply_relay(node: _Node) -> Callable[[], str]:
        def action() -> str:
            return _apply_relay_log(servers[node.name], deadline, run.note)

        return action

    try:
        run.step(f"check master {old}", old, check_dead)
        # Start stopped SQL threads while the IO threads still run: with GTID replication
        # MariaDB discards the relay log when a thread starts with both stopped.
        appliers = [n for n in replicas.values() if _can_apply(n)]
        for node in appliers:
            if not node.sql_running:
                undo.push(
                    f"stop SQL thread {node.name}",
                    node.name,
                    statement(
                        node, "STOP SLAVE SQL_THREAD", f"{node.name}: SQL thread stopped again"
                    ),
                    f"{node.name}'s SQL thread runs: run STOP SLAVE SQL_THREAD to stop it",
                )
                run.step(
                    f"start SQL thread {node.name}",
                    node.name,
                    statement(
                        node,
                        "START SLAVE SQL_THREAD",
                        f"{node.name}: SQL thread started to apply its relay log",
                    ),
                )
        for node in replicas.values():
            if node.io_state != "No":
                undo.push(
                    f"restart IO thread {node.name}",
                    node.name,
                    statement(node, "START SLAVE IO_THREAD", f"{node.name} receiving again"),
                    f"{node.name}'s IO thread is stopped: run START SLAVE IO_THREAD on it",
                )
                run.step(
                    f"freeze {node.name}",
                    node.name,
                    statement(
                        node,
                        "STOP SLAVE IO_THREAD",
                        f"{node.name} stopped receiving (IO thread was {node.io_state})",
                    ),
                )
        for node in appliers:
            run.step(f"apply relay log {node.name}", node.name, apply_relay(node))
        frozen = _plan_failover(service, servers, creds, force, timeout, frozen=True)
    except _StepFailed as failed:
        state = undo.rollback("nothing was changed: the replicas are as they were")
        raise run.error("failed", failed.name, failed.server, failed.reason, state) from None
    except TopologyError as refused:
        state = undo.rollback("nothing was changed: the replicas are as they were")
        raise run.error("refused", "choose", refused.server, refused.reason, state) from None
    except BaseException:
        undo.rollback("rolled back")
        raise
    choice = frozen.choice
    new_name = choice.chosen
    if new_name is None:  # pragma: no cover - _plan_failover refuses first
        raise run.error("refused", "choose", "-", choice.reason, "nothing was promoted")
    planned = fp.plan.new_master
    note = "" if new_name == planned else f" (the plan said {planned}: positions moved)"
    run.add(Step("choose", True, f"promote {new_name}: {choice.reason}{note}", 0.0))
    if new_name != planned:
        for text in frozen.plan.left_out:
            run.note("left out", text, "left out")
    new = next(n for n in frozen.replicas if n.name == new_name)
    sn = servers[new_name]
    rest = [n for n in frozen.replicas if n.name != new_name]

    def stop_new() -> str:
        sn.run("STOP SLAVE")
        return f"{new_name} stopped replicating"

    def undo_stop_new() -> str:
        sn.run("START SLAVE SQL_THREAD")
        return f"{new_name}: SQL thread started again"

    def semisync_on() -> str:
        sn.run("SET GLOBAL rpl_semi_sync_master_enabled = 1")
        return f"{new_name} waits for a replica's acknowledgement of each commit (AFTER_SYNC)"

    def leave(node: _Node) -> Callable[[], str]:
        def action() -> str:
            servers[node.name].run("STOP SLAVE")
            lacking = _gtid_text(choice.diverged[node.name])
            return (
                f"{node.name} not repointed: it has {lacking} that {new_name} lacks; "
                f"rebuild it from {new_name}"
            )

        return action

    def writable() -> str:
        sn.run("SET GLOBAL read_only = 0")
        return f"{new_name} is writable: it is the master"

    def reset() -> str:
        sn.run("RESET SLAVE ALL")
        return f"{new_name} has no master"

    try:
        undo.push(
            f"restart SQL thread {new_name}",
            new_name,
            undo_stop_new,
            f"{new_name}'s replication is stopped",
        )
        run.step(f"stop replication {new_name}", new_name, stop_new)
        if frozen.semisync:
            run.step(f"semi-sync {new_name}", new_name, semisync_on)
    except _StepFailed as failed:
        state = undo.rollback("nothing was promoted: the replicas are as they were")
        raise run.error("failed", failed.name, failed.server, failed.reason, state) from None
    undo.clear()
    run.failures.clear()

    repointed = []
    for node in rest:
        if node.name in choice.diverged:
            run.step(f"leave {node.name}", node.name, leave(node), fatal=False)
        elif run.step(
            f"repoint {node.name}",
            node.name,
            _repointing(
                servers[node.name],
                new.ds,
                f"{node.name} replicates from {new_name} ({new.ds.address})",
            ),
            fatal=False,
        ):
            repointed.append(node)
    try:
        run.step(f"writable {new_name}", new_name, writable)
    except _StepFailed as failed:
        raise run.error(
            "failed",
            failed.name,
            failed.server,
            failed.reason,
            f"no server is writable: {new_name} stopped replicating and is read-only, "
            f"{', '.join(n.name for n in repointed) or 'no replica'} replicate(s) from it; "
            f"run SET GLOBAL read_only=0 on {new_name}",
        ) from None
    run.step(f"reset {new_name}", new_name, reset, fatal=False)
    run.step(
        "verify",
        new_name,
        lambda: _verify(
            servers, new, repointed, frozen.semisync, _Deadline(timeout), note=run.note
        ),
        fatal=False,
    )
    if run.failures:
        step, server, reason = run.failures[0]
        raise run.error(
            "finished with errors",
            step,
            server,
            reason,
            f"{new_name} is the writable master; fix what the failed steps say",
        )


def _apply_relay_log(
    server: _Server, deadline: _Deadline, note: Callable[[str, str], None] | None = None
) -> str:
    """Wait until the replica has applied every transaction it received."""
    name = server.ds.name
    node = server.inspect(None)
    target = node.io_pos
    if not target or not _missing(node.history, _parse_gtids(target)):
        return f"{name} has applied everything it received (at {node.current_pos or 'empty'})"
    if note is not None:
        note(
            f"apply relay log {name}",
            f"waiting up to {deadline.remaining():.1f}s for {name} to apply what it "
            f"received (up to {target}; it is at {node.current_pos or 'empty'})",
        )
    idle_at: str | None = None
    while True:
        left = deadline.remaining()
        if left <= 0:
            raise _Failure(
                f"{name} did not apply its relay log (up to {target}) within "
                f"{deadline.seconds:g}s: it is at {node.current_pos or 'empty'}"
            )
        rows = server.long(
            [("SELECT MASTER_GTID_WAIT(%s, %s) AS r", [target, min(left, 1.0)])], min(left, 1.0)
        )
        if rows and rows[0]["r"] == 0:
            return f"{name} has applied everything it received (up to {target})"
        node = server.inspect(None)
        if node.sql_error or not node.sql_running:
            raise _Failure(f"{name} stopped applying its relay log: {node.describe_replication()}")
        if node.slave_str("Slave_SQL_Running_State").startswith(_SQL_IDLE):
            if idle_at == node.current_pos:
                return (
                    f"{name} applied every complete transaction it received (at "
                    f"{node.current_pos}); an incomplete one at the end of its relay log "
                    "was dropped"
                )
            idle_at = node.current_pos
