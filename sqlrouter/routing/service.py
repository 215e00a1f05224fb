"""A service as this process watches it: its monitor, its registry, its connections.

One :class:`ServiceHandle` exists per (registry, service) in a process (the table of
them is :mod:`sqlrouter._runtime`).  It owns the service's monitor, follows the
registry's changes, holds the process's open connections to the service (weakly) and
invalidates them when a monitor round shows that their server changed role, went down
or was taken offline.  It knows connections only through :class:`Invalidatable`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from .. import _forksafe, events, telemetry
from ..errors import ProgrammingError
from ..registry.base import Registry
from ..topology import Credentials, Service
from .changes import diff
from .health import Snapshot
from .monitor import Monitor
from .router import Decision, Policy, Route, choose, logins_refused
from .shared import Share

__all__ = ["FIRST_ROUND_TIMEOUT", "REFRESH_EVERY", "Invalidatable", "ServiceHandle"]

logger = logging.getLogger("sqlrouter.services")


class Invalidatable(Protocol):
    """What the service table needs of a connection."""

    @property
    def datasource_name(self) -> str | None: ...

    @property
    def writes_to_master(self) -> bool: ...

    def invalidate(self, reason: str, *, at_transaction_boundary: bool) -> None: ...

    def check_route(self, snapshot: Snapshot) -> None: ...

    def inherited(self, parent: int) -> None: ...


#: Events that invalidate the connections bound to a datasource: (reason, wait for
#: the transaction boundary).  A demoted master's connections fail at their next use.
_INVALIDATING: Final[dict[str, tuple[str, bool]]] = {
    "master_changed": ("{ds} is no longer the master (now: {new})", False),
    "datasource_down": ("{ds} went down ({detail})", False),
    "datasource_offline": ("{ds} was taken offline by an operator", True),
}


_CAUSES: Final[dict[str, telemetry.InvalidationCause]] = {
    "master_changed": "master_changed",
    "datasource_down": "datasource_down",
    "datasource_offline": "datasource_offline",
}

#: The size of a handle's table of connections at which dead references are first swept.
_SWEEP_FIRST: Final = 64

#: How long the first connect to a service waits for the monitor's first round.
FIRST_ROUND_TIMEOUT: Final = 5.0

#: The monitor follows the registry every round; connects look at it at most this often
#: (seconds: see :attr:`ServiceHandle.refresh_after`), so that a process that connects a
#: lot does not stat the file for each one.
REFRESH_EVERY: Final = 0.5


class ServiceHandle:
    """A service as this process watches it: its registry, its monitor, its counters."""

    def __init__(
        self,
        registry: Registry,
        service: Service,
        credentials: Credentials,
        *,
        on_fork_restart: Callable[[ServiceHandle], None] | None = None,
        share: Share | None = None,
    ) -> None:
        self.registry = registry
        self.name = service.name
        self.monitor = Monitor(
            service,
            credentials=credentials,
            refresh=self._follow_registry,
            on_snapshot=self._on_snapshot,
            share=share,
        )
        self._turn = itertools.count()
        #: The turn of the next connect (spreads connects over the replicas: see
        #: router.choose).
        self.next_turn = self._turn.__next__
        #: ``time.monotonic()`` from which a connect calls :meth:`refresh` again.
        self.refresh_after = 0.0
        # The routes decided on one snapshot, by policy (see router.choose): a connect
        # on the same snapshot with the same policy only picks its turn.
        self._routes: tuple[Snapshot | None, dict[Policy, Route]] = (None, {})
        # The last snapshot in which logins_refused() found no refusal.
        self._logins_ok: Snapshot | None = None
        self._lock = _forksafe.lock()
        # Settings an operator changed in this process (`sqlrouter admin set`), with the
        # registry's definition of the service they were made against.
        self._overrides: tuple[Service, dict[str, Any]] | None = None
        # Serializes changes of the monitor's service (registry followers, override());
        # the version tells a follower that override() ran while it read the registry.
        self._follow_lock = _forksafe.lock()
        self._settings_version = 0
        #: The service last given to the monitor (which applies it at its next round).
        self.wanted: Service = service
        # The open connections of this process to this service, weakly held by id (a
        # plain dict: a WeakSet costs a connect and a close several Python calls).  A
        # connection dropped without close() leaves a dead reference, swept when the
        # table has grown to ``_sweep_at``.
        self._connections: dict[int, weakref.ref[Invalidatable]] = {}
        self._sweep_at = _SWEEP_FIRST
        #: This is a forked child's copy, not used there yet (see after_fork).
        self._forked = False
        #: Called when a forked child first uses this service (its monitor restarts
        #: there): the process-wide table starts the child's own control socket.
        self._on_fork_restart = on_fork_restart

    # -- open connections ------------------------------------------------------------

    def opened(self, conn: Invalidatable) -> None:
        """Register an open connection (called by the connection after it connects)."""
        with self._lock:
            connections = self._connections
            connections[id(conn)] = weakref.ref(conn)
            if len(connections) >= self._sweep_at:
                for key, ref in list(connections.items()):
                    if ref() is None:
                        connections.pop(key, None)
                self._sweep_at = max(_SWEEP_FIRST, 2 * len(connections))

    def closed(self, conn: Invalidatable) -> None:
        # An entry under this id is this connection's, or one dead (whose id was reused).
        # No lock: one dict operation, and a sweep (under the lock, in opened) only ever
        # drops dead entries, which no opened() can replace meanwhile.
        self._connections.pop(id(conn), None)

    def _live(self) -> list[Invalidatable]:
        """The open connections (the caller holds the lock)."""
        return [conn for ref in list(self._connections.values()) if (conn := ref()) is not None]

    def open_connections(self) -> dict[str, int]:
        """How many open connections this process has per datasource."""
        with self._lock:
            conns = self._live()
        counts: dict[str, int] = {}
        for conn in conns:
            name = conn.datasource_name
            if name is not None:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def _on_snapshot(self, previous: Snapshot, current: Snapshot) -> None:
        """Runs in the monitor's thread after each round (and each operator change):
        invalidate what the change made wrong, then publish the events.

        Every open relaxed connection checks its server against its own policy (its
        ``max_lag``, a switchover that made its replica the master...): one that no
        longer fits moves at its next transaction start.
        """
        found = diff(previous, current)
        with self._lock:
            conns = self._live()
        for conn in conns:
            conn.check_route(current)
        if not found:
            return
        for event in found:
            reason, at_boundary = _INVALIDATING.get(event.name, (None, False))
            target = event.previous if event.name == "master_changed" else event.datasource
            if reason is None or target is None:
                continue
            why = reason.format(ds=target, detail=event.detail, new=event.datasource or "none")
            count = 0
            for conn in conns:
                if conn.datasource_name == target and (
                    event.name != "master_changed" or conn.writes_to_master
                ):
                    conn.invalidate(why, at_transaction_boundary=at_boundary)
                    count += 1
            if count and telemetry.observers:
                cause = _CAUSES[event.name]
                telemetry.emit(telemetry.Invalidated(self.name, target, cause, count))
        events.publish(found)

    def __repr__(self) -> str:
        return f"<ServiceHandle {self.name!r} from {self.registry.describe()} {self.monitor!r}>"

    @property
    def service(self) -> Service:
        return self.monitor.service

    def logins_refused(self, snapshot: Snapshot) -> tuple[int, str] | None:
        """:func:`~.router.logins_refused`, remembered for the last snapshot without a
        refusal (snapshots are immutable: the answer stays)."""
        if snapshot is self._logins_ok:
            return None
        refused = logins_refused(snapshot)
        if refused is None:
            self._logins_ok = snapshot
        return refused

    def choose(self, snapshot: Snapshot, policy: Policy, now: float | None = None) -> Decision:
        """The router's decision for the next connect (:func:`~.router.choose` at the
        next turn, at ``now``: the clock by default), with the routes already decided on
        ``snapshot`` kept."""
        kept, routes = self._routes
        if kept is not snapshot:
            routes = {}
            self._routes = (snapshot, routes)  # one assignment: atomic under the GIL
        return choose(
            snapshot,
            policy,
            turn=next(self._turn),
            now=time.monotonic() if now is None else now,
            routes=routes,
        )

    def snapshot(
        self, credentials: Credentials | None = None, *, timeout: float = FIRST_ROUND_TIMEOUT
    ) -> Snapshot:
        """A snapshot to route on: the current one while it is fresh.

        Otherwise (no round yet, the first use after ``fork()``, a monitor that died or
        stalls) the monitor is (re)started and this waits up to ``timeout`` seconds for
        its next round; what it returns may still be stale, and the router then trusts
        none of it.  ``credentials`` are those of the connect() asking: the monitor
        takes them if its own have not logged in (see ``Monitor.offer_credentials``),
        and this waits for a round made with them.
        """
        snap, after = self._fresh(credentials)
        if after is None:
            return snap
        monitor = self.monitor
        if not monitor.running:
            monitor.start()
            if self._forked:
                self._forked = False
                if self._on_fork_restart is not None:
                    self._on_fork_restart(self)
        return monitor.wait_for_round(after=after, timeout=timeout)

    def fresh_snapshot(self, credentials: Credentials | None = None) -> Snapshot | None:
        """The snapshot :meth:`snapshot` would return at once, without waiting; ``None``
        when it would wait for a round (asyncio code waits for it in a thread)."""
        # _fresh, inlined: every connect asks.
        monitor = self.monitor
        snap = monitor.snapshot
        if credentials is not None and monitor.offer_credentials(credentials) is not None:
            return None
        return snap if time.monotonic() - snap.taken_at <= snap.max_age else None

    def _fresh(self, credentials: Credentials | None) -> tuple[Snapshot, int | None]:
        """The current snapshot, and the generation after which a round must be waited
        for (``None``: the snapshot is fresh and made with usable credentials)."""
        monitor = self.monitor
        snap = monitor.snapshot
        after = monitor.offer_credentials(credentials) if credentials is not None else None
        if after is None:
            if time.monotonic() - snap.taken_at <= snap.max_age:
                return snap, None
            after = snap.generation
        return snap, after

    def after_fork(self) -> None:
        """In a forked child, before anything else runs: the monitor forgets the parent's
        thread and connections, and this process's copies of the open connections are
        closed (their sockets are the parent's) and marked: each raises or moves at its
        next use (see ``Connection.inherited``)."""
        self.monitor.after_fork()
        self._forked = True
        for conn in self._live():
            conn.inherited(os.getppid())
        self._connections = {}
        self._sweep_at = _SWEEP_FIRST

    def current_service(self) -> Service | None:
        """The service as the registry defines it now; ``None`` if it no longer does.

        Cheap (a throttled stat, or a DNS answer kept for its TTL); called on every
        connect and by the monitor before each round.  It compares values rather than
        trusting ``registry.refresh()``'s flag, which only the first of several callers
        sees.
        """
        changed = self.registry.refresh()
        try:
            return self._overridden(self.registry.lookup(self.name))
        except ProgrammingError:
            if changed:
                logger.warning(
                    "service %r disappeared from %s; keeping its last definition",
                    self.name,
                    self.registry.describe(),
                )
            return None

    def refresh(self) -> None:
        """Follow a changed registry (cheap: see :meth:`current_service`)."""
        version = self._settings_version
        service = self.current_service()
        if service is None or service == self.wanted:
            return
        with self._follow_lock:
            if version != self._settings_version or service == self.wanted:
                return  # an operator changed a setting meanwhile: override() applied it
            logger.info("service %r: registry changed, following it", self.name)
            self.wanted = service
            self.monitor.update_service(service)

    def _follow_registry(self) -> Service | None:
        """The monitor's registry hook: follow it here, under the lock (None: applied)."""
        self.refresh()
        return None

    def close(self) -> None:
        self.monitor.stop()

    # -- settings changed by an operator (control socket) ----------------------------

    @property
    def overrides(self) -> dict[str, Any]:
        """The settings an operator changed in this process (``{}``: none)."""
        current = self._overrides
        return dict(current[1]) if current is not None else {}

    def override(self, **changes: Any) -> Service:
        """Change settings of the service (``max_lag=2.0``) in this process only.

        ``None`` gives a setting back to the registry.  The changes hold until the
        registry's definition of the service changes.  Returns the service the monitor
        uses from its next round; :class:`ProgrammingError` if the registry lost it.
        """
        base = self.registry.lookup(self.name)
        with self._follow_lock:
            current = self._overrides
            merged = dict(current[1]) if current is not None and current[0] == base else {}
            for key, value in changes.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            with self._lock:
                self._overrides = (base, merged) if merged else None
            self._settings_version += 1
            service = dataclasses.replace(base, **merged)
            self.wanted = service
            self.monitor.update_service(service)
        return service

    def _overridden(self, service: Service) -> Service:
        current = self._overrides
        if current is None:
            return service
        base, changes = current
        if base is not service and base != service:
            with self._lock:
                if self._overrides is current:
                    self._overrides = None
            logger.info(
                "service %r: the registry changed its definition; the operator's %s "
                "no longer applies",
                self.name,
                ", ".join(f"{k}={v!r}" for k, v in changes.items()),
            )
            return service
        return dataclasses.replace(service, **changes)
