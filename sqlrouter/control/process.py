"""This process's control socket: started when it first watches a service (if the
settings enable it), stopped by :func:`sqlrouter.shutdown`, forgotten in a forked child."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import _forksafe
from ..registry.base import Registry
from ..routing.service import ServiceHandle
from .commands import Handles, Watched
from .config import control_config
from .protocol import ControlError
from .server import ControlServer

__all__ = [
    "current",
    "on_handle_created",
    "stop",
]

logger = logging.getLogger("sqlrouter.control")


_lock = _forksafe.lock()
_server: ControlServer | None = None


def current() -> ControlServer | None:
    """The control server of this process, if one is running."""
    server = _server
    return server if server is not None and server.pid == os.getpid() else None


def _base_dir(registry: Registry) -> Path | None:
    path = getattr(registry, "path", None)
    return path.parent if isinstance(path, Path) else None


def on_handle_created(
    handle: ServiceHandle, *, handles: Handles, watched: Watched, always: bool = False
) -> None:
    """Start the control socket if the settings enable it (or ``always``: ``sqlrouter
    agent``) and it is not running.

    Called by the service table (:mod:`sqlrouter._runtime`) when the process starts
    watching a service, with the table's ``handles`` and ``watched`` for the server to
    act on.  A control socket that cannot start never breaks the application: the
    reason is logged at ERROR on ``sqlrouter.control``.
    """
    global _server  # noqa: PLW0603 - one control socket per process, by design
    registry = handle.registry
    try:
        config = control_config(
            registry.control, base_dir=_base_dir(registry), where=f"registry {registry.describe()}"
        )
    except ControlError as exc:
        logger.error("control socket not started: %s", exc.args[-1])  # noqa: TRY400 - no trace
        return
    if not (config.enabled or always):
        return
    with _lock:
        if _server is not None:
            if _server.running:
                return
            _server.stop(timeout=1.0)  # a dead one
            _server = None
        server = ControlServer(config, handles=handles, watched=watched)
        try:
            server.start()
        except ControlError as exc:
            logger.error("control socket not started: %s", exc.args[-1])  # noqa: TRY400
            return
        _server = server


def _forget_in_child() -> None:
    """After fork(), in the child: the parent's control server is not ours to stop; the
    child starts its own (its own ``PID.sock``) when it first uses a service."""
    global _server
    server, _server = _server, None
    if server is not None:
        server.forget()


os.register_at_fork(after_in_child=_forget_in_child)


def stop(timeout: float = 5.0) -> None:
    """Stop this process's control socket (called by :func:`sqlrouter.shutdown`)."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.stop(timeout)
