"""The control socket: the admin interface of a running process.

A process that opts in (``[control] enabled = true`` in the registry, or the
``SQLROUTER_CONTROL`` environment variable) listens on a Unix socket of its own,
``DIR/PID.sock``, in a private directory (mode 0700; by default
``$XDG_RUNTIME_DIR/sqlrouter/``, else ``/tmp/sqlrouter-UID/``).  The socket is created
when the process first connects to a service and removed by :func:`sqlrouter.shutdown`.
Only processes of the same user (or root) are served: the peer's credentials are read
with ``SO_PEERCRED``.  An optional TCP listener (loopback unless configured otherwise)
serves clients that present a token read from a file: the operator token allows every
command, the read-only token ``status`` and ``explain``.

The protocol is one JSON object per line each way (docs/control.md)::

    -> {"cmd": "offline", "datasource": "db2"}
    <- {"ok": true, "applied": [{"service": "shop", ...}]}

Commands: ``status``, ``explain URL``, ``offline DS``, ``online DS``, ``promote DS``,
``set SERVICE max_lag N``, ``reload``.  They act on this process only (routing-level:
nothing is sent to the servers); ``sqlrouter admin --all`` sends one to every process.

One listener thread does all the I/O with non-blocking sockets and :mod:`selectors`;
it never blocks on a client.  Every client has a deadline (a line must be complete
within ``client_timeout`` seconds; a TCP client must send a request with a valid token
within ``tcp_auth_timeout``), lines are capped at 64 KiB, and at most ``max_clients``
(Unix socket) and ``max_tcp_clients`` (TCP, counted apart, so that they never lock out
the Unix socket's) are connected at once: past these, the client gets an error line and
is dropped.  Commands other than ``status`` run in one worker thread, so that a slow one
(a registry reload over DNS) delays no other client's I/O.  Neither thread takes a lock
that application threads hold for more than an instant.  Every operator command is
logged at INFO on ``sqlrouter.control.audit`` with the peer (uid and pid, or TCP
address and role) and what it asked; refusals at WARNING.  No token, and no password,
ever appears in a response or a log line.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import hmac
import ipaddress
import json
import logging
import math
import os
import queue
import re
import selectors
import socket
import stat as stat_mode
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from .. import _forksafe
from .._runtime import handles as all_handles
from .._runtime import watched as watched_handle
from ..errors import OperationalError, ProgrammingError
from ..qos import QoS
from ..registry.base import Registry
from ..routing.explain import explain_handle, snapshot_rows
from ..routing.health import Health, Snapshot
from ..routing.router import Policy, explain_master, observed_master, resolve_master
from ..routing.service import ServiceHandle
from ..topology import MAX_LAG_RANGE, range_text
from ..url import parse_url

__all__ = [
    "COMMANDS",
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_TCP_CLIENTS",
    "DEFAULT_TCP_AUTH_TIMEOUT",
    "ENV_VAR",
    "ERROR_CODES",
    "ER_CONTROL",
    "MAX_LINE",
    "Command",
    "ControlConfig",
    "ControlError",
    "ControlServer",
    "Request",
    "RequestError",
    "authorize",
    "check_socket_dir",
    "control_config",
    "current",
    "default_socket_dir",
    "describe_request",
    "encode_response",
    "env_setting",
    "error_response",
    "on_handle_created",
    "parse_request",
    "parse_tcp",
    "peer_allowed",
    "prepare_socket_dir",
    "read_token",
    "stop",
]

logger = logging.getLogger("sqlrouter.control")
audit = logging.getLogger("sqlrouter.control.audit")

#: Client-side error number of :class:`ControlError` (see :mod:`sqlrouter.errors`).
ER_CONTROL: Final = 3930
#: ``SQLROUTER_CONTROL``: ``1``/``on`` enables the socket, ``0``/``off`` disables it
#: (whatever the registry says), anything else is the directory of the sockets.
ENV_VAR: Final = "SQLROUTER_CONTROL"
#: The longest request line accepted, newline excluded.
MAX_LINE: Final = 64 * 1024
DEFAULT_CLIENT_TIMEOUT: Final = 10.0
DEFAULT_COMMAND_TIMEOUT: Final = 30.0
DEFAULT_MAX_CLIENTS: Final = 64
DEFAULT_MAX_TCP_CLIENTS: Final = 16
#: Seconds a TCP client has, once connected, to send a request with a valid token.
DEFAULT_TCP_AUTH_TIMEOUT: Final = 3.0
#: The accepted range of the timeouts (seconds) and of the client limits.
_TIMEOUT_RANGE: Final = (0.05, 3600.0)
_CLIENTS_RANGE: Final = (1, 4096)
#: The ``code`` of an error response.
ERROR_CODES: Final = (
    "bad_request",  # not JSON, not an object, a missing or mistyped field
    "unknown_command",
    "too_long",  # a line over MAX_LINE bytes: the connection is closed
    "forbidden",  # the read-only role asked for an operator command
    "unauthorized",  # TCP: no token or a wrong one: the connection is closed
    "refused",  # Unix socket: a peer of another uid: the connection is closed
    "busy",  # max_clients reached: the connection is closed
    "timeout",  # no complete line, or the command did not finish, in time: closed
    "not_found",  # no such service or datasource in this process
    "ambiguous",  # a datasource name found in several services: give "service"
    "failed",  # the command ran and did not succeed (the message says why)
    "internal",  # a bug: logged with its traceback
)

_ON: Final = frozenset({"1", "on", "true", "yes"})
_OFF: Final = frozenset({"0", "off", "false", "no"})
_BACKLOG: Final = 128
_RECV: Final = 65536
#: The longest a select() sleeps, so that a stop is seen quickly.
_TICK: Final = 0.5
_PEERCRED: Final = struct.Struct("3i")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ControlError(OperationalError):
    """The control socket cannot start, or a control client got no usable answer.

    ``args`` is ``(ER_CONTROL, message)``; the message names the socket or setting and
    says why.
    """

    __module__ = "sqlrouter.control"

    def __init__(self, message: str) -> None:
        super().__init__(ER_CONTROL, message)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """The control socket's settings, from ``[control]`` and ``$SQLROUTER_CONTROL``."""

    enabled: bool = False
    #: Where the sockets are; ``None``: :func:`default_socket_dir`.
    socket_dir: Path | None = None
    #: ``(host, port)`` of the TCP listener (port 0: any free port); ``None``: none.
    tcp: tuple[str, int] | None = None
    #: Files holding the operator's and the read-only token (TCP clients).
    token_file: Path | None = None
    readonly_token_file: Path | None = None
    #: Seconds a client has to send a complete line (and to read the answer).
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    #: Seconds a command may run before its client gets a timeout error.
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    #: Clients connected at once to the Unix socket, and to the TCP listener: separate
    #: limits, so that TCP clients never lock out the Unix socket's.
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_tcp_clients: int = DEFAULT_MAX_TCP_CLIENTS
    #: Seconds a TCP client has, once connected, to send a request with a valid token.
    tcp_auth_timeout: float = DEFAULT_TCP_AUTH_TIMEOUT


