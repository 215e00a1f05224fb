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
import time
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = ["FORK_WAIT", "abandon", "lock", "tls_section"]

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


#: The longest a ``fork()`` waits for sqlrouter's threads to leave their TLS sections
#: (a probe connecting to a frozen server can take its whole ``probe_timeout``).
FORK_WAIT: float = 2.0


class _Sections:
    """sqlrouter's threads inside :func:`tls_section`, and whether a fork waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.active = 0
        self.forking = False


_sections = _Sections()


@contextlib.contextmanager
def tls_section() -> Iterator[None]:
    """A stretch in which this thread (one of sqlrouter's own: the monitor's probes,
    the heartbeat) opens or frees connections, so creates or frees OpenSSL objects.

    OpenSSL takes a global lock to create or free them; a ``fork()`` while one of the
    process's threads holds it leaves it held for ever in the child, whose first TLS
    connection then hangs.  A fork waits (at most :data:`FORK_WAIT` seconds) until no
    thread is in such a section, and none enters one until it is done.  The
    application's own threads are not covered: fork before they connect."""
    s = _sections
    with s.cond:
        while s.forking:
            s.cond.wait()
        s.active += 1
    try:
        yield
    finally:
        with s.cond:
            s.active -= 1
            if not s.active:
                s.cond.notify_all()


def _before_fork() -> None:
    s = _sections
    s.cond.acquire()  # held through the fork: no thread enters a section meanwhile
    s.forking = True
    deadline = time.monotonic() + FORK_WAIT
    while s.active and (left := deadline - time.monotonic()) > 0:
        s.cond.wait(left)


def _after_fork_in_parent() -> None:
    s = _sections
    s.forking = False
    s.cond.notify_all()
    s.cond.release()


def _reinit_in_child() -> None:
    global _sections  # noqa: PLW0603 - the parent's, held by the fork, is not this one's
    _sections = _Sections()
    for held in list(_locks):
        # CPython's own after-fork hook for locks (threading, logging and
        # concurrent.futures use it): the lock is new and unlocked in the child.
        held._at_fork_reinit()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_reinit_in_child
)
