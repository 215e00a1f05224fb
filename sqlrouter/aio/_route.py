"""Where an asyncio connection goes: routing, then opening it there.

:class:`RoutingConnection` is the middle part of :class:`sqlrouter.aio.Connection`: one
connect's attempts (:mod:`sqlrouter._attempts`, waiting with ``asyncio.sleep``), each a
routing decision on the service's snapshot (a wait for a monitor round in a thread of
:mod:`._offloop`), aiomysql's connect bounded by what the attempt has left, and the
session's set-up on the new connection (GTID tracking, ``MASTER_GTID_WAIT`` for the
session's token).  Its awaits of the server are :mod:`._guard`'s; the statement path,
in :mod:`.connection`, routes again through :meth:`RoutingConnection._route`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import tenacity

from .._attempts import (
    Attempt,
    TryAgain,
    not_caught_up,
    retry_arguments,
)
from .._connbase import credentials_of
from .._connrules import (
    ENABLE_GTID_TRACKING,
    gtid_wait,
    open_session,
)
from .._connstate import ConnState
from ..errors import (
    MySQLError,
    OperationalError,
)
from ..gtid import CausalToken
from ..qos import QoS
from ..routing.health import Snapshot
from ..routing.service import FIRST_ROUND_TIMEOUT, ServiceHandle
from ..url import ServiceURL
from ._aiomysql import aiomysql_query
from ._guard import GuardedConnection
from ._offloop import off_loop

__all__ = ["RoutingConnection"]


class RoutingConnection(GuardedConnection):
    """A connection opened on the datasource the router chose, its session set up."""

    #: The ssl options asked for TLS (aiomysql itself only prefers it).
    _tls_required: bool = False

    def __init__(self, url: ServiceURL, handle: ServiceHandle, args: dict[str, Any]) -> None:
        """``args``: aiomysql's keywords for ``url`` (``_aiomysql.connect_args``)."""
        session = open_session(url, args)
        self._routed(url, handle)
        self._state = ConnState(relaxed=url.qos is QoS.RO_RELAXED, session=session)
        super().__init__(
            host="",
            port=0,
            user=url.user,
            password=url.password or "",
            db=url.database,
            connect_timeout=url.connect_timeout,
            **args,
        )

    # -- routing and connecting ----------------------------------------------------

    async def _route(
        self, *, exclude: frozenset[str] = frozenset(), allow_wait: bool = True
    ) -> None:
        """Route, then open the connection on the chosen datasource (attempts go on as
        :func:`sqlrouter._attempts.retry_arguments` says, waiting with asyncio.sleep)."""
        attempt = Attempt.start(self._url, exclude=exclude, allow_wait=allow_wait)
        try:
            await self._connect_once(attempt)
        except TryAgain:
            pass
        else:
            return
        retrying = tenacity.AsyncRetrying(
            **retry_arguments(self._url, attempt, len(self._handle.service.datasources))
        )
        try:
            await retrying(self._connect_once, attempt)
        except TryAgain as exc:
            raise exc.error from exc.__cause__

    async def _snapshot(self, attempt: Attempt) -> Snapshot:
        """The snapshot to route on; waiting for a monitor round happens in a thread."""
        url = self._url
        credentials = credentials_of(url.user or "", url.password or "")
        fresh = self._handle.fresh_snapshot(credentials)
        if fresh is not None:
            return fresh
        timeout = max(0.0, min(FIRST_ROUND_TIMEOUT, attempt.deadline - time.monotonic()))
        wait = functools.partial(self._handle.snapshot, credentials, timeout=timeout)
        try:
            return await off_loop(wait, timeout)
        except TimeoutError:
            # No thread free in time: as a wait for a round that does not come, the
            # current snapshot (stale: the router trusts none of it).
            return self._handle.monitor.snapshot

    async def _connect_once(self, attempt: Attempt) -> None:
        """One routing decision and one connection attempt; TryAgain to go on."""
        url = self._url
        snapshot = await self._snapshot(attempt)
        ds = self._decide(snapshot, attempt)
        self._host, self._port = ds.host, ds.port
        try:
            await self._connect_bounded(attempt.left())
        except OperationalError as exc:
            raise self._failed(ds, exc, attempt) from exc
        if self._connected(ds) and not await self._after_connect(snapshot):
            raise not_caught_up(url, ds, attempt)
        self._registered(snapshot)

    async def _connect_bounded(self, timeout: float) -> None:
        """aiomysql's connect (socket, handshake, set-up statements), bounded by
        ``timeout``; cancelled, it closes what it opened."""
        self._result = None
        state = self._state
        state.connecting = True
        self.connect_timeout = timeout
        try:
            async with asyncio.timeout(timeout):
                await super()._connect()
        except TimeoutError:
            self._close_transport()
            raise OperationalError(
                2003,
                f"Can't connect to MySQL server on {self._host}:{self._port} "
                f"(no handshake within {timeout:g}s)",
            ) from None
        except BaseException:
            self._close_transport()
            raise
        finally:
            state.connecting = False
        if self._tls_required and not self._secure:
            self._close_transport()
            raise OperationalError(
                2026,
                f"{self._host}:{self._port} does not offer TLS, which the connection's "
                "ssl options require",
            )

    async def _after_connect(self, snapshot: Snapshot) -> bool:
        """Set up session consistency on a new connection; False: go elsewhere."""
        setup = self._session_setup(snapshot)
        if setup.track_gtid:
            await self._enable_gtid_tracking()
        caught_up = setup.wait_for is None or await self._gtid_wait(setup.wait_for)
        if self._caught_up(setup, caught_up):
            return True
        self._close_transport()
        return False

    async def _enable_gtid_tracking(self) -> None:
        try:
            await self._guarded(aiomysql_query(self, ENABLE_GTID_TRACKING), "SET")
        except MySQLError as exc:
            self._no_tracking(exc)

    async def _gtid_wait(self, token: CausalToken) -> bool:
        """``MASTER_GTID_WAIT(token, consistency_wait)`` in one round trip, bounded."""
        sql, bound = gtid_wait(token, self._url.consistency_wait, self._url.connect_timeout)
        try:
            async with asyncio.timeout(bound):
                found = await self._first_value_aside(sql)
        except TimeoutError:
            # The wait ends on the server by itself after consistency_wait: no reply long
            # after that is a server or network that does not answer, which a KILL (one
            # more connection to it) would not reach either.
            await self._stopped("MASTER_GTID_WAIT timed out", kill=False)
            return False
        except asyncio.CancelledError:
            await self._stopped("cancelled during MASTER_GTID_WAIT", kill=True)
            raise
        return bool(found == 0)
