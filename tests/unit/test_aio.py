"""sqlrouter.aio without a server: the aiomysql internals it relies on, its options."""

from __future__ import annotations

import ssl

import aiomysql
import aiomysql.connection
import pytest

import sqlrouter
import sqlrouter.aio
from sqlrouter._pymysql import source_hash
from sqlrouter.aio._aiomysql import AIOMYSQL_TESTED, CHECKED, build_tls, connect_args, tls_cached


def test_the_installed_aiomysql_is_in_the_pinned_range() -> None:
    version = tuple(int(p) for p in aiomysql.__version__.split(".")[:2])
    assert version == (0, 3), (
        f"aiomysql {aiomysql.__version__} is outside the range pyproject.toml pins "
        f"(>=0.3.2,<0.4; checked: {AIOMYSQL_TESTED})"
    )


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_each_overridden_copied_or_private_function_is_unchanged(name: str) -> None:
    assert source_hash(name, aiomysql.connection) == CHECKED[name], (
        f"aiomysql.connection.{name} in the installed aiomysql {aiomysql.__version__} "
        f"differs from aiomysql {AIOMYSQL_TESTED}'s, which sqlrouter/aio/_aiomysql.py was "
        "written against: read the change, adapt that module, then record the new hash"
    )


def test_a_changed_method_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def begin(self: object) -> None:  # another body for Connection.begin
        del self

    monkeypatch.setattr(aiomysql.connection.Connection, "begin", begin)
    name = "Connection.begin"
    assert source_hash(name, aiomysql.connection) != CHECKED[name]


def test_options_aiomysql_has_no_equivalent_for_are_refused_by_name() -> None:
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        connect_args("shop", {"collation": "utf8mb4_bin", "binary_prefix": True})
    text = str(info.value)
    assert "binary_prefix, collation" in text and "'shop'" in text and "charset" in text


def test_a_pymysql_cursor_class_is_refused() -> None:
    import pymysql.cursors

    with pytest.raises(sqlrouter.ProgrammingError, match="not an aiomysql cursor class"):
        connect_args("shop", {"cursorclass": pymysql.cursors.DictCursor})
    args = connect_args("shop", {"cursorclass": sqlrouter.aio.DictCursor})
    assert args["cursorclass"] is sqlrouter.aio.DictCursor


def test_tls_is_set_up_as_pymysql_sets_it_up() -> None:
    assert connect_args("shop", {"charset": "utf8mb4"}) == {"charset": "utf8mb4"}
    preferred, required = build_tls({"charset": "utf8mb4"})
    assert isinstance(preferred, ssl.SSLContext) and not required
    disabled, required = build_tls({"ssl_disabled": True})
    assert disabled is None and not required
    asked, required = build_tls({"ssl_verify_cert": True})
    assert isinstance(asked, ssl.SSLContext) and required
    assert asked.verify_mode is ssl.CERT_REQUIRED
    # As in PyMySQL: a false verify option alone asks for nothing (TLS preferred).
    _, required = build_tls({"ssl_verify_cert": False})
    assert not required


def test_tls_is_built_once_per_set_of_ssl_options() -> None:
    options = {"ssl": {"check_hostname": False, "verify_mode": 0}, "charset": "x"}
    built = build_tls(options)
    # The same ssl options (another mapping, other non-ssl options): found, not rebuilt.
    assert tls_cached({"ssl": {"verify_mode": 0, "check_hostname": False}}) is built
    assert build_tls({"ssl": {"verify_mode": 0, "check_hostname": False}}) is built
    assert tls_cached({"ssl": {"check_hostname": True}}) is None


def test_bad_input_raises_before_anything_is_awaited() -> None:
    with pytest.raises(sqlrouter.ProgrammingError, match="max_lag"):
        sqlrouter.aio.connect("sqlrouter://app@shop/db?qos=RO_RELAXED&max_lag=soon")


def test_unsupported_options_are_refused_before_anything_is_awaited() -> None:
    with pytest.raises(sqlrouter.ProgrammingError, match="max_allowed_packet"):
        sqlrouter.aio.connect("sqlrouter://app@shop/db", max_allowed_packet=1024)
