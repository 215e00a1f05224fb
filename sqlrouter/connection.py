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
:mod:`sqlrouter._pymysql` (every PyMySQL internal used).  This module is kept whole
(over 600 lines): the connect path, the statement path and invalidation act on one
connection's state, and read best side by side.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors
import tenacity
from pymysql.charset import charset_by_name
from pymysql.constants import SERVER_STATUS

from . import telemetry
from ._attempts import (
    Attempt,
    TryAgain,
    auth_error,
    refused_everywhere,
    routed,
    stale_after_connect,
    with_failures,
)
from ._connstate import ConnState
from ._gtidcapture import GtidCapture
from ._pymysql import (
    SSL_ENABLED,
    abandon_after_fork,
    drop_result,
    finish_pending,
    pymysql_query,
)
from ._runtime import handle_for
from ._session_track import CLIENT_SESSION_TRACK, SERVER_SESSION_STATE_CHANGED
from ._statements import may_resend
from .consistency import Session, current_session
from .errors import (
    AUTH_ERRNOS,
    ER_CONNECTION_INVALIDATED,
    ER_NO_REPLICA,
    ConnectionInvalidated,
    Error,
    InterfaceError,
    NoMasterAvailable,
    NoReplicaAvailable,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
    RoutingError,
)
from .gtid import EMPTY, CausalToken
from .qos import QoS
from .routing.health import Snapshot
from .routing.router import Decision, Policy, choose, observed_master, reroute, wait_here
from .routing.service import FIRST_ROUND_TIMEOUT, ServiceHandle
from .topology import Credentials, DataSource
from .url import Consistency, ServiceURL, parse_url

__all__ = ["Connection", "connect"]

logger = logging.getLogger("sqlrouter.connection")

_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
#: PyMySQL's errors for a connection that died under a statement.
_LOST = frozenset({2006, 2013, 2055})

#: How often a RW_STRICT connect re-reads the snapshot while waiting for a master.
_FAILOVER_POLL = 0.05


