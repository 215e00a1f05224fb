"""Session consistency on the master: learning the GTID of each write, at no extra round trip.

A RW_STRICT connection asks the server to report ``last_gtid`` in the OK packet of
each statement (session-state tracking, read by :mod:`sqlrouter._session_track`) and
merges it into its session's causal token.  Where the OK packet cannot carry it (a
statement that returned rows, an unbuffered result still on the socket) or the
server cannot track it, ``SELECT @@last_gtid`` is asked once the socket is free or
the transaction ends.  :class:`GtidCapture` is the base of
:class:`sqlrouter.Connection` holding these steps; the state they read and write is the
connection's :class:`~sqlrouter._connstate.ConnState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pymysql.connections import MySQLResult
from pymysql.constants import SERVER_STATUS

from ._pymysql import PyMySQLConnection
from ._session_track import SERVER_SESSION_STATE_CHANGED, last_gtid_from_ok

if TYPE_CHECKING:
    from ._connstate import ConnState

__all__ = [
    "GtidCapture",
    "after_write",
    "capture",
    "commit_done",
    "committed_by_select",
    "next_result_done",
    "statement_done",
    "unbuffered_done",
    "written_by_select",
]

_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
#: PyMySQL's affected_rows of an unbuffered result set (not a write).
_UNBUFFERED = 18446744073709551615


def capture(state: ConnState, status: int, message: bytes | str | None) -> None:
    """Merge the ``last_gtid`` an OK packet reports (``status``, ``message``) into the
    connection's session."""
    if isinstance(message, bytes) and status & SERVER_SESSION_STATE_CHANGED:
        gtid = last_gtid_from_ok(status, message)
        session = state.session
        if gtid and session is not None:
            session.advance_gtid(gtid)


def after_write(state: ConnState, message: bytes | str | None, field_count: int) -> bool | None:
    """The session's state changed under the last statement of a connection on the
    master: capture its GTID from ``message`` (done here, ``False``), or ask for it with
    ``SELECT @@last_gtid`` (``True``: a statement that wrote and returned rows, such as
    ``INSERT ... RETURNING``, whose final EOF packet has no room for it); ``None``:
    nothing to learn here."""
    if not state.on_master or state.connecting:
        return None
    if message is not None:
        capture(state, SERVER_SESSION_STATE_CHANGED, message)
        return False
    return True if field_count else None


def next_result_done(state: ConnState, status: int, message: bytes | str | None) -> None:
    """A multi-statement query's next result was read (``status``, ``message``: its OK
    packet's): on the master, merge the ``last_gtid`` it reports, as for the first."""
    if state.on_master and not state.gtid_by_select:
        capture(state, status, message)


def unbuffered_done(state: ConnState, status: int, has_next: bool | None) -> bool:
    """An unbuffered result ended with ``status``: ask ``SELECT @@last_gtid`` now?

    If the statement wrote (``INSERT ... RETURNING`` streamed), its GTID is learnt now:
    the socket is idle, and nothing else ran on this session since.
    """
    if has_next or state.session is None or not state.on_master or state.relaxed:
        return False  # more results follow: next_result() reads them first
    if state.gtid_by_select:
        if status & _IN_TRANS:
            return False
        state.gtid_pending = False
        return True
    return bool(status & SERVER_SESSION_STATE_CHANGED)


def written_by_select(state: ConnState, affected: int | None, status: int) -> bool:
    """Where the server does not report ``last_gtid``: a statement affected ``affected``
    rows; ask ``SELECT @@last_gtid`` now (its transaction ended)?"""
    if affected and affected != _UNBUFFERED:
        state.gtid_pending = True
    if state.gtid_pending and not status & _IN_TRANS:
        state.gtid_pending = False
        return True
    return False


def committed_by_select(state: ConnState) -> bool:
    """Where the server does not report ``last_gtid``: after COMMIT, ask for it?"""
    if state.gtid_pending:
        state.gtid_pending = False
        return True
    return False


class _Result(Protocol):
    """What :func:`statement_done` reads of a result (PyMySQL's or aiomysql's)."""

    @property
    def affected_rows(self) -> int | None: ...
    @property
    def message(self) -> bytes | str | None: ...
    @property
    def field_count(self) -> int: ...
    @property
    def unbuffered_active(self) -> bool: ...


def statement_done(state: ConnState, result: _Result | None, status: int) -> bool:
    """A RW_STRICT connection with a session ran a statement (``result``: the
    connection's, ``status``: its server status): learn its write's GTID from the OK
    packet, or ask ``SELECT @@last_gtid`` now (``True``).  Both drivers' step."""
    if result is None or result.unbuffered_active:
        # Its rows are still on the socket (a server-side cursor): nothing may be sent
        # now; the result reports its final status at its end (unbuffered_done).
        return False
    if state.gtid_by_select:
        return state.on_master and written_by_select(state, result.affected_rows, status)
    if status & SERVER_SESSION_STATE_CHANGED:
        return bool(after_write(state, result.message, result.field_count))
    return False


def commit_done(state: ConnState, status: int, message: bytes | str | None) -> bool:
    """COMMIT's OK packet (``status``, ``message``) arrived: learn the transaction's GTID
    from it, or ask ``SELECT @@last_gtid`` now (``True``).  Both drivers' step."""
    if state.session is None or not state.on_master:
        return False
    if state.gtid_by_select:
        return committed_by_select(state)
    capture(state, status, message)
    return False


class GtidCapture(PyMySQLConnection):
    """The GTID of each write of a connection on the master, into its session (the
    decisions are the functions above, shared with :mod:`sqlrouter.aio`)."""

    _state: ConnState

    def _unbuffered_done(self, result: MySQLResult) -> None:
        """An unbuffered result (server-side cursor) read its final EOF packet.

        PyMySQL leaves the connection's ``server_status`` as the previous statement's for
        such a result: take the final one (a transaction opened, the session's state
        changed), then learn a write's GTID (:func:`unbuffered_done`).
        """
        status = result.server_status
        if status is None or self._sock is None:
            return
        self.server_status = status
        if unbuffered_done(self._state, status, result.has_next):
            self._select_last_gtid()

    def _select_last_gtid(self) -> None:
        """``SELECT @@last_gtid`` (one round trip), keeping the caller's result."""
        gtid = self._first_value_aside("SELECT @@last_gtid")
        session = self._state.session
        if gtid and session is not None:
            session.advance_gtid(str(gtid))

    def next_result(self, unbuffered: bool = False) -> int:
        rows = super().next_result(unbuffered)
        if self._result is not None:
            next_result_done(self._state, self.server_status, self._result.message)
        return rows
