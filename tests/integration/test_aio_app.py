"""An asyncio web app (Starlette) on sqlrouter.aio, driven over HTTP in-process, with its
only replica 2 s behind the master: every request sees its own writes, and so does the
async routing session of SQLAlchemy.

The replica's lag (2 s) is within ``max_lag`` (5 s), so it stays the place reads go to;
without the causal token, a read right after a write misses it
(``test_the_replica_really_lags``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import sqlrouter
import sqlrouter.aio
from sqlrouter.contrib.sqlalchemy_orm import async_routing_sessionmaker
from sqlrouter.sandbox import Sandbox
from tests.fixtures.cluster import _make
from tests.fixtures.helpers import wait_until
from tests.fixtures.sqla import sa_url
from tests.integration.test_aio_sqlalchemy import Base, Order

pytestmark = pytest.mark.sandbox

#: The header a client carries its causal token in, from one request to the next.
TOKEN_HEADER = "x-causal-token"


@pytest.fixture(scope="module")
def lagging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One master, one replica applying events 2 s late."""
    sb = _make(tmp_path_factory.mktemp("aio-app") / "sb", replicas=1)
    try:
        sb.query(
            sb.state.master,
            f"CREATE TABLE {sb.state.database}.notes "
            "(id INT AUTO_INCREMENT PRIMARY KEY, owner VARCHAR(20) NOT NULL, body TEXT)",
        )
        replica = next(n.name for n in sb.nodes if n.name != sb.state.master)
        sb.wait_caught_up(replica)
        sb.fault(replica, "delay", 2)
        yield sb
    finally:
        sb.destroy()


