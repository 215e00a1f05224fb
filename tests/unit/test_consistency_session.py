"""sqlrouter.session(): one causal token per session, carried by contextvars."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import sqlrouter
from sqlrouter import CausalToken, Session
from sqlrouter.consistency import current_session


def test_session_token_only_grows_and_counts_versions() -> None:
    s = Session("0-1-5")
    assert s.version == 0
    assert s.advance(CausalToken.parse("0-1-7")) is True
    assert s.version == 1 and str(s.token) == "0-1-7"
    assert s.advance(CausalToken.parse("0-1-6")) is False  # older: nothing changes
    assert s.version == 1 and str(s.token) == "0-1-7"
    s.advance_gtid("1-2-3")
    assert str(s.token) == "0-1-7,1-2-3" and s.version == 2
    assert "0-1-7,1-2-3" in repr(s)


def test_session_rejects_a_bad_token() -> None:
    with pytest.raises(ValueError, match="invalid causal token 'zz'"):
        Session("zz")


def test_session_context_nests_and_resets() -> None:
    assert current_session() is None
    with sqlrouter.session("0-1-1") as outer:
        assert current_session() is outer
        with sqlrouter.session() as inner:
            assert current_session() is inner and inner is not outer
        assert current_session() is outer
        with sqlrouter.session(outer) as again:
            assert again is outer
    assert current_session() is None


def test_threads_start_outside_the_session_unless_given_the_context() -> None:
    seen: dict[str, Session | None] = {}
    with sqlrouter.session() as s:
        t = threading.Thread(target=lambda: seen.__setitem__("plain", current_session()))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: seen.__setitem__("copied", ctx.run(current_session)))
        t.start()
        t.join()
    assert seen["plain"] is None
    assert seen["copied"] is s


def test_asyncio_tasks_share_the_session() -> None:
    async def main() -> tuple[Session | None, Session | None]:
        with sqlrouter.session() as s:

            async def child() -> Session | None:
                current = current_session()
                assert current is not None
                current.advance_gtid("0-1-9")
                return current

            found = await asyncio.create_task(child())
            assert str(s.token) == "0-1-9"
            return s, found

    s, found = asyncio.run(main())
    assert s is found


def test_concurrent_advances_keep_the_maximum() -> None:
    s = Session()

    def work(start: int) -> None:
        for seq in range(start, 2000, 4):
            s.advance_gtid(f"0-1-{seq}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert str(s.token) == "0-1-1999"
