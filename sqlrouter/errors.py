"""The PEP 249 exception hierarchy of sqlrouter.

sqlrouter raises PyMySQL's own exception classes, so ``except pymysql.err.IntegrityError``
and ``except sqlrouter.IntegrityError`` catch the same duplicate key, with the server's
errno preserved.  Routing failures are subclasses of those classes and keep the
``(errno, message)`` argument shape that SQLAlchemy and Django inspect.
"""

from __future__ import annotations

from pymysql.err import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    MySQLError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)

__all__ = [
    "AUTH_ERRNOS",
    "ER_CONNECTION_INVALIDATED",
    "ER_NO_MASTER",
    "ER_NO_REPLICA",
    "PRIVILEGE_ERRNOS",
    "ConnectionInvalidated",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "MySQLError",
    "NoMasterAvailable",
    "NoReplicaAvailable",
    "NotSupportedError",
    "OperationalError",
    "OutcomeUnknown",
    "ProgrammingError",
    "RoutingError",
    "Warning",
]

# Client-side error numbers.  MySQL's client errors live in 2000-2999 (CR_*); these
# numbers are ours, picked outside the ranges used by the MySQL and MariaDB servers
# and clients, so that code can tell a routing failure from a server error.
ER_NO_MASTER = 3900
ER_NO_REPLICA = 3901
ER_CONNECTION_INVALIDATED = 3902

#: The server's errors for a refused login: access denied (1044, 1045, 1698), host not
#: allowed (1130), password expired (1862).  Retrying another server or later does not
#: fix them, so sqlrouter reports them at once.
AUTH_ERRNOS = frozenset({1044, 1045, 1130, 1698, 1862})
#: A statement needs a privilege the account lacks (1227: SUPER or SLAVE MONITOR...).
PRIVILEGE_ERRNOS = frozenset({1227})


class RoutingError(OperationalError):
    """No datasource of the service qualified for the request.

    ``args`` is ``(errno, message)``; the message names the service and every
    candidate with the reason it was rejected.
    """

    __module__ = "sqlrouter"

    def __init__(self, errno: int, message: str, *, service: str = "") -> None:
        super().__init__(errno, message)
        self.service = service


class NoMasterAvailable(RoutingError):
    """A RW_STRICT request found no writable master within ``failover_timeout``."""

    __module__ = "sqlrouter"


class NoReplicaAvailable(RoutingError):
    """A RO_RELAXED request with ``fallback=error`` found no qualifying replica."""

    __module__ = "sqlrouter"


class ConnectionInvalidated(OperationalError):
    """The connection's datasource was demoted, taken offline or went down.

    Raised at the next use of the connection; pools treat it as a disconnect.
    """

    __module__ = "sqlrouter"


class OutcomeUnknown(OperationalError):
    """The connection died while a write or a COMMIT was in flight.

    The statement may or may not have taken effect; sqlrouter never re-sends it.
    ``args[0]`` keeps the client's errno (2013, 2006...), so pools treat the connection
    as disconnected.
    """

    __module__ = "sqlrouter"
