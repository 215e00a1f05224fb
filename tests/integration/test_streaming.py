"""Server-side (unbuffered) cursors: every row arrives, and a write's GTID is still learnt.

An unbuffered result leaves its rows on the socket until the cursor reads them: nothing
may be sent on the connection meanwhile (PyMySQL would drain and discard the rows).
These tests cover every unbuffered cursor class PyMySQL ships, after a write and on a
fresh connection, in autocommit and in transactions, with warnings, ``nextset()`` and a
server-side execution limit, and a write that returns rows (``INSERT ... RETURNING``)
read through a streaming cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.cursors
import pytest
from pymysql.constants import CLIENT

import sqlrouter
from sqlrouter.sandbox import Sandbox

pytestmark = pytest.mark.sandbox

STREAMING = [pymysql.cursors.SSCursor, pymysql.cursors.SSDictCursor]
ROWS = 50


def _values(rows: Any) -> list[int]:
    return [int(r["n"]) if isinstance(r, dict) else int(r[0]) for r in rows]


@pytest.fixture
def table(cluster: Sandbox) -> Iterator[str]:
    with cluster.cursor("db1") as cur:
        cur.execute("DROP TABLE IF EXISTS appdb.stream_t")
        cur.execute("CREATE TABLE appdb.stream_t (n INT PRIMARY KEY AUTO_INCREMENT, v INT)")
    try:
        yield "stream_t"
    finally:
        with cluster.cursor("db1") as cur:
            cur.execute("DROP TABLE IF EXISTS appdb.stream_t")


def _fill(conn: sqlrouter.Connection, count: int = ROWS) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO stream_t (v) VALUES (%s)", [(i,) for i in range(count)])


@pytest.mark.parametrize("cursor_class", STREAMING, ids=lambda c: c.__name__)
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_streaming_after_a_write_returns_every_row(
    cluster: Sandbox, table: str, cursor_class: type[pymysql.cursors.Cursor], autocommit: bool
) -> None:
    conn = sqlrouter.connect(cluster.url("RW_STRICT", autocommit=str(autocommit).lower()))
    try:
        _fill(conn)
        if not autocommit:
            conn.commit()
        token_after_write = conn.causal_token
        assert token_after_write, "the write's GTID was not captured"
        with conn.cursor(cursor_class) as ss:
            ss.execute("SELECT n FROM stream_t ORDER BY n")
            assert _values(ss.fetchall()) == list(range(1, ROWS + 1))
        # The connection is still in step with the server afterwards.
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM stream_t")
            assert cur.fetchone() == (ROWS,)
        assert conn.causal_token == token_after_write
    finally:
        conn.close()


@pytest.mark.parametrize("cursor_class", STREAMING, ids=lambda c: c.__name__)
@pytest.mark.parametrize("qos", ["RW_STRICT", "RO_RELAXED"])
def test_first_streaming_query_on_a_fresh_connection(
    cluster: Sandbox, table: str, cursor_class: type[pymysql.cursors.Cursor], qos: str
) -> None:
    """PyMySQL's own ``SET AUTOCOMMIT`` at connect changes a tracked variable: the first
    statement must not take that for a write."""
    writer = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    try:
        _fill(writer)
        with sqlrouter.session(writer.causal_token):
            for autocommit in ("true", "false"):
                conn = sqlrouter.connect(cluster.url(qos, autocommit=autocommit, max_lag=5))
                try:
                    with conn.cursor(cursor_class) as ss:
                        ss.execute("SELECT n FROM stream_t ORDER BY n")
                        assert _values(ss.fetchall()) == list(range(1, ROWS + 1))
                finally:
                    conn.close()
    finally:
        writer.close()


@pytest.mark.parametrize("cursor_class", STREAMING, ids=lambda c: c.__name__)
def test_streaming_row_by_row_then_a_write(
    cluster: Sandbox, table: str, cursor_class: type[pymysql.cursors.Cursor]
) -> None:
    conn = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    try:
        _fill(conn)
        with conn.cursor(cursor_class) as ss:
            ss.execute("SELECT n FROM stream_t ORDER BY n")
            got = [ss.fetchone() for _ in range(3)]
            got += list(ss.fetchmany(7))
            got += list(ss)  # the rest, iterating
        assert _values(got) == list(range(1, ROWS + 1))
        before = conn.causal_token
        with conn.cursor() as cur:
            cur.execute("INSERT INTO stream_t (v) VALUES (-1)")
        assert conn.causal_token != before and conn.causal_token.covers(before)
    finally:
        conn.close()


def test_streaming_with_warnings_keeps_rows_and_warning_count(cluster: Sandbox, table: str) -> None:
    conn = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    try:
        _fill(conn, 5)
        with conn.cursor(pymysql.cursors.SSCursor) as ss:
            # CAST of a non-number warns once per row (1292 Truncated incorrect DOUBLE value).
            ss.execute("SELECT n, n + CAST('x' AS DOUBLE) FROM stream_t ORDER BY n")
            rows = ss.fetchall()
            assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
            assert ss.warning_count >= 1
        with conn.cursor() as cur:
            cur.execute("SHOW WARNINGS")
            assert any(w[1] == 1292 for w in cur.fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("cursor_class", STREAMING, ids=lambda c: c.__name__)
def test_streaming_nextset_over_several_results(
    cluster: Sandbox, table: str, cursor_class: type[pymysql.cursors.Cursor]
) -> None:
    conn = sqlrouter.connect(
        cluster.url("RW_STRICT", autocommit="true"), client_flag=CLIENT.MULTI_STATEMENTS
    )
    try:
        _fill(conn, 4)
        before = conn.causal_token
        with conn.cursor(cursor_class) as ss:
            ss.execute(
                "SELECT n FROM stream_t WHERE n <= 2 ORDER BY n; "
                "INSERT INTO stream_t (v) VALUES (100); "
                "SELECT n FROM stream_t WHERE n > 2 ORDER BY n"
            )
            first = _values(ss.fetchall())
            assert ss.nextset()
            assert ss.rowcount == 1  # the INSERT's OK packet
            assert ss.nextset()
            rest = _values(ss.fetchall())
            assert not ss.nextset()
        assert first == [1, 2]
        assert rest == [3, 4, 5]
        # The INSERT in the middle wrote: its GTID reached the session.
        assert conn.causal_token != before and conn.causal_token.covers(before)
    finally:
        conn.close()


def test_streaming_stopped_by_a_server_side_time_limit(cluster: Sandbox, table: str) -> None:
    conn = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    try:
        _fill(conn, 3)
        with conn.cursor(pymysql.cursors.SSCursor) as ss:
            # max_statement_time stops the statement on the server while it streams.
            with pytest.raises(pymysql.err.OperationalError) as info:
                ss.execute(
                    "SET STATEMENT max_statement_time=0.2 FOR SELECT n, SLEEP(0.1) FROM stream_t a"
                )
                ss.fetchall()
            assert info.value.args[0] == 1969  # ER_STATEMENT_TIMEOUT
        # The connection is usable afterwards, and still writes with its GTID learnt.
        before = conn.causal_token
        with conn.cursor() as cur:
            cur.execute("INSERT INTO stream_t (v) VALUES (7)")
            cur.execute("SELECT COUNT(*) FROM stream_t")
            assert cur.fetchone() == (4,)
        assert conn.causal_token != before
    finally:
        conn.close()


@pytest.mark.parametrize("cursor_class", STREAMING, ids=lambda c: c.__name__)
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_streamed_write_that_returns_rows_reaches_the_session(
    cluster: Sandbox, table: str, cursor_class: type[pymysql.cursors.Cursor], autocommit: bool
) -> None:
    """``INSERT ... RETURNING`` through a streaming cursor: every row returned, and the
    GTID of the write in the session's token, so a relaxed read in the same session sees it."""
    with sqlrouter.session() as session:
        rw = sqlrouter.connect(cluster.url("RW_STRICT", autocommit=str(autocommit).lower()))
        ro = sqlrouter.connect(cluster.url("RO_RELAXED", autocommit="true", max_lag=5))
        try:
            before = session.token
            with rw.cursor(cursor_class) as ss:
                ss.execute("INSERT INTO stream_t (v) VALUES (10), (20), (30) RETURNING n, v")
                rows = ss.fetchall()
            if not autocommit:
                rw.commit()
            values = [r["v"] if isinstance(r, dict) else r[1] for r in rows]
            assert values == [10, 20, 30]
            assert session.token != before and session.token.covers(before)
            with ro.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM stream_t")
                assert cur.fetchone() == (3,)
        finally:
            rw.close()
            ro.close()


