"""sqlrouter.aio never blocks its event loop: what reads files (SSL contexts) runs in a
thread (checked by where it runs, not by timing)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import sqlrouter
import sqlrouter.aio
from sqlrouter import _pymysql
from sqlrouter.aio import _aiomysql
from sqlrouter.sandbox import Sandbox

pytestmark = pytest.mark.sandbox


def test_ssl_contexts_are_built_in_a_thread_once(
    cluster: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = cluster
    built_on: list[int] = []
    original = _pymysql.tls_of

    def tls_of(options: Any) -> Any:
        built_on.append(threading.get_ident())
        return original(options)

    # PyMySQL builds the context from the options (the monitor's own connections build
    # theirs in its threads: not counted).
    monkeypatch.setattr(_aiomysql, "tls_of", tls_of)
    monkeypatch.setattr(_aiomysql, "_TLS", {}, raising=False)

    async def main() -> int:
        url = sb.url("RW_STRICT")
        # TLS preferred (no ssl option), as every connection without one asks for it.
        conns = await asyncio.gather(*(sqlrouter.aio.connect(url) for _ in range(10)))
        for conn in conns:
            await conn.ensure_closed()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(built_on) == 1, built_on  # built once for the ten connects
    assert built_on[0] != loop_thread  # in a thread, not in the event loop


def test_connect_does_not_wait_for_the_loops_default_executor(cluster: Sandbox) -> None:
    """An application's blocking work fills the loop's default executor: connects go on
    (sqlrouter's off-loop steps have threads of their own)."""
    sb = cluster
    release = threading.Event()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        busy = [loop.run_in_executor(None, release.wait, 120) for _ in range(2)]
        try:
            # A deadline for the test, not a measurement: without threads of its own the
            # connect waits for the busy ones, which end only after it.
            async with asyncio.timeout(60):
                conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"))
            node = conn.datasource_name
            await conn.ensure_closed()
        finally:
            release.set()
            await asyncio.gather(*busy)
        assert node == sb.state.master
        return len(busy)

    assert asyncio.run(main()) == 2
