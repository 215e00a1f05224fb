"""The Django database backend ``ENGINE: "sqlrouter.contrib.django"``.

Django's MySQL backend, connecting through :func:`sqlrouter.connect` (PyMySQL
underneath: mysqlclient is not needed).  Each alias is a service and a quality of
service, given as a service URL or as the usual settings::

    DATABASES = {
        "default": {
            "ENGINE": "sqlrouter.contrib.django",
            "NAME": "shopdb",
            "USER": "app",
            "PASSWORD": "secret",
            "OPTIONS": {"service": "shop", "qos": "RW_STRICT"},
        },
        "replica": {
            "ENGINE": "sqlrouter.contrib.django",
            "OPTIONS": {"url": "sqlrouter://app:secret@shop/shopdb?qos=RO_RELAXED&max_lag=2"},
            "TEST": {"MIRROR": "default"},
        },
    }

What differs from Django's MySQL backend:

- ``HOST``/``PORT`` must be empty (the registry gives each server's address); every
  ``OPTIONS`` key but ``isolation_level`` is a :func:`sqlrouter.parse_url` keyword,
  checked when the alias is first used (:class:`ImproperlyConfigured` otherwise).
- Session consistency: every connection of a thread shares one causal token with the
  other aliases' connections; inside ``with sqlrouter.session(...)`` (which the
  middleware opens around each request) it is that session's token, also for a
  persistent connection (``CONN_MAX_AGE``) opened during an earlier request.
- A connection that sqlrouter invalidated (its server was demoted, went down or was
  taken offline), that a routing error hit, or that a server refused a write to
  because it is read-only (a master demoted behind its back) is replaced: at the next
  use outside a transaction, and at the end of the request at the latest.
- ``is_usable()`` pings without reconnecting (a PyMySQL reconnect would route again
  and lose the session state Django set up).
- No ``INSERT ... RETURNING``: a statement returning rows cannot report the GTID of its
  write in its last packet, so sqlrouter asks for it (one more round trip); Django
  reads ``cursor.lastrowid`` instead, which costs nothing (see :class:`DatabaseFeatures`).
- ``init_connection_state()`` sends its ``SET`` statements one by one: PyMySQL, unlike
  mysqlclient, does not enable multiple statements per query, and sqlrouter leaves it so.
- Test databases are created through the RW_STRICT alias only (a RO_RELAXED alias must
  be a ``TEST: {"MIRROR": ...}``); ``dbshell`` opens the ``mysql`` client on the
  server the router chooses for the alias.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, NotSupportedError
from django.db.backends import utils as backend_utils
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import DEFAULT_DB_ALIAS, DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property
from pymysql.constants import CLIENT, FIELD_TYPE
from pymysql.converters import conversions

import sqlrouter
from sqlrouter.consistency import Session, current_session
from sqlrouter.errors import ER_CONNECTION_INVALIDATED, ER_NO_MASTER, ER_NO_REPLICA
from sqlrouter.qos import QoS

from ._config import is_sqlrouter, service_url
from ._mysql import MySQLDatabaseClient, MySQLDatabaseCreation, MySQLDatabaseFeatures, mysql_base

__all__ = ["DatabaseClient", "DatabaseCreation", "DatabaseFeatures", "DatabaseWrapper"]

logger = logging.getLogger("sqlrouter.contrib.django")

#: PyMySQL's conversions, with TIME columns as :class:`datetime.time` (as Django's
#: MySQL backend does for mysqlclient).
django_conversions: Final[dict[Any, Any]] = {
    **conversions,
    FIELD_TYPE.TIME: backend_utils.typecast_time,
}

#: Errors after which the connection must not serve another statement: sqlrouter's
#: invalidation and routing errors, and a server refusing a write because it is
#: read-only (``--read-only``: 1290; MySQL's ``read_only`` mode: 1836), which is what
#: a connection to a demoted master gets.
_REPLACE_ERRNOS: Final = frozenset(
    {ER_CONNECTION_INVALIDATED, ER_NO_MASTER, ER_NO_REPLICA, 1290, 1836}
)


class _ThreadSession(threading.local):
    """The session Django's connections of a thread share outside ``sqlrouter.session``.

    Django keeps one connection per alias per thread, so a thread is what ties the
    connections that one piece of code uses together (a management command, a task):
    its writes through the RW alias are then seen by its reads through the RO alias.
    Inside a request, the middleware's session (a contextvar) takes precedence.
    """

    def __init__(self) -> None:
        self.session = Session()


_thread = _ThreadSession()


def _session_now() -> Session:
    return current_session() or _thread.session


def _must_replace(exc: BaseException) -> bool:
    if isinstance(exc, sqlrouter.ConnectionInvalidated | sqlrouter.RoutingError):
        return True
    return isinstance(exc, sqlrouter.Error) and bool(exc.args) and exc.args[0] in _REPLACE_ERRNOS


class _ErrorWrapper(DatabaseErrorWrapper):
    """Django's error translation, noting errors that condemn the connection."""

    wrapper: DatabaseWrapper  # set by Django's __init__

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_value is not None and _must_replace(exc_value):
            self.wrapper.condemn(exc_value)
        super().__exit__(exc_type, exc_value, traceback)


