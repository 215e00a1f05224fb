"""Every use of PyMySQL's internals, in one place: pinned to the versions checked, guarded.

:class:`sqlrouter.Connection` *is* a PyMySQL connection (a subclass, so that cursors,
conversions and SQLAlchemy's and Django's PyMySQL support work unchanged and at
PyMySQL's cost).  What it needs beyond PyMySQL's public API is here, and only here:

- :class:`PyMySQLConnection`, the base class: it declares the internals that PyMySQL's
  type stubs leave out (``_sock``, ``_result``, ``server_status``...), copies
  ``_read_query_result`` to make results of class :class:`Result`, and wraps the
  manipulations of private state (a connect and a query bounded in time, a query
  that keeps the caller's result, COMMIT with its OK packet, the TLS context);
- :class:`Result`, PyMySQL's ``MySQLResult`` keeping the server status of a result
  set's final EOF packet (which PyMySQL drops), and telling its connection when an
  unbuffered result ends;
- :func:`preferred_ssl_context` (PyMySQL's ``_create_ssl_ctx``, called once),
  :data:`pymysql_query` (PyMySQL's own ``query``, called without ``super()``) and
  :func:`abandon_after_fork` (a parent's connection, in a forked child),
  :func:`finish_pending` and :func:`drop_result` (a streamed result, before a socket is
  closed or replaced).

:data:`CHECKED` records, for each PyMySQL function overridden, copied or called
although private, the SHA-256 of its source in :data:`PYMYSQL_TESTED`;
``tests/unit/test_pymysql.py`` fails, naming the function, when the installed PyMySQL's
differs, and ``pyproject.toml`` pins PyMySQL to the range checked.  A new PyMySQL is
adopted by reading each named function's change, adapting this module, and recording
the new hashes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import warnings
from collections.abc import Mapping
from ssl import SSLContext
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

import pymysql
import pymysql.connections
import pymysql.cursors
from pymysql.connections import MySQLResult
from pymysql.constants import COMMAND
from pymysql.protocol import EOFPacketWrapper

from ._forksafe import abandon

if TYPE_CHECKING:
    from pymysql.protocol import OKPacketWrapper

__all__ = [
    "CHECKED",
    "PYMYSQL_TESTED",
    "SSL_ENABLED",
    "PyMySQLConnection",
    "Result",
    "abandon_after_fork",
    "drop_result",
    "finish_pending",
    "preferred_ssl_context",
    "pymysql_query",
    "source_hash",
    "tls_of",
]

#: The PyMySQL release whose sources :data:`CHECKED` hashes.
PYMYSQL_TESTED: Final = "1.2.4"

#: ``"Class.method"`` of ``pymysql.connections`` -> :func:`source_hash` of its source in
#: :data:`PYMYSQL_TESTED`, for every function sqlrouter overrides (o), copies (c) or
#: calls although it is private (p).
CHECKED: Final[Mapping[str, str]] = MappingProxyType(
    {
        # o: routes before connecting; ping(reconnect=True) reconnects through it
        "Connection.connect": "4e8ee8fd5c82ab5f6ddd1c6984ff4c78",
        # o: every statement of a cursor; calls this one (pymysql_query)
        "Connection.query": "d90c65098b908f168b42ad701ba4dd16",
        "Connection.begin": "05f1f331b6a23a8ad0d1fceec38e8c1d",
        # c: commit_ok() sends COMMIT as PyMySQL's commit() does, keeping the OK packet
        "Connection.commit": "98b92b951b3f6f839dbb316df8106cf8",
        "Connection.rollback": "a78ddde6045316a37e7bee62618fe832",
        "Connection.ping": "ec9750ef9e026bbe702964c0a0148786",
        "Connection.close": "4c6144c21f9cadf7a8a16f2121f87a28",
        "Connection.next_result": "125872099ab2d52debd3f2dd71c72922",
        # o: a closed connection's error says which and why (they raise InterfaceError(0, ''))
        "Connection.autocommit": "d1cf405e6a708089e4f3e3fa316b77d0",
        "Connection.select_db": "c009c05f07e5fca28d6d48cdb7401a5e",
        "Connection.set_character_set": "6cc6ecccda42b9694faad039657a4cc4",
        "Connection.show_warnings": "5564974aeff3e5ad53909fe952b3a4be",
        # c: copied in PyMySQLConnection._read_query_result, with Result
        "Connection._read_query_result": "0158eebefe7697b6288aae15122efb6a",
        # p: called, or its private state (``_read_timeout``, ``ctx``...) set
        "Connection.__init__": "1183553d14636108392e80ba76e590b6",
        "Connection._execute_command": "1a7dc00135503901d69ec8ff10c90a52",
        "Connection._read_ok_packet": "09cfef7de98ababaee11c3efeb9b20b1",
        "Connection._force_close": "0ad9bf02d8a88d73e8a97002101c495c",
        "Connection._create_ssl_ctx": "03fb3c944adac2ba172ec686e21ce672",
        # p: set the socket's timeout from _read_timeout / _write_timeout when it changes
        # (what _connect_within relies on to bound the handshake)
        "Connection._read_packet": "befc04efe3c01b849d91f3b68278eed4",
        "Connection._write_bytes": "2daf1e2f4b586ab64ba5b435176ece91",
        # c: copied in Result, keeping the EOF packet's server status
        "MySQLResult._check_packet_is_eof": "793363274b94b4699d6646e190a46ca0",
        # o: Result tells its connection when an unbuffered result ends
        "MySQLResult._read_rowdata_packet_unbuffered": "f869d6c0e7b60ac8908a373613a68f99",
        "MySQLResult._finish_unbuffered_query": "b50aa2b5f7048a57239e4dd09c9a0c6f",
        # p: called by the copy of _read_query_result
        "MySQLResult.init_unbuffered_query": "8784e40f250b2a1210d20b38ad371171",
        "MySQLResult.read": "2e435b0016f57335d756546340b6a135",
    }
)


def source_hash(name: str, module: ModuleType = pymysql.connections) -> str:
    """The first 128 bits (hex) of the SHA-256 of ``<module>.<name>``'s source (by
    default PyMySQL's ``pymysql.connections``), as installed."""
    owner, _, attribute = name.partition(".")
    function = getattr(getattr(module, owner), attribute)
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:32]


