"""What a connection knows beyond PyMySQL's state: its session's token, and invalidation.

:class:`ConnState` is the whole of it, one small mutable object per
:class:`sqlrouter.Connection`, and pure: its transitions take what they need (is a
transaction open, the session's version) as arguments and touch no socket, so they
are unit-tested without a server.  The connection reads its fields on the statement
path (a few attribute reads) and calls the transitions on the slow path.

Two questions it answers:

- Must a relaxed connection check its session's causal token before this transaction
  (:meth:`ConnState.due_check`)?  Only when the token moved since it last checked,
  between transactions.  A writer never checks (the master has every write); neither
  does a relaxed connection on the master (a fallback), which still follows the token.
- What to do with an invalidation (:meth:`ConnState.take_invalidation`): one that waits
  for the transaction boundary is kept while a transaction is open; otherwise it is
  taken, and the connection raises or moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from .consistency import Session

__all__ = ["ConnState", "Invalidation"]


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Why a connection must not go on as it is, and when that takes effect."""

    reason: str
    #: Let the transaction in progress end first (an operator took the server offline,
    #: a relaxed connection's server no longer suits its policy); else the next use.
    at_transaction_boundary: bool


@dataclass(slots=True)
class ConnState:
    """The session-consistency and invalidation state of one connection."""

    #: A RO_RELAXED connection (reads from replicas, checks its session's token); else
    #: RW_STRICT.  Fixed for the life of the connection.
    relaxed: bool
    #: The session whose causal token the connection shares (``None``:
    #: ``consistency=none``, nothing is tracked).
    session: Session | None
    #: The connection is open on the master (a writer, or a relaxed fallback): its
    #: writes' GTIDs go to the session, and no token needs checking there.
    on_master: bool = False
    #: The session's :attr:`~sqlrouter.Session.version` that the connection last made
    #: sure its server has applied (``-1``: never).
    checked_version: int = -1
    #: The monitor snapshot generation whose position of this replica was last merged
    #: into the session (monotonic reads: what a read may have seen is required of the
    #: later reads); ``-1``: none.
    merged_generation: int = -1
    #: The server does not report ``last_gtid`` in OK packets: a write's GTID is read
    #: with ``SELECT @@last_gtid`` once its transaction ends.
    gtid_by_select: bool = False
    #: A write of the transaction in progress whose GTID is not known yet (read at the
    #: end of the transaction, when :attr:`gtid_by_select`).
    gtid_pending: bool = False
    #: Set (from any thread: one attribute) when the connection's server was demoted,
    #: went down or was taken offline, or no longer suits a relaxed connection.
    invalid: Invalidation | None = None
    #: PyMySQL's own connect() is running: its set-up statements pass through.
    connecting: bool = False
    #: Why and when (``time.time()``) the connection was closed, when sqlrouter knows.
    closed_why: tuple[str, float] | None = None

    def opened(self, *, on_master: bool) -> None:
        """A connection was (re)opened: nothing invalidates it, nothing closed it; what
        the session needs of the new server is settled by the caller next."""
        self.on_master = on_master
        self.invalid = None
        self.closed_why = None

    def share(self, session: Session) -> None:
        """Follow ``session``'s token from now on: checked again at the next
        transaction start, as on a new connection."""
        self.session = session
        self.checked_version = -1
        self.merged_generation = -1

    def checked(self, version: int) -> None:
        """The server is known to have applied the session's token at ``version``."""
        self.checked_version = version

    def due_check(self, *, in_transaction: bool) -> Session | None:
        """The session whose token must be checked before the statement that starts a
        transaction; ``None`` when no check is due.

        A relaxed connection with a session, outside a transaction, whose session's
        token moved since its last check.  (The statement path's fast case is the
        opposite without the transaction test: see ``Connection.query``.)
        """
        session = self.session
        if (
            self.relaxed
            and session is not None
            and not in_transaction
            and session.version != self.checked_version
        ):
            return session
        return None

    def invalidate(self, reason: str, *, at_transaction_boundary: bool) -> None:
        self.invalid = Invalidation(reason, at_transaction_boundary)

    def take_invalidation(self, *, in_transaction: bool) -> Invalidation | None:
        """The invalidation to act on now, cleared; ``None`` when there is none or it
        waits for the open transaction to end."""
        invalid = self.invalid
        if invalid is None or (invalid.at_transaction_boundary and in_transaction):
            return None
        self.invalid = None
        return invalid

    def drop_invalidation(self) -> bool:
        """``ping(reconnect=True)``: reconnecting routes again, so an invalidation is
        dropped; True when there was one (the caller closes the socket before it
        reconnects)."""
        if self.invalid is None:
            return False
        self.invalid = None
        return True

    def moves_instead(self, *, in_transaction: bool) -> bool:
        """Does an invalidated connection move to another server rather than fail?

        A relaxed connection between transactions holds nothing: it moves.
        """
        return self.relaxed and not in_transaction