class CursorWrapper(mysql_base.CursorWrapper):
    """Django's MySQL cursor wrapper, catching sqlrouter's (PyMySQL's) errors."""

    def execute(self, query: Any, args: Any = None) -> Any:
        try:
            return self.cursor.execute(query, args)
        except sqlrouter.OperationalError as e:
            if e.args and e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*e.args) from e
            raise

    def executemany(self, query: Any, args: Any) -> Any:
        try:
            return self.cursor.executemany(query, args)
        except sqlrouter.OperationalError as e:
            if e.args and e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*e.args) from e
            raise


class DatabaseFeatures(MySQLDatabaseFeatures):
    """Django's MySQL features, without ``INSERT ... RETURNING`` (MariaDB >= 10.5).

    sqlrouter learns the GTID of a write from the OK packet that ends the statement; a
    statement that returns rows ends with an EOF packet, which carries no session
    state, so sqlrouter runs ``SELECT @@last_gtid`` after it: one more round trip per
    insert.  Without RETURNING, Django reads the new primary key from
    ``cursor.lastrowid``, as on MySQL, for free.  (``bulk_create()`` then does not set
    primary keys, as on MySQL.)
    """

    can_return_columns_from_insert = False
    can_return_rows_from_bulk_insert = False


class DatabaseCreation(MySQLDatabaseCreation):
    """Test databases: created on the master, through the RW_STRICT alias only."""

    def test_db_signature(self) -> tuple[str, str, str, str]:
        # Aliases with the same signature share one test database (Django makes the
        # others mirrors): the service identifies the cluster, where HOST/PORT would.
        wrapper = self.connection
        url = service_url(wrapper.settings_dict, wrapper.alias)
        return (
            str(wrapper.settings_dict["ENGINE"]),
            url.registry or "",
            url.service,
            self._get_test_db_name(),  # type: ignore[attr-defined]  # Django's, not in the stubs
        )

    def create_test_db(
        self,
        verbosity: int = 1,
        autoclobber: bool = False,
        serialize: bool = True,
        keepdb: bool = False,
    ) -> str:
        wrapper = self.connection
        url = service_url(wrapper.settings_dict, wrapper.alias)
        if url.qos is not QoS.RW_STRICT:
            raise ImproperlyConfigured(
                f"DATABASES[{wrapper.alias!r}] has qos={url.qos.value}: it cannot create "
                "the test database (replicas are read-only); make it a mirror of the "
                f"RW_STRICT alias: 'TEST': {{'MIRROR': 'default'}}"
            )
        return super().create_test_db(verbosity, autoclobber, serialize, keepdb)

    def clone_test_db(
        self, suffix: Any, verbosity: int = 1, autoclobber: bool = False, keepdb: bool = False
    ) -> None:
        raise NotSupportedError(
            f"DATABASES[{self.connection.alias!r}]: ENGINE 'sqlrouter.contrib.django' does "
            "not clone test databases for parallel test runs; run the tests without "
            "--parallel"
        )


