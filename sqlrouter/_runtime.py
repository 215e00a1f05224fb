"""The process-wide table of watched services: registry lookup, monitors, shutdown.

One :class:`ServiceHandle` exists per (registry, service) and owns that service's
monitor, started on first use.  :func:`shutdown` stops and joins every monitor; it is
registered with :mod:`atexit`, and it never hangs (every join has a timeout).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from . import _forksafe, events
from .errors import ProgrammingError
from .registry.file import Registry, find_registry
from .routing.health import Snapshot
from .routing.monitor import Monitor
from .topology import Credentials, Service

__all__ = ["MAX_FOUND", "ServiceHandle", "handle_for", "handles", "shutdown", "watched"]

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

#: How long the first connect to a service waits for the monitor's first round.
FIRST_ROUND_TIMEOUT: Final = 5.0


class ServiceHandle:
    """A service as this process watches it: its registry, its monitor, its counters."""

    def __init__(self, registry: Registry, service: Service, credentials: Credentials) -> None:
        self.registry = registry
        self.name = service.name
        self.monitor = Monitor(
            service,
            credentials=credentials,
            refresh=self._follow_registry,
            on_snapshot=self._on_snapshot,
        )
        self._turn = itertools.count()
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
        # The open connections of this process to this service (weakly held: a
        # connection dropped without close() simply disappears).
        self._connections: weakref.WeakSet[Invalidatable] = weakref.WeakSet()
        #: This is a forked child's copy, not used there yet (see after_fork).
        self._forked = False

    # -- open connections ------------------------------------------------------------

    def opened(self, conn: Invalidatable) -> None:
        """Register an open connection (called by the connection after it connects)."""
        with self._lock:
            self._connections.add(conn)

    def closed(self, conn: Invalidatable) -> None:
        with self._lock:
            self._connections.discard(conn)

    def open_connections(self) -> dict[str, int]:
        """How many open connections this process has per datasource."""
        with self._lock:
            conns = list(self._connections)
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
        found = events.diff(previous, current)
        with self._lock:
            conns = list(self._connections)
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
            for conn in conns:
                if conn.datasource_name == target and (
                    event.name != "master_changed" or conn.writes_to_master
                ):
                    conn.invalidate(why, at_transaction_boundary=at_boundary)
        events.publish(found)

    def __repr__(self) -> str:
        return f"<ServiceHandle {self.name!r} from {self.registry.describe()} {self.monitor!r}>"

    @property
    def service(self) -> Service:
        return self.monitor.service

    def next_turn(self) -> int:
        """A counter for spreading connections over replicas (atomic under the GIL)."""
        return next(self._turn)

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
        monitor = self.monitor
        snap = monitor.snapshot
        after = monitor.offer_credentials(credentials) if credentials is not None else None
        if after is None:
            if time.monotonic() - snap.taken_at <= snap.max_age:
                return snap
            after = snap.generation
        if not monitor.running:
            monitor.start()
            if self._forked:
                self._forked = False
                _start_control(self)
        return monitor.wait_for_round(after=after, timeout=timeout)

    def after_fork(self) -> None:
        """In a forked child, before anything else runs: the monitor forgets the parent's
        thread and connections, and this process's copies of the open connections are
        closed (their sockets are the parent's) and marked: each raises or moves at its
        next use (see ``Connection.inherited``)."""
        self.monitor.after_fork()
        self._forked = True
        for conn in list(self._connections):
            conn.inherited(os.getppid())
        self._connections = weakref.WeakSet()

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


_lock = _forksafe.lock()
_handles: dict[tuple[int, str], ServiceHandle] = {}
#: Registries found per (spec, $SQLROUTER_REGISTRY, cwd, finder), in the order found.
#: Bounded: past MAX_FOUND the oldest spec is forgotten, and found again by the finder
#: (which hands out the same shared registry object) at its next connect.
_found: collections.OrderedDict[tuple[object, ...], Registry] = collections.OrderedDict()
#: The most registry specs remembered in ``_found``.
MAX_FOUND: Final = 256
_next_refresh: dict[tuple[int, str], float] = {}


def _where(registry_spec: str | None, find: Callable[[str | None], Registry]) -> tuple[object, ...]:
    """The key of ``_found``: what decides which registry ``registry_spec`` names.

    Which registry a spec names depends on the environment and the directory only when
    the spec is not given or is relative; the registry itself follows changes to its
    file.  Pure: computing it opens nothing.
    """
    relative = registry_spec is None or not os.path.isabs(registry_spec)
    return (
        registry_spec,
        os.environ.get("SQLROUTER_REGISTRY"),
        os.getcwd() if relative else "",
        find,
    )


def handle_for(
    registry_spec: str | None,
    service_name: str,
    credentials: Credentials,
    *,
    find: Callable[[str | None], Registry] = find_registry,
) -> ServiceHandle:
    """The handle of ``service_name`` in the registry named by ``registry_spec``.

    Unknown services and missing registries raise :class:`ProgrammingError` (from the
    registry layer) with the known services or the places looked at.
    """
    where = _where(registry_spec, find)
    registry = _found.get(where)
    if registry is None:
        registry = find(registry_spec)
        with _lock:
            _found[where] = registry
            while len(_found) > MAX_FOUND:
                _found.popitem(last=False)
    key = (id(registry), service_name)
    handle = _handles.get(key)
    if handle is not None:
        # The monitor follows the registry every round; a connect looks at most twice
        # a second, so that a process that connects a lot does not stat for each one.
        now = time.monotonic()
        if now >= _next_refresh.get(key, 0.0):
            _next_refresh[key] = now + 0.5
            handle.refresh()
        return handle
    service = registry.lookup(service_name)
    created = False
    with _lock:
        handle = _handles.get(key)
        if handle is None:
            handle = ServiceHandle(registry, service, credentials)
            _handles[key] = handle
            created = True
    if created:
        _start_control(handle)
    return handle


def _start_control(handle: ServiceHandle) -> None:
    """Start this process's control socket if the settings enable it and it is not
    running (a process starts watching a service, or a forked child first uses one)."""
    if os.environ.get("SQLROUTER_CONTROL") or handle.registry.control:
        # The control socket (docs/control.md) is opt-in: loaded only when configured.
        from .control import server as control  # noqa: PLC0415 - control builds on this module

        control.on_handle_created(handle)


def handles() -> list[ServiceHandle]:
    with _lock:
        return list(_handles.values())


def watched(registry_spec: str | None, service_name: str) -> ServiceHandle | None:
    """The handle of ``service_name`` that ``connect()`` with ``registry_spec`` uses now.

    Only looks at what this process found already: it never calls a finder, so it opens
    no file, resolves no name and creates no registry (what the control socket's
    ``explain`` needs: a request must not make the process touch what its own
    configuration did not name).  ``None`` when no connect of this process named the
    service's registry that way.
    """
    with _lock:
        registry = _found.get(_where(registry_spec, find_registry))
        if registry is None:
            return None
        return _handles.get((id(registry), service_name))


def shutdown() -> None:
    """Stop every monitor and DNS registry thread, and forget them (bounded time)."""
    control = sys.modules.get(f"{__package__}.control")
    if control is not None:
        control.stop()
    with _lock:
        items = list(_handles.values())
        _handles.clear()
        _found.clear()
        _next_refresh.clear()
    for handle in items:
        handle.close()
    # DNS registries (and dnspython, ~0.15 s to import) are loaded only when one is used.
    dns_registry = sys.modules.get(f"{__package__}.registry.dns")
    if dns_registry is not None:
        dns_registry.close_dns_registries()


def _after_fork_in_child() -> None:
    """The child of a ``fork()`` (gunicorn ``--preload``, Celery prefork,
    ``multiprocessing``) has none of the parent's threads: every service it watches
    starts a monitor of its own on first use, and never uses or closes the parent's
    monitoring, heartbeat, control or application sockets."""
    for handle in list(_handles.values()):
        handle.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
