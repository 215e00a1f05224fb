"""The process-wide table of watched services: registry lookup, monitors, shutdown.

One :class:`ServiceHandle` exists per (registry, service) and owns that service's
monitor, started on first use.  :func:`shutdown` stops and joins every monitor; it is
registered with :mod:`atexit`, and it never hangs (every join has a timeout).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import sys
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
        self.monitor = Monitor(service, credentials=credentials, refresh=self.current_service)
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

    def current_service(self) -> Service | None:
        """The service as the registry defines it now; ``None`` if it no longer does.

        Cheap (a throttled stat, or a DNS answer kept for its TTL); called on every
        connect and by the monitor before each round.  It compares values rather than
        trusting ``registry.refresh()``'s flag, which only the first of several callers
        sees.
        """
        changed = self.registry.refresh()
        try:
            return self.registry.lookup(self.name)
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
        service = self.current_service()
        if service is not None and service != self.monitor.service:
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
    """Stop every monitor and DNS registry thread, and forget them (bounded time)."""
    with _lock:
        items = list(_handles.values())
        _handles.clear()
    for handle in items:
        handle.close()
    # DNS registries (and dnspython, ~0.15 s to import) are loaded only when one is used.
    dns_registry = sys.modules.get(f"{__package__}.dns_registry")
    if dns_registry is not None:
        dns_registry.close_dns_registries()


atexit.register(shutdown)
