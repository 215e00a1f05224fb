"""The control socket's settings (``[control]``, ``$SQLROUTER_CONTROL``), its private
directory and its token files."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import stat as stat_mode
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..topology import range_text
from .protocol import ControlError, Role, _show

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_TCP_CLIENTS",
    "DEFAULT_TCP_AUTH_TIMEOUT",
    "ENV_VAR",
    "ControlConfig",
    "check_socket_dir",
    "control_config",
    "default_socket_dir",
    "env_setting",
    "parse_tcp",
    "prepare_socket_dir",
    "read_token",
]

logger = logging.getLogger("sqlrouter.control")


#: ``SQLROUTER_CONTROL``: ``1``/``on`` enables the socket, ``0``/``off`` disables it
#: (whatever the registry says), anything else is the directory of the sockets.
ENV_VAR: Final = "SQLROUTER_CONTROL"


DEFAULT_CLIENT_TIMEOUT: Final = 10.0


DEFAULT_COMMAND_TIMEOUT: Final = 30.0


DEFAULT_MAX_CLIENTS: Final = 64


DEFAULT_MAX_TCP_CLIENTS: Final = 16


#: Seconds a TCP client has, once connected, to send a request with a valid token.
DEFAULT_TCP_AUTH_TIMEOUT: Final = 3.0


#: The accepted range of the timeouts (seconds) and of the client limits.
_TIMEOUT_RANGE: Final = (0.05, 3600.0)


_CLIENTS_RANGE: Final = (1, 4096)


_ON: Final = frozenset({"1", "on", "true", "yes"})


_OFF: Final = frozenset({"0", "off", "false", "no"})


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


def parse_tcp(
    value: object,
    *,
    allow_remote: bool = False,
    what: str = "the control port",
    unless: str = "tcp_allow_remote = true",
) -> tuple[str, int]:
    """``PORT``, ``"PORT"``, ``"HOST:PORT"`` or ``"[IPv6]:PORT"`` -> ``(host, port)``.

    The host must be an IP address (or ``localhost``); a non-loopback address needs
    ``allow_remote``.  Raises :class:`ValueError` saying what is accepted (``what``
    listens on loopback only ``unless`` the setting that allows others).
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
            f"{value!r} is not a loopback address: {what} listens on loopback only unless {unless}"
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
