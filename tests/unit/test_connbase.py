"""The statement path's decisions both drivers carry out (sqlrouter._connbase), without a
server: what a failed statement raises or whether it runs elsewhere, what an
invalidation does, what a wait that timed out does."""

from __future__ import annotations

from typing import Any

from sqlrouter._connbase import RoutedConnection
from sqlrouter._connrules import AUTOCOMMIT, COMMIT, IN_TRANS, Move, Wait, lost_under
from sqlrouter._connstate import ConnState
from sqlrouter.consistency import Session
from sqlrouter.errors import (
    ConnectionInvalidated,
    InterfaceError,
    OperationalError,
    OutcomeUnknown,
)
from sqlrouter.gtid import CausalToken
from sqlrouter.topology import DataSource
from sqlrouter.url import parse_url

RO_URL = parse_url("sqlrouter://app:pw@sandbox/db?qos=RO_RELAXED")
RW_URL = parse_url("sqlrouter://app:pw@sandbox/db?qos=RW_STRICT")
LOST = OperationalError(2013, "Lost connection to server during query")


class _Handle:
    """What the decisions need of the service table: it forgets a connection."""

    def __init__(self) -> None:
        self.forgotten: list[Any] = []

    def closed(self, conn: Any) -> None:
        self.forgotten.append(conn)


class _Conn(RoutedConnection):
    """A routed connection without a protocol: open or not, as the test says."""

    def __init__(self, url: Any, *, is_open: bool = True) -> None:
        self._routed(url, _Handle())  # type: ignore[arg-type]  # a stand-in
        self._state = ConnState(relaxed=url.qos.value == "RO_RELAXED", session=Session())
        self.datasource = DataSource("db2", "127.0.0.1", 3307)
        self.open = is_open

    @property
    def _is_open(self) -> bool:
        return self.open

    @property
    def forgotten(self) -> list[Any]:
        handle: Any = self._handle
        return list(handle.forgotten)


def test_a_commit_outside_a_transaction_had_nothing_to_lose() -> None:
    assert lost_under(2013, AUTOCOMMIT, "a statement")
    assert lost_under(2006, IN_TRANS, COMMIT)
    assert not lost_under(2013, AUTOCOMMIT, COMMIT)
    assert not lost_under(1064, IN_TRANS, "a statement")


def test_a_failed_statement_raises_what_happened() -> None:
    conn = _Conn(RW_URL)
    assert conn._failed_statement(OperationalError(1064, "syntax"), IN_TRANS, "a statement") is None
    assert conn._failed_statement(InterfaceError(0, ""), AUTOCOMMIT, "a statement") is None
    assert conn.forgotten == []
    lost = conn._failed_statement(LOST, AUTOCOMMIT, "a statement")
    assert isinstance(lost, OutcomeUnknown) and lost.__cause__ is LOST
    assert "during a statement in autocommit mode" in str(lost) and conn.forgotten == [conn]
    assert conn._failed_statement(LOST, AUTOCOMMIT, COMMIT) is None  # no transaction
    assert isinstance(conn._failed_statement(LOST, IN_TRANS, COMMIT), OutcomeUnknown)
    conn.open = False
    closed = conn._failed_statement(InterfaceError(0, ""), AUTOCOMMIT, "a statement")
    assert isinstance(closed, InterfaceError) and "already closed" in str(closed)
    assert closed.__cause__ is None and closed.__suppress_context__  # as `from None`


def test_a_failed_read_runs_elsewhere_or_raises() -> None:
    conn = _Conn(RO_URL)
    assert conn._failed_read(LOST, AUTOCOMMIT | IN_TRANS, "SELECT 1") is None  # in a transaction
    assert conn._failed_read(LOST, 0, "SELECT 1") is None  # autocommit off
    assert conn._failed_read(OperationalError(1064, "syntax"), AUTOCOMMIT, "SELEC 1") is None
    assert conn.forgotten == []
    locking = conn._failed_read(LOST, AUTOCOMMIT, "SELECT * FROM t FOR UPDATE")
    assert isinstance(locking, OutcomeUnknown) and locking.__cause__ is LOST
    assert "a statement that may lock or write" in str(locking)
    again = _Conn(RO_URL)
    assert again._failed_read(LOST, AUTOCOMMIT, "SELECT 1") == frozenset({"db2"})
    assert again.forgotten == [again]
    again.open = False
    closed = again._failed_read(InterfaceError(0, ""), AUTOCOMMIT, "SELECT 1")
    assert isinstance(closed, InterfaceError) and closed.__suppress_context__


def test_an_invalidation_moves_a_relaxed_connection_between_transactions() -> None:
    reader = _Conn(RO_URL)
    assert reader._invalidation_step(AUTOCOMMIT) is None  # nothing to act on
    reader.invalidate("db2 went down")
    assert reader._invalidation_step(AUTOCOMMIT) == Move("db2 went down")
    assert reader._state.invalid is None and reader.forgotten == []  # the move forgets it
    reader.invalidate("db2 was taken offline", at_transaction_boundary=True)
    assert reader._invalidation_step(IN_TRANS) is None  # the transaction ends first
    reader.invalidate("db2 went down")
    failed = reader._invalidation_step(IN_TRANS)  # inside a transaction: it fails
    assert isinstance(failed, ConnectionInvalidated) and "db2 went down" in str(failed)
    writer = _Conn(RW_URL)
    writer.invalidate("db1 is no longer the master")
    assert isinstance(writer._invalidation_step(AUTOCOMMIT), ConnectionInvalidated)
    assert writer.forgotten == [writer] and writer._state.closed_why is not None


def test_a_wait_that_timed_out_moves_where_no_wait_is_needed() -> None:
    conn = _Conn(RO_URL)
    step = Wait(CausalToken.parse("0-1-5"), version=3, why="db2 has not applied 0-1-5")
    assert conn._waited(step, True) is None and conn._state.checked_version == 3
    assert conn._waited(step, False) == Move("db2 has not applied 0-1-5", allow_wait=False)
