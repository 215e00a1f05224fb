"""Which statements may be re-sent after a lost connection (sqlrouter._statements)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter._statements import first_keyword, may_resend


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("SELECT 1", "SELECT"),
        ("  \n\tselect 1", "SELECT"),
        ("/* a comment */ SELECT 1", "SELECT"),
        ("/* one */ /* two */show tables", "SHOW"),
        ("-- a comment\nSELECT 1", "SELECT"),
        ("# a comment\nCALL p()", "CALL"),
        ("((SELECT 1))", "SELECT"),
        (b"SELECT 1", "SELECT"),
        ("/*! SELECT 1 */", None),
        ("/*M!100000 SELECT 1 */", None),
        ("/* unterminated", None),
        ("--comment-without-space\nSELECT 1", None),
        ("", None),
        ("   ", None),
        ("-- only a comment", None),
        ("'SELECT'", None),
        ("1", None),
    ],
)
def test_first_keyword(sql: str | bytes, keyword: str | None) -> None:
    assert first_keyword(sql) == keyword


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t WHERE id = 1",
        "select a, b from t join u using (id) order by a",
        "/* app=shop */ SELECT COUNT(*) FROM orders",
        "(SELECT 1) UNION (SELECT 2)",
        "SHOW SLAVE STATUS",
        "DESCRIBE t",
        "DESC t",
        "EXPLAIN SELECT * FROM t",
        "HELP 'select'",
        "VALUES (1), (2)",
        "SELECT @@server_id, @@session.sql_mode",
        "SELECT updated_at FROM t",  # UPDATE inside a word
        b"SELECT 1",
    ],
)
def test_reads_without_effects_may_be_resent(sql: str | bytes) -> None:
    assert may_resend(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "CALL refresh_totals()",
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "select * from t for\n  update",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT * FROM t FOR SHARE",
        "SELECT GET_LOCK('job', 10)",
        "select release_lock('job')",
        "SELECT RELEASE_ALL_LOCKS()",
        "SELECT NEXTVAL(order_seq)",
        "SELECT NEXT VALUE FOR order_seq",
        "SELECT SETVAL(order_seq, 100)",
        "SELECT LASTVAL(order_seq)",
        "SELECT LAST_INSERT_ID()",
        "SELECT FOUND_ROWS()",
        "SELECT a INTO @a FROM t",
        "SELECT * FROM t INTO OUTFILE '/tmp/x'",
        "SELECT @counter",
        "VALUES (NEXTVAL(s))",
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "DO GET_LOCK('x', 1)",
        "SET @a = 1",
        "BEGIN",
        "/*! SELECT 1 */",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "",
    ],
)
def test_statements_that_may_lock_or_write_are_never_resent(sql: str) -> None:
    assert not may_resend(sql)


@given(st.text(max_size=200))
def test_may_resend_never_raises_and_needs_a_read_keyword(sql: str) -> None:
    if may_resend(sql):
        assert first_keyword(sql) in {
            "SELECT",
            "SHOW",
            "DESCRIBE",
            "DESC",
            "EXPLAIN",
            "HELP",
            "VALUES",
        }


@given(st.sampled_from(["FOR UPDATE", "GET_LOCK(", "NEXTVAL(", "LOCK IN SHARE MODE"]), st.text())
def test_a_marker_anywhere_forbids_a_resend(marker: str, tail: str) -> None:
    assert not may_resend(f"SELECT a FROM t {marker.lower()} {tail}")
    assert not may_resend(f"SELECT a FROM t {marker} {tail}")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t FOR/**/UPDATE",
        "SELECT NEXT/**/VALUE/**/FOR s",
        "SELECT * FROM t LOCK/* x */IN -- y\n SHARE#z\n MODE",
        "SELECT 1; UPDATE t SET a = 1",
        "SHOW TABLES; DELETE FROM t",
        "SELECT 1 /*! , GET_LOCK('x', 1) */",
        "SELECT '/*', GET_LOCK('x', 1), '*/'",
    ],
)
def test_comments_and_several_statements_hide_no_effect(sql: str) -> None:
    assert not may_resend(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t /* traceparent='00-abc' */",
        "SELECT a FROM t;",
        "SELECT ';' AS semicolon",
        "SELECT 'it''s', \"a\\\"b\" FROM t -- trailing\n",
        "SHOW TABLES;  ",
    ],
)
def test_trailing_comments_and_semicolons_still_allow_a_resend(sql: str) -> None:
    assert may_resend(sql)
