"""sqlrouter.aio's streamed results (SSCursor) when the task reading them is cancelled, or
the process forks: a clear error, never aiomysql's internals failing, nothing left running."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sqlrouter
import sqlrouter.aio
from sqlrouter.aio import _cancel
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import in_forked_child, wait_until

pytestmark = pytest.mark.sandbox

#: Rows at once (more than the server's network buffer: they are sent, the statement's
#: execute() returns), then a row the server takes a minute to produce, and goes on
#: producing after its client went away (a SLEEP would end a few seconds after): only a
#: KILL ends it sooner.
STALLS = (
    "SELECT seq, REPEAT('x', 1000), "
    "IF(seq = 2000, MASTER_GTID_WAIT('0-1-999999999', 60), 0) FROM seq_1_to_3000"
)
WAITING = "Waiting in MASTER_GTID_WAIT() (primary waiter)"


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread ids the KILLs of cancelled statements were sent for (they are sent)."""
    sent: list[int] = []
    original = _cancel.kill

    async def kill(**kwargs: Any) -> bool:
        sent.append(kwargs["thread_id"])
        return await original(**kwargs)

    monkeypatch.setattr(_cancel, "kill", kill)
    return sent


def thread_state(sb: Sandbox, node: str, thread_id: int) -> list[str]:
    return [
        str(row[1])
        for row in sb.query(node, "SELECT ID, STATE FROM information_schema.PROCESSLIST")
        if row[0] == thread_id
    ]


@pytest.mark.parametrize("qos", ["RW_STRICT", "RO_RELAXED"])
def test_cancelled_while_streaming_stops_the_statement(cluster: Sandbox, qos: str) -> None:
    sb = cluster

    async def main() -> None:
        conn = await sqlrouter.aio.connect(sb.url(qos, max_lag=5), autocommit=True)
        assert conn.datasource is not None
        node, thread_id = conn.datasource.name, conn.thread_id()

        async def stream() -> None:
            async with conn.cursor(sqlrouter.aio.SSCursor) as cur:
                await cur.execute(STALLS)
                while await cur.fetchone() is not None:
                    pass

        task = asyncio.create_task(stream())
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: thread_state(sb, node, thread_id) == [WAITING], 20, "the wait"
            ),
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # not aiomysql's AttributeError
            await task
        assert conn.closed
        with pytest.raises(sqlrouter.InterfaceError, match="cancelled while reading a streamed"):
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
        # The statement does not run on: its server thread is gone (KILL CONNECTION).
        wait_until(lambda: not thread_state(sb, node, thread_id), 10, "the thread ends")

    asyncio.run(main())


def test_forked_child_reading_an_inherited_stream_gets_a_clear_error(cluster: Sandbox) -> None:
    sb = cluster

    async def child_main(cur: Any) -> dict[str, Any]:
        try:
            await cur.fetchone()
        except sqlrouter.OperationalError as exc:
            return {"error": exc.args[0], "says": str(exc.args[1])}
        return {"error": None}

    async def main() -> dict[str, Any]:
        conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
        cur = await conn.cursor(sqlrouter.aio.SSCursor)
        await cur.execute("SELECT seq FROM seq_1_to_20000")
        assert (await cur.fetchone())[0] == 1
        result = await in_forked_child(lambda: child_main(cur))
        # The parent reads on, untouched.
        rows = 1
        while await cur.fetchone() is not None:
            rows += 1
        result["parent_rows"] = rows
        conn.close()
        return result

    result = asyncio.run(main())
    assert "traceback" not in result, result.get("traceback")
    assert result["error"] == 2013 and "the rest of this result is lost" in result["says"]
    assert "before fork()" in result["says"]
    assert result["parent_rows"] == 20000


def test_gtid_wait_timing_out_sends_no_kill(cluster: Sandbox, kills: list[int]) -> None:
    """MASTER_GTID_WAIT ends on the server by itself; no reply within its bound means a
    server that does not answer: the connection is closed, no KILL is tried (one was sent
    twice, each waiting for connect_timeout)."""
    sb = cluster

    async def main() -> None:
        conn = await sqlrouter.aio.connect(
            sb.url("RO_RELAXED", max_lag=5, connect_timeout=2, consistency_wait=0.5)
        )
        assert conn.datasource is not None
        node = conn.datasource.name
        sb.fault(node, "freeze")
        try:
            ahead = sqlrouter.CausalToken.parse("0-1-999999999")
            assert await conn._gtid_wait(ahead) is False
        finally:
            sb.fault(node, "thaw")
        assert conn.closed
        conn.close()

    asyncio.run(main())
    assert kills == []


def test_ensure_closed_cancelled_while_reading_the_rest_kills_once(
    cluster: Sandbox, kills: list[int]
) -> None:
    """ensure_closed() reads the rest of a writer's streamed result (its GTID); cancelled
    meanwhile, the statement is stopped with one KILL (two handlers see the cancellation)."""
    sb = cluster

    async def main() -> int:
        with sqlrouter.session():
            conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
            node, thread_id = sb.state.master, int(conn.thread_id())
            cur = await conn.cursor(sqlrouter.aio.SSCursor)
            await cur.execute(STALLS)
            await cur.fetchone()
            closing = asyncio.create_task(conn.ensure_closed())
            await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: wait_until(
                    lambda: thread_state(sb, node, thread_id) == [WAITING], 20, "the wait"
                ),
            )
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert conn.closed
            wait_until(lambda: not thread_state(sb, node, thread_id), 10, "the thread ends")
            return thread_id

    thread_id = asyncio.run(main())
    assert kills == [thread_id]
