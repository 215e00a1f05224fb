"""What a routed connection is besides its protocol: shared by :class:`sqlrouter.Connection`
(PyMySQL) and :class:`sqlrouter.aio.Connection` (aiomysql).

:class:`RoutedConnection` is their first base: the attributes sqlrouter adds (``qos``,
``service``, ``url``, ``causal_token``, ``session``), what the service table needs of a
connection (:class:`~sqlrouter.routing.service.Invalidatable`), the bookkeeping of a
closed, lost or inherited connection, and the errors that say so.  The protocol's class
says only whether its socket is open (:attr:`RoutedConnection._is_open`) and how to
abandon a parent's socket after ``fork()``.

The statement path's decisions are here too, each returning what to do, so that a
driver only carries it out (a blocking call, an await): what a transaction start does
for the session (:meth:`~RoutedConnection._transaction_step`), what an invalidation does
(:meth:`~RoutedConnection._invalidation_step`), what a failed statement raises or whether
it runs elsewhere (:meth:`~RoutedConnection._failed_statement`,
:meth:`~RoutedConnection._failed_read`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import telemetry
from ._attempts import (
    Attempt,
    TryAgain,
    connect_failed,
    decide,
    policy_for,
    refused_everywhere,
    routed,
    stale_since,
)
from ._connrules import (
    IN_TRANS,
    Move,
    Setup,
    Wait,
    closed_error,
    invalidated_error,
    lost_error,
    lost_under,
    may_read_elsewhere,
    recheck,
    session_setup,
    transaction_start,
)
from ._statements import may_resend
from .errors import (
    ConnectionInvalidated,
    Error,
    InterfaceError,
    MySQLError,
    OperationalError,
    ProgrammingError,
)
from .gtid import EMPTY, CausalToken
from .qos import QoS
from .topology import Credentials
from .url import ServiceURL, parse_url

if TYPE_CHECKING:
    from ._connstate import ConnState
    from .consistency import Session
    from .routing.health import Snapshot
    from .routing.router import Decision, Policy
    from .routing.service import ServiceHandle
    from .topology import DataSource

__all__ = ["INHERITED", "RoutedConnection", "credentials_of", "parse_cached"]

logger = logging.getLogger("sqlrouter.connection")

#: How an inherited connection's reason starts (see RoutedConnection.inherited).
INHERITED: Final = "opened by process"

_E = TypeVar("_E", bound=BaseException)


class RoutedConnection:
    """The part of a sqlrouter connection that does not talk to a server."""

    _url: ServiceURL
    _handle: ServiceHandle
    _state: ConnState
    # The defaults of a new connection are class attributes (a connect sets fewer).
    _inherited_from: int | None = None
    datasource: DataSource | None = None
    decision: Decision | None = None
    #: Telemetry only (set while :data:`sqlrouter.telemetry.observers` is not empty):
    #: what the current connect attempt routed on, and when a ``MASTER_GTID_WAIT`` began.
    _observed: tuple[Snapshot, Policy | None, float] | None = None
    _wait_started: float = 0.0
    #: The session's version read before the last routing decision (see _decide).
    _decided_version: int = 0

    def _routed(self, url: ServiceURL, handle: ServiceHandle) -> None:
        self._url = url
        self._handle = handle

    @property
    def _is_open(self) -> bool:
        """The connection's socket is open (the protocol's class says)."""
        raise NotImplementedError

    def _abandon(self, why: str) -> None:
        """In a forked child: drop the parent's socket without a word (the protocol's)."""
        raise NotImplementedError

    @property
    def qos(self) -> QoS:
        return self._url.qos

    @property
    def service(self) -> str:
        return self._url.service

    @property
    def url(self) -> ServiceURL:
        """The URL this connection was opened with (its ``str`` hides the password)."""
        return self._url

    def __repr__(self) -> str:
        where = str(self.datasource) if self.datasource is not None else "nowhere"
        state = "open" if self._is_open else "closed"
        return (
            f"<{type(self).__module__}.Connection service={self._url.service!r} "
            f"qos={self._url.qos.value} datasource={where} {state}>"
        )

    @property
    def causal_token(self) -> CausalToken:
        """The causal token of this connection's session (``str()`` it to carry it on)."""
        session = self._state.session
        return session.token if session is not None else EMPTY

    @property
    def session(self) -> Session | None:
        """The session this connection shares its causal token with (None: consistency=none)."""
        return self._state.session

    def use_session(self, session: Session) -> None:
        """Share ``session``'s causal token from now on, instead of the current session's.

        For connections that outlive the session they were opened in (a framework's
        persistent connections, serving one request after another).  The GTIDs of
        later writes go to ``session``; a relaxed connection checks ``session``'s token
        at its next transaction start, exactly as a new connection would, and moves if
        its server has not applied it.  Raises :class:`sqlrouter.ProgrammingError` on a
        connection opened with ``consistency=none`` (it does not track its writes).
        """
        state = self._state
        if state.session is None:
            raise ProgrammingError(
                0,
                f"service {self._url.service!r}: this connection was opened with "
                "consistency=none and has no session; open it with consistency=session "
                "to share a causal token",
            )
        if session is not state.session:
            state.share(session)

    # -- what the service table needs (routing.service.Invalidatable) ----------------

    @property
    def datasource_name(self) -> str | None:
        """The datasource this connection is open on (None when closed)."""
        ds = self.datasource
        return ds.name if ds is not None and self._is_open else None

    @property
    def writes_to_master(self) -> bool:
        return self._url.qos is QoS.RW_STRICT

    def invalidate(self, reason: str, *, at_transaction_boundary: bool = False) -> None:
        """Make the next use raise :class:`ConnectionInvalidated` (thread-safe: a flag).

        With ``at_transaction_boundary`` the current transaction may finish first.
        """
        self._state.invalidate(reason, at_transaction_boundary=at_transaction_boundary)

    def check_route(self, snapshot: Snapshot) -> None:
        """After a monitor round (in the monitor's thread): a relaxed connection whose
        server no longer suits its own policy moves at its next transaction start
        (:func:`sqlrouter._connrules.recheck`: only sets a flag)."""
        ds = self.datasource
        if ds is not None and self._is_open:
            moves = recheck(self._url, self._state, snapshot, ds)
            if moves and telemetry.observers:
                telemetry.emit(telemetry.Invalidated(self._url.service, ds.name, "reroute"))

    def inherited(self, parent: int) -> None:
        """In a forked child (called by the service table, before anything else runs):
        close this process's copy of the socket, which is the parent's (nothing is sent
        on it), and make the next use raise or move."""
        if not self._is_open:
            return
        why = f"{INHERITED} {parent} before fork(), whose socket it keeps"
        self._inherited_from = parent
        self._abandon(f"the connection was {why}")
        self._state.closed_why = (why, time.time())
        self._state.invalidate(why, at_transaction_boundary=False)

    @property
    def inherited_from(self) -> int | None:
        """The pid of the process that opened this connection, when this process
        inherited it across ``fork()`` (it is closed here); ``None`` otherwise."""
        return self._inherited_from

    # -- the steps of a connect attempt around its I/O (see _connect_once) -----------

    def _decide(self, snapshot: Snapshot, attempt: Attempt) -> DataSource:
        """Where this attempt connects (:func:`sqlrouter._attempts.decide`); the protocol
        connects there next."""
        url = self._url
        session = self._state.session
        # Read before the decision reads the session's token: a write learnt in between
        # makes this version older than the token's, never newer (checked again later).
        self._decided_version = session.version if session is not None else 0
        handle = self._handle
        if telemetry.observers:
            policy = None
            if refused_everywhere(snapshot, handle.logins_refused) is None:
                policy = policy_for(
                    url, self._state, snapshot, attempt.exclude, allow_wait=attempt.allow_wait
                )
            self._observed = (snapshot, policy, time.monotonic())
        try:
            decision = decide(
                url, self._state, snapshot, attempt, handle.choose, refused_in=handle.logins_refused
            )
        except TryAgain as exc:
            if telemetry.observers:
                self._observe(None, exc.error)
            raise
        except Error as exc:
            if telemetry.observers:
                self._observe(None, exc)
            raise
        ds = decision.datasource
        logger.debug(
            "service %r qos=%s: connecting to %s: %s",
            url.service,
            url.qos.value,
            ds,
            decision.reason,
        )
        self.decision = decision
        return ds

    def _failed(self, ds: DataSource, exc: OperationalError, attempt: Attempt) -> TryAgain:
        logger.debug("service %r: connection to %s failed: %s", self._url.service, ds, exc)
        if telemetry.observers:
            self._observe(self.decision, exc)
        return connect_failed(self._url, ds, exc, attempt)

    def _connected(self, ds: DataSource) -> bool:
        """The socket is open on ``ds``; True when the session needs setting up there."""
        decision = self.decision
        self.datasource = ds
        state = self._state
        state.opened(on_master=decision is not None and decision.on_master)
        if telemetry.observers:
            self._observe(decision, None)
        return state.session is not None

    def _observe(self, decision: Decision | None, error: Error | None) -> None:
        """Hand the record of this connect attempt to the telemetry observers (only
        called when there are some: see :mod:`sqlrouter.telemetry`); ``decision``
        ``None``: the router refused with ``error``."""
        observed = self._observed
        if observed is None:  # observers were added during the attempt
            return
        snapshot, policy, started = observed
        # The protocol's server_version (PyMySQL's and aiomysql's, untyped): the
        # handshake's version string.
        version = getattr(self, "server_version", "") if error is None else ""
        telemetry.emit(
            routed(
                self._url,
                snapshot,
                policy,
                decision,
                started=started,
                ended=time.monotonic(),
                error=error,
                server_version=version or "",
            )
        )

    def _checked(
        self, outcome: telemetry.CheckOutcome, started: float | None, token: CausalToken
    ) -> None:
        """Hand a consistency check's record to the telemetry observers (``started``:
        when its ``MASTER_GTID_WAIT`` began, ``None`` when none ran)."""
        ds = self.datasource
        if ds is None:
            return
        now = time.monotonic()
        telemetry.emit(
            telemetry.ConsistencyCheck(
                service=self._url.service,
                datasource=ds,
                outcome=outcome,
                started=now if started is None else started,
                waited=0.0 if started is None else now - started,
                token=token,
            )
        )

    def _session_setup(self, snapshot: Snapshot) -> Setup:
        """What the session needs of the new connection (:func:`session_setup`)."""
        decision = self.decision
        if decision is None:
            return Setup()
        setup = session_setup(self._state, snapshot, decision, self._decided_version)
        if setup.wait_for is not None and telemetry.observers:
            self._wait_started = time.monotonic()
        return setup

    def _caught_up(self, setup: Setup, caught_up: bool) -> bool:
        """The session's set-up is done (``caught_up``: no wait for ``setup.wait_for``
        was needed, or it succeeded); returns ``caught_up`` (False: go elsewhere)."""
        state = self._state
        session = state.session
        if session is None:
            return caught_up
        if telemetry.observers:
            if setup.wait_for is not None:
                outcome: telemetry.CheckOutcome = "waited" if caught_up else "moved"
                self._checked(outcome, self._wait_started, setup.wait_for)
            elif not state.on_master and session.token:
                self._checked("free", None, session.token)
        if caught_up and setup.wait_for is not None:
            # Checked as of the version whose token was waited for (read before routing).
            state.checked(setup.version)
        return caught_up

    def _transaction_step(self, session: Session) -> Wait | Move | None:
        """What a relaxed connection does for ``session`` at a transaction start, on the
        monitor's last snapshot (:func:`sqlrouter._connrules.transaction_start`): nothing,
        a wait here (its outcome goes to :meth:`_waited`), or a move (:meth:`_moving`)."""
        ds = self.datasource
        if ds is None:
            raise InterfaceError(0, "connection is not open")
        snapshot = self._handle.monitor.snapshot
        state = self._state
        policy = policy_for(self._url, state, snapshot, frozenset())
        step = transaction_start(state, session, snapshot, ds, policy)
        if telemetry.observers:
            if step is None:
                if not state.on_master:
                    self._checked("free", None, session.token)
            elif isinstance(step, Move):
                self._checked("moved", None, session.token)
            else:
                self._wait_started = time.monotonic()
        return step

    def _waited(self, step: Wait, caught_up: bool) -> Move | None:
        """The ``MASTER_GTID_WAIT`` of ``step`` returned ``caught_up``: nothing left to
        do, or (it did not catch up in time) a move to a server that needs no wait."""
        if telemetry.observers:
            self._checked("waited" if caught_up else "moved", self._wait_started, step.token)
        if caught_up:
            self._state.checked(step.version)
            return None
        return Move(step.why, allow_wait=False)

    def _registered(self, routed_on: Snapshot) -> None:
        """The connection is ready: the service table knows it from now on (and one
        event it may have missed while connecting is applied)."""
        handle = self._handle
        handle.opened(self)
        ds = self.datasource
        latest = handle.monitor.snapshot
        if ds is not None and latest is not routed_on:
            stale = stale_since(self._url, routed_on, latest, ds)
            if stale is not None:
                self.invalidate(stale)

    def _leaving(self, exc: OperationalError) -> frozenset[str]:
        """A relaxed read failed with ``exc`` and runs once elsewhere: the service table
        forgets the connection (the caller closes it); the datasources to avoid."""
        failed = self.datasource
        logger.debug(
            "service %r: read on %s failed (%s); running it once on another server",
            self._url.service,
            failed,
            exc.args[-1],
        )
        self._handle.closed(self)
        return frozenset({failed.name}) if failed is not None else frozenset()

    def _no_tracking(self, exc: MySQLError) -> None:
        """The master refused to track ``last_gtid``: ``SELECT @@last_gtid`` after
        each commit that wrote, from now on."""
        logger.debug(
            "service %r: %s: cannot track last_gtid (%s); using SELECT @@last_gtid",
            self._url.service,
            self.datasource,
            exc.args[-1],
        )
        self._state.gtid_by_select = True
        if telemetry.observers:
            name = self.datasource.name if self.datasource is not None else ""
            telemetry.emit(telemetry.GtidFallback(self._url.service, name))

    # -- closing and failing ---------------------------------------------------------

    def _forget(self, why: str) -> bool:
        """``close()``'s bookkeeping: the service table forgets the connection; False when
        it is a parent's, inherited across ``fork()`` (its socket must not be touched)."""
        self._handle.closed(self)
        state = self._state
        if state.closed_why is not None and state.closed_why[0].startswith(INHERITED):
            return False
        if self._is_open:
            state.closed_why = (why, time.time())
        return True

    def _closed_error(self) -> InterfaceError:
        return closed_error(self._url, self.datasource, self._state.closed_why)

    def _invalidated(self, reason: str) -> ConnectionInvalidated:
        """Closed for ``reason`` (the caller closes the socket): the error to raise."""
        self._handle.closed(self)
        self._state.closed_why = (f"invalidated: {reason}", time.time())
        return invalidated_error(self._url, self.datasource, reason)

    def _lost(self, exc: OperationalError, status: int, what: str) -> Error:
        """The error for a connection lost while a write may have been running (never
        re-sent: see :func:`sqlrouter._connrules.lost_error`)."""
        self._handle.closed(self)
        self._state.closed_why = (f"lost during {what}: {exc.args[-1]}", time.time())
        return lost_error(self._url, self.datasource, exc, status, what)

    # -- the statement path's decisions (the driver carries them out) ----------------

    def _invalidation_step(self, status: int) -> Move | ConnectionInvalidated | None:
        """Act on the connection's invalidation (``status``: the server status now).

        A relaxed connection between transactions moves to another server (it holds
        nothing): :class:`Move`.  Any other is closed: the error to raise (the service
        table already forgot the connection; the caller closes its socket, then raises).
        ``None``: nothing to do (no invalidation, or one that waits for the transaction
        boundary meets an open transaction).
        """
        state = self._state
        in_transaction = bool(status & IN_TRANS)
        invalid = state.take_invalidation(in_transaction=in_transaction)
        if invalid is None:
            return None
        if state.moves_instead(in_transaction=in_transaction):
            return Move(invalid.reason)
        return self._invalidated(invalid.reason)

    def _moving(self, why: str) -> None:
        """The connection moves for ``why``: the service table forgets it (the caller
        closes it and routes again)."""
        logger.debug(
            "service %r: moving the connection from %s: %s", self._url.service, self.datasource, why
        )
        self._handle.closed(self)

    def _failed_statement(
        self, exc: InterfaceError | OperationalError, status: int, what: str
    ) -> Error | None:
        """A statement (``what``, as the errors name it; ``status``: the server status
        before it) failed with ``exc``: the error to raise in its place, its cause set as
        ``raise ... from`` sets it (``None``: raise ``exc`` itself).

        A closed connection's error says which connection, since when and why
        (:meth:`_closed_error`); a connection lost under a statement that may have had an
        effect says what may have happened (:meth:`_lost`: never re-sent).
        """
        if isinstance(exc, InterfaceError):
            return None if self._is_open else _instead(self._closed_error(), None)
        if lost_under(exc.args[0], status, what):
            return _instead(self._lost(exc, status, what), exc)
        return None

    def _failed_read(
        self, exc: InterfaceError | OperationalError, status: int, sql: str | bytes
    ) -> Error | frozenset[str] | None:
        """A relaxed connection's statement ``sql`` failed with ``exc`` (``status``: the
        server status before it): the error to raise in its place (as
        :meth:`_failed_statement`; ``None``: ``exc`` itself), or the datasources to avoid
        when it runs once more elsewhere (the service table already forgot the
        connection: the caller closes it, routes again and re-sends ``sql``).

        A statement in autocommit that failed because its server went away returned
        nothing yet: it runs once more elsewhere if running it twice cannot have an
        effect (:mod:`sqlrouter._statements`), else its outcome is unknown.
        """
        if isinstance(exc, InterfaceError):
            return None if self._is_open else _instead(self._closed_error(), None)
        if not may_read_elsewhere(exc.args[0], status):
            return None
        if not may_resend(sql):
            return _instead(self._lost(exc, status, "a statement that may lock or write"), exc)
        return self._leaving(exc)


def _instead(error: _E, cause: BaseException | None) -> _E:
    """``error``, to be raised in an ``except`` block in place of the exception caught
    with ``raise error from error.__cause__``: ``cause`` (``None``: as ``from None``)."""
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error


@functools.lru_cache(maxsize=128)
def _parse_cached(url: str | None, items: tuple[tuple[str, Any], ...]) -> ServiceURL:
    return parse_url(url, **dict(items))


def parse_cached(url: str | ServiceURL | None, kwargs: dict[str, Any]) -> ServiceURL:
    """parse_url, remembered for the URLs a process uses again and again (a ServiceURL
    is immutable, so sharing one is safe)."""
    if isinstance(url, ServiceURL):
        return parse_url(url, **kwargs)
    try:
        return _parse_cached(url, tuple(sorted(kwargs.items())))
    except TypeError:  # an unhashable keyword value (an ssl dict, say)
        return parse_url(url, **kwargs)


#: The application's credentials, made once per user and password and shared by its
#: connects (a Credentials is an immutable value).
credentials_of = functools.lru_cache(maxsize=128)(Credentials)
