"""Whether a process exists: what the control client, the sandbox and the shared
snapshots' election (:mod:`sqlrouter.routing.shared`) ask of a pid."""

from __future__ import annotations

import os

__all__ = ["exists", "identity", "running"]


def exists(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie too), whoever's it is (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _namespace() -> int:
    """The inode of this process's PID namespace (0: unknown)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Process ``pid``'s state letter and start time (clock ticks after boot), from
    ``/proc``; ``None`` if there is no such process (or thread) in this namespace.
    :class:`OSError` when ``/proc`` does not say (not mounted, hidden)."""
    # os.open and os.read, not open(): a follower reads it at every regular look, and
    # a text file object costs several times the read itself.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    except ProcessLookupError:  # it exited between the open and the read
        return None
    finally:
        os.close(fd)
    # The command name (in parentheses) may hold anything: the fields follow its last ")".
    fields = b"".join(chunks).rpartition(b")")[2].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (IndexError, ValueError):
        raise OSError(f"/proc/{pid}/stat unreadable") from None


#: This process's identity as a publisher: (pid, PID namespace, start time); computed
#: again in a forked child (its pid differs).
_identity_cache: list[tuple[int, int, int]] = [(0, 0, 0)]


def identity() -> tuple[int, int, int]:
    """This process's (pid, PID namespace inode, start time); 0 where unknown."""
    pid = os.getpid()
    if _identity_cache[0][0] != pid:
        try:
            stat = _proc_stat(pid)
        except OSError:
            stat = None
        _identity_cache[0] = (pid, _namespace(), stat[1] if stat is not None else 0)
    return _identity_cache[0]


def running(pid: int, started: int) -> bool:
    """Whether ``pid`` (of this PID namespace) is still the process that started at
    ``started`` (0: unknown) and has not exited (a zombie has)."""
    try:
        stat = _proc_stat(pid)
    except OSError:
        return exists(pid)
    if stat is None:
        return False
    state, start = stat
    if state in ("Z", "X", "x"):
        return False  # exited, not reaped yet
    # Another start time: the pid was reused (by a process, or as a thread's id).
    return not started or start == started
