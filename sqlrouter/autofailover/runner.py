"""The runner: automatic failover of one service, as one agent process runs it.

A :class:`Runner` owns two threads.  Every ``interval`` seconds one of them runs a round:

1. read every key of the service in etcd (one request);
2. observe the servers (:func:`._observe.observe`) and resolve the master from what
   they are, publish this agent's view of it (reachable or not) under its lease, when
   it changed or every ``lease_ttl / 2`` seconds (etcd writes are few when all is well);
3. campaign for leadership when there is no leader;
4. the leader (only it, under its term) fences an old master that came back: the last
   unacknowledged failover's outcome names it; if it is reachable and writable while
   the observations single out another master, reachable and writable, ``SET GLOBAL
   read_only=1`` at once;
5. the leader gathers the views of the
   live agents and the replicas' IO threads into a :class:`.decision.Round`, applies
   :func:`.decision.decide`, publishes the decision with its evidence, and when the
   verdict is ``failover`` runs the existing failover (:func:`sqlrouter.switchover.failover`)
   with a guard that checks the leadership (lease and term) in etcd before every step
   and on every connection it opens, then publishes the outcome (new master, old
   master, term) and the history; a failover that failed without blocking is tried
   again after a backoff (:func:`.decision.backoff`, the ``retry`` record).

Before its first action in a term (a failover, restoring what an interrupted failover
froze, fencing an old master) the leader ends the older leaders' sessions on the
servers (:meth:`Runner._take_over`): ``KILL CONNECTION`` of every other session of the
failover's account, so that a statement an older, paused leader was about to send runs
on a dead connection (docs/autofailover.md, "Fencing the leaders").

The other thread refreshes the agent's lease every ``lease_ttl / 3`` seconds (registering
again if it had expired), on etcd clients of its own (a slow round does not delay it),
so that a failover longer than the lease does not lose the leadership half way.  A round
that cannot reach etcd does nothing (no leader can act without the store); ``status()``
says so.  :meth:`Runner.stop` ends the threads, revokes
the lease and joins, within a timeout.  The runner never runs in an application's
process: ``sqlrouter agent`` starts one per opted-in service
(:func:`sqlrouter.autofailover.start_runners`).

Kept whole (about 800 lines): every action of a leader under one term (its record, the
fence of older leaders, settling an interrupted failover, fencing an old master, the
failover) asks the same lease and term before each step, and what may run when is best
read in one place.  The decision is pure and apart (:mod:`.decision`), as are the
probes (:mod:`._observe`) and the store (:mod:`.store`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

import pymysql

from .. import _forksafe, events
from ..switchover import Step, TopologyError, failover
from ..topology import Credentials, DataSource, Service
from ._observe import (
    Address,
    OnConnect,
    ServerView,
    connect,
    end_older_sessions,
    fence,
    observe,
    registry_address,
    resolve_master,
    restart_io_thread,
    source_of,
)
from .decision import (
    AgentView,
    Decision,
    Detection,
    History,
    ReplicaView,
    Round,
    backoff,
    decide,
    failures_in_a_row,
)
from .store import Store, StoreError

__all__ = ["NotLeading", "Runner"]

logger = logging.getLogger("sqlrouter.autofailover")


class NotLeading(Exception):
    """A leader's connection was refused: the store says it no longer leads (or cannot
    say so, before the failover's point of no return)."""


#: Seconds :meth:`Runner.stop` waits for the round in progress to end.
DEFAULT_STOP_TIMEOUT: Final = 10.0


