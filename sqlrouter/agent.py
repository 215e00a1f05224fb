"""``sqlrouter agent``: one long-running process that holds a host's monitors.

Application processes of one user on one host share their monitors' snapshots
(:mod:`sqlrouter.routing.shared`): one of them probes and publishes, the others read.
Short-lived workers (a cron job, a task that forks a worker per job) would each find no
warm snapshot and elect a publisher that exits with them.  The agent watches every
service of a registry for as long as it runs: it publishes, taking over from an
application process, and nothing takes over from it while it lives.  Queries never pass
through it; if it stops, the application processes elect one of themselves again.

:class:`Agent` is the process's service table (one
:class:`~sqlrouter.routing.service.ServiceHandle` per service, made by the process's
table in :mod:`sqlrouter._runtime`, so that the control socket and ``sqlrouter admin``
see them), its own control socket, the registry followed for services added or removed,
and a list of :class:`Task` objects: long-running parts started after the monitors and
stopped before them, in reverse order (a health endpoint, automatic failover).
:meth:`Agent.run` blocks until SIGTERM or SIGINT, then stops everything within a bounded
time.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Final, Protocol

from . import _runtime
from .errors import ProgrammingError
from .registry.base import Registry
from .registry.find import find_registry
from .routing.service import ServiceHandle

__all__ = ["REGISTRY_POLL", "Agent", "Task"]

logger = logging.getLogger("sqlrouter.agent")

#: Seconds between two looks at the registry for services added or removed.
REGISTRY_POLL: Final = 2.0


class Task(Protocol):
    """A long-running part of the agent (started after the monitors, stopped first).

    ``start`` must return promptly (start a thread); ``stop`` must return within
    ``timeout`` seconds.  Both are called from the thread that runs the agent.
    """

    name: str

    def start(self, agent: Agent) -> None: ...

    def stop(self, timeout: float) -> None: ...


class Agent:
    """The monitors of every service of ``registry`` (a ``registry=`` spec: a file path,
    ``dns:DOMAIN``...), published for the processes of this user on this host.

    Every service needs a monitor account in the registry (``[services.NAME.monitor]``):
    the agent has no application connection whose credentials it could use.
    """

    def __init__(
        self,
        registry: str,
        *,
        services: tuple[str, ...] = (),
        find: Callable[[str | None], Registry] = find_registry,
        poll: float = REGISTRY_POLL,
    ) -> None:
        self.registry_spec = registry
        #: Only these services (empty: every service of the registry).
        self.only = services
        self._find = find
        self._poll = poll
        self._registry: Registry | None = None
        self._handles: dict[str, ServiceHandle] = {}
        self._tasks: list[Task] = []
        self._started: list[Task] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self._registry is not None else "stopped"
        return (
            f"<Agent {self.registry_spec!r} {state} services={sorted(self._handles)} "
            f"tasks={[t.name for t in self._tasks]}>"
        )

    @property
    def services(self) -> Mapping[str, ServiceHandle]:
        """The service table: the handle of each watched service, by name."""
        with self._lock:
            return dict(self._handles)

    def add_task(self, task: Task) -> None:
        """Attach a long-running part (before :meth:`start`, or started at once)."""
        self._tasks.append(task)
        if self._registry is not None:
            task.start(self)
            self._started.append(task)

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Watch every service of the registry, start the control socket, then the tasks.

        Raises :class:`ProgrammingError` when the registry cannot be read, names none of
        the services asked for, or a service has no monitor account.
        """
        registry = self._find(self.registry_spec)
        self._registry = registry
        names = self._wanted(registry)
        if not names:
            raise ProgrammingError(
                0, f"sqlrouter agent: {registry.describe()} defines no service to watch"
            )
        for name in names:
            self._watch(name)
        for task in self._tasks:
            task.start(self)
            self._started.append(task)
        logger.info(
            "agent: watching %s from %s (pid %d)",
            ", ".join(sorted(self._handles)),
            registry.describe(),
            os.getpid(),
        )

    def _wanted(self, registry: Registry) -> list[str]:
        known = registry.services()
        if not self.only:
            return known
        missing = [name for name in self.only if name not in known]
        if missing:
            raise ProgrammingError(
                0,
                f"sqlrouter agent: {registry.describe()} has no service "
                f"{', '.join(map(repr, missing))} (known: {', '.join(known) or 'none'})",
            )
        return list(self.only)

    def _watch(self, name: str) -> None:
        registry = self._registry
        if registry is None:
            raise ProgrammingError(0, "sqlrouter agent: not started")
        service = registry.lookup(name)
        creds = service.monitor_credentials
        if creds is None:
            raise ProgrammingError(
                0,
                f"sqlrouter agent: service {name!r} ({service.source}) names no monitor "
                f"account: give [services.{name}.monitor] user and password in the "
                "registry (the agent makes no application connection to borrow one from)",
            )
        handle = _runtime.handle_for(self.registry_spec, name, creds, find=self._find, agent=True)
        handle.snapshot()  # starts the monitor (and waits for its first round, bounded)
        with self._lock:
            self._handles[name] = handle

    def follow_registry(self) -> None:
        """Watch services added to the registry; stop watching removed ones."""
        registry = self._registry
        if registry is None:
            return
        registry.refresh(force=True)  # every REGISTRY_POLL seconds: one stat
        try:
            names = set(self._wanted(registry))
        except ProgrammingError as exc:
            logger.warning("agent: %s", exc.args[-1])
            return
        for name in sorted(names - set(self._handles)):
            try:
                self._watch(name)
            except ProgrammingError as exc:
                logger.warning("agent: not watching %r: %s", name, exc.args[-1])
            else:
                logger.info("agent: service %r added to the registry: watching it", name)
        for name in sorted(set(self._handles) - names):
            with self._lock:
                handle = self._handles.pop(name)
            _runtime.release(handle)
            logger.info("agent: service %r left the registry: no longer watched", name)

    def run(self, *, install_signals: bool = True) -> None:
        """Start, then block until :meth:`request_stop` (SIGTERM, SIGINT), then stop."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        try:
            while not self._stopping.wait(self._poll):
                self.follow_registry()
        finally:
            self.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("agent: %s received: stopping", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the tasks (last started first), then the monitors (which hand the
        snapshots over: an application process takes over at its next poll) and the
        control socket.  Bounded: each part gets what is left of ``timeout``."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while self._started:
            task = self._started.pop()
            try:
                task.stop(max(0.1, deadline - time.monotonic()))
            except Exception:
                logger.exception("agent: stopping task %r failed", task.name)
        with self._lock:
            self._handles.clear()
        self._registry = None
        _runtime.shutdown()
