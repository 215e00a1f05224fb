"""What ``sqlrouter.aio`` runs off the event loop (finding the service, waiting for the
monitor's first round, building SSL contexts), in threads of its own.

Not the loop's default executor: an application that fills that one with its own
blocking work would hold every connect behind it, past ``connect_timeout``.  Each call
is bounded by the caller's timeout (:func:`off_loop` raises ``TimeoutError``; the
thread's work, itself bounded, ends in the background).  A forked child gets a pool of
its own: the parent's threads do not exist there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["WORKERS", "off_loop"]

_T = TypeVar("_T")

#: Threads of the pool: connects wait in them for a few files and one monitor round.
WORKERS = 8

#: The process's pool, by the id of the process that made it.
_pools: dict[int, ThreadPoolExecutor] = {}


def _executor() -> ThreadPoolExecutor:
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        _pools.clear()  # a parent's (after fork()): its threads are not in this process
        pool = _pools.setdefault(pid, ThreadPoolExecutor(WORKERS, "sqlrouter-aio"))
    return pool


async def off_loop(call: Callable[[], _T], timeout: float) -> _T:
    """``call()`` in a thread of sqlrouter's pool; ``TimeoutError`` after ``timeout``
    seconds (waiting for a thread included)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        return await loop.run_in_executor(_executor(), call)
