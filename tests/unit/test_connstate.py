"""The connection's session-consistency and invalidation state (pure, no server)."""

from __future__ import annotations

import pytest

from sqlrouter._connstate import ConnState, Invalidation
from sqlrouter.consistency import Session
from sqlrouter.gtid import CausalToken


def relaxed(session: Session | None = None) -> ConnState:
    return ConnState(relaxed=True, session=session if session is not None else Session())


def test_a_new_relaxed_connection_checks_before_its_first_transaction() -> None:
    state = relaxed()
    assert state.checked_version == -1
    assert state.due_check(in_transaction=False) is state.session


def test_no_check_is_due_once_the_version_was_checked() -> None:
    session = Session()
    state = relaxed(session)
    state.checked(session.version)
    assert state.due_check(in_transaction=False) is None
    session.advance(CausalToken.parse("0-1-5"))
    assert state.due_check(in_transaction=False) is session


def test_no_check_inside_a_transaction() -> None:
    state = relaxed()
    assert state.due_check(in_transaction=True) is None
    assert state.due_check(in_transaction=False) is not None


@pytest.mark.parametrize(
    "state",
    [
        ConnState(relaxed=False, session=Session()),  # a writer: the master has every write
        ConnState(relaxed=True, session=None),  # consistency=none
    ],
)
def test_writers_and_sessionless_connections_never_check(state: ConnState) -> None:
    assert state.due_check(in_transaction=False) is None


def test_sharing_another_session_checks_again() -> None:
    first, second = Session(), Session("0-1-3")
    state = relaxed(first)
    state.checked(first.version)
    state.merged_generation = 7
    state.share(second)
    assert state.session is second
    assert (state.checked_version, state.merged_generation) == (-1, -1)
    assert state.due_check(in_transaction=False) is second


def test_opened_clears_invalidation_and_closing_reason() -> None:
    state = relaxed()
    state.invalidate("db2 went down", at_transaction_boundary=False)
    state.closed_why = ("lost during a statement: gone", 1.0)
    state.opened(on_master=True)
    assert state.invalid is None and state.closed_why is None and state.on_master


def test_an_invalidation_is_taken_once() -> None:
    state = relaxed()
    state.invalidate("db2 went down", at_transaction_boundary=False)
    assert state.invalid == Invalidation("db2 went down", at_transaction_boundary=False)
    assert state.take_invalidation(in_transaction=True) == Invalidation("db2 went down", False)
    assert state.invalid is None
    assert state.take_invalidation(in_transaction=False) is None


def test_an_invalidation_at_the_boundary_waits_for_the_transaction() -> None:
    state = relaxed()
    state.invalidate("db2 was taken offline", at_transaction_boundary=True)
    assert state.take_invalidation(in_transaction=True) is None
    assert state.invalid is not None  # kept for the end of the transaction
    taken = state.take_invalidation(in_transaction=False)
    assert taken == Invalidation("db2 was taken offline", at_transaction_boundary=True)
    assert state.invalid is None


@pytest.mark.parametrize(
    ("is_relaxed", "in_transaction", "moves"),
    [(True, False, True), (True, True, False), (False, False, False), (False, True, False)],
)
def test_only_a_relaxed_connection_between_transactions_moves(
    is_relaxed: bool, in_transaction: bool, moves: bool
) -> None:
    state = ConnState(relaxed=is_relaxed, session=None)
    assert state.moves_instead(in_transaction=in_transaction) is moves


def test_invalidation_is_one_attribute_for_other_threads() -> None:
    state = relaxed()
    state.invalidate("db1 is no longer the master (now: db2)", at_transaction_boundary=False)
    # The monitor's thread sets it whole; the statement path reads one attribute.
    assert isinstance(state.invalid, Invalidation)
    assert not state.invalid.at_transaction_boundary


def test_a_reconnect_drops_an_invalidation() -> None:
    state = relaxed()
    assert not state.drop_invalidation()
    state.invalidate("db2 went down", at_transaction_boundary=True)
    assert state.drop_invalidation() and state.invalid is None
