"""Every use of aiomysql's internals, in one place: pinned to the versions checked, guarded.

:class:`sqlrouter.aio.Connection` *is* an aiomysql connection (a subclass), so aiomysql's
cursors (``Cursor``, ``DictCursor``, ``SSCursor``), conversions and PyMySQL's errors work
unchanged and at aiomysql's cost.  aiomysql is built on PyMySQL's protocol, converter and
error modules, so the OK packets that carry a write's GTID are PyMySQL's, and
:mod:`sqlrouter._session_track` reads them.  What the connection needs beyond aiomysql's
public API is here:

- :class:`AiomysqlConnection`, the base class: it copies ``_read_query_result`` to make
  results of class :class:`Result`, sends COMMIT keeping its OK packet, runs a query
  whose result the caller does not see, and abandons a parent's connection after
  ``fork()``;
- :class:`Result`, aiomysql's ``MySQLResult`` keeping the server status of a result
  set's final EOF packet (which aiomysql drops) and telling its connection when an
  unbuffered result ends;
- :func:`connect_args`: PyMySQL's ``connect()`` options (those of a service URL) as
  aiomysql's; :func:`build_tls`: the SSL context PyMySQL would build from them, once per
  set of options (in a thread: it reads files), :func:`tls_cached` (in the loop).

:data:`CHECKED` records, for each aiomysql function overridden, copied or called
although private, the hash of its source in :data:`AIOMYSQL_TESTED`;
``tests/unit/test_aio.py`` fails, naming the function, when the installed aiomysql's
differs, and ``pyproject.toml`` pins aiomysql to the range checked.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Hashable, Mapping
from ssl import SSLContext
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

import aiomysql
import aiomysql.connection
import aiomysql.cursors
from pymysql.constants import COMMAND
from pymysql.protocol import EOFPacketWrapper, OKPacketWrapper

from .._forksafe import abandon
from .._pymysql import tls_of
from ..errors import OperationalError, ProgrammingError

__all__ = [
    "AIOMYSQL_TESTED",
    "CHECKED",
    "AiomysqlConnection",
    "Result",
    "aiomysql_query",
    "build_tls",
    "connect_args",
    "tls_cached",
]

#: The aiomysql release whose sources :data:`CHECKED` hashes.
AIOMYSQL_TESTED: Final = "0.3.2"

#: ``"Class.method"`` of ``aiomysql.connection`` -> ``sqlrouter._pymysql.source_hash``
#: of its source in :data:`AIOMYSQL_TESTED`, for every function sqlrouter overrides (o),
#: copies (c) or calls although it is private (p).
CHECKED: Final[Mapping[str, str]] = MappingProxyType(
    {
        # o: the statement path; calls this one (aiomysql_query)
        "Connection.query": "132961ac97334eadef8f4acd2d121060",
        "Connection.begin": "e42787753c0f9dedd2a6ad99652f75b5",
        # o: each next result's GTID learnt (guarded)
        "Connection.next_result": "4be4ed2920bb1050374407db985982c6",
        # c: commit_ok() sends COMMIT as aiomysql's commit() does, keeping the OK packet
        "Connection.commit": "b8172d17066f20ef3ee881d94a8df895",
        "Connection.rollback": "5277b90fa1567fb19f067b1f7ee7c769",
        "Connection.ping": "bc91c30a339f7418d217e03a14c618a2",
        "Connection.close": "11d3590a84afcb7a9e2bcf1a1d18bda0",
        "Connection.ensure_closed": "724ad8f8dda860386057b7c6412e9d52",
        "Connection.autocommit": "fff5d2c36e6cc6ad03684dea93659dae",
        "Connection.select_db": "b717a92701199921fb0d0040458d5df8",
        # p: opens the socket on the host and port the router chose (_host, _port)
        "Connection._connect": "620ec9f8e9fa568d27335124474352d5",
        "Connection.__init__": "392740c7e75f23ab891f198ff56a713a",
        # c: copied in AiomysqlConnection._read_query_result, with Result
        "Connection._read_query_result": "169e96fd13f2ed610d559bd7fc72dbbe",
        # p: called, or their state (_writer, _reader, _result, _close_reason) used
        "Connection._execute_command": "aed9c70a8d28d69930cc91d57cc8211d",
        "Connection._read_packet": "e062bdc2e56fcde947602c13e0deb9db",
        "Connection._close_on_cancel": "d15e0c2dc7ef6477c893c97510d1b6bf",
        "Connection._ensure_alive": "4fd2c29ba50ccd3b212206ed18861ff4",
        # c: copied in Result, keeping the EOF packet's server status
        "MySQLResult._check_packet_is_eof": "fa2a50a157caf2710066be83d968cf83",
        # o: Result tells its connection when an unbuffered result ends
        "MySQLResult._read_rowdata_packet_unbuffered": "0fc398fa50bf9d988564e95489264863",
        "MySQLResult._finish_unbuffered_query": "24839d86c43a21d901bab3520b9f2766",
        # p: called by the copy of _read_query_result
        "MySQLResult.init_unbuffered_query": "5e5c831b4e9a3862e5922aaa3a374482",
        "MySQLResult.read": "8fbfd5b68695faee8acda8ebc49bc356",
    }
)

#: aiomysql's own ``query()``: the statement path calls it directly (no ``super()``).
aiomysql_query: Callable[..., Awaitable[int]] = aiomysql.connection.Connection.query

#: PyMySQL ``connect()`` options that aiomysql takes under the same name.
_SAME: Final = frozenset(
    {
        "autocommit",
        "local_infile",
        "use_unicode",
        "client_flag",
        "charset",
        "sql_mode",
        "init_command",
        "program_name",
        "server_public_key",
        "cursorclass",
        "conv",
    }
)
#: PyMySQL options that aiomysql has no equivalent for.
_UNSUPPORTED: Final = frozenset(
    {"binary_prefix", "collation", "max_allowed_packet", "bind_address", "auth_plugin_map"}
)


def connect_args(service: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``aiomysql.Connection`` for a service URL's ``connect_args`` (PyMySQL's
    options), but TLS's (:func:`tls_cached`, :func:`build_tls`).

    Options aiomysql has no equivalent for raise :class:`sqlrouter.ProgrammingError`,
    naming them.
    """
    unsupported = sorted(_UNSUPPORTED & set(options))
    if unsupported:
        raise ProgrammingError(
            f"service {service!r}: sqlrouter.aio (aiomysql) has no equivalent of the "
            f"connect option(s) {', '.join(unsupported)}; it takes "
            f"{', '.join(sorted(_SAME))} and the ssl options"
        )
    cursorclass = options.get("cursorclass")
    if cursorclass is not None and not (
        isinstance(cursorclass, type) and issubclass(cursorclass, aiomysql.cursors.Cursor)
    ):
        raise ProgrammingError(
            f"service {service!r}: cursorclass {cursorclass!r} is not an aiomysql cursor "
            "class (sqlrouter.aio.Cursor, DictCursor, SSCursor or SSDictCursor)"
        )
    return {k: v for k, v in options.items() if k in _SAME}


