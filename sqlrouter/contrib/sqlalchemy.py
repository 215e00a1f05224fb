r"""

.. dialect:: mysql+sqlrouter
    :name: sqlrouter
    :dbapi: sqlrouter
    :connectstring: mysql+sqlrouter://<username>:<password>@<service>/<dbname>[?<options>]
    :url: docs/sqlalchemy.md

The host of the URL is a *service* (a replicated MySQL/MariaDB cluster named in
sqlrouter's registry), not a server: sqlrouter chooses the server of each new
connection, the observed writable master for ``qos=RW_STRICT`` (the default) or a
replica within ``max_lag`` seconds for ``qos=RO_RELAXED``::

    from sqlalchemy import create_engine

    writer = create_engine("mysql+sqlrouter://app:secret@shop/shopdb?qos=RW_STRICT")
    reader = create_engine(
        "mysql+sqlrouter://app:secret@shop/shopdb?qos=RO_RELAXED&max_lag=2",
        pool_pre_ping=True,
    )

The dialect is registered by the ``sqlalchemy.dialects`` entry point ``mysql.sqlrouter``
of the ``sqlrouter`` distribution (install ``sqlrouter[sqlalchemy]``); importing this
module is never needed.

Options
-------

The query string takes what a ``sqlrouter://`` URL takes, with the same names, types
and error messages: routing parameters (``qos``, ``max_lag``, ``fallback``,
``registry``, ``connect_timeout``, ``failover_timeout``, ``consistency``...) and the
PyMySQL ``connect()`` options (``charset``, ``autocommit``, ``ssl_ca``...).  A port is
rejected: the registry gives each server's host and port.  Options that are Python
objects (``cursorclass``, ``conv``, ``ssl``) go in ``create_engine(...,
connect_args={...})``, which also overrides any URL option.

Everything else is the PyMySQL dialect: :class:`sqlrouter.Connection` *is* a PyMySQL
connection, so SQL, types, reflection, server-side cursors and error translation
(``sqlalchemy.exc.IntegrityError`` for a duplicate key...) are PyMySQL's.

Disconnects and pre-ping
------------------------

sqlrouter's :class:`~sqlrouter.ConnectionInvalidated` (a connection whose server was
demoted, taken offline or went down) and :class:`~sqlrouter.RoutingError` (no server
qualified, for example during a failover) count as disconnects: the pool discards the
connection and the next checkout routes again.  ``pool_pre_ping=True`` pings without
reconnecting, so a pooled connection never moves to another server behind the pool's
back; a ping that fails discards it, and the new connection is routed.

Pools follow the cluster
------------------------

Every engine follows sqlrouter's events (``engine_created()``): when the monitor sees
the master change, a server go down or be taken offline, the pooled connections that
the event concerns are replaced at their next checkout, without an error.  A connection
checked out inside ``with sqlrouter.session():`` shares that session's causal token
until its checkin.  :mod:`sqlrouter.contrib.sqlalchemy_orm` adds an ORM session that
sends writes to a ``RW_STRICT`` engine and reads to a ``RO_RELAXED`` one.

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlencode

from pymysql.constants import CLIENT
from sqlalchemy import exc, util
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

import sqlrouter
from sqlrouter.errors import (
    ER_CONNECTION_INVALIDATED,
    ER_NO_MASTER,
    ER_NO_REPLICA,
    ConnectionInvalidated,
    RoutingError,
)

from ._sqlalchemy_pool import follow

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect, Engine
    from sqlalchemy.engine.interfaces import (
        ConnectArgsType,
        DBAPIConnection,
        DBAPICursor,
        DBAPIModule,
        PoolProxiedConnection,
    )
    from sqlalchemy.engine.url import URL

__all__ = [
    "MariaDBDialect_sqlrouter",
    "MySQLDialect_sqlrouter",
    "SqlrouterDialect",
    "dialect",
    "mariadb_dialect",
]

#: Error numbers that mean "this connection must not be used again" (see
#: :mod:`sqlrouter.errors`); matched by number too, so that an error re-raised as a
#: plain ``OperationalError(errno, message)`` still counts.
_DISCONNECT_ERRNOS: Final = frozenset({ER_CONNECTION_INVALIDATED, ER_NO_MASTER, ER_NO_REPLICA})

#: The parts of a SQLAlchemy URL outside its query, as :func:`sqlrouter.parse_url`
#: keywords.
_LOCATION: Final = ("service", "database", "user", "password")


class SqlrouterDialect(MySQLDialect_pymysql):
    """What the ``sqlrouter`` dialects add to SQLAlchemy's PyMySQL and aiomysql dialects:
    the URL read by sqlrouter's parser, sqlrouter's disconnects, pools that follow the
    cluster, pings that never reconnect.  Its subclasses say which driver connects."""

    def retrieve_dbapi_version(self, dbapi: DBAPIModule) -> util.VersionInfo:
        # The PyMySQL dialect reads pymysql.VERSION_STRING; the DB-API module here is
        # sqlrouter, which publishes __version__.
        return util.parse_version_string(sqlrouter.__version__)

    def create_connect_args(
        self, url: URL, _translate_args: dict[str, Any] | None = None
    ) -> ConnectArgsType:
        """``([], keywords for sqlrouter.connect())``, typed by sqlrouter's URL parser.

        The host is the service; the query is read exactly as the query of a
        ``sqlrouter://`` URL (so ``max_lag=1`` is the float ``1.0`` and
        ``autocommit=true`` the bool ``True``); bad input raises
        :class:`sqlalchemy.exc.ArgumentError` naming the parameter and what is accepted.
        ``_translate_args`` (the PyMySQL dialect's renaming of URL parts) is not used:
        sqlrouter's keywords are fixed.
        """
        where = f"invalid {url.drivername} URL"
        if url.port is not None:
            raise exc.ArgumentError(
                f"{where}: a port is not accepted after service "
                f"{url.host!r}: a service is a name, not host:port; the registry gives "
                "each server's host and port"
            )
        if not url.host:
            raise exc.ArgumentError(
                f"{where}: it names no service; expected {url.drivername}://"
                "[user[:password]@]SERVICE[/DATABASE][?param=value&...]"
            )
        query = "?" + urlencode(_query_pairs(url.query)) if url.query else ""
        try:
            parsed = sqlrouter.parse_url(
                "mysql+sqlrouter://" + query,
                service=url.host,
                database=url.database,
                user=url.username,
                # str(): SQLAlchemy lets the password be an object that renders it.
                password=None if url.password is None else str(url.password),
            )
        except sqlrouter.ProgrammingError as error:
            raise exc.ArgumentError(f"{where}: {error.args[-1]}") from error

        kwargs: dict[str, Any] = {}
        for name in _LOCATION:
            value = getattr(parsed, name)
            if value is not None:
                kwargs[name] = value
        for name in url.query:
            if name in parsed.connect_args:
                kwargs[name] = parsed.connect_args[name]
            else:
                kwargs[name] = getattr(parsed, name)
        # Rowcounts are rows matched, not rows changed, as SQLAlchemy's ORM expects
        # (the MySQLdb dialect looks the flag up under the DB-API module's name, which
        # here is sqlrouter, not pymysql).
        kwargs["client_flag"] = kwargs.get("client_flag", 0) | CLIENT.FOUND_ROWS
        return [], kwargs

    def is_disconnect(
        self,
        e: DBAPIModule.Error,
        connection: PoolProxiedConnection | DBAPIConnection | None,
        cursor: DBAPICursor | None,
    ) -> bool:
        if isinstance(e, ConnectionInvalidated | RoutingError):
            return True
        if (
            isinstance(e, sqlrouter.OperationalError)
            and e.args
            and self._extract_error_code(e) in _DISCONNECT_ERRNOS
        ):
            return True
        return super().is_disconnect(e, connection, cursor)

    @classmethod
    def engine_created(cls, engine: Engine) -> None:
        # Pools follow the cluster (a pooled connection that sqlrouter's events concern
        # is replaced at its next checkout), and pooled connections follow
        # sqlrouter.session(): see sqlrouter/contrib/_sqlalchemy_pool.py.
        follow(engine)

    def do_ping(self, dbapi_connection: DBAPIConnection) -> Literal[True]:
        # Never reconnect inside the pool: a reconnect routes again, and would move a
        # pooled connection to another server without the pool knowing (and lose its
        # session).  An error here goes to is_disconnect(): the pool discards the
        # connection and opens a routed one.
        dbapi_connection.ping(reconnect=False)
        return True


class MySQLDialect_sqlrouter(SqlrouterDialect):
    """The PyMySQL dialect, connecting through :func:`sqlrouter.connect`."""

    driver = "sqlrouter"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> DBAPIModule:
        return sqlrouter  # type: ignore[return-value]  # a module is not a Protocol instance to mypy

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[Dialect]:
        # create_async_engine("mysql+sqlrouter://..."): the same URL, asyncio's driver
        # (sqlrouter.aio), found by its entry point (it needs the aio extra).
        dialect_cls: type[Dialect] = registry.load("mysql.sqlrouter_async")
        return dialect_cls


class MariaDBDialect_sqlrouter(MariaDBDialect, MySQLDialect_sqlrouter):
    """``mariadb+sqlrouter://``: the same, with SQLAlchemy's MariaDB-only behaviour forced."""

    supports_statement_cache = True

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[Dialect]:
        dialect_cls: type[Dialect] = registry.load("mariadb.sqlrouter_async")
        return dialect_cls


def _query_pairs(query: Mapping[str, str | tuple[str, ...]]) -> list[tuple[str, str]]:
    """The query of a SQLAlchemy URL as pairs; a repeated name gives one pair per value."""
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        values = value if isinstance(value, tuple) else (value,)
        pairs.extend((name, item) for item in values)
    return pairs


dialect = MySQLDialect_sqlrouter
#: What SQLAlchemy's ``mariadb`` loader looks for in a driver module.
mariadb_dialect = MariaDBDialect_sqlrouter
