"""The PyMySQL internals sqlrouter relies on are the ones it was written against."""

from __future__ import annotations

import pymysql
import pymysql.connections
import pytest

from sqlrouter._pymysql import CHECKED, PYMYSQL_TESTED, source_hash


def test_the_installed_pymysql_is_in_the_pinned_range() -> None:
    major, minor = pymysql.VERSION[:2]
    assert (major, minor) == (1, 2), (
        f"PyMySQL {pymysql.VERSION_STRING} is outside the range pyproject.toml pins "
        f"(>=1.2.4,<1.3; checked: {PYMYSQL_TESTED})"
    )


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_each_overridden_copied_or_private_function_is_unchanged(name: str) -> None:
    assert source_hash(name) == CHECKED[name], (
        f"pymysql.connections.{name} in the installed PyMySQL {pymysql.VERSION_STRING} "
        f"differs from PyMySQL {PYMYSQL_TESTED}'s, which sqlrouter/_pymysql.py was written "
        "against: read the change, adapt sqlrouter/_pymysql.py, then record the new hash "
        "in CHECKED"
    )


def test_a_changed_method_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def begin(self: object) -> None:  # another body for Connection.begin
        del self

    monkeypatch.setattr(pymysql.connections.Connection, "begin", begin)
    assert source_hash("Connection.begin") != CHECKED["Connection.begin"]
