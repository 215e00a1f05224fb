"""Waking every follower of a shared snapshot file at once: a futex on a shared file.

A follower (:mod:`sqlrouter.routing.shared`) that only polled the file would see a
new round up to one poll late, and many followers polling often, right when a round
lands, take the CPU its publisher needs.  Instead, next to each snapshot file lies a
small file, ``KEY.wake``: its first four bytes are a counter.  The publisher adds one
to it after each write and wakes every process waiting on it (``FUTEX_WAKE``); a
follower waits (``FUTEX_WAIT``, with a timeout) until the counter is no longer the value
it last saw.  One system call wakes the whole host's fleet, and an idle follower costs
nothing between rounds.

The file is mapped (a futex lives at an address), but nothing here touches the mapping
from Python: the counter is read and written with ``pread``/``pwrite`` on the file, and
only the kernel reads the mapped word, for the futex.  A file another process truncated
(``: > KEY.wake``) or a full disk thus makes the futex calls fail (``EFAULT``, an
``OSError``), never a ``SIGBUS`` that would kill the process; the first unexpected
failure turns the wake-ups off for this process (one WARNING), which then polls the
file, as where futexes are not available at all: not Linux, not a 64-bit process, or a
machine whose system call number is not known here (x86-64 and 64-bit ARM are).  The
wait releases the GIL (a ``ctypes`` foreign call): the application's threads run
meanwhile.  Whatever another process of the user writes in the file only wakes followers
early or late by one poll: the snapshot file is what is trusted.
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
#: What a wait may end with, besides a wake-up.
_EXPECTED: Final = frozenset({errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR})


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex() -> tuple[Callable[..., int], int] | None:
    number = _SYSCALL_FUTEX.get(platform.machine())
    # platform.machine() is the kernel's: a 32-bit process on a 64-bit kernel has
    # other system call numbers.
    if (
        not sys.platform.startswith("linux")
        or number is None
        or ctypes.sizeof(ctypes.c_void_p) != 8
    ):
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
    """One service's wake-up counter, mapped in this process (``fd`` is kept)."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name
        self._map = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The word's address, for the kernel only: Python never reads or writes it.
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        #: A futex call failed in an unexpected way: followers poll from then on.
        self.broken = False

    def value(self) -> int:
        """The counter now (0 if the file was emptied)."""
        try:
            data = os.pread(self._fd, 4, 0)
        except OSError:
            return 0
        return int.from_bytes(data.ljust(4, b"\0"), "little")

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the counter is no longer ``seen``, or ``timeout`` seconds passed,
        or :meth:`wake`: whether it changed."""
        if timeout > 0 and not self.broken:
            whole = int(timeout)
            ts = _Timespec(whole, int((timeout - whole) * 1e9))
            if self._futex(_FUTEX_WAIT, seen & 0xFFFFFFFF, ctypes.byref(ts)) < 0:
                code = ctypes.get_errno()
                if code not in _EXPECTED:
                    self._break(code)
        return self.value() != seen

    def wake(self) -> None:
        """Add one to the counter and wake every process waiting on it."""
        try:
            os.pwrite(self._fd, ((self.value() + 1) & 0xFFFFFFFF).to_bytes(4, "little"), 0)
        except OSError as exc:
            self._break(exc.errno or 0)
            return
        if not self.broken and self._futex(_FUTEX_WAKE, _INT_MAX, None) < 0:
            self._break(ctypes.get_errno())

    def _futex(self, op: int, value: int, timeout: object) -> int:
        if _FUTEX is None:
            return -1
        syscall, number = _FUTEX
        return syscall(
            ctypes.c_long(number),
            ctypes.c_void_p(self._address),
            ctypes.c_int(op),
            ctypes.c_uint32(value) if op == _FUTEX_WAIT else ctypes.c_int(value),
            timeout,
            None,
            ctypes.c_int(0),
        )

    def _break(self, code: int) -> None:
        if not self.broken:
            self.broken = True
            logger.warning(
                "wake-up file %s: %s; this process polls the shared snapshot file instead",
                self._name,
                os.strerror(code) if code else "failed",
            )


def open_wake(dir_fd: int, name: str) -> Wake | None:
    """The counter file ``name`` in the (checked) directory ``dir_fd``, created if
    missing and mapped; ``None`` where futexes are not available, or the file is not a
    regular file of this user's with one link, or it cannot be written (a full disk): a
    WARNING says why, and the follower polls."""
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
        if not stat_mode.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_nlink != 1:
            logger.warning(
                "wake-up file %s is not a regular file of this user with one link: polling",
                name,
            )
            os.close(fd)
            return None
        if st.st_size < 4:
            os.pwrite(fd, b"\0\0\0\0", 0)  # written, not sparse: a full disk says so here
        if st.st_size < _SIZE:
            os.ftruncate(fd, _SIZE)  # the mapping's length (the rest stays a hole)
        return Wake(fd, name)
    except (OSError, ValueError) as exc:
        logger.warning("wake-up file %s cannot be used (%s): polling", name, exc)
        os.close(fd)
        return None
