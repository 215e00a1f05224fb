"""DB-API connections that route: ``connect(service URL)`` down to PyMySQL.

:class:`Connection` *is* a PyMySQL connection (a subclass), so cursors, cursor
classes (``DictCursor``, ``SSCursor``), conversions, errors and everything that
SQLAlchemy's and Django's PyMySQL support expect work unchanged and cost nothing
extra: execute and fetch run PyMySQL's own code.  What sqlrouter adds happens when the
connection is opened: :meth:`Connection.connect` asks the router which datasource to
use, then opens the socket there.  Reconnecting (``ping(reconnect=True)``) routes
again, so a reconnected RW_STRICT connection follows the master.

Around it: :mod:`sqlrouter._connstate` (what the connection knows: its session's token,
invalidation), :mod:`sqlrouter._gtidcapture` (each write's GTID into the session),
:mod:`sqlrouter._attempts` (one connect's attempts and errors) and
:mod:`sqlrouter._pymysql` (every PyMySQL internal used), :mod:`sqlrouter._plan` (what
every ``connect()`` of one URL does alike, made once).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors
import tenacity
from pymysql.constants import SERVER_STATUS

from . import telemetry
from ._attempts import (
    Attempt,
    TryAgain,
    not_caught_up,
    plain_policy,
    retry_arguments,
)
from ._connbase import RoutedConnection, credentials_of
from ._connrules import (
    COMMIT,
    ENABLE_GTID_TRACKING,
    Move,
    Wait,
    gtid_wait,
    new_session,
    replica_opened,
)
from ._connstate import ConnState
from ._gtidcapture import GtidCapture, commit_done, statement_done
from ._plan import MAX_PLANS, ConnectPlan, plan_for
from ._pymysql import (
    abandon_after_fork,
    drop_result,
    finish_pending,
    pymysql_query,
)
from .consistency import Session, current_session
from .errors import (
    Error,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    RoutingError,
)
from .gtid import EMPTY, CausalToken
from .routing.health import Snapshot
from .routing.router import Decision, Route, route
from .routing.service import FIRST_ROUND_TIMEOUT, ServiceHandle
from .topology import DataSource
from .url import ServiceURL

__all__ = ["MAX_PLANS", "ConnectPlan", "Connection", "connect"]  # the plan's names: re-exported

logger = logging.getLogger("sqlrouter.connection")

_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS


class Connection(RoutedConnection, GtidCapture):
    """A PyMySQL connection opened on the datasource the router chose.

    Extra attributes: :attr:`datasource` (where it is), :attr:`qos`, :attr:`service`,
    :attr:`decision` (the router's reason).
    """

    __module__ = "sqlrouter"

    datasource: DataSource | None
    decision: Decision | None

    #: What this connection's connects do alike (see ConnectPlan).
    _plan: ConnectPlan | None = None

    def __init__(
        self, url: ServiceURL, handle: ServiceHandle, plan: ConnectPlan | None = None
    ) -> None:
        self._routed(url, handle)
        if plan is None:
            plan = ConnectPlan.make(url, handle)
        self._plan = plan
        session: Session | None
        if plan.own_or_current_session:  # new_session(url), shortened
            session = current_session() or Session()
        else:
            session = new_session(url)
        try:
            super().__init__(**plan.args)
        except (OSError, ValueError) as exc:  # a TLS file that cannot be read...
            hint = " (check the files the ssl options name)" if isinstance(exc, OSError) else ""
            raise ProgrammingError(
                f"service {url.service!r}: cannot use the connection's options: {exc}{hint}"
            ) from exc
        # Session consistency (see sqlrouter.session) and invalidation: what sqlrouter
        # knows of this connection beyond PyMySQL's state.
        self._state = ConnState(relaxed=plan.relaxed, session=session)
        if plan.preferred_tls:
            self._prefer_tls()
        self.connect()

    # -- what sqlrouter adds (the rest is RoutedConnection's) ------------------------

    @property
    def _is_open(self) -> bool:
        return self._sock is not None

    def _abandon(self, why: str) -> None:
        abandon_after_fork(self, why)

    def connect(self, sock: Any = None) -> None:
        """Route, then open the connection on the chosen datasource (PyMySQL's
        ``connect``, also called by ``ping(reconnect=True)``): see :meth:`_route`."""
        if sock is not None:  # a caller-provided socket: no routing possible
            super().connect(sock)
            return
        self._route()

    def _route(self, *, exclude: frozenset[str] = frozenset(), allow_wait: bool = True) -> None:
        """Route, then open the connection on the chosen datasource.

        ``exclude`` names datasources this connect must not use (a server a read just
        failed on); ``allow_wait=False`` goes to the fallback rather than wait for a
        replica to catch up with the session's token (one just did not).  Attempts go
        on as :func:`sqlrouter._attempts.retry_arguments` says.
        """
        plan = self._plan
        if plan is not None and allow_wait and not exclude:
            first = self._connect_planned(plan)
            if first is None:
                return
            attempt = first
        else:
            attempt = Attempt.start(self._url, exclude=exclude, allow_wait=allow_wait)
            try:
                self._connect_once(attempt)  # the common case: no retry policy to build
            except TryAgain:
                pass
            else:
                return
        policy = tenacity.Retrying(
            **retry_arguments(self._url, attempt, len(self._handle.service.datasources))
        )
        try:
            policy(self._connect_once, attempt)
        except TryAgain as exc:
            raise exc.error from exc.__cause__

    def _connect_once(self, attempt: Attempt) -> None:
        """One routing decision and one connection attempt; TryAgain to go on."""
        handle = self._handle
        url = self._url
        snapshot = handle.snapshot(
            credentials_of(url.user or "", url.password or ""),
            timeout=max(0.0, min(FIRST_ROUND_TIMEOUT, attempt.deadline - time.monotonic())),
        )
        ds = self._decide(snapshot, attempt)
        self.host, self.port = ds.host, ds.port
        try:
            self._connect_bounded(attempt.left())
        except pymysql.err.OperationalError as exc:
            raise self._failed(ds, exc, attempt) from exc
        if self._connected(ds) and not self._after_connect(snapshot):
            raise not_caught_up(url, ds, attempt)
        self._registered(snapshot)

    def _connect_planned(self, plan: ConnectPlan) -> Attempt | None:
        """The first attempt of a connect, the short way while nothing is unusual (a
        fresh snapshot, no session token, no telemetry observer): ``plan``'s route on
        the current snapshot at the next turn, then :meth:`_connect_once`'s steps.
        Returns ``None`` once connected, else the attempt to go on with (this one failed
        in a way another may fix)."""
        handle = self._handle
        started = time.monotonic()
        snapshot = handle.fresh_snapshot(plan.credentials)
        decision = None
        if snapshot is not None and not telemetry.observers:
            session = self._state.session
            token = EMPTY
            if session is not None:
                self._decided_version = session.version  # before the token, as _decide
                token = session.token
            if token is EMPTY or not token:
                kept = plan.kept
                if kept is None or kept[0] is not snapshot:
                    kept = self._replan(plan, snapshot)
                if kept is not None:
                    # The snapshot is fresh: choose() would not refuse it.
                    decision = kept[1].pick(handle.next_turn())
        if snapshot is None or decision is None:
            attempt = Attempt.start(self._url, exclude=frozenset(), allow_wait=True)
            try:
                self._connect_once(attempt)
            except TryAgain:
                return attempt
            return None
        ds = decision.datasource
        if logger.isEnabledFor(logging.DEBUG):  # what _decide logs
            logger.debug(
                "service %r qos=%s: connecting to %s: %s",
                self._url.service,
                self._url.qos.value,
                ds,
                decision.reason,
            )
        self.decision = decision
        self.host, self.port = ds.host, ds.port
        try:
            self._connect_bounded(
                max(started + self._url.connect_timeout - time.monotonic(), plan.grace)
            )
        except pymysql.err.OperationalError as exc:
            attempt = self._attempt_since(started)
            self._failed(ds, exc, attempt)  # raises when no other attempt may succeed
            return attempt
        if self._connected(ds):
            session = self._state.session
            if (
                session is None
                or decision.on_master
                or decision.needs_wait is not None
                or telemetry.observers
            ):
                if not self._after_connect(snapshot):
                    attempt = self._attempt_since(started)
                    not_caught_up(self._url, ds, attempt)
                    return attempt
            else:  # what _after_connect does on a replica that needs no wait
                replica_opened(self._state, session, snapshot, snapshot.health_of(ds.name))
        self._registered(snapshot)
        return None

    def _replan(self, plan: ConnectPlan, snapshot: Snapshot) -> tuple[Snapshot, Route] | None:
        """``plan``'s route on a new snapshot (decided once per snapshot); ``None``:
        decide the full way (:meth:`_decide`: it raises the error, with what it tried)."""
        if self._handle.logins_refused(snapshot) is not None:
            return None
        try:
            kept = (snapshot, route(snapshot, plain_policy(self._url, snapshot)))
        except RoutingError:
            return None
        plan.kept = kept
        return kept

    def _attempt_since(self, started: float) -> Attempt:
        """The state of a connect begun at ``started`` whose first attempt was planned."""
        timeout = self._url.connect_timeout
        return Attempt(
            deadline=started + timeout,
            grace=min(1.0, timeout),
            exclude=frozenset(),
            allow_wait=True,
            started=started,
        )

    # -- session consistency -------------------------------------------------------

    def _after_connect(self, snapshot: Snapshot) -> bool:
        """Set up session consistency on a new connection; False: go elsewhere."""
        setup = self._session_setup(snapshot)
        if setup.track_gtid:
            self._enable_gtid_tracking()
        caught_up = setup.wait_for is None or self._gtid_wait(setup.wait_for)
        if self._caught_up(setup, caught_up):
            return True
        self._force_close()
        return False

    def _enable_gtid_tracking(self) -> None:
        """Ask the server to report ``last_gtid`` in OK packets (one round trip).

        Only when the server's global ``session_track_system_variables`` lacks it;
        where the variable cannot be set, fall back to ``SELECT @@last_gtid`` after
        each commit that wrote.
        """
        try:
            super().query(ENABLE_GTID_TRACKING)
        except pymysql.err.MySQLError as exc:
            self._no_tracking(exc)

    def _gtid_wait(self, token: CausalToken) -> bool:
        """``MASTER_GTID_WAIT(token, consistency_wait)`` in one round trip."""
        sql, bound = gtid_wait(token, self._url.consistency_wait, self.connect_timeout)
        return bool(self._first_value_within(sql, bound) == 0)

    def _at_transaction_start(self, session: Session) -> None:
        """Keep the session's guarantee on a relaxed connection, at a transaction start
        (:meth:`_transaction_step`: nothing, a wait, or a move; a wait that does not
        catch up in time moves to a server that needs none).

        Whether the server still qualifies at all (lag, threads, role) is checked after
        each monitor round, outside the statement path (:meth:`check_route`).
        """
        step = self._transaction_step(session)
        if isinstance(step, Wait):
            step = self._waited(step, self._gtid_wait(step.token))
        if step is not None:
            self._move(step)

    def _move(self, step: Move) -> None:
        """Close the connection and route it again (see :meth:`_route` for the rest)."""
        self._moving(step.why)
        # Rows a server-side cursor left unread are read first, as PyMySQL does before
        # its next command (it warns): a move never leaves them to the new socket.
        finish_pending(self, warn=True)
        self._force_close()
        self._route(allow_wait=step.allow_wait)

    # PyMySQL calls query() for every statement a cursor executes: keep this cheap.
    def query(self, sql: str | bytes, unbuffered: bool = False) -> int:
        # The fast path, the only place it is stated: nothing invalidated the connection,
        # and it is a writer, or a relaxed connection whose session's token has not moved
        # since its last check (ConnState.due_check finds nothing due, whatever the transaction).
        # A few attribute reads, then PyMySQL's own query().
        state = self._state
        if state.invalid is None:
            if not state.relaxed:
                return self._write(sql, unbuffered)
            session = state.session
            if session is None or session.version == state.checked_version:
                return self._read(sql, unbuffered)
        return self._query(sql, unbuffered)

    def _query(self, sql: str | bytes, unbuffered: bool) -> int:
        """The slow path: PyMySQL's own set-up statements, an invalidation to act on, or
        a token to check before the statement that starts a transaction."""
        state = self._state
        if state.connecting:  # PyMySQL's own set-up statements (init_command, sql_mode)
            return super().query(sql, unbuffered)
        if state.invalid is not None:
            self._raise_or_move()
        if not state.relaxed:
            return self._write(sql, unbuffered)
        self._check_token()
        return self._read(sql, unbuffered)

    def _check_token(self) -> None:
        """Before a statement that may start a transaction: keep the session's guarantee
        if its token moved since the last check (:meth:`_at_transaction_start`)."""
        session = self._state.due_check(in_transaction=bool(self.server_status & _IN_TRANS))
        if session is not None:
            self._at_transaction_start(session)

    def _read(self, sql: str | bytes, unbuffered: bool) -> int:
        """A relaxed connection's statement."""
        status = self.server_status
        try:
            return pymysql_query(self, sql, unbuffered)
        except (InterfaceError, OperationalError) as exc:
            # The server went away under a statement that may run once more elsewhere, or
            # the error to raise (RoutedConnection._failed_read).
            failed = self._failed_read(exc, status, sql)
            if isinstance(failed, frozenset):
                return self._read_elsewhere(sql, unbuffered, failed, exc)
            if failed is None:
                raise
            raise failed from failed.__cause__

    def _write(self, sql: str | bytes, unbuffered: bool) -> int:
        """A RW_STRICT connection's statement: never re-sent; its GTID learnt."""
        status = self.server_status
        try:
            rows = pymysql_query(self, sql, unbuffered)
        except (InterfaceError, OperationalError) as exc:
            failed = self._failed_statement(exc, status, "a statement")
            if failed is None:
                raise
            raise failed from failed.__cause__
        if self._state.session is not None and statement_done(
            self._state, self._result, self.server_status
        ):
            self._select_last_gtid()
        return rows

    def begin(self) -> None:
        if self._state.invalid is not None:
            self._raise_or_move()
        self._check_token()
        try:
            super().begin()
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def commit(self) -> None:
        invalid = self._state.invalid
        if invalid is not None and not invalid.at_transaction_boundary:
            self._raise_or_move()
        status = self.server_status
        try:
            ok = self._commit_ok()
        except (InterfaceError, OperationalError) as exc:
            failed = self._failed_statement(exc, status, COMMIT)
            if failed is None:
                raise
            raise failed from failed.__cause__
        if commit_done(self._state, ok.server_status, ok.message):
            self._select_last_gtid()

    def ping(self, reconnect: bool | None = False) -> None:
        """PyMySQL's ping; an invalidated connection raises ConnectionInvalidated
        (``reconnect=True`` routes again instead)."""
        if reconnect:
            if self._state.drop_invalidation():
                self._force_close()
            super().ping(True)  # PyMySQL warns that reconnecting this way is deprecated
            return
        if self._state.invalid is not None:
            self._raise_or_move()
        if self._sock is None:
            raise self._closed_error()
        super().ping(False)

    # PyMySQL's other commands, with the closed connection's error saying which and why.

    def autocommit(self, value: Any) -> None:
        try:
            super().autocommit(value)
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def select_db(self, db: Any) -> None:
        try:
            super().select_db(db)
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def set_character_set(self, charset: str, collation: str | None = None) -> None:
        try:
            super().set_character_set(charset, collation)
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def show_warnings(self) -> Any:
        try:
            return super().show_warnings()  # type: ignore[no-untyped-call]  # untyped stub
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def rollback(self) -> None:
        try:
            super().rollback()
        except pymysql.err.InterfaceError:
            raise self._closed_error() from None

    def close(self) -> None:
        """Close the connection (PEP 249).  On a connection inherited across ``fork()``
        this only forgets it: its socket is the parent's, and was never used here."""
        state = self._state
        if self._sock is not None and not state.relaxed and state.session is not None:
            # A streamed write's GTID is learnt at the end of its rows: read them (the
            # session would lose the write otherwise).
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                finish_pending(self, warn=False)
        if self._forget("closed by close()"):
            super().close()

    # -- invalidation and faults ---------------------------------------------------

    def _raise_or_move(self) -> None:
        """Act on the connection's invalidation (:meth:`_invalidation_step`): a relaxed
        connection between transactions moves to another server (it holds nothing); any
        other is closed and raises :class:`ConnectionInvalidated`.  Nothing while an
        invalidation that waits for the transaction boundary meets an open transaction."""
        step = self._invalidation_step(self.server_status)
        if isinstance(step, Move):
            self._move(step)
        elif step is not None:
            self._force_close()
            raise step

    def _read_elsewhere(
        self, sql: str | bytes, unbuffered: bool, exclude: frozenset[str], exc: Error
    ) -> int:
        """Run ``sql`` once more, on a server other than those of ``exclude`` (it failed
        with ``exc`` on the first)."""
        self._force_close()
        try:
            self._route(exclude=exclude)
        except Error as again:
            raise again from exc
        return super().query(sql, unbuffered)

    def _connect_bounded(self, timeout: float) -> None:
        """PyMySQL's connect, bounded by ``timeout``; its set-up statements pass through."""
        # PyMySQL's connect keeps the last result: a streamed one would be drained from
        # the new socket.
        if self._result is not None:
            drop_result(self, "the connection was closed under it and opened again elsewhere")
        self._state.connecting = True
        try:
            self._connect_within(timeout)
        finally:
            self._state.connecting = False


def connect(url: str | ServiceURL | None = None, /, **kwargs: Any) -> Connection:
    """Open a connection to a service.

    ``url`` is a service URL (``sqlrouter://[user[:password]@]SERVICE[/DATABASE]?...``);
    keywords (``service=``, ``database=``, ``user=``, ``password=``, ``qos=``,
    ``max_lag=``, any PyMySQL ``connect()`` keyword...) add to it or override it.
    Bad input raises :class:`sqlrouter.ProgrammingError`; a service with no datasource
    that qualifies raises :class:`sqlrouter.NoMasterAvailable` or
    :class:`sqlrouter.NoReplicaAvailable`, whose message lists every candidate and why
    it was rejected.
    """
    plan = plan_for(url, kwargs)
    return Connection(plan.url, plan.handle, plan)