_CONFIG_KEYS: Final = (
    "enabled",
    "socket_dir",
    "tcp",
    "tcp_allow_remote",
    "token_file",
    "readonly_token_file",
    "client_timeout",
    "command_timeout",
    "max_clients",
    "max_tcp_clients",
    "tcp_auth_timeout",
)


def default_socket_dir(environ: Mapping[str, str] = os.environ, uid: int | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/sqlrouter``, else ``/tmp/sqlrouter-UID``."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "sqlrouter"
    uid = os.getuid() if uid is None else uid
    # /tmp itself, not $TMPDIR: every process of the user must find the same place.
    return Path(f"/tmp/sqlrouter-{uid}")  # noqa: S108 - private (0700, owner checked)


def env_setting(environ: Mapping[str, str] = os.environ) -> bool | Path | None:
    """What ``$SQLROUTER_CONTROL`` says: on, off, a socket directory, or nothing."""
    env = environ.get(ENV_VAR, "").strip()
    if not env:
        return None
    if env.lower() in _ON:
        return True
    if env.lower() in _OFF:
        return False
    return Path(os.path.abspath(Path(env).expanduser()))


def parse_tcp(value: object, *, allow_remote: bool = False) -> tuple[str, int]:
    """``PORT``, ``"PORT"``, ``"HOST:PORT"`` or ``"[IPv6]:PORT"`` -> ``(host, port)``.

    The host must be an IP address (or ``localhost``); a non-loopback address needs
    ``allow_remote``.  Raises :class:`ValueError` saying what is accepted.
    """
    expected = "expected PORT or 'HOST:PORT' with HOST a loopback IP address"
    if isinstance(value, bool) or not isinstance(value, int | str):
        value = repr(value)  # then refused below as not a port
    host, port_text = "127.0.0.1", str(value).strip()
    if isinstance(value, str) and ":" in port_text:
        host, _, port_text = port_text.rpartition(":")
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{expected}, got {value!r} (the port must be 0-65535)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{expected}, got {value!r} ({host!r} is not an IP address)") from None
    if not address.is_loopback and not allow_remote:
        raise ValueError(
            f"{value!r} is not a loopback address: the control port listens on loopback "
            "only unless tcp_allow_remote = true"
        )
    return str(address), int(port_text)


def control_config(
    table: Mapping[str, Any],
    *,
    environ: Mapping[str, str] = os.environ,
    base_dir: Path | None = None,
    where: str = "[control]",
) -> ControlConfig:
    """Validate a registry's ``[control]`` table and apply ``$SQLROUTER_CONTROL``.

    Relative paths are relative to ``base_dir`` (the registry file's directory).
    Unknown keys are logged (other parts of sqlrouter may read this table), wrong
    values raise :class:`ControlError` naming ``where``, the key and what is accepted.
    """
    base = base_dir if base_dir is not None else Path.cwd()

    def fail(key: str, detail: str) -> ControlError:
        return ControlError(f"{where}: control.{key}: {detail}")

    for key in table:
        if key not in _CONFIG_KEYS:
            close = difflib.get_close_matches(key, _CONFIG_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            logger.warning("%s: control.%s is not a control socket setting%s", where, key, hint)

    def boolean(key: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise fail(key, f"expected true or false, got {value!r}")
        return value

    def path(key: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise fail(key, f"expected a path, got {value!r}")
        return Path(os.path.abspath(base / Path(value).expanduser()))

    def seconds(key: str, default: float) -> float:
        value = table.get(key, default)
        low, high = _TIMEOUT_RANGE
        expected = f"expected a number of seconds {range_text(_TIMEOUT_RANGE)}, got {_show(value)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(key, expected)
        try:
            number = float(value)
        except OverflowError:
            raise fail(key, expected) from None
        if not low <= number <= high:  # NaN fails too
            raise fail(key, expected)
        return number

    def clients(key: str, default: int) -> int:
        value = table.get(key, default)
        low, high = _CLIENTS_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(key, f"expected an integer {low}-{high}, got {_show(value)}")
        return value

    enabled = boolean("enabled")
    socket_dir = path("socket_dir")
    tcp: tuple[str, int] | None = None
    if "tcp" in table:
        try:
            tcp = parse_tcp(table["tcp"], allow_remote=boolean("tcp_allow_remote"))
        except ValueError as exc:
            raise fail("tcp", str(exc)) from None
    token_file = path("token_file")
    readonly_token_file = path("readonly_token_file")
    if tcp is not None and token_file is None and readonly_token_file is None:
        raise fail("tcp", "a TCP listener needs token_file (operator) or readonly_token_file")
    env = env_setting(environ)
    if isinstance(env, bool):
        enabled = env
    elif env is not None:
        enabled, socket_dir = True, env
    return ControlConfig(
        enabled=enabled,
        socket_dir=socket_dir,
        tcp=tcp,
        token_file=token_file,
        readonly_token_file=readonly_token_file,
        client_timeout=seconds("client_timeout", DEFAULT_CLIENT_TIMEOUT),
        command_timeout=seconds("command_timeout", DEFAULT_COMMAND_TIMEOUT),
        max_clients=clients("max_clients", DEFAULT_MAX_CLIENTS),
        max_tcp_clients=clients("max_tcp_clients", DEFAULT_MAX_TCP_CLIENTS),
        tcp_auth_timeout=seconds("tcp_auth_timeout", DEFAULT_TCP_AUTH_TIMEOUT),
    )


def prepare_socket_dir(directory: Path, *, uid: int | None = None) -> None:
    """Create ``directory`` (mode 0700) or check that it is private.

    It must be a real directory (not a symlink), owned by ``uid`` (default: ours),
    with no permission for group or others.  Raises :class:`ControlError` saying which.
    """
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlError(
            f"control socket directory {directory}: cannot create it: {exc.strerror}"
        ) from None
    try:
        check_socket_dir(directory, uid=uid)
    except FileNotFoundError as exc:  # removed since the mkdir
        raise ControlError(f"control socket directory {directory}: {exc.strerror}") from None


def check_socket_dir(directory: Path, *, uid: int | None = None) -> None:
    """Check that ``directory`` is private: what :func:`prepare_socket_dir` requires.

    A real directory (not a symlink), owned by ``uid`` (default: ours), with no
    permission for group or others.  Raises :class:`ControlError` saying which is not so
    (``FileNotFoundError`` passes through, for callers to whom a missing one is no error).
    """
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ControlError(f"control socket directory {directory}: {exc.strerror}") from None
    if not stat_mode.S_ISDIR(st.st_mode):
        raise ControlError(
            f"control socket directory {directory} is not a directory (a symlink or a "
            "file is refused: it must be a private directory)"
        )
    if st.st_uid != uid:
        raise ControlError(
            f"control socket directory {directory} belongs to uid {st.st_uid}, not to "
            f"this process's uid {uid}: refusing to use it"
        )
    if st.st_mode & 0o077:
        raise ControlError(
            f"control socket directory {directory} has mode "
            f"{stat_mode.S_IMODE(st.st_mode):04o}: other users could reach the sockets; "
            f"it must be 0700 (chmod 700 {directory})"
        )


def read_token(path: Path, key: str) -> str:
    """The token in file ``path`` (``key`` names it in errors): private, 16+ characters."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ControlError(f"control.{key} {path}: cannot read it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise ControlError(
                f"control.{key} {path} has mode {stat_mode.S_IMODE(st.st_mode):04o}: a token "
                f"file must not be readable by group or others (chmod 600 {path})"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        token = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ControlError(f"control.{key} {path} is not UTF-8 text") from None
    if len(token) < 16 or any(ch.isspace() for ch in token):
        raise ControlError(
            f"control.{key} {path}: a token must be at least 16 characters without spaces "
            "(e.g. from: openssl rand -hex 24)"
        )
    return token


def _load_tokens(config: ControlConfig) -> tuple[tuple[str, Role], ...]:
    tokens: list[tuple[str, Role]] = []
    if config.token_file is not None:
        tokens.append((read_token(config.token_file, "token_file"), "operator"))
    if config.readonly_token_file is not None:
        tokens.append((read_token(config.readonly_token_file, "readonly_token_file"), "readonly"))
    if len(tokens) == 2 and tokens[0][0] == tokens[1][0]:
        raise ControlError(
            "control.token_file and control.readonly_token_file hold the same token: "
            "the roles must have different tokens"
        )
    return tuple(tokens)


# --------------------------------------------------------------------------- protocol

Role = Literal["readonly", "operator"]
_FieldKind = Literal["name", "name_or_null", "text", "seconds_or_null"]


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: _FieldKind
    required: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """One command of the protocol: its name, the role it needs, its fields."""

    name: str
    role: Role
    fields: tuple[_Field, ...]
    help: str


#: The settings ``set SERVICE SETTING VALUE`` can change.
SETTINGS: Final = ("max_lag",)

COMMANDS: Final[Mapping[str, Command]] = MappingProxyType(
    {
        c.name: c
        for c in (
            Command(
                "status",
                "readonly",
                (_Field("service", "name"),),
                "services, datasources (role, admin state, health, lag, GTID, open "
                "connections, last error)",
            ),
            Command(
                "explain",
                "readonly",
                (_Field("url", "text", required=True),),
                "what `sqlrouter route URL` prints, as this process sees it",
            ),
            Command(
                "offline",
                "operator",
                (_Field("datasource", "name", required=True), _Field("service", "name")),
                "give DATASOURCE no new connection; invalidate the open ones at their "
                "next transaction boundary",
            ),
            Command(
                "online",
                "operator",
                (_Field("datasource", "name", required=True), _Field("service", "name")),
                "give DATASOURCE new connections again",
            ),
            Command(
                "promote",
                "operator",
                (_Field("datasource", "name_or_null", required=True), _Field("service", "name")),
                "routing-level: prefer DATASOURCE as the master when several are writable "
                "(--clear, or null, forgets it)",
            ),
            Command(
                "set",
                "operator",
                (
                    _Field("service", "name", required=True),
                    _Field("setting", "name", required=True),
                    _Field("value", "seconds_or_null", required=True),
                ),
                "change a setting of SERVICE in this process (null: back to the registry's)",
            ),
            Command("reload", "operator", (), "re-read the registry (and the token files)"),
        )
    }
)
_COMMON_FIELDS: Final = ("cmd", "id", "token")


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request: the command, its arguments, the caller's id and token."""

    cmd: str
    args: Mapping[str, Any] = field(default_factory=dict)
    id: str | int | None = None
    token: str | None = field(default=None, repr=False)


class RequestError(Exception):
    """A request that cannot be served: ``code`` (see :data:`ERROR_CODES`) and message."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def response(self) -> dict[str, Any]:
        return error_response(self.code, self.message, self.request_id)


def error_response(code: str, message: str, request_id: str | int | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"ok": False, "code": code, "error": message}
    if request_id is not None:
        response["id"] = request_id
    return response


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 40 else text[:36] + "...'"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits"
    return json.dumps(value)[:40]


def _check_field(cmd: str, spec: _Field, value: object, rid: str | int | None) -> object:
    def bad(expected: str) -> RequestError:
        return RequestError(
            "bad_request", f"{cmd}: {spec.name!r} must be {expected}, got {_show(value)}", rid
        )

    if spec.kind == "text":
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if spec.kind in ("name", "name_or_null"):
        if value is None and spec.kind == "name_or_null":
            return None
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise bad(
                "a name (1-128 letters, digits, '_', '.', '-')"
                + (" or null" if spec.kind == "name_or_null" else "")
            )
        return value
    # seconds_or_null (a max_lag: the only setting `set` changes)
    if value is None:
        return None
    expected = f"a number of seconds {range_text(MAX_LAG_RANGE)} or null"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(expected)
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise bad(expected) from None
    low, high = MAX_LAG_RANGE
    if not low <= number <= high:  # NaN fails too
        raise bad(expected)
    return number


def parse_request(line: bytes | str) -> Request:
    """Validate one request line (without its newline) into a :class:`Request`.

    Pure.  Raises :class:`RequestError` with code ``too_long``, ``bad_request`` or
    ``unknown_command`` and a message saying what was wrong and what is accepted.
    """
    if len(line) > MAX_LINE:
        raise RequestError("too_long", f"request line over {MAX_LINE} bytes")
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(
                "bad_request", f"the request is not UTF-8 text (byte {exc.start})"
            ) from None
    else:
        text = line
    try:
        document = json.loads(text)
    except RecursionError:
        raise RequestError("bad_request", "the request is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise RequestError(
            "bad_request",
            f'the request is not JSON ({exc}); send one object per line, e.g. {{"cmd": "status"}}',
        ) from None
    if not isinstance(document, dict):
        raise RequestError(
            "bad_request",
            f'expected a JSON object such as {{"cmd": "status"}}, got {_show(document)}',
        )
    rid = document.get("id")
    if rid is not None and (
        isinstance(rid, bool) or not isinstance(rid, str | int) or len(str(rid)) > 128
    ):
        raise RequestError("bad_request", f"'id' must be a string or an integer, got {_show(rid)}")
    cmd = document.get("cmd")
    known = ", ".join(COMMANDS)
    if cmd is None:
        raise RequestError("bad_request", f"missing 'cmd' (one of: {known})", rid)
    if not isinstance(cmd, str):
        raise RequestError("bad_request", f"'cmd' must be a string, got {_show(cmd)}", rid)
    command = COMMANDS.get(cmd)
    if command is None:
        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RequestError(
            "unknown_command", f"unknown command {_show(cmd)} ({hint}known: {known})", rid
        )
    token = document.get("token")
    if token is not None and not isinstance(token, str):
        raise RequestError("bad_request", "'token' must be a string", rid)
    names = [f.name for f in command.fields]
    for key in document:
        if key not in names and key not in _COMMON_FIELDS:
            accepted = ", ".join([*names, *_COMMON_FIELDS])
            raise RequestError(
                "bad_request",
                f"{cmd}: unknown field {_show(key)} (accepted: {accepted})",
                rid,
            )
    args: dict[str, Any] = {}
    for spec in command.fields:
        if spec.name not in document:
            if spec.required:
                raise RequestError("bad_request", f"{cmd}: missing {spec.name!r}", rid)
            continue
        args[spec.name] = _check_field(cmd, spec, document[spec.name], rid)
    if cmd == "set" and args["setting"] not in SETTINGS:
        raise RequestError(
            "bad_request",
            f"set: unknown setting {_show(args['setting'])} (settable: {', '.join(SETTINGS)})",
            rid,
        )
    return Request(cmd=cmd, args=MappingProxyType(args), id=rid, token=token)


def authorize(request: Request, role: Role) -> None:
    """Raise :class:`RequestError` (``forbidden``) if ``role`` may not run the command."""
    needed = COMMANDS[request.cmd].role
    if needed == "operator" and role != "operator":
        raise RequestError(
            "forbidden",
            f"{request.cmd!r} needs the operator role; this connection has the read-only "
            "role (only status and explain)",
            request.id,
        )


def peer_allowed(peer_uid: int, server_uid: int) -> bool:
    """A Unix-socket peer is served if it runs as the server's user or as root."""
    return peer_uid in (server_uid, 0)


def _hide_url(url: str) -> str:
    try:
        return parse_url(url).render(hide_password=True)
    except ProgrammingError:
        return "(an invalid URL)"


def describe_request(request: Request) -> str:
    """The request as the audit log writes it: no token, URLs without their password."""
    parts = [request.cmd]
    for key, value in request.args.items():
        shown = _hide_url(value) if key == "url" else value
        parts.append(f"{key}={shown!r}")
    return " ".join(parts)


def encode_response(response: Mapping[str, Any]) -> bytes:
    """One response line.  Values JSON cannot hold (NaN) become ``null``."""
    try:
        text = json.dumps(response, allow_nan=False, separators=(",", ":"), default=str)
    except ValueError:
        text = json.dumps(_finite(response), separators=(",", ":"), default=str)
    return text.encode("ascii") + b"\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- commands


def _role_of(name: str, h: Health, master: str | None) -> str:
    """What a datasource is observed to be: master, replica, writable, read_only, ..."""
    if not h.reachable:
        return "unreachable"
    if name == master:
        return "master"
    if h.read_only is False:
        return "writable"  # writable and not the master: split brain
    return "replica" if h.replicating else "read_only"


def _service_status(handle: ServiceHandle, now: float) -> dict[str, Any]:
    snap: Snapshot = handle.monitor.snapshot
    service = snap.service
    mastership = resolve_master(service.datasources, snap.health, promoted=snap.promoted)
    master_name = mastership.master.name if mastership.master is not None else None
    rows = snapshot_rows(snap, Policy(qos=QoS.RO_RELAXED, max_lag=service.max_lag))
    conns = handle.open_connections()
    datasources = []
    for ds, row in zip(service.datasources, rows, strict=True):
        h = snap.health_of(ds.name)
        datasources.append(
            {
                "name": ds.name,
                "address": ds.address,
                "declared": ds.role.value,
                "role": _role_of(ds.name, h, master_name),
                "admin": row["admin"],
                "reachable": h.reachable,
                "read_only": h.read_only,
                "io_running": h.io_running,
                "sql_running": h.sql_running,
                "lag": h.lag,
                "lag_source": h.lag_source or None,
                "gtid": row["gtid"] or None,
                "weight": ds.weight,
                "open_connections": conns.get(ds.name, 0),
                "error": h.error,
                "verdict": row["verdict"],
            }
        )
    return {
        "service": service.name,
        "registry": handle.registry.describe(),
        "registry_error": handle.registry.last_error,
        "max_lag": service.max_lag,
        "overrides": handle.overrides,
        "master": master_name,
        "promoted": snap.promoted,
        "offline": sorted(snap.offline),
        "split_brain": [ds.name for ds in mastership.not_master],
        "monitor": {
            "running": handle.monitor.running,
            "rounds": handle.monitor.rounds,
            "generation": snap.generation,
            "snapshot_age": round(now - snap.taken_at, 3) if snap.taken_at else None,
        },
        "open_connections": sum(conns.values()),
        "datasources": datasources,
    }


def _settle(handle: ServiceHandle, timeout: float, stopping: threading.Event) -> None:
    """Wait (bounded) until the monitor uses the service last given to it.

    The monitor applies a new definition at the start of its next round: once this
    returns, new connections route with it.  Gives up at once when ``stopping`` is set.
    """
    deadline = time.monotonic() + timeout
    monitor = handle.monitor
    while monitor.service != handle.wanted and monitor.running and not stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        monitor.wait_for_round(timeout=min(remaining, _TICK))


def _settle_timeout(handle: ServiceHandle) -> float:
    service = handle.wanted
    return min(10.0, 2 * (service.monitor_interval + service.probe_timeout) + 1.0)


class _Commands:
    """What each command does, on the handles of this process."""

    def __init__(
        self,
        handles: Callable[[], list[ServiceHandle]],
        server: ControlServer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handles = handles
        self._server = server
        self._clock = clock
        self._stopping = threading.Event() if server is None else server.stopping
        #: The error each registry had at the last ``reload`` (to say when it is fixed).
        self._reload_errors: dict[str, str] = {}

    def run(self, request: Request) -> dict[str, Any]:
        """The response to ``request`` (never raises)."""
        try:
            result = getattr(self, f"cmd_{request.cmd}")(request.args)
        except RequestError as exc:
            exc.request_id = request.id
            return exc.response()
        except Exception as exc:  # a bug must not kill the control thread
            logger.exception("control: %s failed", request.cmd)
            return error_response("internal", f"{type(exc).__name__}: {exc}", request.id)
        response: dict[str, Any] = {"ok": True}
        if request.id is not None:
            response["id"] = request.id
        response.update(result)
        return response

    # -- helpers ---------------------------------------------------------------------

    def _by_service(self, service: str | None) -> list[ServiceHandle]:
        handles = self._handles()
        if service is None:
            return handles
        found = [h for h in handles if h.name == service]
        if not found:
            used = ", ".join(sorted({h.name for h in handles})) or "none"
            raise RequestError(
                "not_found", f"this process does not use service {service!r} (it uses: {used})"
            )
        return found

    def _with_datasource(self, datasource: str, service: str | None) -> list[ServiceHandle]:
        handles = self._by_service(service)
        found = [h for h in handles if any(ds.name == datasource for ds in h.service.datasources)]
        if not found:
            known = "; ".join(
                f"{h.name}: {', '.join(ds.name for ds in h.service.datasources)}" for h in handles
            )
            where = (
                f"service {service!r} has no datasource"
                if service
                else "no service of this process has datasource"
            )
            raise RequestError("not_found", f"{where} {datasource!r} (known: {known or 'none'})")
        names = sorted({h.name for h in found})
        if len(names) > 1:
            raise RequestError(
                "ambiguous",
                f"datasource {datasource!r} is in services {', '.join(names)}: give the service",
            )
        return found

    # -- commands --------------------------------------------------------------------

    def cmd_status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        now = self._clock()
        services = [_service_status(h, now) for h in self._by_service(args.get("service"))]
        server = self._server
        return {
            "process": {
                "pid": os.getpid(),
                "uid": os.getuid(),
                "program": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
            },
            "control": {
                "socket": str(server.socket_path) if server and server.socket_path else None,
                "tcp": "{}:{}".format(*server.tcp_address)
                if server and server.tcp_address
                else None,
            },
            "services": services,
        }

    def _admin_state(self, args: Mapping[str, Any], offline: bool) -> dict[str, Any]:
        datasource: str = args["datasource"]
        applied = []
        for h in self._with_datasource(datasource, args.get("service")):
            try:
                h.monitor.set_offline(datasource, offline)
            except KeyError as exc:  # the registry dropped it meanwhile
                raise RequestError("not_found", str(exc.args[0])) from None
            snap = h.monitor.snapshot
            applied.append(
                {
                    "service": h.name,
                    "registry": h.registry.describe(),
                    "datasource": datasource,
                    "offline": sorted(snap.offline),
                    "open_connections": h.open_connections().get(datasource, 0),
                }
            )
        return {"applied": applied}

    def cmd_offline(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._admin_state(args, True)

    def cmd_online(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self._admin_state(args, False)

    def cmd_promote(self, args: Mapping[str, Any]) -> dict[str, Any]:
        datasource: str | None = args["datasource"]
        service: str | None = args.get("service")
        targets = (
            self._by_service(service)
            if datasource is None
            else self._with_datasource(datasource, service)
        )
        applied = []
        for h in targets:
            try:
                h.monitor.promote(datasource)
            except KeyError as exc:
                raise RequestError("not_found", str(exc.args[0])) from None
            snap = h.monitor.snapshot
            master = observed_master(snap)
            entry: dict[str, Any] = {
                "service": h.name,
                "registry": h.registry.describe(),
                "promoted": snap.promoted,
                "master": master.name if master is not None else None,
            }
            if datasource is not None and not snap.health_of(datasource).writable:
                entry["warning"] = (
                    f"{datasource} is not writable now (read-only or unreachable): writes "
                    "never go to it until it is; the promotion decides only between "
                    "writable servers"
                )
            elif datasource is not None and entry["master"] != datasource:
                entry["warning"] = (
                    f"{datasource} is not the master: the promotion only breaks a tie between "
                    "writable servers that do not replicate, when the replicas do not tell "
                    f"them apart; now: {explain_master(snap)}"
                )
            applied.append(entry)
        return {"applied": applied}

    def cmd_set(self, args: Mapping[str, Any]) -> dict[str, Any]:
        setting: str = args["setting"]
        value: float | None = args["value"]
        applied = []
        for h in self._by_service(args["service"]):
            try:
                registry_value = getattr(h.registry.lookup(h.name), setting)
                service = h.override(**{setting: value})
            except ProgrammingError as exc:
                raise RequestError("failed", str(exc.args[-1])) from None
            _settle(h, _settle_timeout(h), self._stopping)
            applied.append(
                {
                    "service": h.name,
                    "registry": h.registry.describe(),
                    setting: getattr(service, setting),
                    "registry_value": registry_value,
                    "overrides": h.overrides,
                }
            )
        return {"applied": applied}

    def cmd_reload(self, args: Mapping[str, Any]) -> dict[str, Any]:
        del args
        handles = self._handles()
        registries: dict[int, Registry] = {}
        for h in handles:
            registries.setdefault(id(h.registry), h.registry)
        results = []
        for registry in registries.values():
            results.append(self._reload_one(registry))
        for h in handles:
            h.refresh()
        for h in handles:
            _settle(h, _settle_timeout(h), self._stopping)
        response: dict[str, Any] = {
            "registries": results,
            "services": [
                {"service": h.name, "max_lag": h.wanted.max_lag, "overrides": h.overrides}
                for h in handles
            ],
        }
        problems = [str(r["error"]) for r in results if r["error"]]  # each names its registry
        if self._server is not None:
            try:
                self._server.reload_tokens()
            except ControlError as exc:
                problems.append(f"{exc.args[-1]} (the previous tokens stay in use)")
        if problems:
            return {
                **response,
                "ok": False,
                "code": "failed",
                "error": "; ".join(problems) + " (the last good registry content is kept)",
            }
        return response

    def _reload_one(self, registry: Registry) -> dict[str, Any]:
        """Reload ``registry`` now; ``fixed`` holds the error it had before, if it is gone."""
        name = registry.describe()
        reported = self._reload_errors.pop(name, None)
        before = registry.last_error or reported
        changed = registry.refresh(force=True)
        item: dict[str, Any] = {"registry": name, "changed": changed, "error": registry.last_error}
        if registry.last_error is not None:
            self._reload_errors[name] = registry.last_error
        elif before is not None:
            item["fixed"] = before
        return item

    def cmd_explain(self, args: Mapping[str, Any]) -> dict[str, Any]:
        try:
            parsed = parse_url(args["url"])
        except ProgrammingError as exc:
            raise RequestError("bad_request", f"explain: {exc.args[-1]}") from None
        in_use = self._handles()
        watched = [h for h in in_use if h.name == parsed.service]
        if not watched:
            used = ", ".join(sorted({h.name for h in in_use})) or "none"
            raise RequestError(
                "not_found",
                f"this process does not use service {parsed.service!r} (it uses: {used}); "
                "`sqlrouter route URL` starts a monitor of its own",
            )
        # Only a registry this process found already, by the same registry= (or its
        # absence): a request never makes the process open, resolve or connect to
        # anything its own configuration did not name.  Nothing about what the URL's
        # registry= names is looked at, so the answer says nothing about it.
        handle = watched_handle(parsed.registry, parsed.service)
        if handle is None or not any(h is handle for h in watched):
            raise RequestError(
                "not_found",
                f"this process uses service {parsed.service!r} from "
                f"{', '.join(h.registry.describe() for h in watched)}, and no connection "
                "of it gave this URL's registry= (or its absence): explain works on the "
                "registries in use only; give registry= as the application gives it",
            )
        try:
            text = explain_handle(handle, parsed)
        except ProgrammingError as exc:
            raise RequestError("failed", str(exc.args[-1])) from None
        return {"text": text}


# --------------------------------------------------------------------------- the server


class _Client:
    """One connected client: its buffers, its deadline, what it is waiting for."""

    __slots__ = (
        "closed",
        "closing",
        "deadline",
        "eof",
        "events",
        "inbuf",
        "kind",
        "outbuf",
        "peer",
        "pending",
        "role",
        "sock",
        "trusted",
    )

    def __init__(
        self, sock: socket.socket, kind: str, peer: str, role: Role | None, deadline: float
    ) -> None:
        self.sock = sock
        self.kind = kind
        self.peer = peer
        self.role = role
        self.deadline = deadline
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pending = False
        self.eof = False
        self.closing = False
        self.closed = False
        self.events = 0
        #: A Unix peer of an allowed uid, or a TCP client that sent a valid token.
        self.trusted = role is not None


@dataclass(frozen=True, slots=True)
class _Listener:
    sock: socket.socket
    kind: Literal["unix", "tcp"]


@dataclass(frozen=True, slots=True)
class _Job:
    client: _Client
    request: Request
    role: Role


_WAKE: Final = object()


class ControlServer:
    """The control socket of this process: listener and worker threads, owned.

    :meth:`start` creates the socket(s) and starts the threads (raising
    :class:`ControlError` if it cannot); :meth:`stop` stops and joins them within a
    bounded time and removes the socket file.  ``handles`` gives the services to act
    on (default: every service of this process).
    """

    def __init__(
        self,
        config: ControlConfig,
        *,
        handles: Callable[[], list[ServiceHandle]] = all_handles,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._uid = os.getuid()
        self.pid = os.getpid()
        self.socket_path: Path | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._socket_ino: int | None = None
        self._tokens: tuple[tuple[str, Role], ...] = ()
        self._selector: selectors.BaseSelector | None = None
        self._listeners: list[_Listener] = []
        self._clients: set[_Client] = set()
        #: Clients connected per listener kind, and the kinds at their limit.
        self._counts: dict[str, int] = {"unix": 0, "tcp": 0}
        self._full: set[str] = set()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._done: collections.deque[tuple[_Client, dict[str, Any]]] = collections.deque()
        #: Set by :meth:`stop`; commands waiting for a monitor give up when it is.
        self.stopping = threading.Event()
        self._commands = _Commands(handles, self, clock)
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:
        where = [str(self.socket_path)] if self.socket_path else []
        if self.tcp_address:
            where.append("tcp={}:{}".format(*self.tcp_address))
        state = "running" if self.running else "stopped"
        return f"<ControlServer {' '.join(where)} {state} clients={len(self._clients)}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if not hasattr(socket, "SO_PEERCRED"):
            raise ControlError("the control socket needs SO_PEERCRED (Linux)")
        config = self.config
        self._tokens = _load_tokens(config) if config.tcp is not None else ()
        directory = config.socket_dir or default_socket_dir()
        prepare_socket_dir(directory)
        path = directory / f"{self.pid}.sock"
        if len(os.fsencode(path)) > 107:
            raise ControlError(
                f"control socket path {path} is too long for a Unix socket (107 bytes at "
                "most): choose a shorter socket_dir"
            )
        listeners: list[_Listener] = []
        try:
            listeners.append(_Listener(self._bind_unix(path), "unix"))
            if config.tcp is not None:
                listeners.append(_Listener(self._bind_tcp(config.tcp), "tcp"))
        except BaseException:
            for lst in listeners:
                lst.sock.close()
            self._unlink()
            raise
        self._listeners = listeners
        selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        for lst in listeners:
            selector.register(lst.sock, selectors.EVENT_READ, lst)
        self._selector = selector
        self.stopping.clear()
        self._worker = threading.Thread(
            target=self._work, name="sqlrouter-control-worker", daemon=True
        )
        self._thread = threading.Thread(target=self._run, name="sqlrouter-control", daemon=True)
        self._worker.start()
        self._thread.start()
        logger.info(
            "control socket listening on %s%s",
            path,
            " and tcp {}:{}".format(*self.tcp_address) if self.tcp_address else "",
        )

    def _bind_unix(self, path: Path) -> socket.socket:
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
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ControlError(f"control socket {path}: cannot listen: {exc.strerror}") from None
        self.socket_path = path
        self._socket_ino = os.lstat(path).st_ino
        return sock

    def _bind_tcp(self, address: tuple[str, int]) -> socket.socket:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
        except OSError as exc:
            raise ControlError(
                f"control tcp {host}:{port}: cannot listen: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        bound = sock.getsockname()
        self.tcp_address = (str(bound[0]), int(bound[1]))
        return sock

    def reload_tokens(self) -> None:
        """Re-read the token files (``reload``); on error the old tokens stay."""
        if self.config.tcp is not None:
            self._tokens = _load_tokens(self.config)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the threads, close every socket, remove the socket file."""
        self.stopping.set()
        self._jobs.put(None)
        self._wake()
        deadline = time.monotonic() + timeout
        for thread in (self._thread, self._worker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    logger.warning("control: thread %s did not stop in %gs", thread.name, timeout)
        if self._thread is None or not self._thread.is_alive():
            # Never started, or a forked child's copy (its threads do not exist there):
            # no listener thread will close the sockets.
            self._close_all()
        self._thread = self._worker = None
        self._unlink()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the server's sockets and
        nothing more.  The socket file, the listeners and the epoll set are the
        parent's (an ``unregister`` here would change the parent's epoll set)."""
        socks = [c.sock for c in self._clients] + [lst.sock for lst in self._listeners]
        socks += [s for s in (self._wake_r, self._wake_w) if s is not None]
        self._clients, self._listeners = set(), []
        self._wake_r = self._wake_w = None
        selector, self._selector = self._selector, None
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
        if selector is not None:
            with contextlib.suppress(OSError):
                selector.close()
        self._thread = self._worker = None
        self.socket_path = None

    def _unlink(self) -> None:
        path, self.socket_path = self.socket_path, None
        if path is None or os.getpid() != self.pid:
            return  # in a forked child, the socket is the parent's
        try:
            if os.lstat(path).st_ino == self._socket_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("control: cannot remove %s: %s", path, exc.strerror)

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            # Full (a wake-up is already pending) or closed (stopping): either is fine.
            with contextlib.suppress(OSError):
                w.send(b"\0")

    # -- the I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._iterate()
                except Exception:  # never let the control thread die
                    logger.exception("control: unexpected error in the listener; continuing")
                    self.stopping.wait(0.1)
        finally:
            self._close_all()

    def _iterate(self) -> None:
        selector = self._selector
        if selector is None:
            return
        now = self._clock()
        timeout = _TICK
        for c in self._clients:
            timeout = min(timeout, max(0.0, c.deadline - now))
        for key, mask in selector.select(timeout):
            target = key.data
            if target is _WAKE:
                self._drain_wake()
            elif isinstance(target, _Listener):
                self._accept(target)
            elif isinstance(target, _Client):
                try:
                    self._on_client(target, mask)
                except Exception:
                    logger.exception("control: error serving %s; dropping it", target.peer)
                    self._close(target)
        self._deliver()
        self._expire(self._clock())

    def _drain_wake(self) -> None:
        r = self._wake_r
        if r is None:
            return
        try:
            while r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, listener: _Listener) -> None:
        for _ in range(_BACKLOG):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: log, keep serving the others
                logger.warning("control: accept failed: %s", exc.strerror)
                return
            sock.setblocking(False)
            role: Role | None = None
            if listener.kind == "unix":
                try:
                    pid, uid, _gid = _PEERCRED.unpack(
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                    )
                except OSError as exc:
                    logger.warning("control: cannot read peer credentials: %s", exc.strerror)
                    sock.close()
                    continue
                peer = f"uid {uid} pid {pid} (unix socket)"
                if not peer_allowed(uid, self._uid):
                    audit.warning("%s: refused: not uid %d or root", peer, self._uid)
                    self._reject(
                        sock,
                        "refused",
                        f"refused: this socket serves uid {self._uid} and root only",
                    )
                    continue
                role = "operator"
            else:
                peer = f"{address[0]}:{address[1]} (tcp)"
            kind = listener.kind
            # Each listener has its own limit: TCP clients (who may not even have a
            # token) never take the places of the Unix socket's.
            limit, setting = (
                (self.config.max_clients, "max_clients")
                if kind == "unix"
                else (self.config.max_tcp_clients, "max_tcp_clients")
            )
            if self._counts[kind] >= limit:
                if kind not in self._full:
                    self._full.add(kind)  # warned once per overload, not per client
                    logger.warning(
                        "control: %d %s clients connected (%s): turning others away",
                        self._counts[kind],
                        kind,
                        setting,
                    )
                logger.debug("control: %s turned away: busy", peer)
                self._reject(
                    sock,
                    "busy",
                    f"busy: {limit} {kind} clients are connected already; retry",
                )
                continue
            timeout = self.config.client_timeout
            if role is None:  # TCP: a valid token must come soon
                timeout = min(timeout, self.config.tcp_auth_timeout)
            client = _Client(sock, kind, peer, role, self._clock() + timeout)
            self._clients.add(client)
            self._counts[kind] += 1
            if self._counts[kind] < limit:
                self._full.discard(kind)
            self._update(client)

    @staticmethod
    def _reject(sock: socket.socket, code: str, message: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(encode_response(error_response(code, message)))
        sock.close()

    def _on_client(self, c: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(c)
            if c.closed:
                return
            if not c.outbuf:
                self._process(c)
                return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(c)
                return
            if data:
                c.inbuf += data
            else:
                c.eof = True
            self._process(c)

    def _process(self, c: _Client) -> None:
        """Serve the complete lines buffered, one at a time, answers in order."""
        while not c.closed and not c.pending and not c.outbuf and not c.closing:
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > MAX_LINE:
                    self._too_long(c)
                    break
                if not c.eof:
                    break
                if not c.inbuf.strip():
                    c.closing = True
                    break
                line = bytes(c.inbuf)  # the last line, without a newline before EOF
                c.inbuf.clear()
            else:
                if nl > MAX_LINE:
                    self._too_long(c)
                    break
                line = bytes(c.inbuf[:nl])
                del c.inbuf[: nl + 1]
            self._handle_line(c, line)
        if c.closed:
            return
        if c.closing and not c.outbuf and not c.pending:
            self._close(c)
            return
        self._update(c)

    def _too_long(self, c: _Client) -> None:
        logger.warning("control: %s sent a line over %d bytes; dropping it", c.peer, MAX_LINE)
        c.inbuf.clear()
        c.closing = True
        self._queue(c, error_response("too_long", f"request line over {MAX_LINE} bytes"))

    def _role_for(self, token: str | None) -> Role | None:
        if token is None:
            return None
        found: Role | None = None
        given = token.encode("utf-8", "surrogatepass")
        for secret, role in self._tokens:
            if hmac.compare_digest(given, secret.encode("utf-8")):
                found = role
        return found

    def _handle_line(self, c: _Client, line: bytes) -> None:
        if not line.strip():
            return  # blank lines are ignored
        try:
            request = parse_request(line.rstrip(b"\r"))
        except RequestError as exc:
            logger.debug("control: %s: %s", c.peer, exc.message)
            if not c.trusted:
                c.closing = True  # TCP without a valid token yet: no second try
            self._queue(c, exc.response())
            return
        role = c.role if c.kind == "unix" else self._role_for(request.token)
        if role is None:
            why = "no token" if request.token is None else "a wrong token"
            audit.warning("%s: refused %s: %s", c.peer, request.cmd, why)
            c.closing = True
            self._queue(
                c,
                error_response(
                    "unauthorized",
                    f'unauthorized: {why}; a TCP request needs the "token" of a role',
                    request.id,
                ),
            )
            return
        c.trusted = True
        who = c.peer if c.kind == "unix" else f"{c.peer[:-1]}, {role})"
        try:
            authorize(request, role)
        except RequestError as exc:
            audit.warning("%s: refused %s: %s", who, describe_request(request), exc.message)
            self._queue(c, exc.response())
            return
        if request.cmd == "status":
            # Reads immutable snapshots and counters only: answered at once.
            audit.debug("%s: %s", who, describe_request(request))
            self._queue(c, self._commands.run(request))
            return
        c.pending = True
        c.deadline = self._clock() + self.config.command_timeout
        self._jobs.put(_Job(c, request, role))

    def _queue(self, c: _Client, response: Mapping[str, Any]) -> None:
        c.outbuf += encode_response(response)
        c.deadline = self._clock() + self.config.client_timeout
        self._flush(c)

    def _flush(self, c: _Client) -> None:
        if not c.outbuf or c.closed:
            return
        try:
            sent = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        del c.outbuf[:sent]

    def _update(self, c: _Client) -> None:
        """Watch for what the client's state needs: writing its answer, or a new line."""
        selector = self._selector
        if c.closed or selector is None:
            return
        events = 0
        if c.outbuf:
            events = selectors.EVENT_WRITE
        elif not c.pending and not c.eof and b"\n" not in c.inbuf:
            events = selectors.EVENT_READ
        if events == c.events:
            return
        if c.events == 0:
            selector.register(c.sock, events, c)
        elif events == 0:
            selector.unregister(c.sock)
        else:
            selector.modify(c.sock, events, c)
        c.events = events

    def _close(self, c: _Client) -> None:
        if c.closed:
            return
        c.closed = True
        if c in self._clients:
            self._clients.discard(c)
            self._counts[c.kind] -= 1
        if c.events and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(c.sock)
        c.events = 0
        c.sock.close()

    def _expire(self, now: float) -> None:
        for c in [c for c in self._clients if c.deadline <= now]:
            if c.pending:
                message = (
                    f"timeout: the command did not finish within {self.config.command_timeout:g}s "
                    "(it may still complete)"
                )
            elif c.outbuf:
                message = ""  # it does not read its answers: nothing more to say
            elif not c.trusted:
                message = (
                    "timeout: no request with a valid token within "
                    f"{min(self.config.client_timeout, self.config.tcp_auth_timeout):g}s"
                )
            else:
                message = (
                    f"timeout: no complete request line within {self.config.client_timeout:g}s"
                )
            logger.debug("control: %s: dropped (%s)", c.peer, message or "not reading")
            if message:
                self._reject(c.sock, "timeout", message)
            self._close(c)

    def _deliver(self) -> None:
        while self._done:
            c, response = self._done.popleft()
            if c.closed:
                continue
            c.pending = False
            self._queue(c, response)
            if not c.closed and not c.outbuf:
                self._process(c)
            else:
                self._update(c)

    def _close_all(self) -> None:
        for c in list(self._clients):
            self._close(c)
        for lst in self._listeners:
            lst.sock.close()
        self._listeners = []
        selector, self._selector = self._selector, None
        if selector is not None:
            selector.close()
        for attr in ("_wake_r", "_wake_w"):
            sock = getattr(self, attr)
            setattr(self, attr, None)
            if sock is not None:
                sock.close()

    # -- the worker thread -----------------------------------------------------------

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self._jobs.get(timeout=_TICK)
            except queue.Empty:
                continue
            if job is None or self.stopping.is_set():
                return
            response = self._commands.run(job.request)
            c = job.client
            who = c.peer if c.kind == "unix" else f"{c.peer[:-1]}, {job.role})"
            what = describe_request(job.request)
            outcome = "ok" if response.get("ok") else f"failed: {response.get('error')}"
            if COMMANDS[job.request.cmd].role == "operator":
                audit.info("%s: %s: %s", who, what, outcome)
            else:
                audit.debug("%s: %s: %s", who, what, outcome)
            self._done.append((c, response))
            self._wake()


# --------------------------------------------------------------------------- the process's


_lock = _forksafe.lock()
_server: ControlServer | None = None


def current() -> ControlServer | None:
    """The control server of this process, if one is running."""
    server = _server
    return server if server is not None and server.pid == os.getpid() else None


def _base_dir(registry: Registry) -> Path | None:
    path = getattr(registry, "path", None)
    return path.parent if isinstance(path, Path) else None


def on_handle_created(handle: ServiceHandle) -> None:
    """Start the control socket if the settings enable it and it is not running.

    Called by the service table when the process starts watching a service.  A
    control socket that cannot start never breaks the application: the reason is
    logged at ERROR on ``sqlrouter.control``.
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
    if not config.enabled:
        return
    with _lock:
        if _server is not None:
            if _server.running:
                return
            _server.stop(timeout=1.0)  # a dead one
            _server = None
        server = ControlServer(config)
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
