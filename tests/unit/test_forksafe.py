"""What a forked child keeps of its parent's connections (sqlrouter._forksafe)."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from sqlrouter import _forksafe
from sqlrouter._pymysql import abandon_after_fork
from tests.fixtures.helpers import reap


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


def _fork_while_in_section(seconds: float, child: Callable[[bool], bool]) -> int | None:
    """Fork while another thread is in a TLS section for ``seconds``; the child exits 0
    if ``child(whether the thread had left its section at the fork)`` is true."""
    left: list[bool] = []
    inside = threading.Event()

    def section() -> None:
        with _forksafe.tls_section():
            inside.set()
            time.sleep(seconds)
            left.append(True)

    thread = threading.Thread(target=section)
    thread.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: what it inherited says when it forked
        os._exit(0 if child(bool(left)) else 1)
    code = reap(pid)
    thread.join()
    return code


def test_a_fork_waits_for_sqlrouters_threads_to_leave_their_tls_sections() -> None:
    """A fork while one of sqlrouter's threads creates or frees OpenSSL objects (a
    probe connecting) would leave OpenSSL's lock held for ever in the child: the fork
    waits until the thread has left its section."""
    assert _fork_while_in_section(0.3, lambda left: left) == 0
    with _forksafe.tls_section():  # usable again in the parent
        pass


def _enters_a_section(left: bool) -> bool:
    with _forksafe.tls_section():
        pass
    return not left


def test_a_fork_does_not_wait_for_ever_for_a_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe connecting to a frozen server stays in its section up to its timeout: the
    fork waits FORK_WAIT at most, then forks; the child can use sections."""
    monkeypatch.setattr(_forksafe, "FORK_WAIT", 0.05)
    assert _fork_while_in_section(3.0, _enters_a_section) == 0
