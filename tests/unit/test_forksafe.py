"""What a forked child keeps of its parent's connections (sqlrouter._forksafe)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pymysql

from sqlrouter._pymysql import abandon_after_fork


def test_a_parents_tls_context_is_never_freed_in_the_child() -> None:
    """Freeing an OpenSSL object takes OpenSSL's global lock, which one of the parent's
    threads may have held at the fork (a child was seen spinning for ever in
    SSL_CTX_free under its after-fork handler): what the child drops of a parent's
    connection, its TLS context included, is kept and never freed."""
    conn: Any = pymysql.connections.Connection(defer_connect=True, ssl={"check_hostname": False})
    context = weakref.ref(conn.ctx)
    abandon_after_fork(conn, "a connection of the parent process")
    del conn
    gc.collect()
    assert context() is not None


def test_a_parents_connection_object_is_not_kept_in_the_child() -> None:
    """Only what the child must not free is kept: the connection object itself is not,
    so one the child opened again (ping(reconnect=True)) and then dropped is freed, and
    the socket it opened in the child closed (tests/integration/test_fork.py)."""
    conn: Any = pymysql.connections.Connection(defer_connect=True, ssl={"check_hostname": False})
    connection = weakref.ref(conn)
    abandon_after_fork(conn, "a connection of the parent process")
    del conn
    gc.collect()
    assert connection() is None
