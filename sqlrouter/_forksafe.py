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

import os
import threading
import weakref
from typing import Any

__all__ = ["lock"]

_locks: weakref.WeakSet[Any] = weakref.WeakSet()


def lock() -> threading.Lock:
    """A new ``threading.Lock``, released in the child of a ``fork()``."""
    new = threading.Lock()
    _locks.add(new)
    return new


def _reinit_in_child() -> None:
    for held in list(_locks):
        # CPython's own after-fork hook for locks (threading, logging and
        # concurrent.futures use it): the lock is new and unlocked in the child.
        held._at_fork_reinit()


os.register_at_fork(after_in_child=_reinit_in_child)
