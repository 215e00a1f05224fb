"""A control client, and what each of its request lines gets.

A :class:`Client` is one connected client's state: its buffers, its deadline, what it
waits for, whether it is trusted yet.  :func:`admit` decides what one request line gets:
nothing (a blank line), an error answer (a malformed line; over TCP no token or a wrong
one; a role that may not run the command: audited), or the request with the role it
runs as.  :func:`expiry` says what a client whose deadline passed is told.  No I/O: the
server (:mod:`sqlrouter.control.server`) reads, writes and runs the commands.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import ControlConfig
from .protocol import (
    Request,
    RequestError,
    Role,
    authorize,
    describe_request,
    error_response,
    parse_request,
)

__all__ = ["Admitted", "Client", "admit", "expiry", "role_for"]

logger = logging.getLogger("sqlrouter.control")
audit = logging.getLogger("sqlrouter.control.audit")


class Client:
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

    def who(self, role: Role) -> str:
        """The client as the audit log names it (a TCP client with its role)."""
        return self.peer if self.kind == "unix" else f"{self.peer[:-1]}, {role})"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request line to run: the request, the role it runs as, who sent it."""

    request: Request
    role: Role
    who: str


def role_for(token: str | None, tokens: Sequence[tuple[str, Role]]) -> Role | None:
    """The role of a TCP request's ``token`` (None: no token, or a wrong one)."""
    if token is None:
        return None
    found: Role | None = None
    given = token.encode("utf-8", "surrogatepass")
    for secret, role in tokens:
        if hmac.compare_digest(given, secret.encode("utf-8")):
            found = role
    return found


def admit(
    c: Client, line: bytes, tokens: Sequence[tuple[str, Role]]
) -> Admitted | dict[str, Any] | None:
    """What request ``line`` of client ``c`` gets: None for a blank line, the error
    answer to send (``c.closing`` set where the client gets no second try), or the
    request :class:`Admitted` (``c`` is trusted from then on)."""
    if not line.strip():
        return None  # blank lines are ignored
    try:
        request = parse_request(line.rstrip(b"\r"))
    except RequestError as exc:
        logger.debug("control: %s: %s", c.peer, exc.message)
        if not c.trusted:
            c.closing = True  # TCP without a valid token yet: no second try
        return exc.response()
    role = c.role if c.kind == "unix" else role_for(request.token, tokens)
    if role is None:
        why = "no token" if request.token is None else "a wrong token"
        audit.warning("%s: refused %s: %s", c.peer, request.cmd, why)
        c.closing = True
        return error_response(
            "unauthorized",
            f'unauthorized: {why}; a TCP request needs the "token" of a role',
            request.id,
        )
    c.trusted = True
    who = c.who(role)
    try:
        authorize(request, role)
    except RequestError as exc:
        audit.warning("%s: refused %s: %s", who, describe_request(request), exc.message)
        return exc.response()
    return Admitted(request, role, who)


def expiry(c: Client, config: ControlConfig) -> str:
    """What client ``c``, whose deadline passed, is told before it is dropped ("": it
    does not read its answers, nothing more to say)."""
    if c.pending:
        return (
            f"timeout: the command did not finish within {config.command_timeout:g}s "
            "(it may still complete)"
        )
    if c.outbuf:
        return ""
    if not c.trusted:
        return (
            "timeout: no request with a valid token within "
            f"{min(config.client_timeout, config.tcp_auth_timeout):g}s"
        )
    return f"timeout: no complete request line within {config.client_timeout:g}s"
