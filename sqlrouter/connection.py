"""DB-API connections that route: ``connect(service URL)`` down to PyMySQL.

:class:`Connection` *is* a PyMySQL connection (a subclass), so cursors, cursor
classes (``DictCursor``, ``SSCursor``), conversions, errors and everything that
SQLAlchemy's and Django's PyMySQL support expect work unchanged and cost nothing
extra: execute and fetch run PyMySQL's own code.  What sqlrouter adds happens when the
connection is opened: :meth:`Connection.connect` asks the router which datasource to
use, then opens the socket there.  Reconnecting (``ping(reconnect=True)``) routes
again, so a reconnected RW_STRICT connection follows the master.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pymysql
import pymysql.connections
import pymysql.cursors

from ._services import ServiceHandle, handle_for
from .errors import NoMasterAvailable, OperationalError, RoutingError
from .health import Snapshot
from .qos import QoS
from .router import Decision, Policy, choose
from .topology import Credentials, DataSource
from .url import ServiceURL, parse_url

__all__ = ["Connection", "connect"]

logger = logging.getLogger("sqlrouter.connection")

#: How often a RW_STRICT connect re-reads the snapshot while waiting for a master.
_FAILOVER_POLL = 0.05


if TYPE_CHECKING:
    _PyMySQLConnection = pymysql.connections.Connection[pymysql.cursors.Cursor]
else:  # generic in the type stubs only
    _PyMySQLConnection = pymysql.connections.Connection


class Connection(_PyMySQLConnection):
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
        self._read_timeout: float | None = url.read_timeout
        self.datasource = None
        self.decision = None
        args: dict[str, Any] = dict(url.connect_args)
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

    def _policy(self, snapshot: Snapshot, exclude: frozenset[str]) -> Policy:
        url = self._url
        max_lag = url.max_lag if url.max_lag is not None else snapshot.service.max_lag
        return Policy(qos=url.qos, max_lag=max_lag, fallback=url.fallback, exclude=exclude)

    def connect(self, sock: Any = None) -> None:
        """Route, then open the connection on the chosen datasource.

        RW_STRICT waits up to ``failover_timeout`` for a writable master.  RO_RELAXED
        moves to the next qualifying datasource (then the master, with
        ``fallback=master``) when one does not answer: each attempt is bounded by what
        is left of ``connect_timeout``, and by at least ``min(1, connect_timeout)``
        seconds, so one frozen server costs at most ``connect_timeout + 1`` seconds.
        """
        if sock is not None:  # a caller-provided socket: no routing possible
            super().connect(sock)
            return
        handle = self._handle
        url = self._url
        start = time.monotonic()
        master_deadline = start + url.failover_timeout
        deadline = start + url.connect_timeout
        grace = min(1.0, url.connect_timeout)
        exclude: frozenset[str] = frozenset()
        failures: list[str] = []
        while True:
            snapshot = handle.snapshot()
            policy = self._policy(snapshot, exclude)
            try:
                decision = choose(snapshot, policy, turn=handle.next_turn())
            except NoMasterAvailable as exc:
                if time.monotonic() < master_deadline:
                    time.sleep(_FAILOVER_POLL)
                    continue
                raise _with_failures(exc, failures) from None
            except RoutingError as exc:
                raise _with_failures(exc, failures) from None
            ds = decision.datasource
            now = time.monotonic()
            if failures and now >= max(deadline, master_deadline) + grace:
                raise OperationalError(
                    2003,
                    f"service {url.service!r}: no connection within connect_timeout "
                    f"{url.connect_timeout:g}s: {'; '.join(failures)}",
                )
            logger.debug(
                "service %r qos=%s: connecting to %s: %s",
                url.service,
                url.qos.value,
                ds,
                decision.reason,
            )
            self.host, self.port = ds.host, ds.port
            try:
                self._connect_bounded(max(deadline - now, grace))
            except pymysql.err.OperationalError as exc:
                failures.append(f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}")
                logger.debug("service %r: connection to %s failed: %s", url.service, ds, exc)
                if url.qos is QoS.RW_STRICT:
                    if time.monotonic() >= master_deadline:
                        raise OperationalError(
                            exc.args[0],
                            f"service {url.service!r}: cannot connect to the master "
                            f"{ds.name} ({ds.host}:{ds.port}): {exc.args[-1]}",
                        ) from exc
                    time.sleep(_FAILOVER_POLL)
                else:
                    exclude = exclude | {ds.name}
                continue
            self.datasource = ds
            self.decision = decision
            return

    def _connect_bounded(self, timeout: float) -> None:
        """PyMySQL's connect, with the TCP connect and the handshake bounded by ``timeout``.

        PyMySQL reads the handshake with ``read_timeout`` (None: forever), so a frozen
        server that still accepts TCP connections would hang the connect.
        """
        read_timeout: float | None = self._read_timeout
        connect_timeout = self.connect_timeout
        self.connect_timeout = timeout
        self._read_timeout = timeout if read_timeout is None else min(timeout, read_timeout)
        try:
            super().connect()
        finally:
            # PyMySQL re-applies _read_timeout to the socket at the next read.
            self._read_timeout = read_timeout
            self.connect_timeout = connect_timeout


def _with_failures(exc: RoutingError, failures: list[str]) -> RoutingError:
    """``exc`` with the failed connection attempts of this connect added to its message."""
    if not failures:
        return exc
    return type(exc)(
        exc.args[0],
        f"{exc.args[1]}; connection attempts failed: {'; '.join(failures)}",
        service=exc.service,
    )


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
    parsed = parse_url(url, **kwargs)
    creds = Credentials(parsed.user or "", parsed.password or "")
    handle = handle_for(parsed.registry, parsed.service, creds)
    return Connection(parsed, handle)
