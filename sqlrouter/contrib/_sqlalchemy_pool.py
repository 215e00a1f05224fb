"""Pools that follow the cluster, and pooled connections that follow the session.

:func:`follow` is called for every ``mysql+sqlrouter`` engine by the dialect's
``engine_created()`` hook.  It adds three pool listeners and one subscription to
sqlrouter's events:

- ``connect``: the engine remembers its DB-API connections (weakly).
- sqlrouter's ``master_changed``, ``datasource_down`` and ``datasource_offline`` events
  (delivered in the monitor's thread): the pooled connections that the event concerns
  (:func:`condemnation`) are *marked*, never closed there, since another thread may be
  using them.
- ``checkout``: a marked connection (or one inherited across ``fork()``) raises
  :class:`sqlalchemy.exc.DisconnectionError`,
  so that SQLAlchemy discards it and opens a new, routed connection in its place, in
  the same checkout: the application never sees it.  The same listener binds the
  connection to the current :func:`sqlrouter.session`, if one is open.
- ``checkin``: a connection bound to a session for the checkout (here, or by
  :class:`~sqlrouter.contrib.sqlalchemy_orm.RoutingSession`) gets its own session back.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event, exc

from sqlrouter import _forksafe, events
from sqlrouter._connbase import RoutedConnection
from sqlrouter.connection import Connection
from sqlrouter.consistency import Session, current_session
from sqlrouter.qos import QoS

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = [
    "FOLLOWED_EVENTS",
    "PoolFollower",
    "bind_session",
    "condemnation",
    "follow",
    "follower_of",
    "routed",
]

logger = logging.getLogger("sqlrouter.sqlalchemy")

#: The sqlrouter events after which a pooled connection may have to be replaced.
FOLLOWED_EVENTS: Final[tuple[events.EventName, ...]] = (
    "master_changed",
    "datasource_down",
    "datasource_offline",
)

#: Key, in a pooled connection's ``info``, of the session it had before a checkout
#: bound it to another one.
_OWN_SESSION: Final = "sqlrouter.own_session"

#: The follower of each engine (as long as the engine lives).
_followers: weakref.WeakKeyDictionary[Engine, PoolFollower] = weakref.WeakKeyDictionary()
_followers_lock = _forksafe.lock()


def condemnation(
    event: events.Event, *, service: str, qos: QoS, datasource: str | None
) -> str | None:
    """Why ``event`` means that a pooled connection must be replaced; None: it stays.

    The connection is described by its ``service``, ``qos`` and the ``datasource`` it
    is open on.  Pure.

    - ``master_changed``: a ``RW_STRICT`` connection to the previous master (it must
      never write there again), and a ``RO_RELAXED`` connection to the new master
      (reads go back to the replicas).
    - ``datasource_down``, ``datasource_offline``: every connection to that datasource.
    """
    if datasource is None or event.service != service:
        return None
    if event.name == "master_changed":
        if qos is QoS.RW_STRICT and datasource == event.previous:
            return f"{datasource} is no longer the master (now: {event.datasource or 'none'})"
        if qos is QoS.RO_RELAXED and datasource == event.datasource:
            return f"{datasource} became the master (reads go to the replicas)"
        return None
    if datasource != event.datasource:
        return None
    if event.name == "datasource_down":
        return f"{datasource} went down" + (f" ({event.detail})" if event.detail else "")
    if event.name == "datasource_offline":
        return f"{datasource} was taken offline by an operator"
    return None


def routed(pooled: ConnectionPoolEntry | PoolProxiedConnection) -> RoutedConnection | None:
    """The sqlrouter connection of a pool's entry or proxied connection: its driver
    connection (the DB-API connection of ``mysql+sqlrouter``, the one SQLAlchemy's
    asyncio adaptation wraps under ``create_async_engine``); ``None`` for another
    driver's."""
    driver = pooled.driver_connection
    return driver if isinstance(driver, RoutedConnection) else None


def bind_session(info: MutableMapping[Any, Any], conn: RoutedConnection, session: Session) -> None:
    """Make the pooled ``conn`` share ``session``'s causal token until its checkin.

    ``info`` is the pool's ``info`` dictionary of the connection (it follows the DB-API
    connection, and is emptied when the pool replaces it); the connection's own session
    is kept there and given back at checkin.  A connection opened with
    ``consistency=none`` has no session and is left alone.
    """
    own = conn.session
    if own is None or own is session:
        return
    info.setdefault(_OWN_SESSION, own)
    conn.use_session(session)


