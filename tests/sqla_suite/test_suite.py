"""SQLAlchemy's dialect compliance suite, as its README.dialects.rst sets it up."""

from __future__ import annotations

from typing import Any

import pymysql.cursors

# The whole suite: pytest collects the test classes imported here.
from sqlalchemy.testing.suite import *  # noqa: F403
from sqlalchemy.testing.suite import ServerSideCursorsTest as _ServerSideCursorsTest


class ServerSideCursorsTest(_ServerSideCursorsTest):  # type: ignore[no-redef]  # replaces it
    """The suite tells a server-side cursor by the driver's name, which it lists.

    sqlrouter's connections are PyMySQL's, so its server-side cursors are PyMySQL's
    ``SSCursor``, which the suite checks for ``pymysql`` by class; under asyncio they
    are aiomysql's, adapted by SQLAlchemy, which the suite checks for ``aiomysql``.
    """

    def _is_server_side(self, cursor: Any) -> bool:
        if self.engine.dialect.driver == "sqlrouter":
            return isinstance(cursor, pymysql.cursors.SSCursor)
        if self.engine.dialect.driver == "sqlrouter_async":  # aiomysql's, adapted
            return bool(cursor.server_side)
        return bool(super()._is_server_side(cursor))  # type: ignore[no-untyped-call]
