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

from typing import TYPE_CHECKING

from pymysql.connections import MySQLResult
from pymysql.constants import SERVER_STATUS

from ._pymysql import PyMySQLConnection
from ._session_track import SERVER_SESSION_STATE_CHANGED, last_gtid_from_ok

if TYPE_CHECKING:
    from ._connstate import ConnState

__all__ = ["GtidCapture"]

_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
#: PyMySQL's affected_rows of an unbuffered result set (not a write).
_UNBUFFERED = 18446744073709551615


class GtidCapture(PyMySQLConnection):
    """The GTID of each write of a connection on the master, into its session."""

    _state: ConnState

    def _capture(self, status: int, message: bytes | str | None) -> None:
        if isinstance(message, bytes) and status & SERVER_SESSION_STATE_CHANGED:
            gtid = last_gtid_from_ok(status, message)
            session = self._state.session
            if gtid and session is not None:
                session.advance_gtid(gtid)

    def _unbuffered_done(self, result: MySQLResult) -> None:
        """An unbuffered result (server-side cursor) read its final EOF packet.

        PyMySQL leaves the connection's ``server_status`` as the previous statement's for
        such a result: take the final one (a transaction opened, the session's state
        changed).  If the statement wrote (``INSERT ... RETURNING`` streamed), learn its
        GTID now: the socket is idle, and nothing else ran on this session since.
        """
        status = result.server_status
        if status is None or self._sock is None:
            return
        self.server_status = status
        state = self._state
        if result.has_next or state.session is None or not state.on_master or state.relaxed:
            return  # more results follow: next_result() reads them first
        if state.gtid_by_select:
            if not status & _IN_TRANS:
                state.gtid_pending = False
                self._select_last_gtid()
        elif status & SERVER_SESSION_STATE_CHANGED:
            self._select_last_gtid()

    def _select_last_gtid(self) -> None:
        """``SELECT @@last_gtid`` (one round trip), keeping the caller's result."""
        gtid = self._first_value_aside("SELECT @@last_gtid")
        session = self._state.session
        if gtid and session is not None:
            session.advance_gtid(str(gtid))

    def _after_write(self, result: MySQLResult | None) -> None:
        """The session's state changed under the last statement: learn its GTID."""
        state = self._state
        if result is None or not state.on_master or state.connecting:
            return
        if result.unbuffered_active:
            # Its rows are still on the socket (a server-side cursor): nothing may be
            # sent now.  ``server_status`` is still the previous statement's; the result
            # reports its own at its end (_unbuffered_done).
            return
        if result.message is not None:
            self._capture(self.server_status, result.message)
        elif result.field_count:
            # A statement that wrote and returned rows (INSERT ... RETURNING): its final
            # EOF packet has no room for the GTID; ask for it.
            self._select_last_gtid()

    def next_result(self, unbuffered: bool = False) -> int:
        rows = super().next_result(unbuffered)
        state = self._state
        if state.on_master and self._result is not None and not state.gtid_by_select:
            self._capture(self.server_status, self._result.message)
        return rows

    def _after_write_by_select(self, affected: int | None) -> None:
        if self._result is not None and self._result.unbuffered_active:
            return  # rows still on the socket: _unbuffered_done() takes over at their end
        state = self._state
        if affected and affected != _UNBUFFERED:
            state.gtid_pending = True
        if state.gtid_pending and not self.server_status & _IN_TRANS:
            state.gtid_pending = False
            self._select_last_gtid()
