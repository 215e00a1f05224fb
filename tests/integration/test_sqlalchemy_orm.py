"""Routing ORM sessions, and pools that follow the cluster, against real sandbox clusters.

``sqlrouter.contrib.sqlalchemy_orm.RoutingSession`` (writes on the master, reads on
replicas, one causal token per session) and the pool listeners that every
``mysql+sqlrouter`` engine gets (``sqlrouter/contrib/_sqlalchemy_pool.py``).  Read-your-
writes is checked on a private cluster whose two replicas apply each transaction
``DELAY`` seconds late; switchovers and a dead replica on private clusters of their own.
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy
from sqlalchemy import (
    String,
    create_engine,
    delete,
    event,
    exc,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateTable

import sqlrouter
from sqlrouter import events
from sqlrouter.contrib._sqlalchemy_pool import condemnation, follow, follower_of
from sqlrouter.contrib.sqlalchemy_orm import RoutingSession, routing_sessionmaker, writes
from sqlrouter.gtid import CausalToken
from sqlrouter.sandbox import Sandbox, SandboxError, find_server_binaries
from sqlrouter.switchover import switchover
from tests.fixtures.helpers import wait_until
from tests.fixtures.sqla import sa_url

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "sqlalchemy.md"
#: The sections of docs/sqlalchemy.md whose examples run here, on the lagging cluster.
DOC_SECTIONS = (
    "Routing ORM sessions",
    "Session consistency with engines",
    "Pools follow the cluster",
)
#: MASTER_DELAY of both replicas of the lagging cluster, in seconds.
DELAY = 2
#: A max_lag that the delayed replicas meet: they serve reads, late.
MAX_LAG = 10


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "orm_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tag: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int] = mapped_column(default=0)


def dbapi(conn: sqlalchemy.Connection) -> sqlrouter.Connection:
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlrouter.Connection)
    return raw


def new_tag() -> str:
    return uuid.uuid4().hex


@dataclass
class Served:
    """Where each statement ran: ``(engine, datasource, first word)``."""

    rows: list[tuple[str, str | None, str]] = field(default_factory=list)
    every: list[tuple[str, str | None, str]] = field(default_factory=list)

    def watch(self, engine: Engine, name: str) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def record(conn: sqlalchemy.Connection, cursor: Any, statement: str, *rest: Any) -> None:
            row = (name, dbapi(conn).datasource_name, statement.split(None, 1)[0])
            self.rows.append(row)
            self.every.append(row)

    def take(self) -> list[tuple[str, str]]:
        """``(engine, first word)`` of each statement since the last take."""
        out = [(engine, word.upper()) for engine, _, word in self.rows]
        self.rows.clear()
        return out


def routed(sb: Sandbox, engines: Callable[..., Engine], **reader: Any) -> tuple[Engine, Engine]:
    params = {"max_lag": MAX_LAG, **reader}
    return engines(sa_url(sb, "RW_STRICT")), engines(sa_url(sb, "RO_RELAXED", **params))


def count_tag(conn: sqlalchemy.Connection, tag: str) -> int:
    return int(
        conn.execute(text("SELECT COUNT(*) FROM orm_items WHERE tag = :t"), {"t": tag}).scalar_one()
    )


# --------------------------------------------------------------------------------------
# Without a server: classification, arguments, the pool's rules


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (select(Item), False),
        (select(Item).where(Item.tag == "x").limit(3), False),
        (select(func.count()).select_from(Item), False),
        (union_all(select(Item.id), select(Item.id)), False),
        (select(Item).with_for_update(), True),
        (select(Item).with_for_update(read=True), True),
        (insert(Item).values(tag="x", name="y"), True),
        (update(Item).values(qty=1), True),
        (delete(Item), True),
        (CreateTable(Item.__table__), True),  # type: ignore[arg-type]  # a mapped Table
        (text("SELECT 1"), False),
        (text("  select * from orm_items"), False),
        (text("(SELECT 1) UNION (SELECT 2)"), False),
        (text("SHOW TABLES"), False),
        (text("DESCRIBE orm_items"), False),
        (text("EXPLAIN SELECT 1"), False),
        (text("WITH x AS (SELECT 1 AS a) SELECT a FROM x"), False),
        (
            text("WITH x AS (SELECT 1 AS a) DELETE FROM orm_items WHERE id IN (SELECT a FROM x)"),
            True,
        ),
        (text("SELECT 'update' AS word"), False),
        (text("SELECT * FROM orm_items FOR UPDATE"), True),
        (text("SELECT * FROM orm_items LOCK IN SHARE MODE"), True),
        (text("SELECT 1 INTO @x"), True),
        (text("SELECT 1; DELETE FROM orm_items"), True),
        (text("UPDATE orm_items SET qty = 0"), True),
        (text("CALL refresh_totals()"), True),
        (text("/* in doubt */ SELECT 1"), True),
        (text("SELECT id FROM orm_items").columns(Item.id), False),
        (text("SELECT id FROM orm_items FOR UPDATE").columns(Item.id), True),
        (select(Item).from_statement(text("SELECT * FROM orm_items")), False),
        (None, True),
    ],
)
def test_what_writes(statement: Any, expected: bool) -> None:
    assert writes(statement) is expected


def shop_engines() -> tuple[Engine, Engine]:
    """Engines of service 'shop' (creating an engine connects nowhere)."""
    return (
        create_engine("mysql+sqlrouter://app:pw@shop/shopdb?qos=RW_STRICT"),
        create_engine("mysql+sqlrouter://app:pw@shop/shopdb?qos=RO_RELAXED"),
    )


def test_get_bind_routes_and_follows_the_transaction() -> None:
    writer, reader = shop_engines()
    session = RoutingSession(writer=writer, reader=reader)
    reads, writes_ = select(Item), update(Item).values(qty=1)
    assert session.get_bind(clause=reads) is reader
    assert session.get_bind(mapper=Item.__mapper__, clause=reads) is reader
    with session.begin():  # begins without connecting
        assert session.get_bind(clause=reads) is reader
        assert session.get_bind() is writer  # Session.connection(): nothing to classify
        assert session.get_bind(clause=reads) is writer  # ...so it may have written
    assert session.get_bind(clause=reads) is reader  # the transaction ended
    with session.begin():
        assert session.get_bind(clause=writes_) is writer
        assert session.get_bind(clause=reads) is writer  # stays: the transaction wrote
        assert session.get_bind(clause=reads.execution_options(qos="ro_relaxed")) is reader
        session.begin_nested().rollback()  # a savepoint: the transaction still wrote
        assert session.get_bind(clause=reads) is writer
    assert session.get_bind(clause=reads) is reader
    # qos=RW_STRICT forces the master for one statement only.
    assert session.get_bind(clause=reads.execution_options(qos="RW_STRICT")) is writer
    assert session.get_bind(clause=reads, qos=sqlrouter.QoS.RW_STRICT) is writer
    assert session.get_bind(clause=reads) is reader
    # The caller's bind wins.
    assert session.get_bind(clause=writes_, bind=reader) is reader
    with pytest.raises(exc.InvalidRequestError, match=r"qos='RO_RELAXED' given for .*UPDATE"):
        session.get_bind(clause=writes_.execution_options(qos="RO_RELAXED"))
    with pytest.raises(exc.ArgumentError, match=r"invalid qos execution option 'FAST'"):
        session.get_bind(clause=reads.execution_options(qos="FAST"))
    assert repr(session).startswith("<RoutingSession service='shop' wrote=")


def test_routing_session_arguments() -> None:
    writer, reader = shop_engines()
    other = create_engine("mysql+sqlrouter://app:pw@other/shopdb?qos=RO_RELAXED")
    sqlite = create_engine("sqlite://")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"writer": sqlite, "reader": reader}, "writer must be a mysql+sqlrouter"),
        ({"writer": writer, "reader": "reader"}, "reader must be a SQLAlchemy Engine"),
        ({"writer": writer, "reader": writer}, "not the same engine"),
        ({"writer": writer, "reader": other}, "one service, not 'shop' and 'other'"),
        ({"writer": writer, "reader": reader, "bind": writer}, "bind= is not accepted"),
        ({"writer": writer, "reader": reader, "binds": {Item: writer}}, "binds= is not"),
    ]
    for kwargs, message in bad:
        with pytest.raises(exc.ArgumentError, match=re.escape(message)):
            RoutingSession(**kwargs)
    with pytest.raises(exc.ArgumentError, match="writer must be"):
        routing_sessionmaker(sqlite, reader)

    maker = routing_sessionmaker(writer, reader, expire_on_commit=False)
    one = maker(causal_token="0-1-5")
    assert isinstance(one, RoutingSession)
    assert one.writer is writer and one.reader is reader and one.bind is writer
    assert one.causal_token == CausalToken.parse("0-1-5")
    assert maker(causal_token=one.sqlrouter_session).sqlrouter_session is one.sqlrouter_session
    assert maker().sqlrouter_session is not maker().sqlrouter_session
    with sqlrouter.session("0-1-9") as current:
        assert maker().sqlrouter_session is current


def test_which_pooled_connections_an_event_condemns() -> None:
    rw, ro = sqlrouter.QoS.RW_STRICT, sqlrouter.QoS.RO_RELAXED
    changed = events.Event("master_changed", "shop", "db2", previous="db1")
    lost = events.Event("master_changed", "shop", None, previous="db1")
    down = events.Event("datasource_down", "shop", "db3", detail="refused")
    offline = events.Event("datasource_offline", "shop", "db3", detail="operator")
    lag = events.Event("lag_exceeded", "shop", "db3")

    def why(ev: events.Event, qos: sqlrouter.QoS, ds: str | None, svc: str = "shop") -> str | None:
        return condemnation(ev, service=svc, qos=qos, datasource=ds)

    assert why(changed, rw, "db1") == "db1 is no longer the master (now: db2)"
    assert why(lost, rw, "db1") == "db1 is no longer the master (now: none)"
    assert why(changed, ro, "db2") == "db2 became the master (reads go to the replicas)"
    assert why(down, rw, "db3") == why(down, ro, "db3") == "db3 went down (refused)"
    assert why(offline, ro, "db3") == "db3 was taken offline by an operator"
    for args in [
        (changed, ro, "db1"),  # the old master serves reads as well as any replica
        (changed, rw, "db2"),  # already on the new master
        (changed, ro, "db3"),
        (down, ro, "db2"),
        (lag, ro, "db3"),
        (changed, rw, None),  # closed
    ]:
        assert why(*args) is None, args
    assert why(changed, rw, "db1", svc="other") is None


def test_engines_follow_once_and_unsubscribe_when_collected() -> None:
    gc.collect()  # the engines of earlier tests
    before = len(events._subscriptions)
    engine = create_engine("mysql+sqlrouter://app:pw@shop/shopdb")
    follower = follower_of(engine)
    assert follower is not None and follow(engine) is follower
    assert repr(follower) == (
        "<PoolFollower mysql+sqlrouter://app:***@shop/shopdb [Connections: 0 known, "
        "0 to replace | replaced: 0]>"
    )
    assert len(events._subscriptions) == before + 1
    assert follower_of(create_engine("sqlite://")) is None
    gone = weakref.ref(follower)
    del engine, follower
    gc.collect()
    assert gone() is None
    assert len(events._subscriptions) == before


# --------------------------------------------------------------------------------------
# The shared cluster


@pytest.fixture
def items(cluster: Sandbox) -> Iterator[Sandbox]:
    engine = create_engine(sa_url(cluster, "RW_STRICT"), poolclass=sqlalchemy.pool.NullPool)
    Base.metadata.create_all(engine)
    for replica in ("db2", "db3"):
        cluster.wait_caught_up(replica)
    try:
        yield cluster
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_statements_run_where_they_are_routed(
    items: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer, reader = routed(items, engines)
    served = Served()
    served.watch(writer, "writer")
    served.watch(reader, "reader")
    tag = new_tag()
    by_tag = select(Item).where(Item.tag == tag)
    Session = routing_sessionmaker(writer, reader)
    with Session() as session:
        assert session.scalars(by_tag).all() == []
        assert served.take() == [("reader", "SELECT")]
        session.add(Item(tag=tag, name="first"))
        # Autoflush: the INSERT, then the query on the master, in the same transaction.
        assert [i.name for i in session.scalars(by_tag)] == ["first"]
        assert served.take() == [("writer", "INSERT"), ("writer", "SELECT")]
        session.commit()
        assert served.take() == []  # COMMIT is not a cursor statement
        assert session.scalars(by_tag).one().name == "first"  # a new transaction: a replica
        assert served.take() == [("reader", "SELECT")]
        session.scalars(by_tag.with_for_update()).one().qty = 3
        session.scalars(by_tag).one()  # after a lock, the master (autoflush first)
        session.commit()
        assert served.take() == [("writer", "SELECT"), ("writer", "UPDATE"), ("writer", "SELECT")]
        session.scalars(by_tag.execution_options(qos="RW_STRICT")).one()
        session.scalars(by_tag).one()  # one statement only
        session.scalar(select(func.count(Item.id)), execution_options={"qos": "RW_STRICT"})
        session.execute(text("SELECT COUNT(*) FROM orm_items"))
        assert served.take() == [
            ("writer", "SELECT"),
            ("reader", "SELECT"),
            ("writer", "SELECT"),
            ("reader", "SELECT"),
        ]
        no_sync = {"synchronize_session": False}
        session.execute(
            update(Item).where(Item.tag == tag).values(qty=Item.qty + 1),
            execution_options=no_sync,
        )
        session.execute(text("SELECT qty FROM orm_items WHERE tag = :t"), {"t": tag})
        session.execute(
            text("SELECT COUNT(*) FROM orm_items"), execution_options={"qos": "RO_RELAXED"}
        )
        session.commit()
        assert served.take() == [("writer", "UPDATE"), ("writer", "SELECT"), ("reader", "SELECT")]
        session.execute(text("UPDATE orm_items SET qty = 0 WHERE tag = :t"), {"t": tag})
        session.execute(delete(Item).where(Item.tag == tag), execution_options=no_sync)
        session.rollback()
        assert served.take() == [("writer", "UPDATE"), ("writer", "DELETE")]
        assert session.get(Item, session.scalars(by_tag).one().id) is not None
        assert [w for w, _ in served.take()] == ["reader"]  # get(): identity map
    # Where: the writer on the master, the reader on the replicas.
    where = {(engine, ds) for engine, ds, _ in served.every}
    assert where <= {("writer", "db1"), ("reader", "db2"), ("reader", "db3")}, where


def test_the_connections_of_a_session_share_one_token(
    items: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer, reader = routed(items, engines)
    Session = routing_sessionmaker(writer, reader)
    tag = new_tag()
    with Session() as session:
        session.scalars(select(Item).where(Item.tag == tag)).all()
        session.add(Item(tag=tag, name="x"))
        session.flush()
        ro = dbapi(session.connection(bind_arguments={"bind": reader}))
        rw = dbapi(session.connection(bind_arguments={"bind": writer}))
        assert ro.qos is sqlrouter.QoS.RO_RELAXED and rw.qos is sqlrouter.QoS.RW_STRICT
        assert ro.session is rw.session is session.sqlrouter_session
        before = session.causal_token
        assert rw.causal_token == ro.causal_token == before
        session.commit()  # the transaction's connections go back to the pools
        after = session.causal_token
        assert after.covers(before) and after != before  # the commit's GTID
    # Back in the pool, each connection has its own session again.
    assert ro.session is not None and ro.session is not session.sqlrouter_session
    assert rw.session is not None and rw.session is not session.sqlrouter_session
    assert rw.session is not ro.session


def test_an_engine_of_the_wrong_qos_is_named(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer = engines(sa_url(cluster, "RW_STRICT"))
    # qos forgotten: RW_STRICT, the default.
    reader = engines(sa_url(cluster, "RW_STRICT").replace("qos=RW_STRICT", "max_lag=2"))
    with (
        pytest.raises(exc.ArgumentError) as info,
        RoutingSession(writer=writer, reader=reader) as session,
    ):
        session.execute(text("SELECT 1"))
    message = str(info.value)
    assert "the reader engine 'mysql+sqlrouter://" in message and ":***@sandbox/" in message
    assert "opens qos=RW_STRICT connections; it must open qos=RO_RELAXED ones" in message
    assert cluster.state.app.password not in message


def test_pooled_connections_an_event_names_are_replaced_at_checkout(
    cluster: Sandbox, engines: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    service = cluster.state.service
    writer = engines(sa_url(cluster, "RW_STRICT"), pool_size=2, max_overflow=0)
    reader = engines(sa_url(cluster, "RO_RELAXED", max_lag=MAX_LAG), pool_size=4, max_overflow=0)

    def checkout(engine: Engine, n: int) -> list[sqlrouter.Connection]:
        conns = [engine.connect() for _ in range(n)]
        try:
            for conn in conns:  # every one usable, no error
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
            return [dbapi(conn) for conn in conns]
        finally:
            for conn in conns:
                conn.close()

    first_rw = checkout(writer, 2)
    first_ro = checkout(reader, 4)
    ro_on = Counter(c.datasource_name for c in first_ro)
    assert set(ro_on) == {"db2", "db3"}, ro_on  # spread over both replicas

    # Synthetic events: only the pools act on them (sqlrouter's own invalidation runs on
    # the monitor's snapshots), and the servers stay as they are.
    events.publish([events.Event("master_changed", "not-this-service", "db2", previous="db1")])
    assert checkout(writer, 2) == first_rw and checkout(reader, 4) == first_ro

    caplog.set_level("INFO", logger="sqlalchemy.pool")
    events.publish([events.Event("master_changed", service, "db2", previous="db1")])
    second_rw = checkout(writer, 2)
    assert not set(second_rw) & set(first_rw)
    assert all(not c.open for c in first_rw)  # discarded
    assert {c.datasource_name for c in second_rw} == {"db1"}  # the real master: re-routed
    second_ro = checkout(reader, 4)
    kept = [c for c in first_ro if c.datasource_name == "db3"]
    assert set(kept) <= set(second_ro)  # connections to db3 stay
    assert len(set(second_ro) - set(first_ro)) == ro_on["db2"]  # those to db2 were replaced
    assert "pooled connection to db1 replaced: db1 is no longer the master (now: db2)" in (
        caplog.text
    )
    assert "pooled connection to db2 replaced: db2 became the master" in caplog.text

    events.publish([events.Event("datasource_down", service, "db3", detail="test")])
    third_ro = checkout(reader, 4)
    assert not set(kept) & set(third_ro)
    assert "pooled connection to db3 replaced: db3 went down (test)" in caplog.text
    follower = follower_of(writer)
    assert follower is not None and follower.replaced == 2
    assert "replaced: 2]" in repr(follower)
    assert cluster.state.app.password not in caplog.text


def test_a_connection_in_use_is_replaced_after_its_return(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer = engines(sa_url(cluster, "RW_STRICT"), pool_size=1, max_overflow=0)
    with writer.connect() as conn:
        raw = dbapi(conn)
        events.publish(
            [events.Event("master_changed", cluster.state.service, "db2", previous="db1")]
        )
        # The pool only marks it: its user goes on (sqlrouter's own invalidation is
        # what stops statements on a really demoted master).
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    with writer.connect() as conn:
        assert dbapi(conn) is not raw
        assert conn.execute(text("SELECT @@server_id")).scalar_one() == 1
    assert not raw.open


# --------------------------------------------------------------------------------------
# A cluster whose replicas lag: each transaction reaches them DELAY seconds late


@pytest.fixture(scope="module")
def lagging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    try:
        find_server_binaries()
    except SandboxError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))
    sb = Sandbox(tmp_path_factory.mktemp("orm") / "sb", ephemeral=True)
    try:
        sb.up(replicas=2)
        engine = create_engine(sa_url(sb, "RW_STRICT"), poolclass=sqlalchemy.pool.NullPool)
        Base.metadata.create_all(engine)
        engine.dispose()
        for replica in ("db2", "db3"):
            sb.wait_caught_up(replica)
            sb.fault(replica, "delay", DELAY)
        yield sb
    finally:
        sqlrouter.shutdown()
        sb.destroy()


def replicas_have(sb: Sandbox, tag: str, rows: int) -> bool:
    """Whether both replicas hold ``rows`` rows of ``tag`` (root, read directly)."""
    sql = f"SELECT COUNT(*) FROM appdb.orm_items WHERE tag = '{tag}'"  # a hex uuid
    return all(sb.query(name, sql)[0][0] == rows for name in ("db2", "db3"))


def test_a_read_after_a_commit_sees_the_rows(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer, reader = routed(lagging, engines)
    served = Served()
    served.watch(reader, "reader")
    Session = routing_sessionmaker(writer, reader)
    tag = new_tag()
    replicas_behind = 0
    with Session() as session:
        for n in range(1, 6):
            session.add(Item(tag=tag, name=f"item {n}"))
            session.commit()
            replicas_behind += not replicas_have(lagging, tag, n)
            names = session.scalars(select(Item.name).where(Item.tag == tag)).all()
            assert sorted(names) == [f"item {i}" for i in range(1, n + 1)]
    assert [word for _, _, word in served.rows] == ["SELECT"] * 5  # all on the reader
    # The replicas really were behind when the reads ran (else this proves nothing).
    assert replicas_behind > 0


def test_a_replica_waits_for_the_session_token(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    # consistency_wait beyond DELAY: the reader's replica waits for the commit (up to
    # consistency_wait) instead of handing the read to the master.
    writer, reader = routed(lagging, engines, consistency_wait=DELAY + 8)
    served = Served()
    served.watch(reader, "reader")
    tag = new_tag()
    with RoutingSession(writer=writer, reader=reader) as session:
        for n in (1, 2):
            session.add(Item(tag=tag, name=f"item {n}"))
            session.commit()
            assert len(session.scalars(select(Item).where(Item.tag == tag)).all()) == n
    assert {ds for _, ds, _ in served.rows} <= {"db2", "db3"}, served.rows


def test_a_read_after_a_flush_sees_the_rows_of_the_transaction(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer, reader = routed(lagging, engines)
    tag = new_tag()
    with RoutingSession(writer=writer, reader=reader) as session:
        session.add_all([Item(tag=tag, name="a"), Item(tag=tag, name="b")])
        session.flush()
        assert len(session.scalars(select(Item).where(Item.tag == tag)).all()) == 2
        session.execute(update(Item).where(Item.tag == tag).values(qty=7))
        qty = session.execute(
            text("SELECT SUM(qty) FROM orm_items WHERE tag = :t"), {"t": tag}
        ).scalar_one()
        assert qty == 14
        session.rollback()
        assert session.scalars(select(Item).where(Item.tag == tag)).all() == []


def test_the_token_carries_to_another_session(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer, reader = routed(lagging, engines)
    Session = routing_sessionmaker(writer, reader)
    tag = new_tag()
    with Session() as first:
        first.add(Item(tag=tag, name="carried"))
        first.commit()
        token = str(first.causal_token)
    assert re.fullmatch(r"\d+-\d+-\d+(,\d+-\d+-\d+)*", token)
    with Session(causal_token=token) as later:
        assert later.scalars(select(Item.name).where(Item.tag == tag)).all() == ["carried"]
    # The same through sqlrouter.session(), in another thread.
    seen: list[list[str]] = []

    def elsewhere() -> None:
        with sqlrouter.session(token), Session() as s:
            seen.append(list(s.scalars(select(Item.name).where(Item.tag == tag))))

    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join(30)
    assert seen == [["carried"]]


def test_one_pooled_connection_serves_sessions_in_turn(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer = engines(sa_url(lagging, "RW_STRICT"), pool_size=1, max_overflow=0)
    reader = engines(sa_url(lagging, "RO_RELAXED", max_lag=MAX_LAG), pool_size=1, max_overflow=0)
    Session = routing_sessionmaker(writer, reader)
    used: set[sqlrouter.Connection] = set()
    for n in range(3):
        tag = new_tag()
        with Session() as session:
            session.add(Item(tag=tag, name=f"session {n}"))
            session.commit()
            assert session.scalars(select(Item.name).where(Item.tag == tag)).all() == [
                f"session {n}"
            ]
            ro = dbapi(session.connection(bind_arguments={"bind": reader}))
            assert ro.session is session.sqlrouter_session
            used.add(ro)
    assert len(used) == 1  # one pooled connection, bound to each session in turn


def test_threads_read_their_own_writes(lagging: Sandbox, engines: Callable[..., Engine]) -> None:
    writer = engines(sa_url(lagging, "RW_STRICT"), pool_size=5, max_overflow=0)
    reader = engines(sa_url(lagging, "RO_RELAXED", max_lag=MAX_LAG), pool_size=5, max_overflow=0)
    Session = routing_sessionmaker(writer, reader)
    threads, cycles = 4, 12
    violations: list[str] = []
    errors: list[str] = []

    def work(worker: int) -> None:
        tag = new_tag()
        try:
            with Session() as session:
                for n in range(1, cycles + 1):
                    session.add(Item(tag=tag, name=f"w{worker} #{n}"))
                    session.commit()
                    seen = session.scalar(select(func.count()).where(Item.tag == tag))
                    if seen != n:
                        violations.append(f"worker {worker}: wrote {n} rows, read {seen}")
                    session.commit()
        except exc.SQLAlchemyError as error:
            errors.append(f"worker {worker}: {error}")

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not any(t.is_alive() for t in pool)
    assert errors == []
    assert violations == []


def test_plain_engines_share_the_current_sqlrouter_session(
    lagging: Sandbox, engines: Callable[..., Engine]
) -> None:
    writer = engines(sa_url(lagging, "RW_STRICT"))
    reader = engines(sa_url(lagging, "RO_RELAXED", max_lag=MAX_LAG), pool_size=1)
    with reader.connect() as conn:  # opened outside any session, then pooled
        pooled = dbapi(conn)
        own = pooled.session
    tag = new_tag()
    with sqlrouter.session() as current:
        with writer.begin() as conn:
            conn.execute(insert(Item).values(tag=tag, name="plain"))
        behind = not replicas_have(lagging, tag, 1)
        with reader.connect() as conn:
            assert dbapi(conn) is pooled and pooled.session is current
            assert count_tag(conn, tag) == 1
    assert pooled.session is own  # given back at checkin
    assert behind, "the replicas had the row already: the test would prove nothing"


def _doc_blocks() -> list[str]:
    doc = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", doc, flags=re.M)
    blocks: list[str] = []
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        if title.strip() in DOC_SECTIONS:
            blocks += re.findall(r"^```python\n(.*?)^```", body, re.S | re.M)
    return blocks


def test_doc_examples_run(
    lagging: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The examples of docs/sqlalchemy.md's ORM, session and pool sections, in order."""
    st = lagging.state
    monkeypatch.setenv("SQLROUTER_REGISTRY", str(lagging.registry_path))
    credentials = f"{quote(st.app.user, safe='')}:{quote(st.app.password, safe='')}"
    real = f"{credentials}@{st.service}/{st.database}"
    blocks = _doc_blocks()
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {"__name__": "docs_sqlalchemy_orm"}
    try:
        for number, block in enumerate(blocks, 1):
            code = block.replace("app:secret@shop/shopdb", real)
            # dont_inherit: not this module's `from __future__ import annotations`.
            block_code = compile(
                code, f"docs/sqlalchemy.md block {number}", "exec", dont_inherit=True
            )
            exec(block_code, namespace)  # noqa: S102  (our own documentation)
    finally:
        for value in namespace.values():
            if isinstance(value, Engine):
                value.dispose()
        lagging.query("db1", f"DROP TABLE IF EXISTS `{st.database}`.invoices")
    assert st.app.password not in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# Pools in steady use while the cluster changes


