"""The post-statement and post-COMMIT GTID steps both drivers share (sans I/O)."""

from __future__ import annotations

from types import SimpleNamespace

from sqlrouter._connstate import ConnState
from sqlrouter._gtidcapture import commit_done, statement_done
from sqlrouter._session_track import SERVER_SESSION_STATE_CHANGED
from sqlrouter.consistency import Session
from sqlrouter.gtid import CausalToken
from tests.unit.test_session_track import encode, variable

CHANGED = SERVER_SESSION_STATE_CHANGED
IN_TRANS = 1  # SERVER_STATUS_IN_TRANS


def writer(*, by_select: bool = False) -> ConnState:
    state = ConnState(relaxed=False, session=Session())
    state.opened(on_master=True)
    state.gtid_by_select = by_select
    return state


def result(
    message: bytes | None = None, fields: int = 0, affected: int = 1, streaming: bool = False
) -> SimpleNamespace:
    return SimpleNamespace(
        affected_rows=affected,
        message=message,
        field_count=fields,
        unbuffered_active=streaming,
    )


def test_statement_done_reads_the_ok_packet_or_asks() -> None:
    state = writer()
    ok = encode([variable(b"last_gtid", b"0-1-7")])
    assert not statement_done(state, result(ok), CHANGED)  # learnt from the OK packet
    assert state.session is not None and state.session.token == CausalToken.parse("0-1-7")
    assert statement_done(state, result(None, fields=1), CHANGED)  # RETURNING: ask
    assert not statement_done(state, result(None, fields=1, streaming=True), CHANGED)
    assert not statement_done(state, result(None), 0)  # nothing changed
    assert not statement_done(state, None, CHANGED)


def test_statement_and_commit_by_select_where_the_server_does_not_report() -> None:
    state = writer(by_select=True)
    assert statement_done(state, result(), 0)  # a write in autocommit: ask now
    assert not statement_done(state, result(), IN_TRANS)  # in a transaction: at COMMIT
    assert commit_done(state, 0, None)
    assert not commit_done(state, 0, None)  # nothing written since


def test_commit_done_reads_the_ok_packet_on_the_master_only() -> None:
    state = writer()
    assert not commit_done(state, CHANGED, encode([variable(b"last_gtid", b"0-1-9")]))
    assert state.session is not None and state.session.token == CausalToken.parse("0-1-9")
    replica = ConnState(relaxed=True, session=Session())
    replica.opened(on_master=False)
    assert not commit_done(replica, CHANGED, encode([variable(b"last_gtid", b"0-1-10")]))
    assert replica.session is not None and replica.session.token != CausalToken.parse("0-1-10")
