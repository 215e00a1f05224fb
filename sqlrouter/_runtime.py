"""What sqlrouter holds per process: the table of watched services, and its life cycle.

One :class:`~sqlrouter.routing.service.ServiceHandle` exists per (registry, service)
and owns that service's monitor, started on first use, which shares its snapshots with
the other processes of the user on this host (:func:`share_dir`); :func:`handle_for` finds or
makes it, remembering which registry each ``registry=`` spec named.  The control
socket is started here when a service is first watched (if the settings enable it).
:func:`shutdown` stops and joins every monitor, the control socket and the DNS
registries' threads; it is registered with :mod:`atexit`, and it never hangs (every
join has a timeout).  After ``fork()`` the child's handles forget the parent's
threads and sockets (:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from . import _forksafe, control
from .registry.base import Registry
from .registry.find import close_dns_registries, find_registry
from .routing.service import REFRESH_EVERY, ServiceHandle
from .routing.shared import Share
from .topology import Credentials

__all__ = [
    "MAX_FOUND",
    "SHARE_ENV_VAR",
    "handle_for",
    "handles",
    "registry_inputs",
    "release",
    "share_dir",
    "shutdown",
    "watched",
]

logger = logging.getLogger("sqlrouter.services")


_lock = _forksafe.lock()
_handles: dict[tuple[int, str], ServiceHandle] = {}
#: Registries found per (spec, $SQLROUTER_REGISTRY, cwd, finder), in the order found.
#: Bounded: past MAX_FOUND the oldest spec is forgotten, and found again by the finder
#: (which hands out the same shared registry object) at its next connect.
_found: collections.OrderedDict[tuple[object, ...], Registry] = collections.OrderedDict()
#: The most registry specs remembered in ``_found``.
MAX_FOUND: Final = 256
#: Increases each time a handle leaves ``_handles`` (:func:`release`, :func:`shutdown`):
#: what a connect kept of a handle found before (``sqlrouter.connection``'s connect
#: plans) is found again.
table_version = 0

#: ``off`` (each process watches for itself) or the directory of the shared snapshots.
SHARE_ENV_VAR: Final = "SQLROUTER_SHARE"
_OFF: Final = frozenset({"0", "off", "false", "no"})
#: The share directory's problems already logged.
_share_warned: set[str] = set()


def share_dir(environ: os._Environ[str] | dict[str, str] = os.environ) -> Path | None:
    """Where this process shares snapshots with the other processes of its user on this
    host (:mod:`sqlrouter.routing.shared`), created if needed; ``None``: not shared.

    ``$SQLROUTER_SHARE``: ``off``, or a directory; by default ``fleet/`` in the control
    socket's directory (``$XDG_RUNTIME_DIR/sqlrouter``, else ``/tmp/sqlrouter-UID``).
    Both must be private (mode 0700, owned by this user): otherwise a WARNING says why
    and this process watches for itself.
    """
    env = environ.get(SHARE_ENV_VAR, "").strip()
    if env.lower() in _OFF:
        return None
    directory = Path(os.path.abspath(Path(env).expanduser())) if env else None
    try:
        if directory is None:
            parent = control.default_socket_dir(environ)
            control.prepare_socket_dir(parent)
            directory = parent / "fleet"
        control.prepare_socket_dir(directory)
    except control.ControlError as exc:
        why = str(exc).replace("control socket directory", "shared snapshot directory", 1)
        if why not in _share_warned:
            _share_warned.add(why)
            logger.warning("%s; each process watches the services for itself", why)
        return None
    return directory


def _where(registry_spec: str | None, find: Callable[[str | None], Registry]) -> tuple[object, ...]:
    """The key of ``_found``: what decides which registry ``registry_spec`` names.

    Which registry a spec names depends on the environment and the directory only when
    the spec is not given or is relative; the registry itself follows changes to its
    file.  Pure: computing it opens nothing.
    """
    relative = registry_spec is None or not os.path.isabs(registry_spec)
    return (
        registry_spec,
        os.environ.get(REGISTRY_ENV_VAR),
        os.getcwd() if relative else "",
        find,
    )


#: The environment variable that names the registry when a URL does not.
REGISTRY_ENV_VAR: Final = "SQLROUTER_REGISTRY"


def registry_inputs(registry_spec: str | None) -> tuple[str | None, str] | None:
    """What, besides ``registry_spec``, decides which registry :func:`handle_for` finds
    for it: ``($SQLROUTER_REGISTRY, the current directory)`` when the spec is not given
    or is relative; ``None`` when it is an absolute path (nothing else matters)."""
    if registry_spec is not None and os.path.isabs(registry_spec):
        return None
    return os.environ.get(REGISTRY_ENV_VAR), os.getcwd()


def handle_for(
    registry_spec: str | None,
    service_name: str,
    credentials: Credentials,
    *,
    find: Callable[[str | None], Registry] = find_registry,
    agent: bool = False,
) -> ServiceHandle:
    """The handle of ``service_name`` in the registry named by ``registry_spec``.

    ``agent``: made for ``sqlrouter agent``, whose monitors take the shared snapshots
    over from application processes.

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
        if now >= handle.refresh_after:
            handle.refresh_after = now + REFRESH_EVERY
            handle.refresh()
        return handle
    service = registry.lookup(service_name)
    created = False
    with _lock:
        handle = _handles.get(key)
        if handle is None:
            directory = share_dir()
            handle = ServiceHandle(
                registry,
                service,
                credentials,
                on_fork_restart=_start_control,
                share=None if directory is None else Share(directory, agent=agent),
            )
            _handles[key] = handle
            created = True
    if created:
        _start_control(handle, always=agent)
    return handle


def _start_control(handle: ServiceHandle, *, always: bool = False) -> None:
    """Start this process's control socket if the settings enable it (``always``: an
    agent's) and it is not running (a process starts watching a service, or a forked
    child first uses one)."""
    if always or os.environ.get(control.ENV_VAR) or handle.registry.control:
        control.on_handle_created(handle, handles=handles, watched=watched, always=always)


def release(handle: ServiceHandle) -> None:
    """Stop watching ``handle``'s service in this process (``sqlrouter agent``, when a
    service leaves its registry): its monitor stops and the table forgets it."""
    global table_version  # noqa: PLW0603 (an int replaced whole: readers take no lock)
    with _lock:
        for key, known in list(_handles.items()):
            if known is handle:
                del _handles[key]
        table_version += 1
    handle.close()


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
    global table_version  # noqa: PLW0603 (an int replaced whole: readers take no lock)
    control.stop()
    with _lock:
        items = list(_handles.values())
        _handles.clear()
        _found.clear()
        table_version += 1
    for handle in items:
        handle.close()
    close_dns_registries()


def _after_fork_in_child() -> None:
    """The child of a ``fork()`` (gunicorn ``--preload``, Celery prefork,
    ``multiprocessing``) has none of the parent's threads: every service it watches
    starts a monitor of its own on first use, and never uses or closes the parent's
    monitoring, heartbeat, control or application sockets."""
    for handle in list(_handles.values()):
        handle.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