def test_abandoned_streamed_write_still_reaches_the_session(cluster: Sandbox, table: str) -> None:
    """A streamed ``INSERT ... RETURNING`` whose rows are not all read: the next statement
    drains them (PyMySQL warns); the GTID is learnt before that statement runs."""
    conn = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    try:
        before = conn.causal_token
        ss = conn.cursor(pymysql.cursors.SSCursor)
        ss.execute("INSERT INTO stream_t (v) VALUES (1), (2), (3) RETURNING n")
        assert ss.fetchone() is not None
        with pytest.warns(UserWarning, match="left incomplete"), conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM stream_t")
            assert cur.fetchone() == (3,)
        assert conn.causal_token != before and conn.causal_token.covers(before)
    finally:
        conn.close()


def test_streamed_write_closed_early_still_reaches_the_session(
    cluster: Sandbox, table: str
) -> None:
    """``close()`` with a streamed ``INSERT ... RETURNING`` half read: the rows are read
    to their end, so that the write's GTID reaches the session."""
    with sqlrouter.session() as session:
        rw = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
        before = session.token
        ss = rw.cursor(pymysql.cursors.SSCursor)
        ss.execute("INSERT INTO stream_t (v) VALUES (1), (2), (3) RETURNING n")
        assert ss.fetchone() is not None
        rw.close()
        assert session.token != before and session.token.covers(before)
        ro = sqlrouter.connect(cluster.url("RO_RELAXED", autocommit="true", max_lag=5))
        try:
            with ro.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM stream_t")
                assert cur.fetchone() == (3,)
        finally:
            ro.close()


def test_a_move_reads_what_a_stream_left_first(cluster: Sandbox, table: str) -> None:
    """A relaxed connection that must move while a server-side cursor has unread rows:
    the rows are read off the old socket first (as PyMySQL does before its next command,
    with its warning), and the next statement runs on the new connection at once."""
    conn = sqlrouter.connect(cluster.url("RO_RELAXED", autocommit="true", consistency="none"))
    try:
        ss = conn.cursor(pymysql.cursors.SSCursor)
        ss.execute("SELECT seq FROM seq_1_to_50000")
        assert ss.fetchone() == (1,)
        conn.invalidate("a test moves it", at_transaction_boundary=True)
        with pytest.warns(UserWarning, match="left incomplete"), conn.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM seq_1_to_10")
            assert cur.fetchone() == (10,)
    finally:
        conn.close()
