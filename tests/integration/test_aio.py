"""sqlrouter.aio against real clusters: routing, sessions, invalidation, cancellation, the
event loop never blocked, fork."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import sqlrouter
import sqlrouter.aio
from sqlrouter import _runtime
from sqlrouter._runtime import handles
from sqlrouter.routing.router import observed_master
from sqlrouter.routing.service import ServiceHandle
from sqlrouter.sandbox import Sandbox
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import in_forked_child, wait_until

pytestmark = pytest.mark.sandbox

#: A statement that runs on after its client went away (a SLEEP ends a few seconds after
#: its socket closes, so a test with one could not tell a KILL from no KILL): only a
#: KILL ends it within a minute.
NEVER_ENDS = "SELECT MASTER_GTID_WAIT('0-1-999999999', 60)"


def handle() -> ServiceHandle:
    (h,) = handles()
    return h


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())  # type: ignore[arg-type]


async def sid(conn: sqlrouter.aio.Connection) -> int:
    async with conn.cursor() as cur:
        await cur.execute("SELECT @@server_id")
        row = await cur.fetchone()
    return int(row[0])


def node_with(sb: Sandbox, server_id: int) -> str:
    return next(n.name for n in sb.nodes if n.server_id == server_id)


def threads_running(sb: Sandbox, node: str, thread_id: int) -> list[tuple[Any, ...]]:
    """The server thread ``thread_id`` on ``node``, if it still exists."""
    return [
        row
        for row in sb.query(node, "SELECT ID, COMMAND, INFO FROM information_schema.PROCESSLIST")
        if row[0] == thread_id
    ]


def test_routes_like_the_sync_driver(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        with sqlrouter.session():  # the reader reads the writer's writes
            rw = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
            ro = await sqlrouter.aio.connect(sb.url("RO_RELAXED", max_lag=5))
        try:
            assert rw.datasource is not None and rw.datasource.name == sb.state.master
            assert node_with(sb, await sid(rw)) == sb.state.master
            assert ro.datasource is not None and ro.datasource.name != sb.state.master
            assert node_with(sb, await sid(ro)) == ro.datasource.name
            assert repr(rw).startswith("<sqlrouter.aio.Connection service=")
            assert sb.state.app.password not in repr(rw) + str(rw.url)
            async with rw.cursor() as cur:
                await cur.execute("CREATE OR REPLACE TABLE appdb.aio_t (id INT PRIMARY KEY, v INT)")
                await cur.executemany("INSERT INTO appdb.aio_t VALUES (%s, %s)", [(1, 10), (2, 20)])
            async with ro.cursor(sqlrouter.aio.DictCursor) as cur:
                await cur.execute("SELECT id, v FROM appdb.aio_t ORDER BY id")
                assert await cur.fetchall() == [{"id": 1, "v": 10}, {"id": 2, "v": 20}]
            async with ro.cursor(sqlrouter.aio.SSCursor) as cur:
                await cur.execute("SELECT id FROM appdb.aio_t ORDER BY id")
                assert [r[0] for r in await cur.fetchall()] == [1, 2]
            await ro.commit()
            assert handle().open_connections() == {
                sb.state.master: 1,
                ro.datasource.name: 1,
            }
        finally:
            rw.close()
            await ro.ensure_closed()
        assert handle().open_connections() == {}
        async with sqlrouter.aio.connect(sb.url("RW_STRICT")) as conn:
            assert node_with(sb, await sid(conn)) == sb.state.master
        assert conn.closed

    run(main)


def test_same_errors_and_numbers_as_the_sync_driver(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        with pytest.raises(sqlrouter.OperationalError) as info:
            await sqlrouter.aio.connect(sb.url("RW_STRICT"), password="wrong")
        assert info.value.args[0] == 1045 and "authentication failed" in str(info.value)
        assert "wrong" not in str(info.value)
        with pytest.raises(sqlrouter.ProgrammingError, match="no service 'nope'"):
            await sqlrouter.aio.connect(sb.url("RW_STRICT"), service="nope")
        replicas = [n.name for n in sb.nodes if n.name != sb.state.master]
        for name in replicas:
            handle().monitor.set_offline(name, True)
        try:
            with pytest.raises(sqlrouter.NoReplicaAvailable) as none:
                await sqlrouter.aio.connect(sb.url("RO_RELAXED", fallback="error"))
        finally:
            for name in replicas:
                handle().monitor.set_offline(name, False)
        assert none.value.args[0] == sqlrouter.errors.ER_NO_REPLICA
        assert all(name in str(none.value) for name in replicas)
        assert "offline" in str(none.value)

    run(main)


def test_write_gtid_is_captured_without_a_round_trip(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        with sqlrouter.session() as session:
            conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"))
            async with conn.cursor() as cur:
                await cur.execute("CREATE TABLE IF NOT EXISTS appdb.aio_g (id INT PRIMARY KEY)")
                await cur.execute("SHOW SESSION STATUS LIKE 'Com_select'")
                before = int((await cur.fetchone())[1])
                await cur.execute("INSERT INTO appdb.aio_g VALUES (%s)", (time.time_ns() % 10**9,))
            await conn.commit()
            autocommit_token = str(session.token)
            async with conn.cursor() as cur:
                await cur.execute("SHOW SESSION STATUS LIKE 'Com_select'")
                after = int((await cur.fetchone())[1])
                # This session's commit: not @@gtid_binlog_pos, which the heartbeat moves.
                await cur.execute("SELECT @@last_gtid")
                master_pos = (await cur.fetchone())[0]
            conn.close()
        assert after == before  # no SELECT @@last_gtid was sent
        assert autocommit_token == master_pos == str(conn.causal_token)

    run(main)


def test_tasks_share_the_session_they_were_created_in(cluster: Sandbox) -> None:
    """contextvars: a task sees the sqlrouter.session() of the code that created it;
    tasks of different sessions do not mix their tokens."""
    sb = cluster

    async def writer(n: int) -> str:
        conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO appdb.aio_s VALUES (%s)", (n,))
        conn.close()
        return str(conn.causal_token)

    async def main() -> None:
        async with (
            sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True) as setup,
            setup.cursor() as cur,
        ):
            await cur.execute("CREATE OR REPLACE TABLE appdb.aio_s (id INT PRIMARY KEY)")
        with sqlrouter.session() as shared:
            tokens = await asyncio.gather(*(writer(n) for n in range(8)))
        # Each task's connection wrote into the one session: its token covers them all.
        assert all(shared.token.covers(sqlrouter.CausalToken.parse(t)) for t in tokens)
        with sqlrouter.session() as other:
            await asyncio.create_task(writer(100))
        assert other.token != shared.token and not shared.token.covers(other.token)

    run(main)


def test_causal_token_parameter(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        async with sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True) as rw:
            async with rw.cursor() as cur:
                await cur.execute("CREATE OR REPLACE TABLE appdb.aio_c (id INT PRIMARY KEY)")
                await cur.execute("INSERT INTO appdb.aio_c VALUES (1)")
            token = str(rw.causal_token)
        # Another "process": a new session continued from the token.
        ro = await sqlrouter.aio.connect(sb.url("RO_RELAXED", max_lag=5), causal_token=token)
        assert ro.session is not None and ro.session.token.covers(
            sqlrouter.CausalToken.parse(token)
        )
        async with ro.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM appdb.aio_c")
            assert (await cur.fetchone())[0] == 1
        ro.close()

    run(main)


def test_relaxed_connection_moves_when_its_replica_goes_offline(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        ro = await sqlrouter.aio.connect(sb.url("RO_RELAXED", max_lag=5), autocommit=True)
        rw = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
        assert ro.datasource is not None
        first = ro.datasource.name
        try:
            handle().monitor.set_offline(first, True)
            assert node_with(sb, await sid(ro)) != first  # moved; the read did not fail
            assert handle().open_connections().get(first, 0) == 0
            handle().monitor.set_offline(sb.state.master, True)
            with pytest.raises(sqlrouter.ConnectionInvalidated) as info:
                await sid(rw)
            assert "taken offline" in str(info.value)
        finally:
            handle().monitor.set_offline(first, False)
            handle().monitor.set_offline(sb.state.master, False)
            ro.close()
            rw.close()

    run(main)


def test_cancelled_statement_is_stopped_on_the_server(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        conn = await sqlrouter.aio.connect(sb.url("RO_RELAXED", max_lag=5), autocommit=True)
        assert conn.datasource is not None
        node, thread_id = conn.datasource.name, conn.thread_id()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), conn.cursor() as cur:
                await cur.execute(NEVER_ENDS)
        # Not in an undefined state: closed, saying why, and no longer counted.
        assert conn.closed
        assert handle().open_connections() == {}
        with pytest.raises(sqlrouter.InterfaceError, match="cancelled during a statement"):
            await sid(conn)
        # The statement does not run on: its server thread is gone (KILL CONNECTION).
        wait_until(lambda: not threads_running(sb, node, thread_id), 10, "the thread ends")

    run(main)


def test_read_timeout_stops_the_statement(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        conn = await sqlrouter.aio.connect(sb.url("RW_STRICT", read_timeout=0.5), autocommit=True)
        thread_id = conn.thread_id()
        with pytest.raises(sqlrouter.OutcomeUnknown) as info:
            async with conn.cursor() as cur:
                await cur.execute(NEVER_ENDS)
        assert info.value.args[0] == 2013 and "read_timeout 0.5s" in str(info.value)
        assert "in autocommit mode: its outcome is unknown" in str(info.value)
        wait_until(
            lambda: not threads_running(sb, sb.state.master, thread_id), 10, "the thread ends"
        )

    run(main)


def test_the_loop_never_blocks_while_100_connections_open(cluster: Sandbox) -> None:
    """The first monitor round (made slow: a frozen replica takes probe_timeout), finding
    the registry and the service all happen off the loop, while a probe task ticks."""
    sb = cluster
    sqlrouter.shutdown()  # no monitor, no service found yet: a cold start
    loop_thread: list[int] = []
    off_loop: list[tuple[str, int]] = []
    original_snapshot = ServiceHandle.snapshot
    original_handle_for = _runtime.handle_for

    def snapshot(self: ServiceHandle, *args: Any, **kwargs: Any) -> Any:
        off_loop.append(("snapshot", threading.get_ident()))
        return original_snapshot(self, *args, **kwargs)

    def handle_for(*args: Any, **kwargs: Any) -> Any:
        off_loop.append(("handle_for", threading.get_ident()))
        return original_handle_for(*args, **kwargs)

    async def probe(gaps: list[float], stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def main() -> tuple[list[float], float]:
        loop_thread.append(threading.get_ident())
        gaps: list[float] = []
        stop = asyncio.Event()
        ticking = asyncio.create_task(probe(gaps, stop))
        url = sb.url("RO_RELAXED", max_lag=5, autocommit="true")
        started = time.monotonic()
        conns = await asyncio.gather(*(sqlrouter.aio.connect(url) for _ in range(100)))
        took = time.monotonic() - started
        stop.set()
        await ticking
        assert len({c.datasource_name for c in conns} - {None}) >= 1
        for conn in conns:
            await conn.ensure_closed()
        return gaps, took

    replica = next(n.name for n in sb.nodes if n.name != sb.state.master)
    sb.fault(replica, "freeze")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ServiceHandle, "snapshot", snapshot)
            mp.setattr(_runtime, "handle_for", handle_for)
            gaps, took = run(main)
    finally:
        sb.fault(replica, "thaw")
    assert {what for what, _ in off_loop} == {"snapshot", "handle_for"}
    assert all(ident != loop_thread[0] for _, ident in off_loop), off_loop
    # The connects waited for the slow first round; the loop went on ticking meanwhile
    # (a relative bound: a blocked loop would show a gap as long as that wait).
    assert took >= 1.0
    assert max(gaps) < took / 2, (max(gaps), took)


def test_forked_child_runs_its_own_loop_and_never_touches_the_parents(cluster: Sandbox) -> None:
    sb = cluster

    async def child_main(inherited: sqlrouter.aio.Connection) -> dict[str, Any]:
        out: dict[str, Any] = {"inherited_from": inherited.inherited_from}
        try:
            await sid(inherited)
        except sqlrouter.ConnectionInvalidated as exc:
            out["error"] = type(exc).__name__
            out["says"] = "before fork()" in str(exc)
        async with sqlrouter.aio.connect(sb.url("RW_STRICT")) as fresh:
            out["fresh"] = await sid(fresh)
        return out

    async def main() -> dict[str, Any]:
        conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
        thread_id = conn.thread_id()
        result = await in_forked_child(lambda: child_main(conn))
        # The parent's connection still works: the child sent nothing on its socket.
        result["parent"] = await sid(conn)
        result["same_thread"] = conn.thread_id() == thread_id
        conn.close()
        return result

    result = run(main)
    assert "traceback" not in result, result.get("traceback")
    master_id = sb.node(sb.state.master).server_id
    assert result["inherited_from"] == os.getpid()
    assert result["error"] == "ConnectionInvalidated" and result["says"]
    assert result["fresh"] == master_id == result["parent"]
    assert result["same_thread"]


def test_switchover_invalidates_writers_and_new_ones_follow(fresh_cluster: Sandbox) -> None:
    sb = fresh_cluster

    async def main() -> None:
        with sqlrouter.session():
            rw = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
            async with rw.cursor() as cur:
                await cur.execute("CREATE TABLE appdb.aio_sw (id INT PRIMARY KEY)")
                await cur.execute("INSERT INTO appdb.aio_sw VALUES (1)")
            # The switchover leaves the old master's client connections open: sqlrouter
            # must not let this one write there (it is read-only now, and behind).
            # The monitor installs the new snapshot, then invalidates the connections and
            # publishes the events: wait for the events, not for the snapshot.
            moved = threading.Event()

            def seen(event: sqlrouter.events.Event) -> None:
                if event.datasource == "db2":
                    moved.set()

            with sqlrouter.events.subscribe("master_changed", seen):
                await asyncio.to_thread(switchover, sb.service(), "db2", disconnect_clients=False)
                assert await asyncio.to_thread(moved.wait, 20)
            master = observed_master(handle().monitor.snapshot)
            assert master is not None and master.name == "db2"
            with pytest.raises(sqlrouter.ConnectionInvalidated) as info:
                async with rw.cursor() as cur:
                    await cur.execute("INSERT INTO appdb.aio_sw VALUES (2)")
            assert "db1 is no longer the master" in str(info.value)
            async with sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True) as new:
                assert new.datasource_name == "db2"
                async with new.cursor() as cur:
                    await cur.execute("INSERT INTO appdb.aio_sw VALUES (2)")
            ro = await sqlrouter.aio.connect(sb.url("RO_RELAXED", max_lag=5))
            async with ro.cursor() as cur:  # the session reads its write, wherever it is
                await cur.execute("SELECT COUNT(*) FROM appdb.aio_sw")
                assert (await cur.fetchone())[0] == 2
            ro.close()

    run(main)


def test_tls_asked_for_and_not_offered_fails_as_with_pymysql(cluster: Sandbox) -> None:
    """The sandbox's MariaDB offers no TLS: preferred (no option) connects in clear;
    an option that asks for TLS fails with PyMySQL's error number, 2026."""
    sb = cluster

    async def main() -> None:
        async with sqlrouter.aio.connect(sb.url("RW_STRICT")) as clear:
            assert not clear._secure
        with pytest.raises(sqlrouter.OperationalError) as info:
            await sqlrouter.aio.connect(sb.url("RW_STRICT"), ssl_verify_cert=True)
        assert info.value.args[0] == 2026 and "does not offer TLS" in str(info.value)

    run(main)
    with pytest.raises(sqlrouter.OperationalError) as sync:
        sqlrouter.connect(sb.url("RW_STRICT"), ssl_verify_cert=True)
    assert sync.value.args[0] == 2026
