"""create_async_engine("mysql+sqlrouter://..."): the asyncio dialect, its pool, and the
async routing session, against a real cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Column, Integer, String, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase

import sqlrouter
import sqlrouter.aio
from sqlrouter.contrib._sqlalchemy_async import (
    AsyncMariaDBDialect_sqlrouter,
    AsyncMySQLDialect_sqlrouter,
)
from sqlrouter.contrib._sqlalchemy_pool import follower_of
from sqlrouter.contrib.sqlalchemy_orm import AsyncRoutingSession, async_routing_sessionmaker
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import wait_until
from tests.fixtures.sqla import sa_url

pytestmark = pytest.mark.sandbox


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "aio_orders"
    id = Column(Integer, primary_key=True)
    item = Column(String(40), nullable=False)


def test_the_sync_url_gives_the_async_dialect() -> None:
    sync = sqlalchemy.create_engine("mysql+sqlrouter://app:pw@shop/db?qos=RO_RELAXED")
    engine = create_async_engine("mysql+sqlrouter://app:pw@shop/db?qos=RO_RELAXED")
    named = create_async_engine("mysql+sqlrouter_async://app:pw@shop/db")
    maria = create_async_engine("mariadb+sqlrouter://app:pw@shop/db")
    assert type(engine.dialect) is AsyncMySQLDialect_sqlrouter is type(named.dialect)
    assert type(maria.dialect) is AsyncMariaDBDialect_sqlrouter
    # The same URL, read by the same parser, gives the same connect arguments.
    assert engine.dialect.create_connect_args(engine.url) == sync.dialect.create_connect_args(
        sync.url
    )
    with pytest.raises(sqlalchemy.exc.ArgumentError, match="a port is not accepted"):
        create_async_engine("mysql+sqlrouter://app:pw@shop:3306/db").dialect.create_connect_args(
            sqlalchemy.engine.make_url("mysql+sqlrouter://app:pw@shop:3306/db")
        )


def _threads(sb: Sandbox, node: str, thread_id: int) -> list[Any]:
    rows = sb.query(node, "SELECT ID FROM information_schema.PROCESSLIST")
    return [r for r in rows if r[0] == thread_id]


def test_engine_routes_follows_events_and_survives_cancellation(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        rw = create_async_engine(sa_url(sb, "RW_STRICT"), pool_size=1, max_overflow=0)
        ro = create_async_engine(sa_url(sb, "RO_RELAXED", max_lag=5), pool_pre_ping=True)
        try:
            async with rw.begin() as conn:
                await conn.execute(text("CREATE OR REPLACE TABLE aio_sa (id INT PRIMARY KEY)"))
                await conn.execute(text("INSERT INTO aio_sa VALUES (1)"))
                assert (await conn.execute(text("SELECT @@server_id"))).scalar() == (
                    sb.node(sb.state.master).server_id
                )
            async with ro.connect() as conn:
                sid = (await conn.execute(text("SELECT @@server_id"))).scalar()
                assert sid != sb.node(sb.state.master).server_id
            assert follower_of(rw.sync_engine) is not None
            # A task cancelled mid-query: its connection is not handed to the next
            # user as it is, and the statement does not run on in the server.
            async with rw.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert isinstance(driver, sqlrouter.aio.Connection)
                thread_id = driver.thread_id()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5), rw.connect() as conn:
                    await conn.execute(text("SELECT SLEEP(60)"))
            async with rw.connect() as conn:  # pool_size=1: the same slot, a clean connection
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
                raw = await conn.get_raw_connection()
                assert raw.driver_connection is not driver
            wait_until(lambda: not _threads(sb, sb.state.master, thread_id), 10, "the thread ends")
        finally:
            await rw.dispose()
            await ro.dispose()

    asyncio.run(main())


def test_async_routing_session_reads_its_writes_with_one_token(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        writer = create_async_engine(sa_url(sb, "RW_STRICT"))
        reader = create_async_engine(sa_url(sb, "RO_RELAXED", max_lag=5))
        try:
            async with writer.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                await conn.run_sync(Base.metadata.create_all)
            factory = async_routing_sessionmaker(writer, reader)
            async with factory() as session:
                assert isinstance(session, AsyncRoutingSession)
                for n in range(1, 21):  # (id 0 would ask AUTO_INCREMENT for one)
                    session.add(Order(id=n, item=f"item-{n}"))
                    await session.commit()
                    rows: list[int] = list((await session.scalars(select(Order.id))).all())
                    assert n in rows  # read on a replica after the commit: seen
                token = str(session.causal_token)
            assert token and token == str(session.sqlrouter_session.token)
            # The token carries on to another session (another request, say).
            async with factory(causal_token=token) as later:
                assert len((await later.scalars(select(Order.id))).all()) == 20
            with pytest.raises(sqlalchemy.exc.ArgumentError, match="AsyncEngine"):
                AsyncRoutingSession(writer=writer.sync_engine, reader=reader)  # type: ignore[arg-type]
        finally:
            await writer.dispose()
            await reader.dispose()

    asyncio.run(main())


def _engine(url: str, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(url, **kwargs)


def test_pool_replaces_connections_an_event_concerns(cluster: Sandbox) -> None:
    sb = cluster

    async def main() -> None:
        ro = _engine(sa_url(sb, "RO_RELAXED", max_lag=5), pool_size=1, max_overflow=0)
        try:
            async with ro.connect() as conn:
                first = (await conn.execute(text("SELECT @@server_id"))).scalar()
            name = next(n.name for n in sb.nodes if n.server_id == first)
            (handle,) = sqlrouter._runtime.handles()
            handle.monitor.set_offline(name, True)
            try:
                follower = follower_of(ro.sync_engine)
                assert follower is not None
                deadline = time.monotonic() + 10
                while follower.replaced == 0 and time.monotonic() < deadline:
                    async with ro.connect() as conn:
                        now = (await conn.execute(text("SELECT @@server_id"))).scalar()
                assert follower.replaced == 1 and now != first
            finally:
                handle.monitor.set_offline(name, False)
        finally:
            await ro.dispose()

    asyncio.run(main())
