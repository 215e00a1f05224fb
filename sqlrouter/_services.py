"""The process-wide table of watched services: registry lookup, monitors, shutdown.

One :class:`ServiceHandle` exists per (registry, service) and owns that service's
monitor, started on first use.  :func:`shutdown` stops and joins every monitor; it is
registered with :mod:`atexit`, and it never hangs (every join has a timeout).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Final

from .errors import ProgrammingError
from .health import Snapshot
from .monitor import Monitor
from .registry import Registry, find_registry
from .topology import Credentials, Service

__all__ = ["ServiceHandle", "handle_for", "handles", "shutdown"]

logger = logging.getLogger("sqlrouter.services")

#: How long the first connect to a service waits for the monitor's first round.
FIRST_ROUND_TIMEOUT: Final = 5.0


class ServiceHandle:
    """A service as this process watches it: its registry, its monitor, its counters."""

    def __init__(self, registry: Registry, service: Service, credentials: Credentials) -> None:
        self.registry = registry
        self.name = service.name
        self.monitor = Monitor(service, credentials=credentials)
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ServiceHandle {self.name!r} from {self.registry.describe()} {self.monitor!r}>"

    @property
    def service(self) -> Service:
        return self.monitor.service

    def next_turn(self) -> int:
        """A counter for spreading connections over replicas (atomic under the GIL)."""
        return next(self._turn)

    def snapshot(self) -> Snapshot:
        """The current snapshot, waiting for the monitor's first round if needed."""
        snap = self.monitor.snapshot
        if snap.generation == 0:
            self.monitor.start()
            snap = self.monitor.wait_for_round(after=0, timeout=FIRST_ROUND_TIMEOUT)
        return snap

    def refresh(self) -> None:
        """Follow a changed registry file (cheap: a throttled stat)."""
        if self.registry.refresh():
            try:
                service = self.registry.lookup(self.name)
            except ProgrammingError:
                logger.warning(
                    "service %r disappeared from %s; keeping its last definition",
                    self.name,
                    self.registry.describe(),
                )
                return
            if service != self.monitor.service:
                logger.info("service %r: registry changed, following it", self.name)
                self.monitor.update_service(service)

    def close(self) -> None:
        self.monitor.stop()


_lock = threading.Lock()
_handles: dict[tuple[int, str], ServiceHandle] = {}


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
    registry = find(registry_spec)
    key = (id(registry), service_name)
    handle = _handles.get(key)
    if handle is not None:
        handle.refresh()
        return handle
    service = registry.lookup(service_name)
    with _lock:
        handle = _handles.get(key)
        if handle is None:
            handle = ServiceHandle(registry, service, credentials)
            _handles[key] = handle
    return handle


def handles() -> list[ServiceHandle]:
    with _lock:
        return list(_handles.values())


def shutdown() -> None:
    """Stop every monitor of this process and forget the services (bounded time)."""
    with _lock:
        items = list(_handles.values())
        _handles.clear()
    for handle in items:
        handle.close()


atexit.register(shutdown)
