"""sqlrouter: a DB-API 2.0 SQL routing driver for replicated MySQL/MariaDB clusters.

``sqlrouter.connect("sqlrouter://user:pw@SERVICE/DB?qos=RO_RELAXED")`` routes to the
observed master (``RW_STRICT``) or to a replica within ``max_lag`` (``RO_RELAXED``),
on top of PyMySQL.
"""

from __future__ import annotations

from pymysql import (
    BINARY,
    DATE,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    TIME,
    TIMESTAMP,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    constants,
    converters,
    cursors,
)

from ._runtime import shutdown
from .connection import Connection, connect
from .consistency import Session, session
from .errors import (
    ConnectionInvalidated,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    MySQLError,
    NoMasterAvailable,
    NoReplicaAvailable,
    NotSupportedError,
    OperationalError,
    OutcomeUnknown,
    ProgrammingError,
    RoutingError,
    Warning,
)
from .gtid import CausalToken
from .qos import Fallback, QoS
from .registry.base import RegistryError, RegistryNotSupported, ServiceNotFound
from .url import ServiceURL, parse_url

#: PEP 249 module globals.
apilevel = "2.0"
#: Threads may share the module, but not connections.
threadsafety = 1
paramstyle = "pyformat"

__version__ = "0.1.0"

__all__ = [
    # PEP 249
    "BINARY",
    "DATE",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "TIME",
    "TIMESTAMP",
    "Binary",
    # sqlrouter
    "CausalToken",
    "Connection",
    "ConnectionInvalidated",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "Fallback",
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
    "QoS",
    "RegistryError",
    "RegistryNotSupported",
    "RoutingError",
    "ServiceNotFound",
    "ServiceURL",
    "Session",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Warning",
    "apilevel",
    "connect",
    "constants",
    "converters",
    "cursors",
    "paramstyle",
    "parse_url",
    "session",
    "shutdown",
    "threadsafety",
]