@dataclass
class Attempt:
    thread: int
    #: The attempt began after this process saw the change (the test's event).
    after: bool
    #: Where the statement ran (None: no connection).
    datasource: str | None = None
    ok: bool = False
    error: str = ""
    row: int = 0
    at: float = field(default_factory=time.monotonic)


class Load:
    """Threads using pooled engines in a loop; every attempt recorded."""

    def __init__(self) -> None:
        self.changed = threading.Event()
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, n: int, body: Callable[[Attempt], None]) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._loop, args=(len(self._threads), body))
            self._threads.append(thread)
            thread.start()

    def _loop(self, thread: int, body: Callable[[Attempt], None]) -> None:
        while not self._halt.is_set():
            attempt = Attempt(thread, self.changed.is_set())
            try:
                body(attempt)
            except exc.SQLAlchemyError as error:
                attempt.error = str(error).splitlines()[0]
                time.sleep(0.01)
            else:
                attempt.ok = True
            with self._lock:
                self.attempts.append(attempt)
            time.sleep(0.003)

    def stop(self) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def count(self, *, after: bool | None = None, ok: bool | None = None) -> int:
        with self._lock:
            return sum(
                1
                for a in self.attempts
                if (after is None or a.after is after) and (ok is None or a.ok is ok)
            )


