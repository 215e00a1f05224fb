"""The rules both connections (sqlrouter.Connection, sqlrouter.aio.Connection) follow,
without a server: sqlrouter._connrules and the decisions of sqlrouter._attempts."""

from __future__ import annotations

import pytest

from sqlrouter._attempts import Attempt, Chooser, TryAgain, connect_failed, decide, stale_since
from sqlrouter._connrules import (
    AUTOCOMMIT,
    IN_TRANS,
    Move,
    Wait,
    lost_error,
    may_read_elsewhere,
    open_session,
    session_setup,
    transaction_start,
)
from sqlrouter._connstate import ConnState
from sqlrouter._session_track import CLIENT_SESSION_TRACK
from sqlrouter.consistency import Session, session
from sqlrouter.errors import OperationalError, OutcomeUnknown, ProgrammingError
from sqlrouter.routing.router import Decision, choose
from sqlrouter.url import parse_url
from tests.unit.test_router import cluster, master, replica, ro, tok

RW_URL = parse_url("sqlrouter://app:pw@sandbox/db?qos=RW_STRICT")
RO_URL = parse_url("sqlrouter://app:pw@sandbox/db?qos=RO_RELAXED")


def test_a_writer_asks_for_session_tracking_and_shares_the_current_session() -> None:
    args: dict[str, object] = {"client_flag": 2}
    with session() as current:
        assert open_session(RW_URL, args) is current
    assert args["client_flag"] == 2 | CLIENT_SESSION_TRACK
    reader_args: dict[str, object] = {}
    assert open_session(RO_URL, reader_args) is not None
    assert "client_flag" not in reader_args  # readers leave the server the tracking
    assert open_session(RO_URL.set(consistency="none"), {}) is None
    continued = open_session(RO_URL.set(causal_token="0-1-9"), {})
    assert continued is not None and continued.token.covers(tok("0-1-9"))
    with pytest.raises(ProgrammingError, match="unknown charset 'klingon'"):
        open_session(RW_URL, {"charset": "klingon"})


def test_session_setup_on_the_master_replica_and_a_wait() -> None:
    snap = cluster(master("db1", tracks_last_gtid=False), replica("db2", position="0-1-15"))
    on_master = ConnState(relaxed=False, session=Session())
    on_master.opened(on_master=True)
    decision = Decision(snap.service.datasources[0], "master", on_master=True)
    assert session_setup(on_master, snap, decision, 0).track_gtid  # the master lacks it
    assert on_master.checked_version == 0
    reader = ConnState(relaxed=True, session=Session())
    reader.opened(on_master=False)
    setup = session_setup(reader, snap, Decision(snap.service.datasources[1], "replica"), 0)
    assert setup.wait_for is None and not setup.track_gtid
    assert reader.session is not None and reader.session.token == tok("0-1-15")  # monotonic
    waiting = ConnState(relaxed=True, session=Session("0-1-18"))
    needs = Decision(snap.service.datasources[1], "replica", needs_wait=tok("0-1-18"))
    setup = session_setup(waiting, snap, needs, 7)
    assert setup.wait_for == tok("0-1-18") and setup.version == 7  # the routing's version
    assert waiting.checked_version == -1  # checked once the wait succeeded


def test_transaction_start_checks_waits_or_moves() -> None:
    snap = cluster(
        master("db1"), replica("db2", position="0-1-15"), replica("db3", position="0-1-12")
    )
    db2 = snap.service.datasources[1]
    state = ConnState(relaxed=True, session=Session("0-1-10"))
    s = state.session
    assert s is not None
    assert transaction_start(state, s, snap, db2, ro()) is None  # covered
    assert state.checked_version == s.version
    s.advance(tok("0-1-18"))
    step = transaction_start(state, s, snap, db2, ro(token=s.token))
    assert isinstance(step, Wait) and step.token == tok("0-1-18")  # the closest: wait
    ahead = cluster(master("db1"), replica("db2", position="0-1-5"), replica("db3", 0.2))
    assert isinstance(
        transaction_start(state, s, ahead, db2, ro(token=s.token)), Move
    )  # db3 has it
    on_master = ConnState(relaxed=True, session=s)
    on_master.opened(on_master=True)
    assert transaction_start(on_master, s, snap, snap.service.datasources[0], ro()) is None


def test_what_a_lost_connection_says() -> None:
    lost = OperationalError(2013, "Lost connection")
    commit = lost_error(RW_URL, None, lost, AUTOCOMMIT, "COMMIT")
    assert isinstance(commit, OutcomeUnknown) and "outcome is unknown" in str(commit)
    inside = lost_error(RW_URL, None, lost, IN_TRANS, "a statement")
    assert not isinstance(inside, OutcomeUnknown) and "rolls it back" in str(inside)
    assert may_read_elsewhere(2013, AUTOCOMMIT)
    assert not may_read_elsewhere(2013, AUTOCOMMIT | IN_TRANS)
    assert not may_read_elsewhere(1064, AUTOCOMMIT)


def test_attempts_go_on_or_end() -> None:
    snap = cluster(master("db1"), replica("db2"))
    attempt = Attempt.start(RO_URL, exclude=frozenset(), allow_wait=True)
    state = ConnState(relaxed=True, session=None)

    def turn(at: int) -> Chooser:
        return lambda snapshot, policy: choose(snapshot, policy, turn=at)

    first = decide(RO_URL, state, snap, attempt, turn(0))
    assert first.datasource.name == "db2"
    again = connect_failed(RO_URL, first.datasource, OperationalError(2003, "refused"), attempt)
    assert isinstance(again, TryAgain) and attempt.exclude == {"db2"}
    assert decide(RO_URL, state, snap, attempt, turn(1)).datasource.name == "db1"  # the fallback
    with pytest.raises(OperationalError, match="authentication failed on the master"):
        connect_failed(RW_URL, snap.service.datasources[0], OperationalError(1045, "no"), attempt)
    newer = cluster(master("db1"), replica("db2"), offline={"db2"})
    newer = type(newer)(newer.service, newer.health, newer.offline, generation=1)
    assert stale_since(RO_URL, snap, snap, first.datasource) is None
    assert "taken offline" in (stale_since(RO_URL, snap, newer, first.datasource) or "")
