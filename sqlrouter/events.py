"""Events for connection pools: the master changed, a datasource went down or came back.

The monitor publishes a snapshot after each round; what changed since the previous one
(:func:`sqlrouter.routing.changes.diff`, a pure function) is delivered as events to the
subscribers of this process::

    import sqlrouter.events

    def on_master_changed(event: sqlrouter.events.Event) -> None:
        pool.dispose_connections_to(event.previous)

    sub = sqlrouter.events.subscribe("master_changed", on_master_changed)
    ...
    sub.cancel()

Callbacks run in the monitor's thread (or, for ``datasource_offline``/``online`` and a
promotion, in the thread of the operator command that made the change): keep them
short, and do not block.  An exception
in a callback is logged and does not reach the monitor or the other subscribers.

Connections of sqlrouter follow these events by themselves (see
:class:`sqlrouter.ConnectionInvalidated`); the events are for code that keeps its own
connections or state per server (pools, caches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, get_args

from . import _forksafe

__all__ = [
    "EVENT_NAMES",
    "Event",
    "Subscription",
    "publish",
    "subscribe",
]

logger = logging.getLogger("sqlrouter.events")

EventName = Literal[
    "master_changed",
    "datasource_down",
    "datasource_up",
    "datasource_offline",
    "datasource_online",
    "lag_exceeded",
    "lag_recovered",
    "autofailover_decision",
    "autofailover_outcome",
    "master_fenced",
]
EVENT_NAMES: Final[tuple[EventName, ...]] = get_args(EventName)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that changed between two snapshots of one service."""

    name: EventName
    service: str
    #: The datasource concerned (for master_changed: the new master, or None).
    datasource: str | None
    #: master_changed: the previous master (None if there was none).
    previous: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        subject = self.datasource or "none"
        if self.name == "master_changed":
            subject = f"{self.previous or 'none'} -> {self.datasource or 'none'}"
        text = f"{self.name} {self.service}/{subject}"
        return f"{text}: {self.detail}" if self.detail else text


Callback = Callable[[Event], object]


class Subscription:
    """A subscription; :meth:`cancel` ends it (also usable as a context manager)."""

    __slots__ = ("callback", "names")

    def __init__(self, names: frozenset[EventName], callback: Callback) -> None:
        self.names = names
        self.callback = callback

    def cancel(self) -> None:
        with _lock:
            if self in _subscriptions:
                _subscriptions.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        return f"<Subscription {sorted(self.names)} -> {self.callback!r}>"


_lock = _forksafe.lock()
_subscriptions: list[Subscription] = []


def subscribe(names: EventName | Iterable[EventName], callback: Callback) -> Subscription:
    """Call ``callback(event)`` for each event named in ``names``, for every service."""
    wanted = frozenset([names] if isinstance(names, str) else names)
    unknown = sorted(n for n in wanted if n not in EVENT_NAMES)
    if unknown or not wanted:
        raise ValueError(
            f"unknown event name(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"expected some of: {', '.join(EVENT_NAMES)}"
        )
    sub = Subscription(wanted, callback)
    with _lock:
        _subscriptions.append(sub)
    return sub


def publish(events: Iterable[Event]) -> None:
    """Deliver ``events`` to their subscribers (in the caller's thread)."""
    with _lock:
        subs = list(_subscriptions)
    for event in events:
        logger.info("%s", event)
        for sub in subs:
            if event.name in sub.names:
                try:
                    sub.callback(event)
                except Exception:
                    logger.exception("event subscriber %r failed on %s", sub.callback, event)