#: PyMySQL's own ``query()``: the statement path calls it directly (no ``super()``).
pymysql_query = pymysql.connections.Connection.query

#: Whether this Python has the ``ssl`` module PyMySQL needs for TLS.
SSL_ENABLED: Final[bool] = getattr(pymysql.connections, "SSL_ENABLED", False)


@functools.cache
def preferred_ssl_context() -> SSLContext:
    """The SSL context PyMySQL builds for TLS PREFERRED (no ssl option given), once."""
    build: Any = getattr(pymysql.connections.Connection, "_create_ssl_ctx")  # noqa: B009
    context: SSLContext = build(None, {})  # it does not use its instance
    return context


def tls_of(options: Mapping[str, Any]) -> tuple[SSLContext | None, bool]:
    """The SSL context that PyMySQL's ``connect()`` builds from ``options`` (``ssl``,
    ``ssl_ca``, ``ssl_disabled``...), and whether TLS is required (an option asked for
    it) rather than preferred (none did); ``(None, False)`` when TLS is disabled.

    PyMySQL reads the options itself (a connection that is never opened), so a client
    on another protocol implementation (aiomysql) gets the same TLS from the same URL.
    """
    tls = {k: v for k, v in options.items() if k == "ssl" or k.startswith("ssl_")}
    if not tls:
        return (preferred_ssl_context() if SSL_ENABLED else None), False
    probe: Any = pymysql.connections.Connection(defer_connect=True, **tls)
    if not probe.ssl:
        return None, False
    context: SSLContext = probe.ctx
    return context, bool(probe._ssl_required)


