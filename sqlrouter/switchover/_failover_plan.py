"""The failover's plan: is the master dead, which replica holds every acknowledged write,
and what a failover would lose (see the package).

It inspects the servers and tries to reach the master; it changes nothing.
:func:`plan_failover` returns the plan to an operator; :mod:`._failover` runs it, and
asks for it once more when the replicas stopped receiving (``frozen``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import pymysql

from ..gtid import Gtid, format_gtid_list, parse_gtid_list
from ..topology import Credentials, DataSource, Service
from ._history import (
    Candidate,
    Choice,
    _missing,
    _tail,
    choose_candidate,
)
from ._servers import (
    Connected,
    _describe,
    _Failure,
    _master_of,
    _Node,
    _positions,
    _repoint_sql,
    _Servers,
    accepted,
)
from ._steps import (
    Plan,
    TopologyError,
    _admin,
    _check_timeout,
    _Deadline,
    _refuse,
)

__all__ = [
    "plan_failover",
]


#: Pause between two attempts to reach a master believed dead.
_RETRY_PAUSE: Final = 0.2


#: Attempts to reach a master believed dead before failover takes it as dead.
_DEAD_ATTEMPTS: Final = 3


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
    ds: DataSource,
    credentials: Credentials,
    io_timeout: float,
    attempts: int = _DEAD_ATTEMPTS,
    on_connect: Connected | None = None,
) -> tuple[str, str]:
    """``("dead" | "unresponsive" | "alive", detail)`` for the master ``ds``.

    Dead means no TCP connection at all (refused, unreachable, timed out) on every one
    of a few attempts; a server that accepts TCP connections but does not answer is
    ``unresponsive`` (frozen or overloaded): it may come back, writable.  A connection
    that opens is given to ``on_connect`` (the operation's, as every other connection of
    it: an automatic failover's guard) before its one statement; what that raises is
    raised, the connection closed.
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
        accepted(ds, conn, on_connect)
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
        pending = tuple(parse_gtid_list(n.io_pos)) if include_pending else ()
        out.append(Candidate(n.name, n.history, _tail(n.current_pos), pending, not why, why))
    return out


_BOTH_STOPPED: Final = (
    "both replication threads are stopped, and MariaDB discards the relay log when GTID "
    "replication restarts"
)


def _unapplied(n: _Node) -> list[Gtid]:
    """What replica ``n`` received (``Gtid_IO_Pos``) but has not applied."""
    return _missing(n.history, parse_gtid_list(n.io_pos))


def _can_apply(n: _Node) -> bool:
    """Can failover let replica ``n`` apply its relay log?

    Not when its SQL thread failed, when it is delayed (that takes the delay), nor when
    both its threads are stopped with transactions still unapplied: starting either
    thread then discards the relay log (GTID mode).
    """
    if n.sql_error or n.sql_delay > 0:
        return False
    return n.sql_running or n.io_thread != "No" or not _unapplied(n)


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

    def refuse(server: str, reason: str, *, transient: bool = False) -> TopologyError:
        return _refuse(service, kind, "plan", server, reason, transient=transient)

    nodes = servers.inspect()
    # The guard said no to an inspection's connection: what the plan would say of that
    # server (unreachable) is no fact about the cluster; tried again later.
    stopped = [n for n in nodes.values() if n.stopped]
    if stopped:
        name = stopped[0].name
        raise refuse(name, f"{name} was not checked: {stopped[0].error}", transient=True)
    writable = [n for n in nodes.values() if n.reachable and not n.read_only]
    if writable:
        raise refuse(
            writable[0].name,
            f"{', '.join(n.name for n in writable)} is writable: the service has a master, "
            "there is nothing to fail over (use switchover to change the master)",
            transient=True,
        )
    replicas = [n for n in nodes.values() if n.reachable and n.is_replica]
    if not replicas:
        raise refuse(
            "-",
            "no reachable replica: "
            + "; ".join(f"{n.name}: {n.error or 'not a replica'}" for n in nodes.values()),
        )
    sources = {n.name: _master_of(service, n, nodes) for n in replicas}
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
    try:
        state, how = (
            ("dead", "checked")
            if frozen
            else _liveness(old, creds, servers.io_timeout, on_connect=servers.on_connect)
        )
    except (_Failure, pymysql.err.MySQLError, OSError) as exc:
        raise refuse(
            old.name, f"the master {old.name} was not checked: {_describe(exc)}", transient=True
        ) from None
    if state == "alive":
        raise refuse(
            old.name, f"the master {old.name} is alive: {how}; use switchover", transient=True
        )
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
                f"{n.name} received {format_gtid_list(_unapplied(n))} but cannot apply it "
                f"({cause}); the new master must have it"
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
        f"{n}: has {format_gtid_list(g)} that {new.name} lacks; replication stopped, rebuild it "
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
        if n.io_thread != "No"
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
