"""Stopping, on the server, a statement whose task was cancelled.

A task cancelled while it awaits a statement's reply (``asyncio.timeout``, a client that
went away, ``read_timeout``) leaves the statement running on the server: the socket is
closed, but a ``SELECT SLEEP(60)`` or a long ``MASTER_GTID_WAIT`` goes on until it ends,
and holds its locks meanwhile.  :func:`kill` ends it: one short connection to the same
server, as the same user, sends ``KILL CONNECTION`` for its thread (a user may kill its
own threads).  Bounded in time; a failure is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from ssl import SSLContext

import aiomysql

from ..errors import MySQLError

__all__ = ["kill"]

logger = logging.getLogger("sqlrouter.aio")

#: ``ER_NO_SUCH_THREAD``: the thread ended already.
_NO_SUCH_THREAD = 1094


async def kill(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    thread_id: int,
    ssl: SSLContext | None,
    timeout: float,
    service: str,
) -> bool:
    """``KILL CONNECTION thread_id`` on ``host:port``; True when the thread is gone."""
    try:
        async with asyncio.timeout(timeout):
            conn = await aiomysql.connect(
                host=host, port=port, user=user, password=password, ssl=ssl
            )
            try:
                await conn.kill(thread_id)
            except MySQLError as exc:
                if exc.args[0] != _NO_SUCH_THREAD:
                    raise
            finally:
                conn.close()
    except (MySQLError, OSError, TimeoutError) as exc:
        logger.warning(
            "service %r: could not stop thread %d on %s:%d after a cancelled statement: %r",
            service,
            thread_id,
            host,
            port,
            exc,
        )
        return False
    logger.debug("service %r: stopped thread %d on %s:%d", service, thread_id, host, port)
    return True