class DatabaseClient(MySQLDatabaseClient):
    """``manage.py dbshell``: the ``mysql`` client, on the server the router chooses."""

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        if not is_sqlrouter(settings_dict):
            return super().settings_to_cmd_args_env(settings_dict, parameters)
        alias = next(
            (name for name, entry in settings.DATABASES.items() if entry is settings_dict),
            "?",
        )
        url = service_url(settings_dict, alias)
        with contextlib.closing(sqlrouter.connect(url)) as conn:
            ds = conn.datasource
        if ds is None:  # pragma: no cover - connect() returns open connections
            raise sqlrouter.InterfaceError(0, "the routed connection is not open")
        args = url.connect_args
        options: dict[str, Any] = {}
        if "charset" in args:
            options["charset"] = args["charset"]
        ssl = {k: args[f"ssl_{k}"] for k in ("ca", "cert", "key") if f"ssl_{k}" in args}
        if ssl:
            options["ssl"] = ssl
        routed = {
            "NAME": url.database or "",
            "USER": url.user or "",
            "PASSWORD": url.password or "",  # passed in $MYSQL_PWD, not in the arguments
            "HOST": ds.host,
            "PORT": str(ds.port),
            "OPTIONS": options,
        }
        return super().settings_to_cmd_args_env(routed, parameters)


class DatabaseWrapper(mysql_base.DatabaseWrapper):
    """Django's MySQL ``DatabaseWrapper`` on sqlrouter (see the module's docstring)."""

    Database = sqlrouter
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        self._condemned: str | None = None
        url = service_url(settings_dict, alias)  # bad settings fail here, naming the alias
        if settings_dict.get("NAME") == "" and url.database:
            # Django's tools (test database names, mirrors) read NAME.
            settings_dict["NAME"] = url.database

    def get_connection_params(self) -> dict[str, Any]:
        options = self.settings_dict.get("OPTIONS") or {}
        isolation_level = options.get("isolation_level", "read committed")
        if isolation_level:
            isolation_level = str(isolation_level).lower()
            if isolation_level not in self.isolation_levels:
                raise ImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]: invalid transaction isolation level "
                    f"{isolation_level!r}; use one of "
                    f"{', '.join(repr(s) for s in sorted(self.isolation_levels))}, or None"
                )
        self.isolation_level = isolation_level
        url = service_url(self.settings_dict, self.alias)
        args = url.connect_args
        extra: dict[str, Any] = {
            # Rows matched, not rows changed, as Django expects of UPDATE.
            "client_flag": args.get("client_flag", 0) | CLIENT.FOUND_ROWS,
        }
        if "conv" not in args:
            extra["conv"] = django_conversions
        if "charset" not in args:
            extra["charset"] = "utf8mb4"
        return {"url": url.set(**extra)}

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlrouter.Connection:
        self._condemned = None
        with sqlrouter.session(_session_now()):
            return sqlrouter.connect(conn_params["url"])

    def init_connection_state(self) -> None:
        BaseDatabaseWrapper.init_connection_state(self)
        statements = []
        if self.features.is_sql_auto_is_null_enabled:
            statements.append("SET SQL_AUTO_IS_NULL = 0")
        if self.isolation_level:
            statements.append(
                f"SET SESSION TRANSACTION ISOLATION LEVEL {self.isolation_level.upper()}"
            )
        if statements:
            with self.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)

    @async_unsafe
    def create_cursor(self, name: Any = None) -> CursorWrapper:
        conn: sqlrouter.Connection = self.connection
        if conn.session is not None:
            session = _session_now()
            if conn.session is not session:
                # A persistent connection opened in an earlier request (or outside
                # one) now serves this one: it shares this request's causal token.
                conn.use_session(session)
        return CursorWrapper(conn.cursor())

    @cached_property
    def wrap_database_errors(self) -> _ErrorWrapper:
        return _ErrorWrapper(self)

    def condemn(self, exc: BaseException) -> None:
        """Note that the current connection must be replaced (``exc`` said so)."""
        if self._condemned is None:
            logger.debug(
                "alias %r: the connection to %s will be replaced: %s",
                self.alias,
                getattr(self.connection, "datasource", None),
                exc,
            )
            self._condemned = str(exc)

    def close_if_health_check_failed(self) -> None:
        # Runs before each cursor: a condemned (or closed by sqlrouter) connection is
        # replaced at once when nothing is pending on it (autocommit, no atomic block).
        conn = self.connection
        if (
            conn is not None
            and (self._condemned is not None or not conn.open)
            and self.autocommit
            and not self.in_atomic_block
        ):
            self.close()
            return
        super().close_if_health_check_failed()

    def is_usable(self) -> bool:
        conn = self.connection
        if self._condemned is not None or conn is None or not conn.open:
            return False
        try:
            conn.ping(reconnect=False)
        except sqlrouter.Error:
            return False
        return True
