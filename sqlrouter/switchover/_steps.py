"""Values an operation reports (:class:`Plan`, :class:`Step`, :class:`TopologyError`),
and the running of its steps: reporting, rollback, deadlines, verification."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import pymysql

from .. import telemetry
from ..errors import OperationalError
from ..topology import Credentials, DataSource, Service
from ._servers import _describe, _Failure, _Node, _Servers, _Stopped

__all__ = [
    "ER_TOPOLOGY",
    "Plan",
    "Step",
    "StepKind",
    "TopologyError",
]

logger = logging.getLogger("sqlrouter.switchover")


#: Client-side error number of :class:`TopologyError` (see :mod:`sqlrouter.errors`).
ER_TOPOLOGY: Final = 3920


#: How often the verification looks again.
_POLL: Final = 0.1


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
        refused: bool = False,
        transient: bool = False,
    ) -> None:
        super().__init__(errno, message)
        #: Refused before changing anything (the plan or the choice said no).
        self.refused = refused
        #: Refused for a reason of the moment, not for the cluster's state: the master
        #: answers after all (or a server is writable), or its death could not be
        #: checked (or a server, the guard saying no).  The same request later may be
        #: accepted (automatic failover tries again after its backoff instead of waiting
        #: for an operator).
        self.transient = transient
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

    __module__ = "sqlrouter.switchover"

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

    __module__ = "sqlrouter.switchover"

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
        guard: Callable[[str], str | None] | None = None,
    ) -> None:
        self.service = service
        self.kind = kind
        self.steps: list[Step] = []
        #: ``(step, server, reason)`` of each step that failed.
        self.failures: list[tuple[str, str, str]] = []
        self._report = report
        self._secrets = [s for s in secrets if s]
        #: Asked before every step, a rollback's too: ``None`` to go on, else why not
        #: (an automatic failover's leader that lost its lease undoes nothing either);
        #: and after every new connection, before its first statement (:meth:`connected`).
        self._guard = guard
        #: The step running now (``""`` between steps: an inspection, the plan).
        self.current = ""

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
            detail = self._guarded(name, action)
        except (_Failure, pymysql.err.MySQLError, OSError) as exc:
            reason = self.scrub(_describe(exc))
            self.failures.append((name, server, reason))
            self.add(Step(name, False, f"{server}: {reason}", time.monotonic() - started))
            if fatal:
                raise _StepFailed(name, server, reason) from None
            return False
        self.add(Step(name, True, detail, time.monotonic() - started))
        return True

    def _guarded(self, name: str, action: Callable[[], str]) -> str:
        if (
            self._guard is not None
        ):  # rollback steps too: a leader that lost its lease undoes nothing
            stop = self._guard(name)
            if stop is not None:
                raise _Failure(f"not run: {stop}")
        self.current = name
        try:
            return action()
        finally:
            self.current = ""

    def connected(self, ds: DataSource) -> None:
        """A new connection to ``ds``: the guard is asked again before it runs anything.

        A step's guard is asked before its first statement, but a connection opened after
        that answer (a reconnection, a wait's own connection) could outlive the answer:
        asked again once the connection is open, a leader that lost its lease in between
        runs nothing on it, and every connection it opened earlier existed when the next
        leader ended the older leaders' sessions (docs/autofailover.md, "Fencing the
        leaders").  The name given is the step's, or ``connect NAME`` between steps.
        """
        if self._guard is None:
            return
        stop = self._guard(self.current or f"connect {ds.name}")
        if stop is not None:
            raise _Stopped(f"not connected to {ds.name}: {stop}")

    def error(
        self,
        verb: str,
        step: str,
        server: str,
        reason: str,
        state: str,
        *,
        transient: bool = False,
    ) -> TopologyError:
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
            refused=verb == "refused",
            transient=transient,
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


@contextlib.contextmanager
def _observed(
    service: Service, operation: Literal["switchover", "failover"], target: str, dry_run: bool
) -> Iterator[None]:
    """Around an operation: its telemetry record (:mod:`sqlrouter.telemetry`) at the end."""
    if not telemetry.observers:
        yield
        return
    started = time.monotonic()
    outcome: Literal["ok", "failed", "dry_run"] = "dry_run" if dry_run else "ok"
    error = ""
    try:
        yield
    except Exception as exc:
        outcome, error = "failed", str(exc.args[-1] if exc.args else exc)
        raise
    finally:
        telemetry.emit(
            telemetry.TopologyRun(
                service.name,
                operation,
                outcome,
                started,
                time.monotonic() - started,
                target=target,
                error=error,
            )
        )


def _check_seconds(name: str, value: float, *, zero_ok: bool = False) -> None:
    expected = f"a number of seconds {'>=' if zero_ok else '>'} 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_timeout(timeout: float) -> None:
    _check_seconds("timeout", timeout)


def _refuse(
    service: Service, kind: str, step: str, server: str, reason: str, *, transient: bool = False
) -> TopologyError:
    return TopologyError(
        ER_TOPOLOGY,
        f"service {service.name!r}: {kind} refused at step {step!r} on {server}: {reason}; "
        "nothing was changed",
        service=service.name,
        server=server,
        step=step,
        reason=reason,
        state="nothing was changed",
        refused=True,
        transient=transient,
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
