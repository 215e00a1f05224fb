"""The control protocol: one JSON object per line each way, and its error codes.

Pure: :func:`parse_request` validates a request line into a :class:`Request` (or raises
:class:`RequestError` with a code of :data:`ERROR_CODES`), :func:`authorize` checks its
role, :func:`encode_response` writes the answer line.  docs/control.md describes it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from ..errors import OperationalError, ProgrammingError
from ..topology import MAX_LAG_RANGE, range_text
from ..url import parse_url

__all__ = [
    "COMMANDS",
    "ERROR_CODES",
    "ER_CONTROL",
    "MAX_LINE",
    "SETTINGS",
    "Command",
    "ControlError",
    "Request",
    "RequestError",
    "Role",
    "authorize",
    "describe_request",
    "encode_response",
    "error_response",
    "parse_request",
    "peer_allowed",
]


#: The longest request line accepted, newline excluded.
MAX_LINE: Final = 64 * 1024


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


_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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


#: Client-side error number of :class:`ControlError` (see :mod:`sqlrouter.errors`).
ER_CONTROL: Final = 3930


class ControlError(OperationalError):
    """The control socket cannot start, or a control client got no usable answer.

    ``args`` is ``(ER_CONTROL, message)``; the message names the socket or setting and
    says why.
    """

    __module__ = "sqlrouter.control"

    def __init__(self, message: str) -> None:
        super().__init__(ER_CONTROL, message)
