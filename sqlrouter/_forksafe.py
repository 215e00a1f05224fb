"""Locks that stay usable in a child process after ``fork()``.

A process forks with one thread; a lock that another thread held at that instant stays
held forever in the child, whose first sqlrouter call would then hang (gunicorn
``--preload``, Celery prefork and ``multiprocessing`` fork while sqlrouter's monitor and
control threads run).  Every lock of a structure shared between threads is made by
:func:`lock` and released again in the child, before sqlrouter's other after-fork
handlers run: this module registers its handler first, since every module that makes a
lock imports it.

What the child then does with the parent's monitors, control socket and connections is
decided by their owners (``sqlrouter._runtime``, ``sqlrouter.control``): never use or
close what belongs to the parent, start watching anew on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
import weakref
from typing import Any

__all__ = ["abandon", "lock"]

_locks: weakref.WeakSet[Any] = weakref.WeakSet()


def lock() -> threading.Lock:
    """A new ``threading.Lock``, released in the child of a ``fork()``."""
    new = threading.Lock()
    _locks.add(new)
    return new


#: What forked children dropped of their parents' connections (socket objects, buffered
#: readers, results, asyncio transports), kept for the life of the process and never
#: closed nor collected: a buffered reader's lock may be held by one of the parent's
#: threads (one was reading when the process forked), which does not exist in the child,
#: and an asyncio transport would unregister its socket from the parent's event loop
#: (an epoll set the child shares); closing or finalizing them would hang or harm.
#: A TLS connection's objects too: freeing an OpenSSL object (``SSL_free``,
#: ``SSL_CTX_free``) takes OpenSSL's global ex_data lock, which a parent's thread may
#: have held at the fork (seen: a child spinning for ever in ``SSL_CTX_free`` under its
#: after-fork handler).  The list itself is given a reference that is never released,
#: so that not even the interpreter's shutdown frees what it holds.
_ABANDONED: list[tuple[object, ...]] = []
ctypes.pythonapi.Py_IncRef(ctypes.py_object(_ABANDONED))


def abandon(sock: socket.socket | None, *keep: object) -> None:
    """In a forked child: keep ``sock`` and ``keep`` (a parent's connection's objects)
    for ever, never closed; only this process's copy of ``sock``'s descriptor is
    closed, without a word to the server."""
    _ABANDONED.append((sock, *keep))
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            os.close(sock.detach())


def _reinit_in_child() -> None:
    for held in list(_locks):
        # CPython's own after-fork hook for locks (threading, logging and
        # concurrent.futures use it): the lock is new and unlocked in the child.
        held._at_fork_reinit()


os.register_at_fork(after_in_child=_reinit_in_child)