class _Gone:
    """Stands for the connection of a result whose socket sqlrouter closed: reading the
    rest of its rows raises a clear error instead of reading another socket."""

    def __init__(self, why: str) -> None:
        self.why = why

    def _read_packet(self, *args: object, **kwargs: object) -> Any:
        raise pymysql.err.OperationalError(
            2013, f"the rest of this result is lost: {self.why}; run the statement again"
        )


def abandon_after_fork(conn: Any, why: str) -> None:
    """In a forked child: make ``conn`` (the parent's connection, as this process sees
    it) unusable, without a word to the server and without touching its buffered reader
    (see :func:`sqlrouter._forksafe.abandon`); only this process's copy of the socket's
    descriptor is closed.  A result it was streaming raises ``why`` at its next row."""
    sock = getattr(conn, "_sock", None)
    rfile = getattr(conn, "_rfile", None)
    result = getattr(conn, "_result", None)
    for attr in ("_sock", "_rfile", "_result"):
        if hasattr(conn, attr):
            setattr(conn, attr, None)
    if isinstance(result, MySQLResult) and result.unbuffered_active:
        result.connection = _Gone(  # type: ignore[assignment]  # reads raise
            why
        )
    # Its TLS context too (see _forksafe._ABANDONED), but not ``conn``: a connection the
    # child opens again (ping(reconnect=True)) and then drops must still be freed, and
    # its new socket closed, as any connection of the child's own.
    abandon(sock, rfile, result, getattr(conn, "ctx", None))


def finish_pending(conn: Any, *, warn: bool) -> None:
    """Read the rows an unbuffered result (a server-side cursor) left on ``conn``'s
    socket, as PyMySQL does before its next command (it warns "Previous unbuffered result
    was left incomplete"), so that nothing else reads them and the socket can be used or
    closed.  A result whose socket fails meanwhile raises a clear error at its next row."""
    result = conn._result
    if not isinstance(result, MySQLResult) or not result.unbuffered_active:
        return
    if warn:
        warnings.warn("Previous unbuffered result was left incomplete", stacklevel=3)
    try:
        result._finish_unbuffered_query()  # type: ignore[attr-defined]  # private
    except (pymysql.err.MySQLError, OSError):
        result.connection = _Gone(  # type: ignore[assignment]  # reads raise
            "the connection failed while its rows were read"
        )
        result.unbuffered_active = False


def drop_result(conn: Any, why: str) -> None:
    """Before ``conn`` reconnects on another socket: PyMySQL's connect keeps the last
    result, and would drain a streamed one from the new socket.  A result still
    streaming raises ``why`` at its next row."""
    result = conn._result
    conn._result = None
    if isinstance(result, MySQLResult) and result.unbuffered_active:
        result.connection = _Gone(  # type: ignore[assignment]  # reads raise
            why
        )


if TYPE_CHECKING:
    _Base = pymysql.connections.Connection[pymysql.cursors.Cursor]
else:  # generic in the type stubs only
    _Base = pymysql.connections.Connection


class _UnbufferedListener(Protocol):
    def _unbuffered_done(self, result: MySQLResult) -> None: ...


