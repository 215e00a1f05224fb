r"""

.. dialect:: mysql+sqlrouter_async
    :name: sqlrouter (asyncio)
    :dbapi: sqlrouter.aio
    :connectstring: mysql+sqlrouter://<username>:<password>@<service>/<dbname>[?<options>]
    :url: docs/asyncio.md

The asyncio variant of the ``mysql+sqlrouter`` dialect: ``create_async_engine`` with the
URL of the synchronous engine picks it (``get_async_dialect_cls``, as psycopg's dialect
does), and ``mysql+sqlrouter_async://`` names it explicitly::

    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("mysql+sqlrouter://app:secret@shop/shopdb?qos=RO_RELAXED")

It is SQLAlchemy's aiomysql dialect, connecting through :func:`sqlrouter.aio.connect`,
with everything the ``mysql+sqlrouter`` dialect adds (the URL read by sqlrouter's
parser, disconnects, pools that follow the cluster, pings that never reconnect): see
:class:`sqlrouter.contrib.sqlalchemy.SqlrouterDialect`.  It needs the ``aio`` extra.
"""

from __future__ import annotations

from typing import Any

import aiomysql
import pymysql
from sqlalchemy.dialects.mysql.aiomysql import (
    AsyncAdapt_aiomysql_connection,
    AsyncAdapt_aiomysql_dbapi,
    MySQLDialect_aiomysql,
)
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.util.concurrency import await_

import sqlrouter
import sqlrouter.aio

from .sqlalchemy import SqlrouterDialect

__all__ = ["AsyncMariaDBDialect_sqlrouter", "AsyncMySQLDialect_sqlrouter", "dialect"]


class _Dbapi(AsyncAdapt_aiomysql_dbapi):
    """SQLAlchemy's adaptation of aiomysql as a DB-API module, connecting through
    :func:`sqlrouter.aio.connect` (aiomysql's cursors, PyMySQL's errors and types)."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiomysql_connection:
        creator = kw.pop("async_creator_fn", sqlrouter.aio.connect)
        connection: AsyncAdapt_aiomysql_connection = await_(
            AsyncAdapt_aiomysql_connection.create(self, creator(*arg, **kw))
        )
        return connection


class AsyncMySQLDialect_sqlrouter(SqlrouterDialect, MySQLDialect_aiomysql):
    """``mysql+sqlrouter`` under ``create_async_engine``."""

    driver = "sqlrouter_async"
    supports_statement_cache = True
    is_async = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _Dbapi(aiomysql, pymysql)

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> type[AsyncMySQLDialect_sqlrouter]:
        return cls


class AsyncMariaDBDialect_sqlrouter(MariaDBDialect, AsyncMySQLDialect_sqlrouter):
    """``mariadb+sqlrouter`` under ``create_async_engine``."""

    supports_statement_cache = True


dialect = AsyncMySQLDialect_sqlrouter
#: What SQLAlchemy's ``mariadb`` loader looks for in a driver module.
mariadb_dialect = AsyncMariaDBDialect_sqlrouter