class Connection(GtidCapture):
    """A PyMySQL connection opened on the datasource the router chose.

    Extra attributes: :attr:`datasource` (where it is), :attr:`qos`, :attr:`service`,
    :attr:`decision` (the router's reason).
    """

    __module__ = "sqlrouter"

    datasource: DataSource | None
    decision: Decision | None

    def __init__(self, url: ServiceURL, handle: ServiceHandle) -> None:
        self._url = url
        self._handle = handle
        self.datasource = None
        self.decision = None
        args: dict[str, Any] = dict(url.connect_args)
        session: Session | None = None
        if url.consistency is Consistency.SESSION:
            session = current_session() or Session()
            if url.causal_token:
                session.advance(CausalToken.parse(url.causal_token))
            if url.qos is QoS.RW_STRICT:
                # Only writers need the GTID in OK packets; readers leave the server
                # the work of tracking.
                args["client_flag"] = args.get("client_flag", 0) | CLIENT_SESSION_TRACK
        # TLS: PyMySQL's default is PREFERRED, with a new SSL context built at every
        # connection (it loads the system's CA bundle: tens of milliseconds).  sqlrouter
        # keeps PREFERRED and builds that same context once per process.
        preferred_tls = SSL_ENABLED and not any(k == "ssl" or k.startswith("ssl_") for k in args)
        if preferred_tls:
            args["ssl_disabled"] = True
        charset = args.get("charset")
        if charset and charset_by_name(charset) is None:
            raise ProgrammingError(
                f"service {url.service!r}: unknown charset {charset!r} (try utf8mb4)"
            )
        try:
            super().__init__(
                user=url.user,
                password=url.password or "",
                database=url.database,
                connect_timeout=url.connect_timeout,
                read_timeout=url.read_timeout,
                write_timeout=url.write_timeout,
                defer_connect=True,
                **args,
            )
        except (OSError, ValueError) as exc:  # a TLS file that cannot be read...
            hint = " (check the files the ssl options name)" if isinstance(exc, OSError) else ""
            raise ProgrammingError(
                f"service {url.service!r}: cannot use the connection's options: {exc}{hint}"
            ) from exc
        # Session consistency (see sqlrouter.session) and invalidation: what sqlrouter
        # knows of this connection beyond PyMySQL's state.
        self._state = ConnState(relaxed=url.qos is QoS.RO_RELAXED, session=session)
        self._inherited_from: int | None = None
        if preferred_tls:
            self._prefer_tls()
        self.connect()

    # -- what sqlrouter adds -------------------------------------------------------

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
        state = "open" if self.open else "closed"
        return (
            f"<sqlrouter.Connection service={self._url.service!r} qos={self._url.qos.value} "
            f"datasource={where} {state}>"
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
            raise pymysql.err.ProgrammingError(
                0,
                f"service {self._url.service!r}: this connection was opened with "
                "consistency=none and has no session; open it with consistency=session "
                "to share a causal token",
            )
        if session is not state.session:
            state.share(session)

    def _policy(
        self, snapshot: Snapshot, exclude: frozenset[str], *, allow_wait: bool = True
    ) -> Policy:
        url = self._url
        max_lag = url.max_lag if url.max_lag is not None else snapshot.service.max_lag
        session = self._state.session
        token = session.token if session is not None else EMPTY
        return Policy(
            qos=url.qos,
            max_lag=max_lag,
            fallback=url.fallback,
            token=token,
            allow_wait=allow_wait,
            exclude=exclude,
        )

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
        replica to catch up with the session's token (one just did not).

        Attempts are driven by a tenacity policy:

        - RW_STRICT retries while no writable master exists or it refuses connections,
          every 50 ms, for up to ``failover_timeout`` seconds (0: one attempt).
        - RO_RELAXED moves to the next qualifying datasource (then the master, with
          ``fallback=master``) when one does not answer, with no pause; each attempt
          is bounded by what is left of ``connect_timeout`` and by at least
          ``min(1, connect_timeout)`` seconds, so one frozen server costs at most
          ``connect_timeout + 1`` seconds.
        """
        url = self._url
        attempt = Attempt(
            deadline=time.monotonic() + url.connect_timeout,
            grace=min(1.0, url.connect_timeout),
            exclude=exclude,
            allow_wait=allow_wait,
        )
        started = time.monotonic()
        try:
            self._connect_once(attempt)  # the common case: no policy to build
        except TryAgain:
            pass
        else:
            return
        spent = time.monotonic() - started
        if url.qos is QoS.RW_STRICT:
            policy = tenacity.Retrying(
                stop=tenacity.stop_after_delay(max(0.0, url.failover_timeout - spent)),
                wait=tenacity.wait_fixed(_FAILOVER_POLL),
                retry=tenacity.retry_if_exception_type(TryAgain),
                reraise=True,
            )
        else:
            policy = tenacity.Retrying(
                stop=tenacity.stop_after_delay(
                    max(0.0, url.connect_timeout + attempt.grace - spent)
                )
                | tenacity.stop_after_attempt(2 * len(self._handle.service.datasources) + 2),
                retry=tenacity.retry_if_exception_type(TryAgain),
                reraise=True,
            )
        try:
            policy(self._connect_once, attempt)
        except TryAgain as exc:
            raise exc.error from exc.__cause__

    def _connect_once(self, attempt: Attempt) -> None:
        """One routing decision and one connection attempt; TryAgain to go on."""
        handle = self._handle
        url = self._url
        started = time.monotonic()
        snapshot = handle.snapshot(
            Credentials(url.user or "", url.password or ""),
            timeout=max(0.0, min(FIRST_ROUND_TIMEOUT, attempt.deadline - started)),
        )
        refused = refused_everywhere(snapshot)
        if refused is not None:
            if telemetry.observers:
                self._observe(snapshot, None, None, started, refused)
            raise refused
        policy = self._policy(snapshot, attempt.exclude, allow_wait=attempt.allow_wait)
        try:
            decision = choose(snapshot, policy, turn=handle.next_turn(), now=time.monotonic())
        except RoutingError as exc:
            if telemetry.observers:
                self._observe(snapshot, policy, None, started, exc)
            if isinstance(exc, NoMasterAvailable):
                raise TryAgain(with_failures(exc, attempt.failures)) from None
            if attempt.auth_failures and len(attempt.auth_failures) == len(attempt.failures):
                raise auth_error(url, attempt.auth_errno, attempt.auth_failures) from None
            raise with_failures(exc, attempt.failures) from None
        ds = decision.datasource
        logger.debug(
            "service %r qos=%s: connecting to %s: %s",
            url.service,
            url.qos.value,
            ds,
            decision.reason,
        )
        self.host, self.port = ds.host, ds.port
        try:
            self._connect_bounded(max(attempt.deadline - time.monotonic(), attempt.grace))
        except pymysql.err.OperationalError as exc:
            failure = f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}"
            attempt.failures.append(failure)
            logger.debug("service %r: connection to %s failed: %s", url.service, ds, exc)
            if exc.args[0] in AUTH_ERRNOS:
                # A refused login: no wait or retry changes it (another replica may know
                # the user, so a relaxed connect tries the others before it fails).
                attempt.auth_errno = exc.args[0]
                attempt.auth_failures.append(failure)
                if url.qos is QoS.RW_STRICT:
                    raise auth_error(url, exc.args[0], [failure]) from exc
            if telemetry.observers:
                self._observe(snapshot, policy, decision, started, exc)
            if url.qos is QoS.RW_STRICT:
                error = OperationalError(
                    exc.args[0],
                    f"service {url.service!r}: cannot connect to the master "
                    f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}",
                )
            else:
                attempt.exclude = attempt.exclude | {ds.name}
                error = OperationalError(
                    exc.args[0],
                    f"service {url.service!r}: no connection within connect_timeout "
                    f"{url.connect_timeout:g}s: {'; '.join(attempt.failures)}",
                )
            raise TryAgain(error) from exc
        if telemetry.observers:
            self._observe(snapshot, policy, decision, started, None)
        self.datasource = ds
        self.decision = decision
        state = self._state
        state.opened(on_master=decision.on_master)
        if state.session is not None and not self._after_connect(snapshot, decision):
            attempt.allow_wait = False  # the replica did not catch up in time: stop waiting
            raise TryAgain(
                NoReplicaAvailable(
                    ER_NO_REPLICA,
                    f"service {url.service!r}: {ds.name} did not reach the session's "
                    f"token within consistency_wait {url.consistency_wait:g}s",
                    service=url.service,
                )
            )
        handle.opened(self)
        latest = handle.monitor.snapshot
        if latest.generation != snapshot.generation:
            # Routed on a snapshot that a newer one replaced while connecting: an event
            # published meanwhile may not have seen this connection.
            stale = stale_after_connect(latest, ds, writes=url.qos is QoS.RW_STRICT)
            if stale is not None:
                self.invalidate(stale)

    def _observe(
        self,
        snapshot: Snapshot,
        policy: Policy | None,
        decision: Decision | None,
        started: float,
        error: Error | None,
    ) -> None:
        """Hand one attempt's record to the telemetry observers (only called when there
        are some: see :mod:`sqlrouter.telemetry`)."""
        # PyMySQL's server_version (untyped): the handshake's version string.
        version = getattr(self, "server_version", "") if error is None else ""
        record = routed(
            self._url,
            snapshot,
            policy,
            decision,
            started=started,
            ended=time.monotonic(),
            error=error,
            server_version=version or "",
        )
        telemetry.emit(record)

    # -- session consistency -------------------------------------------------------

    def _after_connect(self, snapshot: Snapshot, decision: Decision) -> bool:
        """Set up session consistency on a new connection; False: go elsewhere."""
        state = self._state
        session = state.session
        if session is None:
            return True
        ds = decision.datasource
        health = snapshot.health_of(ds.name)
        if state.on_master:
            state.checked(session.version)
            if not health.tracks_last_gtid and not state.relaxed:
                self._enable_gtid_tracking()
            return True
        if decision.needs_wait is not None:
            started = time.monotonic()
            caught_up = self._gtid_wait(decision.needs_wait)
            if telemetry.observers:
                outcome: telemetry.CheckOutcome = "waited" if caught_up else "moved"
                self._checked(outcome, started, decision.needs_wait)
            if not caught_up:
                logger.debug(
                    "service %r: %s did not reach %s within consistency_wait %gs",
                    self._url.service,
                    ds.name,
                    decision.needs_wait,
                    self._url.consistency_wait,
                )
                self._force_close()
                return False
            state.checked(session.version)
        else:
            if session.token and telemetry.observers:
                self._checked("free", None, session.token)
            # Monotonic reads: later reads of the session require what this one may see.
            session.advance(health.position)
            state.merged_generation = snapshot.generation
            state.checked(session.version)
        return True

    def _enable_gtid_tracking(self) -> None:
        """Ask the server to report ``last_gtid`` in OK packets (one round trip).

        Only when the server's global ``session_track_system_variables`` lacks it;
        where the variable cannot be set, fall back to ``SELECT @@last_gtid`` after
        each commit that wrote.
        """
        try:
            super().query(
                "SET SESSION session_track_system_variables = "
                "CONCAT(@@session.session_track_system_variables, ',last_gtid')"
            )
        except pymysql.err.MySQLError as exc:
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

    def _gtid_wait(self, token: CausalToken) -> bool:
        """``MASTER_GTID_WAIT(token, consistency_wait)`` in one round trip."""
        wait = self._url.consistency_wait
        bound = wait + self.connect_timeout if self.connect_timeout else wait + 10
        # The token's text is digits, dashes and commas only (CausalToken validates).
        found = self._first_value_within(f"SELECT MASTER_GTID_WAIT('{token}', {wait:.6f})", bound)
        return bool(found == 0)

    def _at_transaction_start(self, session: Session) -> None:
        """Keep the session's guarantee on a relaxed connection, at a transaction start.

        Runs only when the session's token advanced since this connection last checked:

        - on the master (no replica qualified when it connected) while it is still the
          observed master: nothing to do, the master has every write;
        - on a replica the monitor last saw at or past the token: nothing to do;
        - else, if this replica is as close to the token as any qualifying one
          (:func:`sqlrouter.routing.router.wait_here`): one
          ``MASTER_GTID_WAIT(token, consistency_wait)`` round trip;
        - else, or when the wait times out: the connection moves (reconnects through
          the router, which picks a replica known to have the token, waits on the
          closest one, or falls back to the master).

        Whether the server still qualifies at all (lag, threads, role) is checked after
        each monitor round, outside the statement path (:meth:`check_route`).
        """
        ds = self.datasource
        if ds is None:
            raise InterfaceError(0, "connection is not open")
        state = self._state
        version = session.version
        snapshot = self._handle.monitor.snapshot
        if state.on_master:
            master = observed_master(snapshot)
            if master is not None and master.name == ds.name:
                state.checked(version)
                return
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
            if telemetry.observers:
                self._checked("free", None, token)
            state.checked(version)
            return
        # Not known to have the token: wait for it here (one round trip) unless another
        # replica is clearly closer to it (moving costs a new connection).
        why = f"{ds.name} has not applied {token}"
        if not wait_here(snapshot, ds.name, self._policy(snapshot, frozenset())):
            if telemetry.observers:
                self._checked("moved", None, token)
            self._move(why)
            return
        started = time.monotonic()
        caught_up = self._gtid_wait(token)
        if telemetry.observers:
            self._checked("waited" if caught_up else "moved", started, token)
        if caught_up:
            state.checked(version)
        else:
            # It did not catch up in time: the next server is one that needs no wait.
            self._move(why, allow_wait=False)

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

    def check_route(self, snapshot: Snapshot) -> None:
        """After a monitor round (in the monitor's thread): a relaxed connection whose
        server no longer suits its own policy moves at its next transaction start.

        See :func:`sqlrouter.routing.router.reroute`.  Only sets a flag: the statement path
        pays nothing for it.
        """
        ds = self.datasource
        state = self._state
        if not state.relaxed or ds is None or state.invalid is not None or self._sock is None:
            return
        why = reroute(
            snapshot, ds.name, self._policy(snapshot, frozenset()), fallback=state.on_master
        )
        if why is not None:
            state.invalidate(why, at_transaction_boundary=True)
            if telemetry.observers:
                telemetry.emit(telemetry.Invalidated(self._url.service, ds.name, "reroute"))

    def _move(
        self, why: str, *, exclude: frozenset[str] = frozenset(), allow_wait: bool = True
    ) -> None:
        """Close the connection and route it again (see :meth:`_route` for the rest)."""
        logger.debug(
            "service %r: moving the connection from %s: %s", self._url.service, self.datasource, why
        )
        self._handle.closed(self)
        # Rows a server-side cursor left unread are read first, as PyMySQL does before
        # its next command (it warns): a move never leaves them to the new socket.
        finish_pending(self, warn=True)
        self._force_close()
        self._route(exclude=exclude, allow_wait=allow_wait)

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
        except pymysql.err.InterfaceError:
            if self._sock is not None:
                raise
            raise self._closed_error() from None
        except pymysql.err.OperationalError as exc:
            # A statement in autocommit that failed because its server went away returned
            # nothing yet: run it once more elsewhere if running it twice cannot have an
            # effect (sqlrouter._statements); else say its outcome is unknown.
            if exc.args[0] not in _LOST or status & _IN_TRANS or not status & _AUTOCOMMIT:
                raise
            if not may_resend(sql):
                raise self._lost(exc, status, "a statement that may lock or write") from exc
            return self._read_elsewhere(sql, unbuffered, exc)

    def _write(self, sql: str | bytes, unbuffered: bool) -> int:
        """A RW_STRICT connection's statement: never re-sent; its GTID learnt."""
        status = self.server_status
        try:
            rows = pymysql_query(self, sql, unbuffered)
        except pymysql.err.InterfaceError:
            if self._sock is not None:
                raise
            raise self._closed_error() from None
        except pymysql.err.OperationalError as exc:
            if exc.args[0] in _LOST:
                raise self._lost(exc, status, "a statement") from exc
            raise
        state = self._state
        if state.session is not None:
            if state.gtid_by_select:
                if self._result is not None and state.on_master:
                    self._after_write_by_select(self._result.affected_rows)
            elif self.server_status & SERVER_SESSION_STATE_CHANGED:
                self._after_write(self._result)
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
        except pymysql.err.InterfaceError:
            if self._sock is not None:
                raise
            raise self._closed_error() from None
        except pymysql.err.OperationalError as exc:
            if exc.args[0] in _LOST and status & _IN_TRANS:
                raise self._lost(exc, status, "COMMIT") from exc
            raise
        state = self._state
        if state.session is None or not state.on_master:
            return
        if state.gtid_by_select:
            if state.gtid_pending:
                state.gtid_pending = False
                self._select_last_gtid()
        else:
            self._capture(ok.server_status, ok.message)

    def ping(self, reconnect: bool | None = False) -> None:
        """PyMySQL's ping; an invalidated connection raises ConnectionInvalidated
        (``reconnect=True`` routes again instead)."""
        state = self._state
        if state.invalid is not None:
            if reconnect:
                state.invalid = None
                self._force_close()
            else:
                self._raise_or_move()
        if reconnect:
            super().ping(True)  # PyMySQL warns that reconnecting this way is deprecated
        elif self._sock is None:
            raise self._closed_error()
        else:
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
        self._handle.closed(self)
        state = self._state
        if state.closed_why is not None and state.closed_why[0].startswith(_INHERITED):
            return
        if self._sock is not None:
            if not state.relaxed and state.session is not None:
                # A streamed write's GTID is learnt at the end of its rows: read them
                # (the session would lose the write otherwise).
                with contextlib.suppress(pymysql.err.MySQLError, OSError):
                    finish_pending(self, warn=False)
            state.closed_why = ("closed by close()", time.time())
        super().close()

    def inherited(self, parent: int) -> None:
        """In a forked child (called by the service table, before anything else runs):
        close this process's copy of the socket, which is the parent's (nothing is sent
        on it), and make the next use raise or move (see ``_raise_or_move``)."""
        if self._sock is None:
            return
        why = f"{_INHERITED} {parent} before fork(), whose socket it keeps"
        self._inherited_from = parent
        abandon_after_fork(self, f"the connection was {why}")
        self._state.closed_why = (why, time.time())
        self._state.invalidate(why, at_transaction_boundary=False)

    @property
    def inherited_from(self) -> int | None:
        """The pid of the process that opened this connection, when this process
        inherited it across ``fork()`` (it is closed here); ``None`` otherwise."""
        return self._inherited_from

    def _closed_error(self) -> InterfaceError:
        """PyMySQL's ``InterfaceError(0, '')`` for a closed connection, saying which
        connection, since when and why (SQLAlchemy sees "already closed": a disconnect)."""
        where = f"to {self.datasource} " if self.datasource is not None else ""
        closed_why = self._state.closed_why
        if closed_why is None:
            why = "closed after an error, or never opened"
        else:
            text, when = closed_why
            why = f"{text}, {max(0.0, time.time() - when):.1f}s ago"
        return InterfaceError(
            0,
            f"service {self._url.service!r}: connection {where}already closed ({why}); "
            "open a new connection",
        )

    # -- invalidation and faults ---------------------------------------------------

    @property
    def datasource_name(self) -> str | None:
        """The datasource this connection is open on (None when closed)."""
        ds = self.datasource
        return ds.name if ds is not None and self._sock is not None else None

    @property
    def writes_to_master(self) -> bool:
        return self._url.qos is QoS.RW_STRICT

    def invalidate(self, reason: str, *, at_transaction_boundary: bool = False) -> None:
        """Make the next use raise :class:`ConnectionInvalidated` (thread-safe: a flag).

        With ``at_transaction_boundary`` the current transaction may finish first.
        """
        self._state.invalidate(reason, at_transaction_boundary=at_transaction_boundary)

    def _raise_or_move(self) -> None:
        """Act on the connection's invalidation: a relaxed connection between
        transactions moves to another server (it holds nothing); any other raises
        :class:`ConnectionInvalidated`.  Nothing while an invalidation that waits for the
        transaction boundary meets an open transaction."""
        state = self._state
        in_transaction = bool(self.server_status & _IN_TRANS)
        invalid = state.take_invalidation(in_transaction=in_transaction)
        if invalid is None:
            return
        reason = invalid.reason
        if state.moves_instead(in_transaction=in_transaction):
            self._move(reason)
            return
        where = self.datasource
        self._handle.closed(self)
        self._force_close()
        state.closed_why = (f"invalidated: {reason}", time.time())
        raise ConnectionInvalidated(
            ER_CONNECTION_INVALIDATED,
            f"service {self._url.service!r}: connection to {where} invalidated: {reason}; "
            "open a new connection",
        )

    def _lost(self, exc: pymysql.err.OperationalError, status: int, what: str) -> Error:
        """The error for a connection lost while a write may have been running.

        sqlrouter never re-sends such a statement: it says what may have happened.
        """
        where = f"service {self._url.service!r}: connection to {self.datasource} lost"
        self._handle.closed(self)
        self._state.closed_why = (f"lost during {what}: {exc.args[-1]}", time.time())
        if what == "COMMIT":
            return OutcomeUnknown(
                exc.args[0],
                f"{where} during COMMIT: the transaction's outcome is unknown (it may or "
                f"may not have been committed); it was not re-sent ({exc.args[-1]})",
            )
        if status & _IN_TRANS or not status & _AUTOCOMMIT:
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

    def _read_elsewhere(
        self, sql: str | bytes, unbuffered: bool, exc: pymysql.err.OperationalError
    ) -> int:
        failed = self.datasource
        logger.debug(
            "service %r: read on %s failed (%s); running it once on another server",
            self._url.service,
            failed,
            exc.args[-1],
        )
        self._handle.closed(self)
        self._force_close()
        try:
            self._route(exclude=frozenset({failed.name}) if failed is not None else frozenset())
        except Error as again:
            raise again from exc
        return super().query(sql, unbuffered)

    def _connect_bounded(self, timeout: float) -> None:
        """PyMySQL's connect, bounded by ``timeout``; its set-up statements pass through."""
        # PyMySQL's connect keeps the last result: a streamed one would be drained from
        # the new socket.
        drop_result(self, "the connection was closed under it and opened again elsewhere")
        self._state.connecting = True
        try:
            self._connect_within(timeout)
        finally:
            self._state.connecting = False


#: How an inherited connection's reason starts (see Connection.inherited).
_INHERITED = "opened by process"


@functools.lru_cache(maxsize=128)
def _parse_cached(url: str | None, items: tuple[tuple[str, Any], ...]) -> ServiceURL:
    return parse_url(url, **dict(items))


def _parse(url: str | ServiceURL | None, kwargs: dict[str, Any]) -> ServiceURL:
    """parse_url, remembered for the URLs a process uses again and again (a ServiceURL
    is immutable, so sharing one is safe)."""
    if isinstance(url, ServiceURL):
        return parse_url(url, **kwargs)
    try:
        return _parse_cached(url, tuple(sorted(kwargs.items())))
    except TypeError:  # an unhashable keyword value (an ssl dict, say)
        return parse_url(url, **kwargs)


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
    parsed = _parse(url, kwargs)
    creds = Credentials(parsed.user or "", parsed.password or "")
    handle = handle_for(parsed.registry, parsed.service, creds)
    return Connection(parsed, handle)
