"""asyncio connections that route: ``await sqlrouter.aio.connect(service URL)``.

:class:`Connection` *is* an aiomysql connection (a subclass): cursors, conversions and
errors are aiomysql's and PyMySQL's, and a statement costs what it costs in aiomysql.
Routing is sqlrouter's one routing core, shared with :class:`sqlrouter.Connection`: the
service table and monitor of :mod:`sqlrouter._runtime`, the router, and the decisions of
:mod:`sqlrouter._attempts` (a connect's attempts), :mod:`sqlrouter._connrules` (session
consistency, failures) and :mod:`sqlrouter._gtidcapture` (each write's GTID).  What is
here and below is how they are carried out without blocking the event loop:

- finding the service (a registry file, DNS), building SSL contexts and waiting for the
  monitor's first round run in threads of sqlrouter's own (:mod:`sqlrouter.aio._offloop`),
  bounded, never in the loop;
- every wait is awaited (a failover wait with ``asyncio.sleep``, ``MASTER_GTID_WAIT``
  on the socket) and bounded;
- a task cancelled while it awaits a server (a statement, a consistency wait, the
  handshake) closes the connection and stops the statement on the server
  (:mod:`sqlrouter.aio._cancel`) before the cancellation goes on: nothing is left in
  an undefined state, and no server thread runs on for it.

The class is built in three layers, each a module: :mod:`._guard` (awaiting a server:
bounded, cancellable), :mod:`._route` (routing and opening the connection, the session's
set-up), and this one: the statement path, invalidation, closing, and :func:`connect`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

from .. import _runtime
from .._connbase import credentials_of, parse_cached
from .._connrules import (
    COMMIT,
    IN_TRANS,
    Move,
    Wait,
)
from .._gtidcapture import (
    commit_done,
    next_result_done,
    statement_done,
    unbuffered_done,
)
from ..consistency import Session
from ..errors import (
    Error,
    InterfaceError,
    MySQLError,
    OperationalError,
)
from ..routing.router import Decision
from ..topology import DataSource
from ..url import ServiceURL
from ._aiomysql import (
    Result,
    aiomysql_query,
    build_tls,
    connect_args,
    tls_cached,
)
from ._offloop import off_loop
from ._route import RoutingConnection

__all__ = ["Connection", "connect"]

logger = logging.getLogger("sqlrouter.aio")

#: What a statement is called in the errors of a cancelled or timed-out one.
_STATEMENT = "a statement"
#: The longest ``ensure_closed()`` reads the rest of a streamed write's rows (its GTID).
CLOSE_DRAIN_TIMEOUT = 10.0


class Connection(RoutingConnection):
    """An aiomysql connection opened on the datasource the router chose.

    Extra attributes, as on :class:`sqlrouter.Connection`: :attr:`datasource`,
    :attr:`qos`, :attr:`service`, :attr:`decision`, :attr:`causal_token`,
    :attr:`session`.  Open it with :func:`connect`.
    """

    __module__ = "sqlrouter.aio"

    datasource: DataSource | None
    decision: Decision | None

    # -- the statement path --------------------------------------------------------

    # aiomysql's cursors call query() for every statement: keep this cheap.
    async def query(self, sql: str | bytes, unbuffered: bool = False) -> int:
        state = self._state
        if state.invalid is None and not state.connecting:
            if not state.relaxed:
                return await self._write(sql, unbuffered)
            session = state.session
            if session is None or session.version == state.checked_version:
                return await self._read(sql, unbuffered)
        return await self._query(sql, unbuffered)

    async def _query(self, sql: str | bytes, unbuffered: bool) -> int:
        """The slow path: aiomysql's own set-up statements, an invalidation to act on, or
        a token to check before the statement that starts a transaction."""
        state = self._state
        if state.connecting:
            return await self._guarded(aiomysql_query(self, sql, unbuffered), "set-up")
        if state.invalid is not None:
            await self._raise_or_move()
        if not state.relaxed:
            return await self._write(sql, unbuffered)
        await self._check_token()
        return await self._read(sql, unbuffered)

    async def _read(self, sql: str | bytes, unbuffered: bool) -> int:
        """A relaxed connection's statement."""
        status = self.server_status
        try:
            return await self._guarded(aiomysql_query(self, sql, unbuffered), _STATEMENT)
        except (InterfaceError, OperationalError) as exc:
            failed = self._failed_read(exc, status, sql)
            if isinstance(failed, frozenset):
                return await self._read_elsewhere(sql, unbuffered, failed, exc)
            if failed is None:
                raise
            raise failed from failed.__cause__

    async def _write(self, sql: str | bytes, unbuffered: bool) -> int:
        """A RW_STRICT connection's statement: never re-sent; its GTID learnt."""
        status = self.server_status
        try:
            rows = await self._guarded(aiomysql_query(self, sql, unbuffered), _STATEMENT)
        except (InterfaceError, OperationalError) as exc:
            failed = self._failed_statement(exc, status, _STATEMENT)
            if failed is None:
                raise
            raise failed from failed.__cause__
        if self._state.session is not None and statement_done(
            self._state, self._result, self.server_status
        ):
            await self._select_last_gtid()
        return rows

    async def next_result(self) -> int:
        """The next result of a multi-statement query (aiomysql's); its write's GTID
        learnt as the first statement's is."""
        rows: int = await self._guarded(super().next_result(), _STATEMENT)
        if self._result is not None:
            next_result_done(self._state, self.server_status, self._result.message)
        return rows

    async def _unbuffered_done(self, result: Result) -> None:
        status = result.server_status
        if status is None or self._writer is None:
            return
        self.server_status = status
        if unbuffered_done(self._state, status, result.has_next):
            await self._select_last_gtid()

    async def _select_last_gtid(self) -> None:
        gtid = await self._guarded(self._first_value_aside("SELECT @@last_gtid"), "a GTID")
        session = self._state.session
        if gtid and session is not None:
            session.advance_gtid(str(gtid))

    async def _check_token(self) -> None:
        session = self._state.due_check(in_transaction=bool(self.server_status & IN_TRANS))
        if session is not None:
            await self._at_transaction_start(session)

    async def _at_transaction_start(self, session: Session) -> None:
        """See :meth:`sqlrouter.Connection._at_transaction_start`."""
        step = self._transaction_step(session)
        if isinstance(step, Wait):
            step = self._waited(step, await self._gtid_wait(step.token))
        if step is not None:
            await self._move(step)

    async def begin(self) -> None:
        if self._state.invalid is not None:
            await self._raise_or_move()
        await self._check_token()
        await self._command(super().begin, "BEGIN")

    async def commit(self) -> None:
        state = self._state
        if state.connecting:  # aiomysql's connect commits after init_command
            await self._guarded(super().commit(), "set-up")
            return
        invalid = state.invalid
        if invalid is not None and not invalid.at_transaction_boundary:
            await self._raise_or_move()
        status = self.server_status
        try:
            ok = await self._guarded(self._commit_ok(), COMMIT)
        except (InterfaceError, OperationalError) as exc:
            failed = self._failed_statement(exc, status, COMMIT)
            if failed is None:
                raise
            raise failed from failed.__cause__
        if commit_done(state, ok.server_status, ok.message):
            await self._select_last_gtid()

    async def rollback(self) -> None:
        await self._command(super().rollback, "ROLLBACK")

    async def autocommit(self, value: Any) -> None:
        await self._command(functools.partial(super().autocommit, value), "SET autocommit")

    async def select_db(self, db: str) -> None:
        await self._command(functools.partial(super().select_db, db), "COM_INIT_DB")

    async def _command(self, run: Callable[[], Awaitable[Any]], what: str) -> None:
        try:
            await self._guarded(run(), what)
        except InterfaceError:
            if self._writer is not None:
                raise
            raise self._closed_error() from None

    async def ping(self, reconnect: bool = False) -> None:
        """Ping the server; an invalidated connection raises ConnectionInvalidated.
        ``reconnect=True`` routes again (a closed or invalidated connection)."""
        if reconnect:
            if self._state.drop_invalidation():
                self._close_transport()
        elif self._state.invalid is not None:
            await self._raise_or_move()
        if self._writer is None:
            if not reconnect:
                raise self._closed_error()
            self._handle.closed(self)
            await self._route()
            return
        await self._command(functools.partial(super().ping, False), "COM_PING")

    def close(self) -> None:
        """Close the socket (aiomysql's ``close()``).  On a connection inherited across
        ``fork()`` this only forgets it: its socket is the parent's."""
        if self._forget("closed by close()"):
            super().close()

    async def ensure_closed(self) -> None:
        """Say goodbye to the server (COM_QUIT), then close (aiomysql's).

        A write whose rows were streamed and not all read (``INSERT ... RETURNING`` through
        an ``SSCursor``) on a connection with a session has them read first, within
        ``CLOSE_DRAIN_TIMEOUT``, so that its GTID reaches the session (``close()``, being
        synchronous, cannot: it loses it)."""
        state = self._state
        if (
            self._writer is not None
            and state.session is not None
            and not state.relaxed
            and self._inherited_from is None
        ):
            await self._drain_before_close()
        if not self._forget("closed by ensure_closed()"):
            return
        try:
            await super().ensure_closed()
        except OSError:
            super().close()

    async def _drain_before_close(self) -> None:
        """Read the rest of a streamed result, learning its write's GTID; a failure or
        ``CLOSE_DRAIN_TIMEOUT`` is logged (the connection is being closed anyway)."""
        result = self._result
        if result is None or not result.unbuffered_active:
            return
        try:
            async with asyncio.timeout(CLOSE_DRAIN_TIMEOUT):
                await self._guarded(result._finish_unbuffered_query(), "the rest of a result")
        except (MySQLError, OSError, TimeoutError) as exc:
            logger.warning(
                "service %r: the rest of a streamed result could not be read before close "
                "(its write's GTID, if any, is not in the session): %r",
                self._url.service,
                exc,
            )

    # -- invalidation and faults ---------------------------------------------------

    async def _raise_or_move(self) -> None:
        """See :meth:`sqlrouter.Connection._raise_or_move`."""
        step = self._invalidation_step(self.server_status)
        if isinstance(step, Move):
            await self._move(step)
        elif step is not None:
            if self._inherited_from is None:
                self._close_transport()
            raise step

    async def _read_elsewhere(
        self, sql: str | bytes, unbuffered: bool, exclude: frozenset[str], exc: Error
    ) -> int:
        self._close_transport()
        try:
            await self._route(exclude=exclude)
        except Error as again:
            raise again from exc
        return await self._guarded(aiomysql_query(self, sql, unbuffered), _STATEMENT)

    async def _move(self, step: Move) -> None:
        self._moving(step.why)
        result = self._result
        if result is not None and result.unbuffered_active:
            await self._guarded(result._finish_unbuffered_query(), "the rest of a result")
        self._close_transport()
        await self._route(allow_wait=step.allow_wait)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.close()
        else:
            await self.ensure_closed()


