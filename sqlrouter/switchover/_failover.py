"""The failover: the master dead, the most advanced replica promoted (see the package).

Kept whole (over 600 lines): the plan and the run are one procedure, whose steps and
their undo actions read best in order.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

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
    _repointing,
    _Server,
    _Servers,
)
from ._steps import (
    Plan,
    Step,
    TopologyError,
    _admin,
    _check_timeout,
    _Deadline,
    _note_inspection,
    _observed,
    _refuse,
    _report_dry_run,
    _report_plan_notes,
    _Run,
    _secrets,
    _StepFailed,
    _Undo,
    _verify,
)

__all__ = [
    "failover",
    "plan_failover",
]

logger = logging.getLogger("sqlrouter.switchover")


#: Pause between two attempts to reach a master believed dead.
_RETRY_PAUSE: Final = 0.2


#: Attempts to reach a master believed dead before failover takes it as dead.
_DEAD_ATTEMPTS: Final = 3


#: ``Slave_SQL_Running_State`` of an SQL thread with nothing left to apply.
_SQL_IDLE: Final = "Slave has read all relay log"


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


def failover(
    service: Service,
    *,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 30.0,
    report: Callable[[Step], None] | None = None,
    guard: Callable[[str], str | None] | None = None,
    on_connect: Connected | None = None,
) -> list[Step]:
    """Promote the most advanced replica of ``service``, whose master is dead.

    Refuses (see :func:`plan_failover`) when acknowledged writes could be lost, unless
    ``force``.  The repointed replicas keep the replication account they use, so no
    replication credentials are needed.  The dead master is left alone: it must not
    come back as it was (see docs/operations.md).  ``guard``, when given, is called with
    each step's name before it runs (rollback steps included) and returns ``None`` to go
    on or why not: the step then fails, before the point of no return the failover rolls
    back, as far as the guard lets it (an automatic failover's leader checks its lease
    there: one that lost it undoes nothing, the next leader restores); it is asked again after
    every new connection, before that connection's first statement.  ``on_connect``, when
    given, is then called with each new connection (the automatic failover ends older
    leaders' sessions there).  Returns the steps; raises
    :class:`TopologyError` saying which step failed and the state the cluster is left in.
    """
    _check_timeout(timeout)
    creds = _admin(service, "failover")
    run = _Run(service, "failover", report, _secrets(service, None), guard)
    started = time.monotonic()

    def connected(ds: DataSource, conn: pymysql.connections.Connection[Any]) -> None:
        run.connected(ds)
        if on_connect is not None:
            on_connect(ds, conn)

    hook = connected if guard is not None or on_connect is not None else None
    with _observed(service, "failover", "", dry_run):
        with _Servers(service, creds, timeout, hook) as servers:
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
            if node.io_thread != "No":
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
                        f"{node.name} stopped receiving (IO thread was {node.io_thread})",
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
            lacking = format_gtid_list(choice.diverged[node.name])
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
    if not target or not _missing(node.history, parse_gtid_list(target)):
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