class PoolFollower:
    """The listeners that one engine's pools (the pool, and those ``dispose()`` makes) share."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = _forksafe.lock()
        # The pool's DB-API connections, and those that an event condemned (weakly: a
        # connection the pool closed simply disappears).
        self._open: weakref.WeakSet[RoutedConnection] = weakref.WeakSet()
        self._condemned: weakref.WeakKeyDictionary[RoutedConnection, str] = (
            weakref.WeakKeyDictionary()
        )
        # The master of each service, as the last master_changed event named it.
        self._masters: dict[str, str] = {}
        #: How many pooled connections were replaced at checkout.
        self.replaced = 0

    def __repr__(self) -> str:
        with self._lock:
            opened, condemned = len(self._open), len(self._condemned)
        return (
            f"<PoolFollower {self._name} [Connections: {opened} known, {condemned} to replace"
            f" | replaced: {self.replaced}]>"
        )

    # -- sqlrouter events (the monitor's thread) ----------------------------------------

    def on_event(self, event: events.Event) -> None:
        with self._lock:
            if event.name == "master_changed" and event.datasource is not None:
                self._masters[event.service] = event.datasource
            conns = list(self._open)
        marked = []
        for conn in conns:
            why = condemnation(
                event, service=conn.service, qos=conn.qos, datasource=conn.datasource_name
            )
            if why is not None:
                marked.append((conn, why))
        if not marked:
            return
        with self._lock:
            for conn, why in marked:
                self._condemned[conn] = why
        logger.debug(
            "%s: %d pooled connection(s) to be replaced at their next checkout: %s",
            self._name,
            len(marked),
            event,
        )

    # -- pool listeners (the application's threads) -------------------------------------

    def on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        conn = routed(record)
        if conn is None:
            return
        with self._lock:
            self._open.add(conn)
            master = self._masters.get(conn.service)
        where = conn.datasource_name
        if master is None or where in (None, master) or conn.qos is QoS.RO_RELAXED:
            return
        # A writer routed just before this process saw the master change, and opened
        # after the event was handled, escaped it: the server says if it is writable
        # (asked of a synchronous connection; an asyncio one fails at its first write
        # there, read-only, and its next checkout routes again).
        if isinstance(conn, Connection) and _read_only(conn):
            with self._lock:
                self._condemned[conn] = f"{where} is read-only (the master is now {master})"

    def on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        conn = routed(record)
        if conn is None:
            return
        parent = conn.inherited_from
        if parent is not None:
            # A connection of the pool as it was at fork(): the parent's socket, closed
            # in this process.  SQLAlchemy opens a new one in this checkout.
            raise exc.DisconnectionError(
                f"service {conn.service!r}: pooled connection replaced: it "
                f"was opened by process {parent} before fork()"
            )
        if self._condemned:
            with self._lock:
                why = self._condemned.pop(conn, None)
                if why is not None:
                    self.replaced += 1
            if why is not None:
                where = conn.datasource_name
                # SQLAlchemy discards the connection and opens a new one in this checkout.
                raise exc.DisconnectionError(
                    f"service {conn.service!r}: pooled connection to {where} replaced: {why}"
                )
        session = current_session()
        if session is not None:
            bind_session(record.info, conn, session)

    def on_checkin(
        self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry
    ) -> None:
        own = record.info.pop(_OWN_SESSION, None)
        conn = routed(record)
        if isinstance(own, Session) and conn is not None:
            conn.use_session(own)


def _read_only(conn: Connection) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@read_only")
        row = cursor.fetchone()
    conn.rollback()
    return bool(row and row[0])


def follower_of(engine: Engine) -> PoolFollower | None:
    """The :class:`PoolFollower` of a ``mysql+sqlrouter`` engine (None: another engine)."""
    with _followers_lock:
        return _followers.get(engine)


def follow(engine: Engine) -> PoolFollower:
    """Install the listeners on ``engine``, once; returns its follower."""
    with _followers_lock:
        follower = _followers.get(engine)
        if follower is not None:
            return follower
        follower = PoolFollower(engine.url.render_as_string(hide_password=True))
        _followers[engine] = follower
    # Pool events on an engine go to its pool, and to the pools engine.dispose() makes.
    event.listen(engine, "connect", follower.on_connect)
    event.listen(engine, "checkout", follower.on_checkout)
    event.listen(engine, "checkin", follower.on_checkin)
    # The subscription holds the follower weakly: it ends when the engine is collected.
    ref = weakref.ref(follower)

    def deliver(event: events.Event) -> None:
        target = ref()
        if target is not None:
            target.on_event(event)

    subscription = events.subscribe(FOLLOWED_EVENTS, deliver)
    weakref.finalize(follower, subscription.cancel)
    return follower
