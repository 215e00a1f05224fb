"""What a control client's request line gets, as pure decisions: no listener, no server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sqlrouter.control import ControlConfig
from sqlrouter.control._admit import Admitted, Client, admit, expiry, role_for
from sqlrouter.control.protocol import Role

OPERATOR, READONLY = "op-secret-1", "ro-secret-2"
TOKENS: tuple[tuple[str, Role], ...] = ((OPERATOR, "operator"), (READONLY, "readonly"))


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def _tcp(sock: socket.socket) -> Client:
    return Client(sock, "tcp", "127.0.0.1:5555 (tcp)", None, 0.0)


def _unix(sock: socket.socket) -> Client:
    return Client(sock, "unix", "uid 1000 pid 42 (unix socket)", "operator", 0.0)


def _line(**request: Any) -> bytes:
    return json.dumps(request).encode()


def test_a_tcp_request_runs_as_its_tokens_role_and_the_client_is_trusted_then(
    sock: socket.socket,
) -> None:
    c = _tcp(sock)
    got = admit(c, _line(cmd="offline", datasource="db2", token=OPERATOR), TOKENS)
    assert isinstance(got, Admitted)
    assert (got.request.cmd, got.role, got.who) == (
        "offline",
        "operator",
        "127.0.0.1:5555 (tcp, operator)",
    )
    assert c.trusted and not c.closing
    assert role_for(READONLY, TOKENS) == "readonly"


@pytest.mark.parametrize("token", [None, "wrong", OPERATOR[:-1], OPERATOR + "x"])
def test_no_token_or_a_wrong_one_is_unauthorized_and_ends_the_connection(
    sock: socket.socket, token: str | None
) -> None:
    c = _tcp(sock)
    request: dict[str, Any] = {"cmd": "status", "id": 7}
    if token is not None:
        request["token"] = token
    got = admit(c, _line(**request), TOKENS)
    assert isinstance(got, dict) and got["code"] == "unauthorized" and got["id"] == 7
    assert c.closing and not c.trusted
    assert role_for(token, TOKENS) is None


def test_a_malformed_line_ends_an_untrusted_connection_only(sock: socket.socket) -> None:
    tcp, unix = _tcp(sock), _unix(sock)
    for c in (tcp, unix):
        got = admit(c, b"GET / HTTP/1.0\r", TOKENS)
        assert isinstance(got, dict) and got["code"] == "bad_request"
    assert tcp.closing and not unix.closing


def test_the_readonly_role_is_forbidden_operator_commands_and_keeps_its_connection(
    sock: socket.socket,
) -> None:
    c = _tcp(sock)
    got = admit(c, _line(cmd="reload", token=READONLY), TOKENS)
    assert isinstance(got, dict) and got["code"] == "forbidden"
    assert c.trusted and not c.closing


def test_a_unix_peer_runs_as_its_role_without_a_token_and_blank_lines_get_nothing(
    sock: socket.socket,
) -> None:
    c = _unix(sock)
    assert admit(c, b"  \r", TOKENS) is None
    got = admit(c, _line(cmd="reload"), ())
    assert isinstance(got, Admitted) and got.role == "operator"
    assert got.who == "uid 1000 pid 42 (unix socket)"


def test_a_client_past_its_deadline_is_told_what_it_did_not_do(sock: socket.socket) -> None:
    config = ControlConfig(client_timeout=10.0, command_timeout=30.0, tcp_auth_timeout=3.0)
    c = _tcp(sock)
    assert expiry(c, config) == "timeout: no request with a valid token within 3s"
    c.trusted = True
    assert expiry(c, config) == "timeout: no complete request line within 10s"
    c.outbuf += b"unread answer"
    assert expiry(c, config) == ""
    c.pending = True
    assert expiry(c, config) == (
        "timeout: the command did not finish within 30s (it may still complete)"
    )
