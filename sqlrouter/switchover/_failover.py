"""The failover's run: the replicas frozen and their relay logs applied, the chosen one
promoted and the others repointed to it (see the package).

What to do is :mod:`._failover_plan`'s decision, made again once the replicas stopped
receiving; here each step runs, with its undo action until the new master stops
replicating (the point of no return).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import pymysql

from ..gtid import format_gtid_list, parse_gtid_list
from ..topology import Credentials, DataSource, Service
from ._failover_plan import (
    _can_apply,
    _FailoverPlan,
    _liveness,
    _plan_failover,
)
from ._history import _missing
from ._servers import (
    Connected,
    _Failure,
    _Node,
    _repointing,
    _Server,
    _Servers,
)
from ._steps import (
    Step,
    TopologyError,
    _admin,
    _check_timeout,
    _Deadline,
    _note_inspection,
    _observed,
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
]

#: ``Slave_SQL_Running_State`` of an SQL thread with nothing left to apply.
_SQL_IDLE: Final = "Slave has read all relay log"


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
        state, how = _liveness(
            fp.old, creds, servers.io_timeout, attempts=1, on_connect=servers.on_connect
        )
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
        raise run.error(
            "refused",
            "choose",
            refused.server,
            refused.reason,
            state,
            transient=refused.transient,  # a server writable again: about the moment
        ) from None
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