def gtid_state(sb: Sandbox, node: str) -> dict[tuple[int, int], int]:
    """``@@gtid_binlog_state`` of ``node``: the last sequence number per (domain, server)."""
    text_ = sb.query(node, "SELECT @@gtid_binlog_state")[0][0]
    state: dict[tuple[int, int], int] = {}
    for part in filter(None, str(text_).split(",")):
        domain, server, seq = (int(x) for x in part.split("-"))
        state[(domain, server)] = seq
    return state


def test_pools_follow_a_switchover(
    fresh_cluster: Sandbox, engines: Callable[..., Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    sb = fresh_cluster
    service = sb.state.service
    sb.query("db1", "CREATE TABLE appdb.sw_rows (id BIGINT PRIMARY KEY, thread INT NOT NULL)")
    for replica in ("db2", "db3"):
        sb.wait_caught_up(replica)
    # failover_timeout: a connect made while no server is writable waits for the new one.
    writer = engines(
        sa_url(sb, "RW_STRICT", failover_timeout=20, connect_timeout=5),
        pool_size=5,
        max_overflow=0,
        pool_timeout=30,
    )
    reader = engines(
        sa_url(sb, "RO_RELAXED", max_lag=5), pool_size=5, max_overflow=0, pool_timeout=30
    )
    writes_, reads = Load(), Load()
    seen: list[tuple[float, events.Event]] = []

    # Subscribed after the engines: when this runs, their pools have marked theirs.
    def on_master_changed(ev: events.Event) -> None:
        if ev.service == service and ev.previous == "db1":
            seen.append((time.monotonic(), ev))
            writes_.changed.set()
            reads.changed.set()

    ids = itertools.count(1)

    def write(attempt: Attempt) -> None:
        attempt.row = next(ids)
        with writer.begin() as conn:
            attempt.datasource = dbapi(conn).datasource_name
            conn.execute(
                text("INSERT INTO sw_rows (id, thread) VALUES (:id, :t)"),
                {"id": attempt.row, "t": attempt.thread},
            )

    def read(attempt: Attempt) -> None:
        with reader.connect() as conn:
            attempt.datasource = dbapi(conn).datasource_name
            conn.execute(text("SELECT COUNT(*) FROM sw_rows")).scalar_one()

    with events.subscribe("master_changed", on_master_changed):
        writes_.start(5, write)
        reads.start(2, read)
        try:
            wait_until(lambda: writes_.count(ok=True) >= 100, 30, "steady writes")
            started = time.monotonic()
            switchover(sb.service(), "db2")  # raises TopologyError if a step failed
            done = time.monotonic()
            wait_until(writes_.changed.is_set, 10, "this process sees db2 as the master")
            wait_until(lambda: writes_.count(after=True) >= 100, 30, "writes after the change")
            wait_until(lambda: reads.count(after=True) >= 20, 30, "reads after the change")
        finally:
            writes_.stop()
            reads.stop()

    attempts = writes_.attempts
    after = [a for a in attempts if a.after]
    # After the change, every write succeeds, on the new master, in every thread.
    assert [a for a in after if not a.ok] == []
    assert {a.datasource for a in after} == {"db2"}
    assert {a.thread for a in after} == set(range(5))
    # No write ran on db1 once this process knew: and before, db1 refused them.
    assert {a.datasource for a in attempts if a.ok} <= {"db1", "db2"}
    # Reads never failed.
    assert [a.error for a in reads.attempts if not a.ok] == []

    # On the servers: db1, now a replica of db2, has db2's rows and wrote nothing of its
    # own after db2 took over (its last own GTID is the last db2 applied from it).
    pos = sb.query("db2", "SELECT @@gtid_binlog_pos")[0][0]
    assert sb.query("db1", f"SELECT MASTER_GTID_WAIT('{pos}', 30)", timeout=35)[0][0] == 0
    db1, db2 = gtid_state(sb, "db1"), gtid_state(sb, "db2")
    assert db1[(0, 1)] == db2[(0, 1)], (db1, db2)
    rows = {r[0] for r in sb.query("db2", "SELECT id FROM appdb.sw_rows")}
    assert rows == {r[0] for r in sb.query("db1", "SELECT id FROM appdb.sw_rows")}
    acked = {a.row for a in attempts if a.ok}
    assert acked <= rows
    assert rows - acked <= {a.row for a in attempts if not a.ok}  # outcome unknown

    failed = [a for a in attempts if not a.ok]
    last_on_db1 = max(a.at for a in attempts if a.ok and a.datasource == "db1")
    first_on_db2 = min(a.at for a in attempts if a.ok and a.datasource == "db2")
    follower = follower_of(writer)
    assert follower is not None
    with capsys.disabled():
        print(
            f"\nswitchover: {done - started:.2f}s; seen by this process "
            f"{seen[0][0] - done:+.2f}s after it returned ({seen[0][1]}); writes: "
            f"{writes_.count(ok=True)} ok, {len(failed)} failed, all before the change was "
            f"seen ({Counter(a.error[:60] for a in failed)}); no write for "
            f"{first_on_db2 - last_on_db1:.2f}s; reads: {len(reads.attempts)} ok; {follower!r}"
        )


def test_pools_follow_a_replica_that_dies(
    fresh_cluster: Sandbox, engines: Callable[..., Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    sb = fresh_cluster
    service = sb.state.service
    # LIFO: the busy threads take the connections returned last; the others stay idle.
    reader = engines(
        sa_url(sb, "RO_RELAXED", max_lag=5, connect_timeout=3),
        pool_size=5,
        max_overflow=0,
        pool_timeout=30,
        pool_use_lifo=True,
    )
    warm = [reader.connect() for _ in range(5)]
    on = {dbapi(conn): dbapi(conn).datasource_name for conn in warm}
    assert sorted(Counter(on.values()).values()) == [2, 3], on  # spread over db2 and db3
    for conn in sorted(warm, key=lambda c: on[dbapi(c)] == "db2"):
        conn.close()  # those on db2 last: on top, for the threads
    idle_on_db3 = [c for c, where in on.items() if where == "db3"]
    load = Load()

    def on_down(ev: events.Event) -> None:
        if ev.service == service and ev.datasource == "db3":
            load.changed.set()

    def read(attempt: Attempt) -> None:
        with reader.connect() as conn:
            attempt.datasource = dbapi(conn).datasource_name
            conn.execute(text("SELECT @@server_id")).scalar_one()

    with events.subscribe("datasource_down", on_down):
        load.start(2, read)
        try:
            wait_until(lambda: load.count(ok=True) >= 50, 30, "steady reads")
            sb.fault("db3", "kill")
            wait_until(load.changed.is_set, 15, "this process sees db3 down")
            wait_until(lambda: load.count(after=True) >= 50, 30, "reads after db3 died")
        finally:
            load.stop()
    # Reads went on, on db2, without an error.
    assert [a.error for a in load.attempts if not a.ok] == []
    assert {a.datasource for a in load.attempts} == {"db2"}
    # Now every pooled connection is needed at once: those to db3 are replaced at their
    # checkout, without an error.
    burst = [reader.connect() for _ in range(5)]
    try:
        for conn in burst:
            assert conn.execute(text("SELECT @@server_id")).scalar_one() == 2
        assert not {dbapi(conn) for conn in burst} & set(idle_on_db3)
    finally:
        for conn in burst:
            conn.close()
    follower = follower_of(reader)
    assert follower is not None and follower.replaced == len(idle_on_db3)
    with capsys.disabled():
        print(f"\nreplica killed: {len(load.attempts)} reads, none failed; {follower!r}")
