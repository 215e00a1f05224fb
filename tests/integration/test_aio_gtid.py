"""sqlrouter.aio learns the GTID of every write into its session, as the sync driver does:
each statement of a multi-statement query, a streamed write closed before its end."""

from __future__ import annotations

import asyncio

import pytest
from pymysql.constants import CLIENT

import sqlrouter
import sqlrouter.aio
from sqlrouter.sandbox import Sandbox

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
