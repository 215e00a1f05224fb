"""Awaiting a server without leaving anything behind.

:class:`GuardedConnection` is the lowest part of :class:`sqlrouter.aio.Connection`: the
socket as :class:`~sqlrouter._connbase.RoutedConnection` sees it, and every await of a
server's reply (:meth:`~GuardedConnection._guarded`).  A reply is awaited within
``read_timeout``; a task cancelled meanwhile, or a reply that does not come in time,
closes the connection and stops its statement on the server (:mod:`._cancel`) before the
cancellation or the error goes on, within ``CANCEL_CLEANUP_TIMEOUT``.  Nothing here
routes: :mod:`._route` opens the connection, :mod:`.connection` runs the statements.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from .._connbase import RoutedConnection
from ..errors import OperationalError
from . import _cancel
from ._aiomysql import AiomysqlConnection

__all__ = ["CANCEL_CLEANUP_TIMEOUT", "GuardedConnection"]

_T = TypeVar("_T")

#: The longest a cancelled statement's clean-up (closing, ``KILL``) may delay the
#: cancellation (also bounded by ``connect_timeout``).
CANCEL_CLEANUP_TIMEOUT = 5.0


class GuardedConnection(RoutedConnection, AiomysqlConnection):
    """A routed aiomysql connection whose awaits of a server are bounded and cancellable."""

    #: The server thread _stopped() last closed (and killed): never twice.
    _stopped_thread: int | None = None

    # -- what sqlrouter adds (the rest is RoutedConnection's) ------------------------

    @property
    def _is_open(self) -> bool:
        return self._writer is not None

    def _abandon(self, why: str) -> None:
        self._abandon_after_fork(why)

    # -- cancellation --------------------------------------------------------------

    async def _guarded(self, step: Awaitable[_T], what: str) -> _T:
        """Await a server's reply to ``what``, within ``read_timeout`` (none: no bound).

        A task cancelled meanwhile, or a reply that does not come in time, closes the
        connection and stops the statement on the server before the cancellation goes on
        (or OperationalError 2013 is raised, as PyMySQL raises it for a read timeout).
        """
        timeout = self._url.read_timeout
        try:
            if timeout is None:
                return await step
            try:
                async with asyncio.timeout(timeout):
                    return await step
            except TimeoutError:
                await self._stopped(f"no reply to {what} within read_timeout", kill=True)
                raise OperationalError(
                    2013,
                    f"Lost connection to server during query (no reply to {what} within "
                    f"read_timeout {timeout:g}s; it was stopped on the server)",
                ) from None
        except asyncio.CancelledError:
            await self._stopped(f"cancelled during {what}", kill=True)
            raise

    async def _stopped(self, why: str, *, kill: bool) -> None:
        """The connection's reply was abandoned: close it (nothing more can be read from
        it in step) and end its server thread, within ``CANCEL_CLEANUP_TIMEOUT``."""
        thread_id = self.thread_id_or_none
        if thread_id is not None and thread_id == self._stopped_thread:
            return  # by a nested handler already (one reason, one KILL)
        self._stopped_thread = thread_id
        self._handle.closed(self)
        self._state.closed_why = (why, time.time())
        self._close_transport()
        self._drop_stream(why)
        if not kill or thread_id is None or not self._host:
            return
        url = self._url
        ends = asyncio.ensure_future(
            _cancel.kill(
                host=self._host,
                port=self._port,
                user=url.user or "",
                password=url.password or "",
                thread_id=thread_id,
                ssl=self._ssl_context,
                timeout=min(url.connect_timeout, CANCEL_CLEANUP_TIMEOUT),
                service=url.service,
            )
        )
        # Shielded: cancelled again, this task goes on at once and the kill in the
        # background (bounded by its own timeout).
        await asyncio.shield(ends)

    async def _stream_cancelled(self, why: str) -> None:
        # The task's reads of a streamed result's rows are not _guarded (a row costs what
        # it costs in aiomysql); a cancellation meanwhile is handled here, as there.
        if self._inherited_from is None:
            await self._stopped(why, kill=True)

    def _ensure_alive(self) -> None:
        # aiomysql's says "Not connected" or "Cancelled during execution": say which
        # connection, since when and why.  An invalidated one (inherited across fork())
        # raises or moves at its statement.
        if self._writer is None and self._state.invalid is None:
            raise self._closed_error()

    def _close_transport(self) -> None:
        if self._writer is not None:
            self._writer.transport.close()
        self._writer = None
        self._reader = None
