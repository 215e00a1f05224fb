"""The control socket's protocol and settings, as pure functions: no socket, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter.control import (
    COMMANDS,
    ERROR_CODES,
    MAX_LINE,
    ControlError,
    Request,
    RequestError,
    authorize,
    control_config,
    default_socket_dir,
    describe_request,
    encode_response,
    env_setting,
    parse_request,
    parse_tcp,
    peer_allowed,
)


def _error(line: bytes | str) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(line)
    assert info.value.code in ERROR_CODES
    return info.value


# --------------------------------------------------------------------------- requests


def test_every_command_parses() -> None:
    assert parse_request(b'{"cmd": "status"}') == Request("status")
    assert parse_request('{"cmd": "status", "service": "shop"}').args == {"service": "shop"}
    assert parse_request(b'{"cmd": "offline", "datasource": "db2"}').args == {"datasource": "db2"}
    req = parse_request(b'{"cmd": "online", "datasource": "db2", "service": "shop", "id": 7}')
    assert req.args == {"datasource": "db2", "service": "shop"} and req.id == 7
    assert parse_request(b'{"cmd": "promote", "datasource": null}').args == {"datasource": None}
    req = parse_request(b'{"cmd": "set", "service": "shop", "setting": "max_lag", "value": 2}')
    assert req.args == {"service": "shop", "setting": "max_lag", "value": 2.0}
    assert (
        parse_request(b'{"cmd":"set","service":"s","setting":"max_lag","value":null}').args["value"]
        is None
    )
    assert parse_request(b'{"cmd": "reload"}').cmd == "reload"
    req = parse_request(b'{"cmd": "explain", "url": "sqlrouter://app@shop/db", "token": "t"}')
    assert req.args == {"url": "sqlrouter://app@shop/db"} and req.token == "t"
    assert set(COMMANDS) == {"status", "explain", "offline", "online", "promote", "set", "reload"}


def test_the_token_is_not_in_the_repr() -> None:
    req = parse_request(b'{"cmd": "status", "token": "s3cr3t-token-value"}')
    assert "s3cr3t" not in repr(req)
    assert "s3cr3t" not in describe_request(req)


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        (b"not json", "bad_request", ["not JSON", '{"cmd": "status"}']),
        (b'{"cmd": "status"', "bad_request", ["not JSON"]),
        (b"", "bad_request", ["not JSON"]),
        (b"[1, 2]", "bad_request", ["JSON object", "an array"]),
        (b'"status"', "bad_request", ["JSON object"]),
        (b"{}", "bad_request", ["missing 'cmd'", "status", "offline"]),
        (b'{"cmd": 5}', "bad_request", ["'cmd' must be a string", "5"]),
        (b'{"cmd": "statsu"}', "unknown_command", ["'statsu'", "did you mean 'status'"]),
        (b'{"cmd": "drop"}', "unknown_command", ["known: status"]),
        (b'{"cmd": "offline"}', "bad_request", ["offline", "missing 'datasource'"]),
        (b'{"cmd": "offline", "datasource": 3}', "bad_request", ["'datasource' must be", "3"]),
        (b'{"cmd": "offline", "datasource": ""}', "bad_request", ["'datasource' must be"]),
        (b'{"cmd": "offline", "datasource": "a b"}', "bad_request", ["a name"]),
        (b'{"cmd": "offline", "datasource": "x\\ny"}', "bad_request", ["a name"]),
        (b'{"cmd": "offline", "datasource": "db2", "force": true}', "bad_request", ["'force'"]),
        (b'{"cmd": "status", "token": 5}', "bad_request", ["'token' must be a string"]),
        (b'{"cmd": "status", "id": [1]}', "bad_request", ["'id'"]),
        (b'{"cmd": "status", "id": true}', "bad_request", ["'id'"]),
        (b'{"cmd": "promote"}', "bad_request", ["missing 'datasource'"]),
        (b'{"cmd": "set", "service": "s", "setting": "max_lag"}', "bad_request", ["'value'"]),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": -1}',
            "bad_request",
            ["seconds 0-31536000 or null"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": "2"}',
            "bad_request",
            ["number of seconds", "'2'"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": 1e999}',
            "bad_request",
            ["seconds 0-31536000 or null", "got Infinity"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": 1e400}',
            "bad_request",
            ["seconds 0-31536000 or null"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": 1' + b"0" * 400 + b"}",
            "bad_request",
            ["'value' must be a number of seconds 0-31536000 or null", "integer of 401 digits"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": 1e300}',
            "bad_request",
            ["seconds 0-31536000 or null", "got 1e+300"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "max_lag", "value": 9' + b"9" * 4299 + b"}",
            "bad_request",
            ["integer of 4300 digits"],
        ),
        (
            b'{"cmd": "set", "service": "s", "setting": "weight", "value": 1}',
            "bad_request",
            ["unknown setting", "max_lag"],
        ),
        (b'{"cmd": "explain"}', "bad_request", ["missing 'url'"]),
        (b'{"cmd": "explain", "url": ""}', "bad_request", ["non-empty string"]),
        (b'{"cmd": "status"}\xff', "bad_request", ["not UTF-8", "byte 17"]),
        (b"[" * 100_00 + b"]" * 100_00, "bad_request", ["not JSON"]),
        (b'{"cmd": "status", "x": 1' + b"0" * 5000 + b"}", "bad_request", ["not JSON"]),
    ],
)
def test_bad_requests_say_what_is_wrong(line: bytes, code: str, words: list[str]) -> None:
    err = _error(line)
    assert err.code == code
    for word in words:
        assert word in err.message, err.message


@given(st.integers(min_value=-(10**4000), max_value=10**4000))
def test_any_integer_gives_a_request_or_a_request_error(number: int) -> None:
    for field in ("value", "id", "service", "cmd"):
        document = {"cmd": "set", "service": "s", "setting": "max_lag", "value": 1}
        line = json.dumps({**document, field: 0}).replace(": 0", f": {number}", 1)
        try:
            parse_request(line)
        except RequestError as exc:
            assert exc.code in ERROR_CODES
            assert len(exc.message) < 400


def test_the_id_is_echoed_in_errors() -> None:
    err = _error(b'{"cmd": "offline", "id": "req-1"}')
    assert err.response() == {
        "ok": False,
        "code": "bad_request",
        "error": "offline: missing 'datasource'",
        "id": "req-1",
    }


def test_a_line_over_the_limit_is_too_long() -> None:
    line = b'{"cmd": "status", "pad": "' + b"x" * MAX_LINE + b'"}'
    assert _error(line).code == "too_long"


@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_request_error(data: bytes) -> None:
    try:
        req = parse_request(data)
    except RequestError as exc:
        assert exc.code in ERROR_CODES
        json.loads(encode_response(exc.response()))
    else:
        assert req.cmd in COMMANDS


@given(
    st.dictionaries(
        st.sampled_from(["cmd", "datasource", "service", "value", "id"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    )
)
def test_any_object_gives_a_request_or_a_request_error(document: dict[str, object]) -> None:
    try:
        parse_request(json.dumps(document))
    except RequestError as exc:
        assert exc.code in ERROR_CODES


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_the_operator_may_do_everything(cmd: str) -> None:
    authorize(Request(cmd), "operator")


def test_the_read_only_role_may_only_look() -> None:
    authorize(Request("status"), "readonly")
    authorize(Request("explain", {"url": "sqlrouter://shop"}), "readonly")
    for cmd in ("offline", "online", "promote", "set", "reload"):
        with pytest.raises(RequestError) as info:
            authorize(Request(cmd, id=3), "readonly")
        assert info.value.code == "forbidden"
        assert f"{cmd!r} needs the operator role" in info.value.message
        assert info.value.response()["id"] == 3


def test_peers_of_the_same_uid_and_root_are_allowed() -> None:
    assert peer_allowed(1000, 1000)
    assert peer_allowed(0, 1000)
    assert peer_allowed(0, 0)
    assert not peer_allowed(1001, 1000)
    assert not peer_allowed(65534, 0)


def test_the_audit_text_hides_the_urls_password() -> None:
    req = parse_request(
        b'{"cmd": "explain", "url": "sqlrouter://app:pa%40ss@shop/db?qos=RW_STRICT"}'
    )
    text = describe_request(req)
    assert "pa%40ss" not in text and "pa@ss" not in text
    assert "app:***@shop" in text
    req = parse_request(b'{"cmd": "explain", "url": "sqlrouter://app:pw@shop/db?qos=FAST"}')
    assert "pw" not in describe_request(req).replace("explain", "")


def test_responses_are_one_ascii_json_line() -> None:
    line = encode_response({"ok": True, "lag": float("nan"), "name": "d\u00e9j\u00e0"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"ok": True, "lag": None, "name": "d\u00e9j\u00e0"}


# --------------------------------------------------------------------------- settings


def test_the_default_directory() -> None:
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == Path(
        "/run/user/1000/sqlrouter"
    )
    # The documented default places (not files this test opens):
    assert default_socket_dir({}, 1000) == Path("/tmp/sqlrouter-1000")  # noqa: S108
    assert default_socket_dir({"XDG_RUNTIME_DIR": "rel"}, 7) == Path("/tmp/sqlrouter-7")  # noqa: S108


def test_the_environment_variable() -> None:
    assert env_setting({}) is None
    assert env_setting({"SQLROUTER_CONTROL": ""}) is None
    for word in ("1", "on", "TRUE", "yes"):
        assert env_setting({"SQLROUTER_CONTROL": word}) is True
    for word in ("0", "off", "False", "no"):
        assert env_setting({"SQLROUTER_CONTROL": word}) is False
    assert env_setting({"SQLROUTER_CONTROL": "/run/x"}) == Path("/run/x")


def test_control_is_off_unless_enabled() -> None:
    assert not control_config({}, environ={}).enabled
    assert control_config({"enabled": True}, environ={}).enabled
    assert control_config({}, environ={"SQLROUTER_CONTROL": "1"}).enabled
    assert not control_config({"enabled": True}, environ={"SQLROUTER_CONTROL": "off"}).enabled
    config = control_config(
        {"enabled": False, "socket_dir": "ctl"},
        environ={"SQLROUTER_CONTROL": "/srv/ctl"},
        base_dir=Path("/etc/app"),
    )
    assert config.enabled and config.socket_dir == Path("/srv/ctl")
    config = control_config({"enabled": True, "socket_dir": "ctl"}, environ={}, base_dir=Path("/e"))
    assert config.socket_dir == Path("/e/ctl")


def test_the_tcp_settings() -> None:
    config = control_config(
        {"tcp": "127.0.0.1:7070", "token_file": "t", "readonly_token_file": "/r"},
        environ={},
        base_dir=Path("/etc/app"),
    )
    assert config.tcp == ("127.0.0.1", 7070)
    assert config.token_file == Path("/etc/app/t") and config.readonly_token_file == Path("/r")
    assert parse_tcp(7070) == ("127.0.0.1", 7070)
    assert parse_tcp("0") == ("127.0.0.1", 0)
    assert parse_tcp("localhost:1") == ("127.0.0.1", 1)
    assert parse_tcp("[::1]:9") == ("::1", 9)
    assert parse_tcp("127.0.0.9:9") == ("127.0.0.9", 9)
    assert parse_tcp("10.1.2.3:9", allow_remote=True) == ("10.1.2.3", 9)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10.1.2.3:9", ["not a loopback address", "tcp_allow_remote"]),
        ("db.example:9", ["not an IP address"]),
        ("127.0.0.1:99999", ["0-65535"]),
        ("127.0.0.1:", ["0-65535"]),
        (True, ["expected PORT"]),
        (1.5, ["expected PORT"]),
    ],
)
def test_bad_tcp_addresses(value: object, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_tcp(value)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"enabled": "yes"}, ["control.enabled", "true or false", "'yes'"]),
        ({"tcp": "127.0.0.1:1"}, ["control.tcp", "token_file"]),
        ({"tcp": "8.8.8.8:1", "token_file": "t"}, ["control.tcp", "loopback"]),
        ({"socket_dir": 3}, ["control.socket_dir", "a path"]),
        ({"client_timeout": 0}, ["control.client_timeout", "seconds 0.05-3600, got 0"]),
        ({"client_timeout": 10**400}, ["control.client_timeout", "an integer of 401 digits"]),
        ({"command_timeout": "5"}, ["control.command_timeout"]),
        ({"command_timeout": 1e300}, ["control.command_timeout", "0.05-3600, got 1e+300"]),
        ({"max_clients": 0}, ["control.max_clients", "an integer 1-4096, got 0"]),
        ({"max_tcp_clients": 10**400}, ["control.max_tcp_clients", "1-4096"]),
        ({"tcp_auth_timeout": -1}, ["control.tcp_auth_timeout", "0.05-3600, got -1"]),
    ],
)
def test_bad_settings_name_the_key(table: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ControlError) as info:
        control_config(table, environ={}, where="registry file /etc/x.toml")
    message = info.value.args[-1]
    assert message.startswith("registry file /etc/x.toml: ")
    for word in words:
        assert word in message


def test_unknown_settings_are_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    config = control_config({"enable": True}, environ={})
    assert not config.enabled
    assert "control.enable is not a control socket setting (did you mean 'enabled'?)" in (
        caplog.text
    )