class SessionPerRequest:
    """ASGI middleware: each request runs in a sqlrouter.session() continued from the
    token the client sent (if any); the response carries the session's token back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = headers.get(TOKEN_HEADER.encode(), b"").decode() or None
        with sqlrouter.session(token) as session:

            async def send_with_token(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [
                        *message.get("headers", []),
                        (TOKEN_HEADER.encode(), str(session.token).encode()),
                    ]
                await send(message)

            await self.app(scope, receive, send_with_token)


def make_app(sb: Sandbox) -> Starlette:
    rw_url = sb.url("RW_STRICT", autocommit="true")
    ro_url = sb.url("RO_RELAXED", max_lag=5, autocommit="true", consistency_wait=5)

    async def add(request: Request) -> Response:
        owner = request.path_params["owner"]
        body = (await request.body()).decode()
        async with sqlrouter.aio.connect(rw_url) as rw, rw.cursor() as cur:
            await cur.execute("INSERT INTO notes (owner, body) VALUES (%s, %s)", (owner, body))
        # The same request reads what it wrote, on the replica.
        return JSONResponse({"notes": await notes_of(owner)})

    async def notes_of(owner: str) -> list[str]:
        async with sqlrouter.aio.connect(ro_url) as ro, ro.cursor() as cur:
            await cur.execute("SELECT body FROM notes WHERE owner = %s ORDER BY id", (owner,))
            rows = await cur.fetchall()
            where = ro.datasource_name
        assert where is not None
        return [str(r[0]) for r in rows]

    async def show(request: Request) -> Response:
        return JSONResponse({"notes": await notes_of(request.path_params["owner"])})

    app = Starlette(
        routes=[
            Route("/notes/{owner}", add, methods=["POST"]),
            Route("/notes/{owner}", show, methods=["GET"]),
        ]
    )
    app.add_middleware(SessionPerRequest)
    return app


@contextlib.asynccontextmanager
async def client(sb: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(sb))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
        yield c


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_the_replica_really_lags(lagging: Sandbox) -> None:
    """The control: without a token, a read right after a write misses it."""
    sb = lagging

    async def main() -> None:
        async with (
            sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True) as rw,
            rw.cursor() as cur,
        ):
            await cur.execute("INSERT INTO notes (owner, body) VALUES ('control', 'x')")
        ro_url = sb.url("RO_RELAXED", max_lag=5, consistency="none")
        async with sqlrouter.aio.connect(ro_url) as ro, ro.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM notes WHERE owner = 'control'")
            assert (await cur.fetchone())[0] == 0
            assert ro.datasource_name != sb.state.master

    run(main)


def test_every_request_sees_its_own_writes(lagging: Sandbox) -> None:
    sb = lagging

    async def user(c: httpx.AsyncClient, owner: str, writes: int) -> None:
        token = ""
        for n in range(writes):
            headers = {TOKEN_HEADER: token} if token else {}
            posted = await c.post(f"/notes/{owner}", content=f"note {n}", headers=headers)
            assert posted.status_code == 200, posted.text
            assert posted.json()["notes"] == [f"note {i}" for i in range(n + 1)]
            token = posted.headers[TOKEN_HEADER]
            # The next request, carrying the token, sees it too.
            shown = await c.get(f"/notes/{owner}", headers={TOKEN_HEADER: token})
            assert shown.json()["notes"] == [f"note {i}" for i in range(n + 1)]

    async def main() -> None:
        async with client(sb) as c:
            await asyncio.gather(*(user(c, f"user{u}", 4) for u in range(6)))

    run(main)


def test_async_routing_session_reads_its_writes_on_a_lagging_replica(lagging: Sandbox) -> None:
    sb = lagging

    async def main() -> None:
        writer = create_async_engine(sa_url(sb, "RW_STRICT"))
        reader = create_async_engine(sa_url(sb, "RO_RELAXED", max_lag=5, consistency_wait=5))
        try:
            async with writer.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            factory = async_routing_sessionmaker(writer, reader)
            async with factory() as session:
                for n in range(1, 4):
                    session.add(Order(id=n, item=f"item-{n}"))
                    await session.commit()
                    ids: list[int] = list((await session.scalars(select(Order.id))).all())
                    assert ids == list(range(1, n + 1))
                    where = (await session.execute(text("SELECT @@server_id"))).scalar()
            replica = next(n for n in sb.nodes if n.name != sb.state.master)
            assert where == replica.server_id  # the reads ran on the lagging replica
        finally:
            await writer.dispose()
            await reader.dispose()

    run(main)


def _app_threads(sb: Sandbox, node: str, text_part: str) -> list[tuple[Any, ...]]:
    rows = sb.query(
        node, "SELECT ID, USER, INFO FROM information_schema.PROCESSLIST WHERE INFO IS NOT NULL"
    )
    return [r for r in rows if r[1] == sb.state.app.user and text_part in str(r[2])]


def test_cancelled_mid_consistency_wait(lagging: Sandbox) -> None:
    """A read waiting (MASTER_GTID_WAIT) for the replica to reach the session's token,
    cancelled: no connection left open, and the wait does not go on in the server."""
    sb = lagging
    replica = next(n.name for n in sb.nodes if n.name != sb.state.master)

    async def main() -> None:
        with sqlrouter.session():
            async with (
                sqlrouter.aio.connect(sb.url("RW_STRICT"), autocommit=True) as rw,
                rw.cursor() as cur,
            ):
                await cur.execute("INSERT INTO notes (owner, body) VALUES ('wait', 'x')")
            (handle,) = sqlrouter._runtime.handles()
            for _ in range(200):  # the monitor sees the replica replicate again
                if handle.monitor.snapshot.health_of(replica).lag is not None:
                    break
                await asyncio.sleep(0.05)
            url = sb.url("RO_RELAXED", max_lag=3600, fallback="error", consistency_wait=60)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await sqlrouter.aio.connect(url)
        assert handle.open_connections() == {}

    sb.fault(replica, "delay", 120)  # the replica will not reach the token for 2 minutes
    try:
        run(main)
        wait_until(lambda: not _app_threads(sb, replica, "MASTER_GTID_WAIT"), 10, "the wait ends")
    finally:
        sb.fault(replica, "delay", 2)


def test_cancelled_mid_failover_wait(lagging: Sandbox) -> None:
    """A writer waiting (failover_timeout) for a writable master, cancelled: it stops at
    once, with nothing open."""
    sb = lagging
    master = sb.state.master

    async def main() -> None:
        url = sb.url("RW_STRICT", failover_timeout=60)
        task = asyncio.create_task(sqlrouter.aio.connect(url))
        await asyncio.sleep(1.0)
        assert not task.done()  # waiting for a master
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (handle,) = sqlrouter._runtime.handles()
        assert handle.open_connections() == {}

    sb.query(master, "SET GLOBAL read_only = 1")  # no writable master
    try:
        run(main)
        assert not _app_threads(sb, master, "")
    finally:
        sb.query(master, "SET GLOBAL read_only = 0")
