"""sqlrouter for asyncio: ``conn = await sqlrouter.aio.connect(url)``.

The same service URLs, parameters, routing guarantees, errors and error numbers as
:func:`sqlrouter.connect`, on aiomysql (aio-libs' asyncio client, built on PyMySQL's
protocol, converter and error modules), with one routing core shared with the
synchronous driver: one monitor per service and process, one router, one registry, one
causal token per :func:`sqlrouter.session` (a ``contextvars`` variable: a task shares
the session of the code that created it).  Nothing blocks the event loop; a cancelled
task leaves no connection half-used and no statement running on a server.  See
``docs/asyncio.md``.

Install it with the ``aio`` extra: ``pip install 'sqlrouter[aio]'``.
"""

from __future__ import annotations

try:
    from aiomysql import Cursor, DictCursor, SSCursor, SSDictCursor
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "sqlrouter.aio needs aiomysql: install sqlrouter with the aio extra "
        "(pip install 'sqlrouter[aio]')"
    ) from exc

from ..consistency import Session, current_session, session
from ..errors import (
    ConnectionInvalidated,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NoMasterAvailable,
    NoReplicaAvailable,
    NotSupportedError,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
    RoutingError,
    Warning,
)
from .connection import Connection, connect

__all__ = [  # noqa: RUF022  (grouped by purpose, as in sqlrouter/__init__.py)
    # connecting
    "Connection",
    "connect",
    # cursors (aiomysql's)
    "Cursor",
    "DictCursor",
    "SSCursor",
    "SSDictCursor",
    # session consistency (shared with the synchronous driver)
    "Session",
    "current_session",
    "session",
    # errors (PyMySQL's, extended: the same as sqlrouter's)
    "ConnectionInvalidated",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NoMasterAvailable",
    "NoReplicaAvailable",
    "NotSupportedError",
    "OperationalError",
    "OutcomeUnknown",
    "ProgrammingError",
    "RoutingError",
    "Warning",
]
