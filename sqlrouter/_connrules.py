"""What a connection decides about its session and its failures, without I/O.

The rules that :class:`sqlrouter.Connection` and :class:`sqlrouter.aio.Connection` share:
they differ in how they talk to a server (PyMySQL blocks, aiomysql awaits), never in
what they decide.  Each function here takes what it needs (the connection's
:class:`~sqlrouter._connstate.ConnState`, a snapshot, the URL) and returns what to do;
the connection does it.

- :func:`session_setup`: on a new connection, what session consistency needs first
  (nothing, ``last_gtid`` tracking on the master, or a wait for the token on a replica);
- :func:`transaction_start`: a relaxed connection whose session's token moved, before
  the statement that starts a transaction: nothing, a wait here, or a move;
- :func:`may_read_elsewhere`, :func:`lost_under`: what a statement's failure means (run
  it once more elsewhere, or say what may have happened);
- :func:`lost_error`, :func:`closed_error`, :func:`invalidated_error`: the errors, worded
  once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from pymysql.charset import charset_by_name
from pymysql.constants import SERVER_STATUS

from ._attempts import policy_for
from ._connstate import ConnState
from ._session_track import CLIENT_SESSION_TRACK
from .consistency import Session, current_session
from .errors import (
    ER_CONNECTION_INVALIDATED,
    ConnectionInvalidated,
    Error,
    InterfaceError,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
)
from .gtid import CausalToken
from .qos import QoS
from .routing.health import Health, Snapshot
from .routing.router import Decision, Policy, observed_master, reroute, wait_here
from .topology import DataSource
from .url import Consistency, ServiceURL

__all__ = [
    "AUTOCOMMIT",
    "COMMIT",
    "ENABLE_GTID_TRACKING",
    "IN_TRANS",
    "LOST",
    "Move",
    "Setup",
    "Wait",
    "closed_error",
    "complete_args",
    "gtid_wait",
    "invalidated_error",
    "lost_error",
    "lost_under",
    "may_read_elsewhere",
    "new_session",
    "open_session",
    "recheck",
    "replica_opened",
    "session_setup",
    "transaction_start",
]

IN_TRANS: Final = SERVER_STATUS.SERVER_STATUS_IN_TRANS
AUTOCOMMIT: Final = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
#: The errors of a connection that died under a statement (PyMySQL's, aiomysql's).
LOST: Final = frozenset({2006, 2013, 2055})
#: What the errors call a COMMIT (see :func:`lost_under`, :func:`lost_error`).
COMMIT: Final = "COMMIT"

#: Asks the master to report ``last_gtid`` in OK packets (when its global
#: ``session_track_system_variables`` lacks it).
ENABLE_GTID_TRACKING: Final = (
    "SET SESSION session_track_system_variables = "
    "CONCAT(@@session.session_track_system_variables, ',last_gtid')"
)


def open_session(url: ServiceURL, args: dict[str, Any]) -> Session | None:
    """The session a new connection of ``url`` shares (``None``: ``consistency=none``);
    ``args``, its driver's connect options, are checked and completed
    (:func:`complete_args`)."""
    complete_args(url, args)
    return new_session(url)


def complete_args(url: ServiceURL, args: dict[str, Any]) -> None:
    """Check and complete ``args``, the driver's connect options of a connection of
    ``url``: a writer that tracks its session asks for session-state tracking (the GTID
    in OK packets).  The same for every connection of ``url`` (a connect plan does it
    once)."""
    charset = args.get("charset")
    if charset and charset_by_name(charset) is None:
        raise ProgrammingError(
            f"service {url.service!r}: unknown charset {charset!r} (try utf8mb4)"
        )
    if url.consistency is Consistency.SESSION and url.qos is QoS.RW_STRICT:
        # Only writers need the GTID in OK packets; readers leave the server the work
        # of tracking.
        args["client_flag"] = args.get("client_flag", 0) | CLIENT_SESSION_TRACK


def new_session(url: ServiceURL) -> Session | None:
    """The session a new connection of ``url`` shares: the current one (``with
    sqlrouter.session()``) or its own; ``None`` with ``consistency=none``."""
    if url.consistency is not Consistency.SESSION:
        return None
    session = current_session() or Session()
    if url.causal_token:
        session.advance(CausalToken.parse(url.causal_token))
    return session


def recheck(url: ServiceURL, state: ConnState, snapshot: Snapshot, ds: DataSource) -> bool:
    """After a monitor round (in the monitor's thread): a relaxed connection whose
    server no longer suits its own policy moves at its next transaction start (see
    :func:`sqlrouter.routing.router.reroute`).  Only sets a flag: the statement path
    pays nothing for it.  True when it set the flag."""
    if not state.relaxed or state.invalid is not None:
        return False
    policy = policy_for(url, state, snapshot, frozenset())
    why = reroute(snapshot, ds.name, policy, fallback=state.on_master)
    if why is None:
        return False
    state.invalidate(why, at_transaction_boundary=True)
    return True


@dataclass(frozen=True, slots=True)
class Setup:
    """What a new connection does for its session before it is used."""

    #: Ask the master to report ``last_gtid`` in OK packets.
    track_gtid: bool = False
    #: ``MASTER_GTID_WAIT`` for this token on the replica first (timed out: go elsewhere).
    wait_for: CausalToken | None = None
    #: The session's version when the router read its token (``wait_for``): after the
    #: wait, ``state.checked(version)``: a write the session learnt meanwhile (another
    #: task's, another thread's) is checked at the next transaction start.
    version: int = 0


_NOTHING: Final = Setup()


def session_setup(state: ConnState, snapshot: Snapshot, decision: Decision, version: int) -> Setup:
    """Set up session consistency on a connection just opened where ``decision`` sent
    it (``version``: the session's when the decision was made, read before its token);
    what is left to do on the server is returned (after a successful wait, call
    ``state.checked(setup.version)``)."""
    session = state.session
    if session is None:
        return _NOTHING
    health = snapshot.health_of(decision.datasource.name)
    if state.on_master:
        state.checked(session.version)
        return Setup(track_gtid=not health.tracks_last_gtid and not state.relaxed)
    if decision.needs_wait is not None:
        return Setup(wait_for=decision.needs_wait, version=version)
    replica_opened(state, session, snapshot, health)
    return _NOTHING


def replica_opened(state: ConnState, session: Session, snapshot: Snapshot, health: Health) -> None:
    """What :func:`session_setup` does on a replica that needs no wait for the session's
    token (``health``: the replica's in ``snapshot``): monotonic reads, later reads of
    the session require what this one may see."""
    session.advance(health.position)
    state.merged_generation = snapshot.generation
    state.checked_version = session.version


def gtid_wait(token: CausalToken, wait: float, connect_timeout: float | None) -> tuple[str, float]:
    """``MASTER_GTID_WAIT(token, wait)`` and how long its reply may take (seconds)."""
    bound = wait + connect_timeout if connect_timeout else wait + 10
    # The token's text is digits, dashes and commas only (CausalToken validates).
    return f"SELECT MASTER_GTID_WAIT('{token}', {wait:.6f})", bound


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait here for ``token`` (one ``MASTER_GTID_WAIT``); on success ``checked(version)``,
    on a time-out move with ``why`` (to a server that needs no wait)."""

    token: CausalToken
    version: int
    why: str


@dataclass(frozen=True, slots=True)
class Move:
    """Close the connection and route it again (``allow_wait=False``: to a server that
    needs no wait for the session's token, one just did not catch up in time)."""

    why: str
    allow_wait: bool = True


def transaction_start(
    state: ConnState, session: Session, snapshot: Snapshot, ds: DataSource, policy: Policy
) -> Wait | Move | None:
    """Keep the session's guarantee on a relaxed connection, at a transaction start.

    Runs only when the session's token advanced since this connection last checked:

    - on the master (no replica qualified when it connected) while it is still the
      observed master: nothing to do, the master has every write;
    - on a replica the monitor last saw at or past the token: nothing to do;
    - else, if this replica is as close to the token as any qualifying one
      (:func:`sqlrouter.routing.router.wait_here`): one
      ``MASTER_GTID_WAIT(token, consistency_wait)`` round trip (:class:`Wait`);
    - else, or when the wait times out: the connection moves (reconnects through
      the router, which picks a replica known to have the token, waits on the
      closest one, or falls back to the master).

    ``None`` means nothing is left to do (the state says the token was checked).
    """
    version = session.version
    if state.on_master:
        master = observed_master(snapshot)
        if master is not None and master.name == ds.name:
            state.checked(version)
            return None
        # Demoted since (by some tool, its sessions left open): it may lack the
        # session's writes, made on the new master.  Check it as a replica.
        state.on_master = False
    health = snapshot.health_of(ds.name)
    if snapshot.generation != state.merged_generation:
        # Monotonic reads: what this replica had is now required of later reads.
        session.advance(health.position)
        state.merged_generation = snapshot.generation
        version = session.version
    token = session.token
    if health.position.covers(token):
        state.checked(version)
        return None
    # Not known to have the token: wait for it here (one round trip) unless another
    # replica is clearly closer to it (moving costs a new connection).
    why = f"{ds.name} has not applied {token}"
    if not wait_here(snapshot, ds.name, policy):
        return Move(why)
    return Wait(token, version, why)


def may_read_elsewhere(errno: int, status: int) -> bool:
    """A relaxed connection's statement failed with ``errno``; ``status`` was the server
    status before it.  May it run once more elsewhere (if the statement itself may:
    :func:`sqlrouter._statements.may_resend`)?  Only when the server went away in
    autocommit mode, outside a transaction."""
    return errno in LOST and not status & IN_TRANS and bool(status & AUTOCOMMIT)


def lost_under(errno: int, status: int, what: str) -> bool:
    """A statement (``what``, as the errors name it; ``status``: the server status before
    it) failed with ``errno``: was the connection lost while it may have had an effect
    (then :func:`lost_error` says what may have happened; it is never re-sent)?  A COMMIT
    outside a transaction had nothing to commit: its error is left as it is."""
    return errno in LOST and (what != COMMIT or bool(status & IN_TRANS))


def lost_error(
    url: ServiceURL, datasource: DataSource | None, exc: OperationalError, status: int, what: str
) -> Error:
    """The error for a connection lost while a write may have been running.

    sqlrouter never re-sends such a statement: it says what may have happened.
    """
    where = f"service {url.service!r}: connection to {datasource} lost"
    if what == COMMIT:
        return OutcomeUnknown(
            exc.args[0],
            f"{where} during COMMIT: the transaction's outcome is unknown (it may or "
            f"may not have been committed); it was not re-sent ({exc.args[-1]})",
        )
    if status & IN_TRANS or not status & AUTOCOMMIT:
        return OperationalError(
            exc.args[0],
            f"{where} inside a transaction: the server rolls it back, nothing of it "
            f"was committed; it was not re-sent ({exc.args[-1]})",
        )
    return OutcomeUnknown(
        exc.args[0],
        f"{where} during {what} in autocommit mode: its outcome is unknown (it may "
        f"or may not have been executed); it was not re-sent ({exc.args[-1]})",
    )


def closed_error(
    url: ServiceURL, datasource: DataSource | None, closed_why: tuple[str, float] | None
) -> InterfaceError:
    """PyMySQL's ``InterfaceError(0, '')`` for a closed connection, saying which
    connection, since when and why (SQLAlchemy sees "already closed": a disconnect)."""
    where = f"to {datasource} " if datasource is not None else ""
    if closed_why is None:
        why = "closed after an error, or never opened"
    else:
        text, when = closed_why
        why = f"{text}, {max(0.0, time.time() - when):.1f}s ago"
    return InterfaceError(
        0,
        f"service {url.service!r}: connection {where}already closed ({why}); open a new connection",
    )


def invalidated_error(
    url: ServiceURL, datasource: DataSource | None, reason: str
) -> ConnectionInvalidated:
    return ConnectionInvalidated(
        ER_CONNECTION_INVALIDATED,
        f"service {url.service!r}: connection to {datasource} invalidated: {reason}; "
        "open a new connection",
    )
