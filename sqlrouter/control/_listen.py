"""The control socket's listeners, as the operating system sees them.

The Unix socket file (mode 0600 in the private directory; a left-over of a dead process
of the same pid replaced; only our own file removed), the TCP listener, and the
credentials of a Unix peer.  No state: :class:`~sqlrouter.control.server.ControlServer`
keeps what these return.
"""

from __future__ import annotations

import logging
import os
import socket
import stat as stat_mode
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from .protocol import ControlError

__all__ = [
    "BACKLOG",
    "Listener",
    "bind_tcp",
    "bind_unix",
    "peer_credentials",
    "remove_socket",
    "unix_socket_path",
]

logger = logging.getLogger("sqlrouter.control")

#: The listen queue of each listener, and the most connections accepted in one go.
BACKLOG: Final = 128
_PEERCRED: Final = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Listener:
    sock: socket.socket
    kind: Literal["unix", "tcp"]


def unix_socket_path(directory: Path, pid: int) -> Path:
    """The socket file of process ``pid`` in ``directory``; ControlError when its path is
    too long for a Unix socket."""
    path = directory / f"{pid}.sock"
    if len(os.fsencode(path)) > 107:
        raise ControlError(
            f"control socket path {path} is too long for a Unix socket (107 bytes at "
            "most): choose a shorter socket_dir"
        )
    return path


def bind_unix(path: Path) -> tuple[socket.socket, int]:
    """A non-blocking listener on the socket file ``path`` (mode 0600), and the file's
    inode (see :func:`remove_socket`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        # A socket left by a dead process of the same pid (the directory is ours).
        if not stat_mode.S_ISSOCK(st.st_mode):
            raise ControlError(f"control socket path {path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ControlError(f"control socket {path}: cannot listen: {exc.strerror}") from None
    return sock, os.lstat(path).st_ino


def bind_tcp(address: tuple[str, int]) -> tuple[socket.socket, tuple[str, int]]:
    """A non-blocking TCP listener on ``address`` (port 0: any free port), and the
    address it is bound to."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise ControlError(f"control tcp {host}:{port}: cannot listen: {exc.strerror}") from None
    sock.setblocking(False)
    bound = sock.getsockname()
    return sock, (str(bound[0]), int(bound[1]))


def remove_socket(path: Path, ino: int | None) -> None:
    """Remove the socket file ``path`` if it is still the one of inode ``ino`` (another
    process may have replaced it since); a failure is logged."""
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("control: cannot remove %s: %s", path, exc.strerror)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """``(pid, uid)`` of the process at the other end of the Unix socket ``sock``
    (``SO_PEERCRED``); OSError when they cannot be read."""
    pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid
