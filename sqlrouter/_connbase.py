"""What a routed connection is besides its protocol: shared by :class:`sqlrouter.Connection`
(PyMySQL) and :class:`sqlrouter.aio.Connection` (aiomysql).

:class:`RoutedConnection` is their first base: the attributes sqlrouter adds (``qos``,
``service``, ``url``, ``causal_token``, ``session``), what the service table needs of a
connection (:class:`~sqlrouter.routing.service.Invalidatable`), the bookkeeping of a
closed, lost or inherited connection, and the errors that say so.  The protocol's class
says only whether its socket is open (:attr:`RoutedConnection._is_open`) and how to
abandon a parent's socket after ``fork()``.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from ._attempts import Attempt, TryAgain, connect_failed, decide, stale_since
from ._connrules import (
    Setup,
    closed_error,
    invalidated_error,
    lost_error,
    recheck,
    session_setup,
)
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
from .url import ServiceURL, parse_url

if TYPE_CHECKING:
    from ._connstate import ConnState
    from .consistency import Session
    from .routing.health import Snapshot
    from .routing.router import Decision
    from .routing.service import ServiceHandle
    from .topology import DataSource

__all__ = ["INHERITED", "RoutedConnection", "parse_cached"]

logger = logging.getLogger("sqlrouter.connection")

#: How an inherited connection's reason starts (see RoutedConnection.inherited).
INHERITED: Final = "opened by process"


class RoutedConnection:
    """The part of a sqlrouter connection that does not talk to a server."""

    _url: ServiceURL
    _handle: ServiceHandle
    _state: ConnState
    _inherited_from: int | None
    datasource: DataSource | None
    decision: Decision | None
    #: The session's version read before the last routing decision (see _decide).
    _decided_version: int = 0

    def _routed(self, url: ServiceURL, handle: ServiceHandle) -> None:
        self._url = url
        self._handle = handle
        self._inherited_from = None
        self.datasource = None
        self.decision = None

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
            recheck(self._url, self._state, snapshot, ds)

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
        decision = decide(url, self._state, snapshot, attempt, self._handle.next_turn())
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
        return connect_failed(self._url, ds, exc, attempt)

    def _connected(self, ds: DataSource) -> bool:
        """The socket is open on ``ds``; True when the session needs setting up there."""
        decision = self.decision
        self.datasource = ds
        state = self._state
        state.opened(on_master=decision is not None and decision.on_master)
        return state.session is not None

    def _session_setup(self, snapshot: Snapshot) -> Setup:
        """What the session needs of the new connection (:func:`session_setup`)."""
        decision = self.decision
        if decision is None:
            return Setup()
        return session_setup(self._state, snapshot, decision, self._decided_version)

    def _caught_up(self, setup: Setup) -> bool:
        """The session's set-up is done (a wait for ``setup.wait_for`` succeeded): the
        session is checked as of the version whose token was waited for."""
        if setup.wait_for is not None and self._state.session is not None:
            self._state.checked(setup.version)
        return True

    def _registered(self, routed_on: Snapshot) -> None:
        """The connection is ready: the service table knows it from now on (and one
        event it may have missed while connecting is applied)."""
        handle = self._handle
        handle.opened(self)
        ds = self.datasource
        if ds is not None:
            stale = stale_since(self._url, routed_on, handle.monitor.snapshot, ds)
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
