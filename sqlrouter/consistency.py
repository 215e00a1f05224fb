"""Session consistency: one causal token shared by the connections of a session.

A :class:`Session` holds the causal token of a client session: the highest GTID per
replication domain that the session has written (captured from the master's OK
packets) or read (the position of the replica it read from, as the monitor observed
it).  Every connection of the session reads it; a relaxed connection makes sure its
replica has applied it before each transaction starts.

``with sqlrouter.session() as s:`` makes every connection opened inside the block share
one session.  The current session lives in a :mod:`contextvars` variable: a new thread
starts outside any session (each thread its own, unless its context is passed), and an
asyncio task shares the session of the code that created it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from . import _forksafe
from .gtid import EMPTY, CausalToken

__all__ = ["Session", "current_session", "session"]

#: Serializes the changes of every session's token.  One lock for all, held for a merge
#: (microseconds): a lock per session would be made at every ``connect()`` outside a
#: ``with sqlrouter.session()`` block, where each connection has a session of its own.
_merging = _forksafe.lock()


class Session:
    """The causal token of one client session, safe to share between threads.

    :attr:`token` only grows.  :attr:`version` increases each time it does, so a
    connection can tell with one integer comparison whether it must check again.
    """

    __module__ = "sqlrouter"
    __slots__ = ("__weakref__", "token", "version")

    def __init__(self, token: CausalToken | str | None = None) -> None:
        if token is None:
            token = EMPTY
        elif isinstance(token, str):
            token = CausalToken.parse(token)
        self.token: CausalToken = token
        self.version = 0

    def __repr__(self) -> str:
        return f"<sqlrouter.Session token={str(self.token)!r} version={self.version}>"

    def advance(self, token: CausalToken) -> bool:
        """Merge ``token`` in; returns True when the session's token grew."""
        current = self.token
        if current is EMPTY:  # a new session's (each connection has one by default)
            if not token:
                return False
        elif current.covers(token):
            return False
        with _merging:
            current = self.token
            if current is EMPTY:
                # A new session's token merged with ``token`` is ``token`` itself (which
                # is not empty: the empty token covers nothing else, and a token only grows).
                self.token = token
            else:
                merged = current.merge(token) if current else token
                if merged == current:
                    return False
                self.token = merged
            self.version += 1
        return True

    def advance_gtid(self, gtid: str) -> None:
        """Merge one GTID (``domain-server-seq``, as ``last_gtid`` reports it).

        Runs after every write: when the token already has this domain at this sequence
        or later, it returns without building anything.
        """
        parts = gtid.split("-")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            self.advance(CausalToken.parse(gtid))  # raises the parser's clear error
            return
        domain, server_id, seq = int(parts[0]), int(parts[1]), int(parts[2])
        entry = self.token.domains.get(domain)
        if entry is not None and (entry[1], entry[0]) >= (seq, server_id):
            return
        with _merging:
            by_domain = dict(self.token.domains)
            entry = by_domain.get(domain)
            if entry is not None and (entry[1], entry[0]) >= (seq, server_id):
                return
            by_domain[domain] = (server_id, seq)
            self.token = CausalToken((d, s, n) for d, (s, n) in by_domain.items())
            self.version += 1


_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "sqlrouter.session", default=None
)


def current_session() -> Session | None:
    """The session of the current context, if a ``with sqlrouter.session()`` is open."""
    return _current.get()


@contextlib.contextmanager
def session(token: CausalToken | str | Session | None = None) -> Iterator[Session]:
    """Share one causal token between every connection opened in the block.

    ``token`` continues a session begun elsewhere (``str(conn.causal_token)`` from
    another process, the previous web request, a job): reads in the block see
    everything that token covers.  Pass a :class:`Session` to re-enter it (in another
    thread, say).
    """
    s = token if isinstance(token, Session) else Session(token)
    reset = _current.set(s)
    try:
        yield s
    finally:
        _current.reset(reset)
