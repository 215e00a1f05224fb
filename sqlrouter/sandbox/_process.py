"""The sandbox's servers as processes: the binaries, free ports, pids, waits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._pid import exists
from ._state import SandboxError

__all__ = [
    "Binaries",
    "find_server_binaries",
]


_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/libexec")


_INSTALL_HINT = "install it with: apt-get install mariadb-server (Debian/Ubuntu)"


@dataclass(frozen=True, slots=True)
class Binaries:
    __module__ = "sqlrouter.sandbox"
    server: Path
    install_db: Path


def _which(names: Sequence[str]) -> Path | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
        for d in _SEARCH_DIRS:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def find_server_binaries() -> Binaries:
    """Locate ``mariadbd`` (or ``mysqld``) and ``mariadb-install-db``.

    Raises :class:`SandboxError` saying what to install when either is missing.
    """
    server = _which(("mariadbd", "mysqld"))
    install_db = _which(("mariadb-install-db", "mysql_install_db"))
    if server is None or install_db is None:
        missing = "mariadbd" if server is None else "mariadb-install-db"
        raise SandboxError(
            f"the MariaDB server is not installed: {missing} was not found on PATH "
            f"nor in {', '.join(_SEARCH_DIRS)}; {_INSTALL_HINT}"
        )
    return Binaries(server=server, install_db=install_db)


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the child when the thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As mariadbd does: connections in TIME_WAIT must not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pid_alive(pid: int) -> bool:
    """``pid`` exists and is no zombie (our own child that nobody reaped yet); a state
    that cannot be read counts as gone."""
    return exists(pid) and _pid_state(pid) not in ("Z", "?")


def _pid_state(pid: int) -> str:
    """The process state letter of ``/proc/PID/stat`` (``R``, ``S``, ``T``, ``Z``...);
    ``"?"`` when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


#: Servers this process started, by pid: reaped when they exit, whichever Sandbox
#: object (several may describe one directory) stops them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _wait_stopped(pid: int, timeout: float) -> bool:
    """Wait until every thread of ``pid`` is stopped.

    ``kill(SIGSTOP)`` returns before the process stops: one of its threads must run to
    start the group stop, and until the others stop, a thread woken by a query may
    still answer it.  Without ``/proc`` (not Linux) there is nothing to wait on.
    """
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                # The state follows the command name, which is in parentheses.
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in {"T", "t"} for state in states):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
