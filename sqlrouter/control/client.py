"""The client side of the control socket: find the sockets, send a request, read the answer.

What ``sqlrouter admin`` (:mod:`sqlrouter.cli.admin`) is built on, and what a program
uses to command running processes::

    from sqlrouter.control import request, resolve_socket_dir, send_all

Every exchange is bounded by a timeout; a socket whose process is gone is removed
(only in a directory that passes :func:`~sqlrouter.control.check_socket_dir`).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import stat as stat_mode
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .._pid import exists as pid_exists
from ..errors import ProgrammingError
from ..registry.find import find_registry
from .config import check_socket_dir, control_config, default_socket_dir, env_setting
from .protocol import ControlError

__all__ = [
    "DEFAULT_TIMEOUT",
    "Answer",
    "checked_socket_dir",
    "list_sockets",
    "remove_stale",
    "request",
    "request_tcp",
    "resolve_socket_dir",
    "send_all",
]


#: Seconds to wait for a process's answer (``--timeout``).
DEFAULT_TIMEOUT: Final = 5.0


#: The longest answer read (a status of many services is a few hundred KiB).
_MAX_ANSWER: Final = 16 * 1024 * 1024


#: At most this many processes are asked at once by ``--all``.
_PARALLEL: Final = 16


def resolve_socket_dir(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> Path:
    """Where the control sockets are: ``explicit``, else ``$SQLROUTER_CONTROL`` if it
    names a directory, else the registry's ``[control] socket_dir``, else
    :func:`~sqlrouter.control.default_socket_dir`."""
    if explicit is not None:
        return Path(os.path.abspath(Path(explicit).expanduser()))
    env = env_setting(environ)
    if isinstance(env, Path):
        return env
    try:
        registry = find_registry(None, environ=environ)
        path = getattr(registry, "path", None)
        config = control_config(
            registry.control,
            environ={},
            base_dir=path.parent if isinstance(path, Path) else None,
        )
    except (ProgrammingError, ControlError):
        config = None  # no registry here, or a broken [control]: the default place
    if config is not None and config.socket_dir is not None:
        return config.socket_dir
    return default_socket_dir(environ)


def checked_socket_dir(directory: Path) -> bool:
    """Check ``directory`` as the server checks its own; ``False`` when it does not exist.

    ``sqlrouter admin`` talks to the sockets of a directory, and removes the stale ones,
    only if it is private to the user running it: a real directory (not a symlink), owned
    by that user, with no permission for group or others.  Otherwise (another user could
    have put a socket there, or replace one) :class:`~sqlrouter.control.ControlError`
    says why, and nothing is sent or removed.
    """
    try:
        check_socket_dir(directory)
    except FileNotFoundError:
        return False
    except ControlError as exc:
        raise ControlError(
            f"{exc.args[-1]}; sqlrouter admin talks to (and removes stale sockets in) a "
            f"private directory of its own user only (uid {os.getuid()}): to command "
            "another user's processes, run it as that user"
        ) from None
    return True


def list_sockets(directory: Path) -> list[tuple[int, Path]]:
    """``(pid, path)`` of each control socket (``PID.sock``) in ``directory``, by pid.

    The directory is checked first (:func:`checked_socket_dir`).
    """
    if not checked_socket_dir(directory):
        return []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ControlError(f"control socket directory {directory}: {exc.strerror}") from None
    found = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "sock" and stem.isdigit():
            found.append((int(stem), directory / name))
    return sorted(found)


def remove_stale(pid: int, path: Path) -> bool:
    """Remove ``path`` if its process is gone and nothing listens on it; True if removed."""
    if pid_exists(pid):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(os.fspath(path))
        except ConnectionRefusedError:
            pass
        except OSError:
            return False
        else:
            return False  # someone answers there (a reused pid number is not ours to judge)
    try:
        if stat_mode.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
            return True
    except OSError:
        pass
    return False


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """The first line the peer sends (or what it sent before closing); TimeoutError."""
    buf = bytearray()
    try:
        while b"\n" not in buf and len(buf) <= _MAX_ANSWER:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except ConnectionResetError:
        if not buf:
            raise
    return bytes(buf)


def _exchange(sock: socket.socket, req: Mapping[str, Any], timeout: float, target: str) -> Any:
    deadline = time.monotonic() + timeout
    line = json.dumps(req, separators=(",", ":")).encode("utf-8") + b"\n"
    unsent: OSError | None = None
    try:
        sock.settimeout(timeout)
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError) as exc:
            unsent = exc  # turned away (busy, refused): its answer may be there to read
        buf = _read_line(sock, deadline)
    except TimeoutError:
        raise ControlError(
            f"{target}: no answer within {timeout:g}s (is the process stopped or busy?)"
        ) from None
    except OSError as exc:
        raise ControlError(f"{target}: {exc.strerror or exc}") from None
    if not buf:
        why = f" ({unsent.strerror})" if unsent is not None else ""
        raise ControlError(f"{target}: the connection closed without an answer{why}")
    if len(buf) > _MAX_ANSWER:
        raise ControlError(f"{target}: answer over {_MAX_ANSWER} bytes")
    try:
        response = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"{target}: the answer is not JSON: not a control socket?") from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError(f'{target}: the answer has no "ok": not a control socket?')
    return response


def request(
    path: str | os.PathLike[str], req: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; its response.

    :class:`~sqlrouter.control.ControlError` when there is no answer (no socket,
    refused, another user's, timeout); an answer with ``"ok": false`` is returned.
    """
    target = f"control socket {os.fspath(path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except FileNotFoundError:
            raise ControlError(f"{target}: no such socket") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"{target}: connection refused (its process is gone: a stale socket)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"{target}: permission denied (it belongs to another user)"
            ) from None
        except TimeoutError:
            raise ControlError(f"{target}: no connection within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"{target}: {exc.strerror or exc}") from None
        result: dict[str, Any] = _exchange(sock, req, timeout, target)
        return result


def request_tcp(
    address: tuple[str, int],
    req: Mapping[str, Any],
    *,
    token: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Send one request to a control TCP listener with ``token``; its response."""
    target = "control tcp {}:{}".format(*address)
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError:
        raise ControlError(f"{target}: no connection within {timeout:g}s") from None
    except OSError as exc:
        raise ControlError(f"{target}: {exc.strerror or exc}") from None
    with sock:
        result: dict[str, Any] = _exchange(sock, {**req, "token": token}, timeout, target)
        return result


@dataclass(frozen=True, slots=True)
class Answer:
    """What one process answered to ``--all`` (``response``), or why it did not."""

    pid: int
    socket: Path
    response: dict[str, Any] | None
    error: str | None = None
    #: The socket's process is gone; the file was removed.
    stale: bool = False


def _ask(pid: int, path: Path, req: Mapping[str, Any], timeout: float) -> Answer:
    try:
        return Answer(pid, path, request(path, req, timeout=timeout))
    except ControlError as exc:
        message = str(exc.args[-1])
        if "connection refused" in message and not pid_exists(pid):
            try:
                if stat_mode.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass
            return Answer(pid, path, None, f"stale socket (process {pid} is gone): removed", True)
        return Answer(pid, path, None, message)


def send_all(
    directory: Path, req: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT
) -> list[Answer]:
    """Send ``req`` to every control socket in ``directory`` at once; answers by pid.

    A socket whose process is gone (connection refused, no such pid) is removed.
    """
    sockets = list_sockets(directory)
    if not sockets:
        return []
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=min(_PARALLEL, len(sockets)), thread_name_prefix="sqlrouter-admin"
    ) as pool:
        futures = [pool.submit(_ask, pid, path, req, timeout) for pid, path in sockets]
        return [f.result() for f in futures]