class _Connecting(Coroutine[Any, Any, Connection]):
    """What :func:`connect` returns: a coroutine (await it, or give it to
    ``asyncio.create_task``), and an asynchronous context manager (``async with``: the
    connection is closed at the end of the block), as aiomysql's ``connect()``."""

    __slots__ = ("_conn", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, Connection]) -> None:
        self._coro = coro
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    async def __aenter__(self) -> Connection:
        self._conn = await self._coro
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.__aexit__(exc_type, exc, tb)


async def _open(url: ServiceURL, args: dict[str, Any]) -> Connection:
    creds = credentials_of(url.user or "", url.password or "")
    # Finding the registry and the service reads files and may resolve names, building
    # an SSL context reads certificates: in a thread, never in the loop.
    timeout = url.connect_timeout
    try:
        handle = await off_loop(
            functools.partial(_runtime.handle_for, url.registry, url.service, creds), timeout
        )
        tls = tls_cached(url.connect_args)
        if tls is None:
            tls = await off_loop(functools.partial(build_tls, url.connect_args), timeout)
    except TimeoutError:
        raise OperationalError(
            2003,
            f"service {url.service!r}: can't connect: finding the service or setting up "
            f"TLS took longer than connect_timeout {timeout:g}s",
        ) from None
    context, tls_required = tls
    conn = Connection(url, handle, {**args, "ssl": context})
    conn._tls_required = tls_required
    try:
        await conn._route()
    except BaseException:
        conn._close_transport()
        raise
    return conn


def connect(url: str | ServiceURL | None = None, /, **kwargs: Any) -> _Connecting:
    """Open a connection to a service: ``conn = await sqlrouter.aio.connect(url)``, or
    ``async with sqlrouter.aio.connect(url) as conn:``.

    Takes what :func:`sqlrouter.connect` takes (the same URL forms, parameters, errors
    and error numbers), except the PyMySQL options aiomysql has no equivalent for
    (``binary_prefix``, ``collation``, ``max_allowed_packet``, ``bind_address``,
    ``auth_plugin_map``: :class:`sqlrouter.ProgrammingError`); ``cursorclass`` is an
    aiomysql cursor class.  Bad input raises at once, before anything is awaited.
    """
    parsed = parse_cached(url, kwargs)
    return _Connecting(_open(parsed, connect_args(parsed.service, parsed.connect_args)))