class PyMySQLConnection(_Base):
    """PyMySQL's connection, with the internals sqlrouter uses declared and wrapped."""

    if TYPE_CHECKING:  # PyMySQL internals that its type stubs leave out
        server_status: int
        _result: MySQLResult | None
        _affected_rows: int
        _read_timeout: float | None
        _write_timeout: float | None
        _sock: object
        ssl: bool
        _ssl_required: bool
        ctx: SSLContext

        def _execute_command(self, command: int, sql: str | bytes) -> None: ...
        def _read_ok_packet(self) -> OKPacketWrapper: ...
        def _force_close(self) -> None: ...

    def _unbuffered_done(self, result: MySQLResult) -> None:
        """An unbuffered result read its final EOF packet (see :class:`Result`)."""

    def _read_query_result(self, unbuffered: bool = False) -> int:
        # PyMySQL's, with a result that keeps the final EOF packet's server status.
        self._result = None
        result = Result(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows  # type: ignore[return-value]  # None as in PyMySQL

    def _prefer_tls(self) -> None:
        """TLS PREFERRED (PyMySQL's default) with the context built once per process,
        on a connection made with ``ssl_disabled=True``."""
        self.ssl = True
        self._ssl_required = False
        self.ctx = preferred_ssl_context()

    def _connect_within(self, timeout: float) -> None:
        """PyMySQL's connect, with the TCP connect and the handshake bounded by ``timeout``.

        PyMySQL reads the handshake with ``read_timeout`` (None: forever), so a frozen
        server that still accepts TCP connections would hang the connect.  Its writes get
        the same bound: PyMySQL sets the socket's timeout again whenever the one it needs
        changes (a system call each way), so one timeout for both saves that at every
        round trip of the handshake.
        """
        read_timeout = self._read_timeout
        write_timeout = self._write_timeout
        connect_timeout = self.connect_timeout
        self.connect_timeout = timeout
        self._read_timeout = timeout if read_timeout is None else min(timeout, read_timeout)
        self._write_timeout = self._read_timeout
        try:
            pymysql.connections.Connection.connect(self)
        finally:
            # PyMySQL re-applies its timeouts to the socket at the next read or write.
            self._read_timeout = read_timeout
            self._write_timeout = write_timeout
            self.connect_timeout = connect_timeout

    def _first_value_within(self, sql: str, seconds: float) -> Any:
        """Run ``sql`` with PyMySQL's query, reads bounded by ``seconds`` (and by
        ``read_timeout``); the first column of its first row, ``None`` if none."""
        read_timeout = self._read_timeout
        self._read_timeout = seconds if read_timeout is None else min(read_timeout, seconds)
        try:
            pymysql_query(self, sql)
        finally:
            self._read_timeout = read_timeout
        rows = self._result.rows if self._result is not None else None
        return rows[0][0] if rows else None

    def _first_value_aside(self, sql: str) -> Any:
        """Run ``sql`` with PyMySQL's query, keeping the caller's result and affected
        rows as they were; the first column of its first row, ``None`` if none."""
        result, affected = self._result, self._affected_rows
        try:
            pymysql_query(self, sql)
            rows = self._result.rows if self._result is not None else None
        finally:
            self._result, self._affected_rows = result, affected
        return rows[0][0] if rows else None

    def _commit_ok(self) -> OKPacketWrapper:
        """``COMMIT`` as PyMySQL's ``commit()`` sends it; its OK packet (the GTID)."""
        self._execute_command(COMMAND.COM_QUERY, "COMMIT")
        return self._read_ok_packet()


class Result(MySQLResult):
    """PyMySQL's query result, keeping the server status of a result set's final EOF
    packet, which PyMySQL drops.  It tells whether a transaction is open after a
    SELECT, and whether a statement that returned rows also wrote.

    An unbuffered result (server-side cursor) tells its connection when its final EOF
    packet arrives (``_unbuffered_done``): only then may anything else be sent on the
    socket.
    """

    connection: _UnbufferedListener | None  # type: ignore[assignment]

    def _check_packet_is_eof(self, packet: Any) -> bool:
        if not packet.is_eof_packet():
            return False
        wp = EOFPacketWrapper(packet)
        self.warning_count = wp.warning_count
        self.has_next = wp.has_next
        self.server_status = wp.server_status
        return True

    def _read_rowdata_packet_unbuffered(self) -> Any:
        conn = self.connection
        row = super()._read_rowdata_packet_unbuffered()  # type: ignore[misc]  # not in the stubs
        if row is None and conn is not None and not self.unbuffered_active:
            conn._unbuffered_done(self)
        return row

    def _finish_unbuffered_query(self) -> None:
        conn, active = self.connection, self.unbuffered_active
        super()._finish_unbuffered_query()  # type: ignore[misc]  # not in the stubs
        if active and conn is not None and not self.unbuffered_active:
            conn._unbuffered_done(self)