#: The TLS set-up of each set of ssl options seen (:func:`build_tls`), by :func:`_tls_key`.
_TLS: dict[Hashable, tuple[SSLContext | None, bool]] = {}
_TLS_LOCK = threading.Lock()
#: At most this many sets of ssl options are remembered.
_TLS_KEPT = 64


def _frozen(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    hash(value)  # TypeError: not remembered
    return cast(Hashable, value)


def _tls_key(options: Mapping[str, Any]) -> Hashable | None:
    """The ssl options of ``options``, frozen; ``None`` when one cannot be (not cached)."""
    try:
        return _frozen({k: v for k, v in options.items() if k == "ssl" or k.startswith("ssl_")})
    except TypeError:
        return None


def tls_cached(options: Mapping[str, Any]) -> tuple[SSLContext | None, bool] | None:
    """The TLS set-up of ``options`` if built before (a dictionary look-up, for the event
    loop); ``None``: call :func:`build_tls`, in a thread."""
    key = _tls_key(options)
    return None if key is None else _TLS.get(key)


def build_tls(options: Mapping[str, Any]) -> tuple[SSLContext | None, bool]:
    """The SSL context PyMySQL builds from ``options`` (``ssl``, ``ssl_ca``...) and whether
    TLS is required (:func:`sqlrouter._pymysql.tls_of`), built once per set of options:
    it reads certificate files and the system's trust store, so it runs in a thread."""
    key = _tls_key(options)
    if key is None:
        return tls_of(options)
    with _TLS_LOCK:  # many connects at once: one builds, the others find it
        found = _TLS.get(key)
        if found is None:
            found = tls_of(options)
            if len(_TLS) >= _TLS_KEPT:
                _TLS.clear()
            _TLS[key] = found
    return found


def raw_socket(transport: Any) -> socket.socket | None:
    """The socket under an asyncio transport (a plain or a TLS one), if it shows it."""
    sock = getattr(transport, "_sock", None)
    if sock is None:  # TLS: the transport of the SSL protocol
        inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        sock = getattr(inner, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


if TYPE_CHECKING:
    _Base = Any
    _ResultBase = Any
else:
    _Base = aiomysql.connection.Connection
    _ResultBase = aiomysql.connection.MySQLResult


class AiomysqlConnection(_Base):  # type: ignore[misc]  # aiomysql is untyped
    """aiomysql's connection, with the internals sqlrouter uses declared and wrapped."""

    if TYPE_CHECKING:  # aiomysql internals (it has no type information)
        server_status: int
        server_thread_id: tuple[int, ...]
        connect_timeout: float | None
        _result: Any
        _writer: Any
        _reader: Any
        _host: str
        _port: int
        _secure: bool
        _close_reason: str | None

    async def _unbuffered_done(self, result: Result) -> None:
        """An unbuffered result read its final EOF packet (see :class:`Result`)."""

    async def _read_query_result(self, unbuffered: bool = False) -> None:
        # aiomysql's, with a result that keeps the final EOF packet's server status.
        self._result = None
        result = Result(self)
        if unbuffered:
            try:
                await result.init_unbuffered_query()
            except BaseException:
                result.unbuffered_active = False
                result.connection = None
                raise
        else:
            await result.read()
        self._result = result
        self._affected_rows = result.affected_rows
        if result.server_status is not None:
            self.server_status = result.server_status

    async def _commit_ok(self) -> OKPacketWrapper:
        """``COMMIT`` as aiomysql's ``commit()`` sends it; its OK packet (the GTID)."""
        await self._execute_command(COMMAND.COM_QUERY, "COMMIT")
        packet = await self._read_packet()
        if not packet.is_ok_packet():
            raise OperationalError(2014, "Command Out of Sync")
        ok = OKPacketWrapper(packet)
        self.server_status = ok.server_status
        return ok

    async def _first_value_aside(self, sql: str) -> Any:
        """Run ``sql`` with aiomysql's query, keeping the caller's result and affected
        rows as they were; the first column of its first row, ``None`` if none."""
        result, affected = self._result, self._affected_rows
        try:
            await aiomysql_query(self, sql)
            rows = self._result.rows if self._result is not None else None
        finally:
            self._result, self._affected_rows = result, affected
        return rows[0][0] if rows else None

    async def _stream_cancelled(self, why: str) -> None:
        """A task was cancelled while it read a streamed result's rows (see
        :class:`Result`): the connection stops it (``sqlrouter.aio.Connection``)."""

    def _drop_stream(self, why: str) -> None:
        """The socket is closed under a streamed result: reading its rest raises ``why``
        (:class:`_Gone`); closing its cursor ends it quietly."""
        result, self._result = self._result, None
        if result is not None and result.unbuffered_active:
            result.connection = _Gone(why)

    def _abandon_after_fork(self, why: str) -> None:
        """In a forked child: make this connection (the parent's, as this process sees
        it) unusable, without a word to the server and without touching the parent's
        event loop (see :func:`sqlrouter._forksafe.abandon`); only this process's copy
        of the socket's descriptor is closed."""
        writer, reader, result = self._writer, self._reader, self._result
        self._writer = self._reader = None
        self._drop_stream(why)
        self._close_reason = why
        transport = writer.transport if writer is not None else None
        # Its TLS context too, never freed in the child (see sqlrouter._forksafe): not
        # this object, which a reconnect in the child makes a connection of its own.
        context = getattr(self, "_ssl_context", None)
        abandon(raw_socket(transport), transport, writer, reader, result, context)

    @property
    def thread_id_or_none(self) -> int | None:
        """The server's id of this connection's thread (``None``: never connected)."""
        ids = getattr(self, "server_thread_id", None)
        return int(ids[0]) if ids else None


class _Gone:
    """Stands for the connection of a streamed result whose socket sqlrouter closed (a
    cancelled task, ``fork()``): reading the rest of its rows raises a clear error instead
    of failing on a socket that is gone (as ``sqlrouter._pymysql._Gone``)."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def _read_packet(self, *args: object, **kwargs: object) -> Any:
        raise OperationalError(
            2013, f"the rest of this result is lost: {self.why}; run the statement again"
        )


class Result(_ResultBase):  # type: ignore[misc]  # aiomysql is untyped
    """aiomysql's query result, keeping the server status of a result set's final EOF
    packet, which aiomysql drops (it tells whether a statement that returned rows also
    wrote), and telling its connection when an unbuffered result ends."""

    if TYPE_CHECKING:  # aiomysql internals (it has no type information)
        connection: Any
        unbuffered_active: bool

    def _check_packet_is_eof(self, packet: Any) -> bool:
        if not packet.is_eof_packet():
            return False
        wp = EOFPacketWrapper(packet)
        self.warning_count = wp.warning_count
        self.has_next = wp.has_next
        self.server_status = wp.server_status
        return True

    async def _read_rowdata_packet_unbuffered(self) -> Any:
        conn = self.connection
        try:
            row = await super()._read_rowdata_packet_unbuffered()
        except asyncio.CancelledError:
            if isinstance(conn, AiomysqlConnection):
                await conn._stream_cancelled("cancelled while reading a streamed result")
            raise
        if row is None and conn is not None and not self.unbuffered_active:
            await conn._unbuffered_done(self)
        return row

    async def _finish_unbuffered_query(self) -> None:
        conn, active = self.connection, self.unbuffered_active
        if isinstance(conn, _Gone):  # its socket is closed: nothing more to read
            self.unbuffered_active = False
            self.connection = None
            return
        try:
            await super()._finish_unbuffered_query()
        except asyncio.CancelledError:
            if isinstance(conn, AiomysqlConnection):
                await conn._stream_cancelled("cancelled while reading a streamed result")
            raise
        if active and conn is not None and not self.unbuffered_active:
            await conn._unbuffered_done(self)
