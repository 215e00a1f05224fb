"""sqlrouter.aio learns the GTID of every write into its session, as the sync driver does:
each statement of a multi-statement query, a streamed write closed before its end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymysql.constants import CLIENT

import sqlrouter
import sqlrouter.aio
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import wait_until

pytestmark = pytest.mark.sandbox


async def last_gtid(conn: sqlrouter.aio.Connection) -> str:
    async with conn.cursor() as cur:
        await cur.execute("SELECT @@last_gtid")
        return str((await cur.fetchone())[0])


def test_each_statement_of_a_multi_statement_write_is_learnt(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> tuple[str, str]:
        with sqlrouter.session() as session:
            conn = await sqlrouter.aio.connect(
                sb.url("RW_STRICT"), autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS
            )
            async with conn.cursor() as cur:
                await cur.execute("CREATE OR REPLACE TABLE appdb.aio_m (v INT)")
                await cur.execute(
                    "INSERT INTO appdb.aio_m VALUES (1); INSERT INTO appdb.aio_m VALUES (2)"
                )
                while await cur.nextset():
                    pass
            token = str(session.token)
            last = await last_gtid(conn)
            conn.close()
        return token, last

    token, last = asyncio.run(main())
    assert token == last  # the second INSERT's GTID, not the first's


def test_ensure_closed_learns_a_streamed_writes_gtid(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> tuple[str, str]:
        with sqlrouter.session() as session:
            conn = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
            async with conn.cursor() as cur:
                await cur.execute("CREATE OR REPLACE TABLE appdb.aio_r (id INT PRIMARY KEY)")
            created = str(session.token)
            cur = await conn.cursor(sqlrouter.aio.SSCursor)
            await cur.execute("INSERT INTO appdb.aio_r SELECT seq FROM seq_1_to_3000 RETURNING id")
            await cur.fetchone()
            await conn.ensure_closed()
            return created, str(session.token)

    created, closed = asyncio.run(main())
    # The INSERT's GTID came after the CREATE's (the monitor's heartbeat writes on the
    # master too: the master's position is not the INSERT's).
    assert closed != created
    assert sqlrouter.CausalToken.parse(closed).covers(sqlrouter.CausalToken.parse(created))


def test_a_write_learnt_while_a_new_reader_waits_is_seen_by_its_read(cluster: Sandbox) -> None:
    """Two tasks of one session: B's new relaxed connection waits (MASTER_GTID_WAIT) for
    A's first write; A writes again meanwhile; B's read, after A's second write ended,
    sees it (the session's version is the one of the token waited for, not the newer)."""
    sb = cluster
    replicas = [n.name for n in sb.nodes if n.name != sb.state.master]

    def waiting() -> bool:
        return any(
            row[0] == "Waiting in MASTER_GTID_WAIT() (primary waiter)"
            for name in replicas
            for row in sb.query(name, "SELECT STATE FROM information_schema.PROCESSLIST")
        )

    async def execute(conn: sqlrouter.aio.Connection, sql: str) -> Any:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return await cur.fetchall()

    async def reader() -> int:
        url = sb.url("RO_RELAXED", max_lag=3600, consistency_wait=30, autocommit="true")
        ro = await sqlrouter.aio.connect(url)
        try:
            rows = await execute(ro, "SELECT COUNT(*) FROM appdb.aio_race WHERE n = 2")
        finally:
            ro.close()
        return int(rows[0][0])

    async def main() -> int:
        with sqlrouter.session():
            rw = await sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True)
            await execute(rw, "CREATE OR REPLACE TABLE appdb.aio_race (n INT)")
            for name in replicas:
                sb.fault(name, "delay", 3)
            try:
                await execute(rw, "INSERT INTO appdb.aio_race VALUES (1)")
                b = asyncio.create_task(reader())
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, wait_until, waiting, 20, "B's wait")
                # The second write's binlog timestamp a second later than the first's:
                # a delayed replica applies it at least a second after (not an assertion).
                await asyncio.sleep(1.1)
                await execute(rw, "INSERT INTO appdb.aio_race VALUES (2)")
                seen = await b
            finally:
                for name in replicas:
                    sb.fault(name, "resume")
                rw.close()
        return seen

    assert asyncio.run(main()) == 1
