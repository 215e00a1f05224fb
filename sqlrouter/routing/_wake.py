"""Waking every follower of a shared snapshot file at once: a futex in a shared page.

A follower (:mod:`sqlrouter.routing.shared`) that only polled the file would see a
new round up to one poll late, and many followers polling often, right when a round
lands, take the CPU its publisher needs.  Instead, next to each snapshot file lies a
small file, mapped by every process of the service: a 32-bit counter.  The publisher
adds one to it after each write and wakes every process waiting on it
(``FUTEX_WAKE``); a follower waits (``FUTEX_WAIT``, with a timeout) until the counter
is no longer the value it last saw.  One system call wakes the whole host's fleet, and
an idle follower costs nothing between rounds.

Linux only (``futex(2)`` through ``ctypes``, on x86-64 and 64-bit ARM, whose system
call numbers are known); elsewhere, or if the file cannot be mapped, :func:`open_wake`
returns ``None`` and followers poll the file (see :mod:`sqlrouter.routing._ticks`).
The wait releases the GIL (a ``ctypes`` foreign call): the application's threads run
meanwhile.  A counter that another process of the user writes anything into only
wakes followers early, or late by one poll: the snapshot file is what is trusted.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import stat as stat_mode
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["Wake", "open_wake"]

logger = logging.getLogger("sqlrouter.monitor")

_SYSCALL_FUTEX: Final = {"x86_64": 202, "aarch64": 98}
_FUTEX_WAIT: Final = 0
_FUTEX_WAKE: Final = 1
_INT_MAX: Final = 2**31 - 1
_SIZE: Final = 4096


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex() -> tuple[Callable[..., int], int] | None:
    number = _SYSCALL_FUTEX.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    return syscall, number


_FUTEX: Final = _futex()


class Wake:
    """One service's wake-up counter, mapped in this process."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._word = ctypes.c_uint32.from_buffer(self._map)
        self._address = ctypes.addressof(self._word)

    def value(self) -> int:
        """The counter now."""
        return int(self._word.value)

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the counter is no longer ``seen`` or ``timeout`` seconds passed:
        whether it changed."""
        if _FUTEX is None or timeout <= 0:
            return self.value() != seen
        syscall, number = _FUTEX
        whole = int(timeout)
        ts = _Timespec(whole, int((timeout - whole) * 1e9))
        result = syscall(
            ctypes.c_long(number),
            ctypes.c_void_p(self._address),
            ctypes.c_int(_FUTEX_WAIT),
            ctypes.c_uint32(seen),
            ctypes.byref(ts),
            None,
            ctypes.c_int(0),
        )
        if result == -1 and ctypes.get_errno() not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            return self.value() != seen
        return self.value() != seen

    def wake(self) -> None:
        """Add one to the counter and wake every process waiting on it."""
        self._word.value = (self._word.value + 1) & 0xFFFFFFFF
        if _FUTEX is None:
            return
        syscall, number = _FUTEX
        syscall(
            ctypes.c_long(number),
            ctypes.c_void_p(self._address),
            ctypes.c_int(_FUTEX_WAKE),
            ctypes.c_int(_INT_MAX),
            None,
            None,
            ctypes.c_int(0),
        )

    def close(self) -> None:
        del self._word
        self._map.close()


def open_wake(dir_fd: int, name: str) -> Wake | None:
    """The counter file ``name`` in the (checked) directory ``dir_fd``, created if
    missing and mapped; ``None`` where futexes are not available or the file is not a
    regular file of this user's (a WARNING says why)."""
    if _FUTEX is None:
        return None
    try:
        fd = os.open(
            name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        logger.warning("wake-up file %s cannot be opened (%s): polling", name, exc.strerror)
        return None
    try:
        st = os.fstat(fd)
        if not stat_mode.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            logger.warning("wake-up file %s is not a regular file of this user: polling", name)
            return None
        if st.st_size < _SIZE:
            os.ftruncate(fd, _SIZE)
        return Wake(fd)
    except (OSError, ValueError) as exc:
        logger.warning("wake-up file %s cannot be mapped (%s): polling", name, exc)
        return None
    finally:
        os.close(fd)
