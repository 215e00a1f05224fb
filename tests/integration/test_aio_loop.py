"""sqlrouter.aio never blocks its event loop: what reads files (SSL contexts) runs in a
thread (checked by where it runs, not by timing)."""

from __future__ import annotations

import asyncio
import threading
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
