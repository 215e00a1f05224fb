"""The switchover: the master alive, made a replica of the new one (see the package)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pymysql

from ..gtid import format_gtid_list
from ..topology import Credentials, Service
from ._history import _missing, _tail
from ._servers import (
    _SYSTEM_COMMANDS,
    _SYSTEM_USERS,
    _change_master,
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
    _check_seconds,
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
    "plan_switchover",
    "switchover",
]

logger = logging.getLogger("sqlrouter.switchover")


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
        warnings.append(f"{to} lacks {format_gtid_list(lacking)} and its SQL thread is stopped")
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
    with _observed(service, "switchover", to, dry_run):
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
                    f"(up to {format_gtid_list(behind)})",
                )
                rows = sc.long(
                    [("SELECT MASTER_GTID_WAIT(%s, %s) AS r", [format_gtid_list(behind), left])],
                    left,
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
                    f"({format_gtid_list(lacking)} are missing): the histories diverged"
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