class Runner:
    """Automatic failover of ``service`` by this agent (see the module's docstring).

    ``store``: the agent's :class:`Store` (default: one on the service's ``etcd``
    endpoints).  ``address``: where this agent reaches each datasource (default: the
    registry's address).  ``failover_timeout``: the bound of the failover itself.
    """

    def __init__(
        self,
        service: Service,
        *,
        store: Store | None = None,
        agent: str | None = None,
        address: Address = registry_address,
        failover_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = service.autofailover
        if not settings.enabled:
            raise ValueError(
                f"service {service.name!r}: automatic failover is not enabled "
                f"(set enabled = true in [services.{service.name}.autofailover], {service.source})"
            )
        if service.admin_credentials is None:
            raise ValueError(
                f"service {service.name!r}: automatic failover needs the admin credentials "
                f"([services.{service.name}.admin] in {service.source})"
            )
        self.service = service
        self._creds: Credentials = service.admin_credentials
        self.store = store or Store(
            settings.etcd, service=service.name, agent=agent, lease_ttl=settings.lease_ttl
        )
        self.agent = self.store.agent
        self.interval = settings.interval or service.monitor_interval
        #: An agent's view older than this is not counted (its lease outlives it).
        self.stale_after = settings.lease_ttl + self.interval
        self._address = address
        self._failover_timeout = failover_timeout
        self._clock = clock
        self._stop = threading.Event()
        #: The lease's thread ends only after the rounds (a failover keeps its lease).
        self._keeper_stop = threading.Event()
        self._failing_over = threading.Event()
        self._thread: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._lock = _forksafe.lock()
        self._detection = Detection()
        self._term: int | None = None
        self._decision: Decision | None = None
        self._store_error: str | None = None
        self._rounds = 0
        self._published: AgentView | None = None
        #: The servers on which the leader ended older leaders' sessions, in which term.
        self._swept_term: int | None = None
        self._swept: set[str] = set()
        #: The store's ``retry`` record as the last round read it (the backoff).
        self._retry: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Runner:
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started")
        name = f"sqlrouter-autofailover-{self.service.name}"
        self._keeper = threading.Thread(target=self._keep_lease, name=f"{name}-lease", daemon=True)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._keeper.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """End the rounds (after the one in progress), then the lease, and join.

        A failover in progress is not cut short: it is waited for (up to its own bound,
        ``failover_timeout``, and the outcome's writes) even beyond ``timeout``, while the
        lease is still kept alive; only then is the lease revoked.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and self._failing_over.is_set():
                logger.warning("%r: stopping: waiting for the failover in progress to end", self)
                thread.join(self._failover_timeout * 3 + 2 * self.service.probe_timeout)
            if thread.is_alive():
                logger.error("%r: %s did not end: the lease is revoked anyway", self, thread.name)
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(max(0.1, deadline - time.monotonic()))
        self.store.close()

    def __enter__(self) -> Runner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        with self._lock:
            role = f"leader (term {self._term})" if self._term is not None else "follower"
            verdict = self._decision.verdict if self._decision else "no decision"
            error = f", store: {self._store_error}" if self._store_error else ""
        return (
            f"<Runner {self.service.name!r} agent {self.agent!r}: {role}, {verdict}, "
            f"{self._rounds} rounds{error}>"
        )

    def status(self) -> dict[str, Any]:
        """This agent's part, for ``status`` output (the store has the rest)."""
        with self._lock:
            return {
                "service": self.service.name,
                "agent": self.agent,
                "leader": self._term is not None,
                "term": self._term,
                "rounds": self._rounds,
                "decision": self._decision.as_dict() if self._decision else None,
                "retry": self._retry,
                "store_error": self._store_error,
            }

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_round()
            except StoreError as exc:
                self._lost_store(str(exc))
            except Exception:  # a round's bug must not end automatic failover silently
                logger.exception("%r: round failed", self)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _keep_lease(self) -> None:
        every = max(0.2, self.service.autofailover.lease_ttl / 3)
        while not self._keeper_stop.wait(every):
            try:
                self.store.keepalive()
            except StoreError as exc:
                self._lost_store(str(exc))

    def _lost_store(self, error: str) -> None:
        with self._lock:
            first = self._store_error is None
            self._store_error = error
            self._term = None
        if first:
            logger.warning(
                "service %r: agent %s: no automatic failover while the store cannot be used: %s",
                self.service.name,
                self.agent,
                error,
            )

    # ------------------------------------------------------------------ one round

    def run_round(self) -> Decision | None:
        """One round (see the module's docstring); the leader's decision, else ``None``."""
        store = self.store
        if not store.registered:
            store.register()
        snap = store.snapshot()
        with self._lock:
            if self._store_error is not None:
                logger.info(
                    "service %r: agent %s: the store answers again", self.service.name, self.agent
                )
            self._store_error = None
            self._rounds += 1
            self._retry = snap.get("retry")
        timeout = self.service.probe_timeout
        views = observe(self.service, self._creds, timeout, self._address)
        master = resolve_master(self.service, views)
        now = self._clock()
        mv = views.get(master) if master is not None else None
        mine = AgentView(
            self.agent, master, bool(mv and mv.reachable), now, mv.detail if mv else ""
        )
        self._publish(mine, snap)
        leader = snap.get("leader")
        if leader is None:
            term = store.campaign()
        else:  # a transaction (a write) only when there is no leader
            lease = store.lease_id
            held = leader.get("agent") == self.agent and lease is not None
            term = int(leader["term"]) if held and leader.get("lease") == lease else None
        with self._lock:
            if term != self._term and term is not None:
                logger.info(
                    "service %r: agent %s leads (term %d)", self.service.name, self.agent, term
                )
                self._detection = Detection()
            self._term = term
        if term is None:
            return None
        self._fence_old_master(term, views, master, snap)
        history = store.history(snap)
        if master is None or mv is None:
            decision = Decision(
                "disagreement",
                "-",
                "the observations do not single out a master: "
                + "; ".join(f"{v.name}: {_describe(v)}" for v in views.values()),
                (),
                Detection(),
            )
        else:
            replicas = tuple(
                ReplicaView(
                    v.name,
                    v.reachable,
                    source_of(self.service, views, v.name) if v.reachable else None,
                    v.io_connected,
                    v.detail,
                )
                for v in views.values()
                if v.name != master and (v.source_address is not None or not v.reachable)
            )
            # The snapshot was read before this round's view was published.
            others = tuple(v for v in store.views(snap) if v.agent != self.agent)
            rnd = Round(master, mv.reachable, mv.detail, (*others, mine), replicas, now)
            decision = decide(
                self._detection,
                rnd,
                history,
                rounds=self.service.autofailover.rounds,
                period=self.service.autofailover.period,
                stale_after=self.stale_after,
                min_agents=self.service.autofailover.min_agents,
                backoff_base=self.service.autofailover.backoff_base,
                backoff_cap=self.service.autofailover.backoff_cap,
            )
        self._record(term, decision, now)
        settled = self._settle_interrupted(term, views, master, snap.get("failover"))
        if settled and decision.verdict == "failover":
            self._failing_over.set()
            try:
                self._failover(term, decision, views, history)
            finally:
                self._failing_over.clear()
        return decision

    def _publish(self, view: AgentView, snap: Mapping[str, Any]) -> None:
        """Publish this agent's view when it changed, or before it could count as stale."""
        last = self._published
        if (
            last is None
            or (last.master, last.reachable) != (view.master, view.reachable)
            or view.at - last.at >= self.service.autofailover.lease_ttl / 2
            or f"seen/{self.agent}" not in snap
        ):
            self.store.publish_view(view)
            self._published = view

    def _record(self, term: int, decision: Decision, now: float) -> None:
        with self._lock:
            previous = self._decision
            self._decision = decision
            self._detection = decision.detection
        changed = previous is None or (previous.verdict, previous.reason) != (
            decision.verdict,
            decision.reason,
        )
        if changed:
            log = logger.info if decision.verdict in ("healthy", "suspect") else logger.warning
            log(
                "service %r: leader %s (term %d): %s; evidence: %s",
                self.service.name,
                self.agent,
                term,
                decision,
                "; ".join(decision.evidence) or "-",
            )
            events.publish(
                [
                    events.Event(
                        "autofailover_decision",
                        self.service.name,
                        decision.master,
                        detail=f"{decision.verdict}: {decision.reason}",
                    )
                ]
            )
        if changed or decision.verdict != "healthy":
            self.store.put_as_leader(
                term,
                {"decision": {**decision.as_dict(), "term": term, "leader": self.agent, "at": now}},
            )

    # ------------------------------------------------------------------ fencing

    def _fence_old_master(
        self,
        term: int,
        views: Mapping[str, ServerView],
        master: str | None,
        snap: Mapping[str, Any],
    ) -> None:
        """The leader (only) fences the old master of the last, unacknowledged failover.

        Only when the observations single out another master, reachable and writable: an
        outcome alone, or observations that name no master, never make a server read-only
        (it may be the only master there is).  The outcome must be the one the history
        records (same term), and an acknowledgement retires it.
        """
        outcome = snap.get("outcome")
        hist = snap.get("history")
        if not outcome or outcome.get("ok") is not True or not hist:
            return
        if hist.get("acknowledged") is not False or hist.get("term") != outcome.get("term"):
            return
        old = outcome.get("old_master")
        view = views.get(old) if isinstance(old, str) else None
        if view is None or not view.reachable or view.read_only or master is None or old == master:
            return
        current = views.get(master)
        if current is None or not current.reachable or current.read_only:
            return
        ds = self.service.datasource(view.name)
        step = f"fence {ds.name}"
        try:
            self._take_over(term, views, step)
            done = fence(
                ds,
                self._creds,
                self.service.probe_timeout,
                self._address,
                self._leader_session(term, step),
            )
        except (pymysql.err.MySQLError, OSError, NotLeading) as exc:  # tried again next round
            logger.warning("service %r: could not fence %s: %s", self.service.name, ds.name, exc)
            return
        logger.warning(
            "service %r: old master fenced by %s: %s", self.service.name, self.agent, done
        )
        self.store.put_as_leader(
            term,
            {
                "fenced": {
                    "datasource": ds.name,
                    "by": self.agent,
                    "term": term,
                    "at": self._clock(),
                    "detail": done,
                }
            },
        )
        events.publish([events.Event("master_fenced", self.service.name, ds.name, detail=done)])

    # ------------------------------------------------------------------ the failover

    def _settle_interrupted(
        self,
        term: int,
        views: Mapping[str, ServerView],
        master: str | None,
        record: Mapping[str, Any] | None,
    ) -> bool:
        """A failover record left by an earlier leader; ``True`` when a failover may run.

        - another master observed, reachable and writable: the failover completed;
        - its steps went past the point of no return (or stopped a candidate's
          replication, or changed its semi-sync): only an operator finishes it, automation
          is blocked and says why;
        - else what it froze is restored (``START SLAVE IO_THREAD`` on each frozen
          replica, a replica whose SQL thread it started is left running and said), and the
          record settled: the old master is the master again, or a new failover may run.
        """
        if record is None or record.get("term") == term:
            return True
        old = record.get("old_master")
        rterm = record.get("term")
        raw_steps = record.get("steps")
        steps = (
            [st for st in raw_steps if isinstance(st, dict)] if isinstance(raw_steps, list) else []
        )
        names = [str(st.get("name", "")) for st in steps]
        now = self._clock()
        mv = views.get(master) if master is not None else None
        if master is not None and master != old and mv and mv.reachable and not mv.read_only:
            detail = (
                f"the failover of term {rterm} was interrupted; observed: {master} is the master"
            )
            outcome = {
                "service": self.service.name,
                "ok": True,
                "old_master": old,
                "new_master": master,
                "term": rterm,
                "at": now,
                "detail": detail,
            }
            puts: dict[str, Mapping[str, Any]] = {
                "outcome": outcome,
                "history": {"at": now, "term": rterm, "acknowledged": False},
            }
            if self.store.put_as_leader(term, puts, deletes=["failover"]):
                logger.warning("service %r: %s", self.service.name, detail)
            return False
        beyond = [n for n in names if n.startswith(_PAST_NO_RETURN + _NOT_RESTORED)]
        if not isinstance(rterm, int) or isinstance(rterm, bool) or beyond or raw_steps is None:
            why = f"steps {', '.join(beyond)} ran" if beyond else "its record is malformed"
            return self._block_interrupted(term, record, f"{why}: finish it or undo it by hand")
        restored, problems = [], []
        if any(n.startswith("freeze ") for n in names):
            try:
                self._take_over(term, views, "restore what was frozen")
            except NotLeading as exc:
                logger.warning("service %r: %s", self.service.name, exc)
                return False
        for name in names:
            if not name.startswith("freeze "):
                continue
            replica = name[len("freeze ") :]
            view = views.get(replica)
            if view is None or not view.reachable:
                problems.append(f"{replica} is unreachable (its IO thread is stopped)")
                continue
            try:
                restored.append(
                    restart_io_thread(
                        self.service.datasource(replica),
                        self._creds,
                        self.service.probe_timeout,
                        self._address,
                        self._leader_session(term, f"restore {replica}"),
                    )
                )
            except NotLeading as exc:
                logger.warning("service %r: %s", self.service.name, exc)
                return False
            except (pymysql.err.MySQLError, OSError) as exc:
                problems.append(f"{replica}: START SLAVE IO_THREAD failed: {exc}")
        started = [
            n[len("start SQL thread ") :] for n in names if n.startswith("start SQL thread ")
        ]
        if problems:
            return self._block_interrupted(term, record, "; ".join(problems))
        detail = (
            f"the failover of term {rterm} was interrupted before its point of no return; "
            + (f"restored: {'; '.join(restored)}" if restored else "nothing to restore")
            + (f"; SQL thread left running on {', '.join(started)}" if started else "")
        )
        outcome = {
            "service": self.service.name,
            "ok": False,
            "old_master": old,
            "new_master": None,
            "term": rterm,
            "at": now,
            "detail": detail,
        }
        if not self.store.put_as_leader(term, {"outcome": outcome}, deletes=["failover"]):
            return False
        logger.warning("service %r: %s", self.service.name, detail)
        return True

    def _block_interrupted(self, term: int, record: Mapping[str, Any], why: str) -> bool:
        reason = (
            f"the automatic failover of term {record.get('term')} by "
            f"{record.get('leader')} was interrupted: {why}; then acknowledge"
        )
        blocked = {"reason": reason, "at": self._clock(), "term": term}
        if self.store.put_as_leader(term, {"blocked": blocked}):
            logger.error("service %r: automation blocked: %s", self.service.name, reason)
        return False

    # ------------------------------------------------------------------ the leaders' fence

    def _take_over(self, term: int, views: Mapping[str, ServerView] | None, step: str) -> None:
        """Before the first action of ``term``: older leaders' sessions ended everywhere.

        On every server of the service this round saw reachable (all of them when
        ``views`` is ``None``) and not yet swept in this term, connect, check the
        leadership, and end every other session of the failover's account
        (:func:`._observe.end_older_sessions`).  A server that cannot be reached is swept
        by the first connection this leader opens to it (:meth:`_leader_session`, and the
        failover's own connections).  Raises :class:`NotLeading` when the store says no.
        """
        for ds in self.service.datasources:
            with self._lock:
                if self._swept_term == term and ds.name in self._swept:
                    continue
            view = views.get(ds.name) if views is not None else None
            if views is not None and (view is None or not view.reachable):
                continue
            try:
                conn = connect(
                    ds,
                    self._creds,
                    self.service.probe_timeout,
                    self._address,
                    self._leader_session(term, step),
                )
            except (pymysql.err.MySQLError, OSError) as exc:
                logger.info(
                    "service %r: %s: older sessions not ended yet (%s): on its first use",
                    self.service.name,
                    ds.name,
                    exc,
                )
                continue
            with contextlib.suppress(Exception):
                conn.close()

    def _leader_session(self, term: int, step: str) -> OnConnect:
        """What a leader's own connection runs before anything else: the guard (the
        leadership asked again, now that the connection exists), then the sweep."""

        def on_connect(ds: DataSource, conn: pymysql.connections.Connection[Any]) -> None:
            stop = self._may_run(term, step)
            if stop is not None:
                raise NotLeading(f"{step}: not run: {stop}")
            self._end_older_sessions(term, ds, conn)

        return on_connect

    def _end_older_sessions(
        self, term: int, ds: DataSource, conn: pymysql.connections.Connection[Any]
    ) -> None:
        """Once per term and server, on this leader's first connection to it."""
        with self._lock:
            if self._swept_term != term:
                self._swept_term, self._swept = term, set()
            if ds.name in self._swept:
                return
        ended = end_older_sessions(conn, self._creds.user)
        with self._lock:
            if self._swept_term == term:
                self._swept.add(ds.name)
        log = logger.warning if ended else logger.info
        log(
            "service %r: leader %s (term %d): %d older session(s) of %s ended on %s%s",
            self.service.name,
            self.agent,
            term,
            len(ended),
            self._creds.user,
            ds.name,
            f" (KILL CONNECTION {', '.join(map(str, ended))})" if ended else "",
        )

    def _may_run(self, term: int, step: str) -> str | None:
        """The failover's guard: ``None`` to run ``step``, else why not.

        The store saying this agent no longer leads stops every step, rollback steps
        included (the next leader restores what was frozen: :meth:`_settle_interrupted`).
        A store that cannot be reached stops the steps before the point of no return; past
        it (a replica repointed, the new master made writable), leaving half way would
        leave no writable master, so the leader asks again for up to ``lease_ttl``
        seconds and, still without an answer, goes on, loudly: a new leader starts no
        failover over a record that went past that point (it blocks instead).
        """
        past = step.startswith(_PAST_NO_RETURN)
        deadline = time.monotonic() + (self.service.autofailover.lease_ttl if past else 0)
        while True:
            try:
                leads = self.store.is_leader(term)
            except StoreError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                if past:
                    logger.error(  # noqa: TRY400 (no traceback: the reason is enough)
                        "service %r: %s: the store cannot confirm the leadership (term %d), "
                        "but the failover is past its point of no return: going on (%s)",
                        self.service.name,
                        step,
                        term,
                        exc,
                    )
                    return None
                return (
                    f"the store cannot confirm that {self.agent} still leads (term {term}): {exc}"
                )
            return None if leads else f"{self.agent} no longer leads (term {term})"

    def _failover(
        self,
        term: int,
        decision: Decision,
        views: Mapping[str, ServerView] | None = None,
        history: History | None = None,
    ) -> None:
        service = self.service
        started = self._clock()
        try:
            self._take_over(term, views, f"failover of {decision.master}")
        except NotLeading as exc:
            logger.warning("service %r: no failover: %s", service.name, exc)
            return
        record: dict[str, Any] = {
            "term": term,
            "leader": self.agent,
            "old_master": decision.master,
            "started_at": started,
            "decision": decision.as_dict(),
            "steps": [],
        }
        if not self.store.put_as_leader(term, {"failover": record}):
            logger.warning("service %r: %s no longer leads: no failover", service.name, self.agent)
            return
        steps: list[dict[str, Any]] = []

        def report(step: Step) -> None:
            steps.append({"name": step.name, "ok": step.ok, "detail": step.detail})
            with contextlib.suppress(StoreError):
                self.store.put_as_leader(term, {"failover": {**record, "steps": steps[-50:]}})

        def guard(step: str) -> str | None:
            return self._may_run(term, step)

        logger.warning(
            "service %r: automatic failover of %s by %s (term %d)",
            service.name,
            decision.master,
            self.agent,
            term,
        )
        new: str | None = None
        error: TopologyError | None = None
        try:
            failover(
                service,
                timeout=self._failover_timeout,
                report=report,
                guard=guard,
                on_connect=lambda ds, conn: self._end_older_sessions(term, ds, conn),
            )
        except TopologyError as exc:
            error = exc
        views = observe(service, self._creds, service.probe_timeout, self._address)
        master = resolve_master(service, views)
        writable = [v.name for v in views.values() if v.reachable and not v.read_only]
        if master is not None and master != decision.master and writable == [master]:
            new = master
        now = self._clock()
        outcome = {
            "service": service.name,
            "ok": new is not None,
            "old_master": decision.master,
            "new_master": new,
            "term": term,
            "leader": self.agent,
            "at": now,
            "seconds": round(now - started, 3),
            "detail": str(error.args[1]) if error is not None else f"{new} is the master",
            "steps": steps,
        }
        puts: dict[str, Mapping[str, Any]] = {"outcome": outcome}
        deletes = ["failover"]
        if new is not None:
            puts["history"] = {"at": now, "term": term, "acknowledged": False}
            deletes.append("retry")
        elif error is not None and _blocks(error):
            puts["blocked"] = {"reason": error.reason, "at": now, "term": term}
        else:  # tried again when still dead, after a backoff that grows with each failure
            last = history or History()
            settings = service.autofailover
            failures = failures_in_a_row(
                last.failures, last.last_failure_at, now, cap=settings.backoff_cap
            )
            wait = backoff(failures, base=settings.backoff_base, cap=settings.backoff_cap)
            puts["retry"] = {
                "failures": failures,
                "at": now,
                "next_at": now + wait,
                "backoff": wait,
                "term": term,
                "detail": outcome["detail"],
            }
        if not self.store.put_as_leader(term, puts, deletes=deletes):
            logger.error(
                "service %r: outcome not published: %s no longer leads", service.name, self.agent
            )
        log = logger.warning if new is not None else logger.error
        log("service %r: automatic failover: %s", service.name, outcome["detail"])
        events.publish(
            [
                events.Event(
                    "autofailover_outcome",
                    service.name,
                    new,
                    previous=decision.master,
                    detail=str(outcome["detail"]),
                )
            ]
        )
        with self._lock:
            self._detection = replace(self._detection, failed_rounds=0)


#: The failover's steps (sqlrouter.switchover's names) past its point of no return:
#: the undo actions were dropped, a replica may follow the new master.
_PAST_NO_RETURN: Final = ("repoint ", "leave ", "writable ", "reset ", "verify")
#: Steps the procedure undoes when it stops before that point, but only itself: an
#: interrupted failover that ran them is left to an operator.
_NOT_RESTORED: Final = ("stop replication ", "semi-sync ")


def _blocks(error: TopologyError) -> bool:
    """A failover's error that blocks automation until an operator acknowledges it: a
    refusal about the cluster (a diverged candidate, no replica...), not one of the
    moment (the master answers after all, or its death could not be checked:
    :attr:`TopologyError.transient`), which is tried again after the backoff."""
    return error.refused and not error.transient


def _describe(view: ServerView) -> str:
    if not view.reachable:
        return f"unreachable ({view.detail})"
    role = "read-only" if view.read_only else "writable"
    return f"{role}, {view.detail}" if view.detail else role
