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

from .client import (
    DEFAULT_TIMEOUT,
    Answer,
    checked_socket_dir,
    list_sockets,
    remove_stale,
    request,
    request_tcp,
    resolve_socket_dir,
    send_all,
)
from .commands import (
    Commands,
)
from .config import (
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_TCP_CLIENTS,
    DEFAULT_TCP_AUTH_TIMEOUT,
    ENV_VAR,
    ControlConfig,
    check_socket_dir,
    control_config,
    default_socket_dir,
    env_setting,
    parse_tcp,
    prepare_socket_dir,
    read_token,
)
from .process import (
    current,
    on_handle_created,
    stop,
)
from .protocol import (
    COMMANDS,
    ER_CONTROL,
    ERROR_CODES,
    MAX_LINE,
    SETTINGS,
    Command,
    ControlError,
    Request,
    RequestError,
    Role,
    authorize,
    describe_request,
    encode_response,
    error_response,
    parse_request,
    peer_allowed,
)
from .server import (
    ControlServer,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_TCP_CLIENTS",
    "DEFAULT_TCP_AUTH_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ENV_VAR",
    "ERROR_CODES",
    "ER_CONTROL",
    "MAX_LINE",
    "SETTINGS",
    "Answer",
    "Command",
    "Commands",
    "ControlConfig",
    "ControlError",
    "ControlServer",
    "Request",
    "RequestError",
    "Role",
    "authorize",
    "check_socket_dir",
    "checked_socket_dir",
    "control_config",
    "current",
    "default_socket_dir",
    "describe_request",
    "encode_response",
    "env_setting",
    "error_response",
    "list_sockets",
    "on_handle_created",
    "parse_request",
    "parse_tcp",
    "peer_allowed",
    "prepare_socket_dir",
    "read_token",
    "remove_stale",
    "request",
    "request_tcp",
    "resolve_socket_dir",
    "send_all",
    "stop",
]
