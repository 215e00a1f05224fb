"""Routing ORM sessions: writes on the master, reads on replicas, one causal token.

A :class:`RoutingSession` is a SQLAlchemy ORM :class:`~sqlalchemy.orm.Session` bound to
two ``mysql+sqlrouter`` engines of one service, a ``RW_STRICT`` *writer* and a
``RO_RELAXED`` *reader*::

    from sqlalchemy import create_engine, select
    from sqlrouter.contrib.sqlalchemy_orm import routing_sessionmaker

    writer = create_engine("mysql+sqlrouter://app:secret@shop/shopdb?qos=RW_STRICT")
    reader = create_engine("mysql+sqlrouter://app:secret@shop/shopdb?qos=RO_RELAXED")
    Session = routing_sessionmaker(writer, reader)

    with Session() as session:
        session.add(Order(id=1, item="book"))
        session.commit()                                # the master
        session.scalars(select(Order)).all()            # a replica that has the order

Each statement goes where SQLAlchemy's documented partitioning hook,
:meth:`Session.get_bind`, sends it:

- to the writer: flushes; INSERT, UPDATE, DELETE, DDL; ``SELECT ... FOR UPDATE``
  (``with_for_update()``); textual SQL that is not a plain read; anything the session
  cannot classify (``Session.connection()``); and, once the transaction has written,
  every statement until it ends (a replica cannot see uncommitted rows);
- to the reader: every other read;
- where the ``qos`` option says: ``stmt.execution_options(qos="RW_STRICT")`` (or
  ``session.execute(stmt, execution_options={"qos": ...})``, or the session's own
  ``execution_options``) sends one read to the master; ``qos="RO_RELAXED"`` sends a read
  to the reader even after the transaction wrote (it does not see what the transaction
  has not committed yet).

The two engines' connections checked out by one session share one
:class:`sqlrouter.Session`: the GTIDs of its commits go into one causal token, and its
reads on a replica wait until the replica has applied them (or go elsewhere), so a query
right after a commit sees the committed rows even when replicas lag.  The token can be
carried on: ``str(session.causal_token)``, then ``Session(causal_token=...)``.

Under asyncio, :class:`AsyncRoutingSession` (made by :func:`async_routing_sessionmaker`
from two ``create_async_engine("mysql+sqlrouter://...")`` engines) is SQLAlchemy's
:class:`~sqlalchemy.ext.asyncio.AsyncSession` around a :class:`RoutingSession`: the same
routing and the same shared token.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import FromStatement, ORMExecuteState, SessionTransaction, sessionmaker
from sqlalchemy.orm import Session as ORMSession
from sqlalchemy.sql import ClauseElement, TextClause
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TextualSelect

from sqlrouter.consistency import Session, current_session
from sqlrouter.gtid import CausalToken
from sqlrouter.qos import QoS

from ._sqlalchemy_pool import bind_session, routed
from .sqlalchemy import SqlrouterDialect

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import _ExecuteOptions

__all__ = [
    "AsyncRoutingSession",
    "RoutingSession",
    "async_routing_sessionmaker",
    "routing_sessionmaker",
    "writes",
]

#: The execution option (and ``bind_arguments`` key) that chooses the engine.
QOS_OPTION: Final = "qos"

#: Textual SQL that reads: it starts with one of these words...
_READ_START: Final = re.compile(r"\s*\(*\s*(SELECT|SHOW|DESCRIBE|DESC|EXPLAIN|WITH)\b", re.I)
#: ...and has none of these: locks, SELECT ... INTO, several statements...
_NOT_ONLY_READ: Final = re.compile(
    r"\bFOR\s+UPDATE\b|\bLOCK\s+IN\s+SHARE\s+MODE\b|\bFOR\s+SHARE\b|\bINTO\b|;\s*\S", re.I
)
#: ...nor, after WITH, a data-changing statement (MySQL 8: WITH ... UPDATE/DELETE).
_DML: Final = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.I)


def _text_reads(sql: str) -> bool:
    """Whether textual SQL is a plain read (False when in doubt: the master is safe)."""
    start = _READ_START.match(sql)
    if start is None or _NOT_ONLY_READ.search(sql) is not None:
        return False
    return start.group(1).upper() != "WITH" or _DML.search(sql) is None


def writes(clause: ClauseElement | None) -> bool:
    """Whether a statement must run on the master (True when in doubt).  Pure.

    Reads are SELECTs (``select()``, unions, ORM queries) without ``FOR UPDATE`` or
    ``FOR SHARE``, and textual SQL that starts with ``SELECT``, ``SHOW``, ``DESCRIBE``,
    ``EXPLAIN`` or ``WITH`` and has no lock, no ``INTO`` and no second statement.
    Anything else writes, including no statement at all (``Session.connection()``).
    """
    if clause is None:
        return True
    if isinstance(clause, FromStatement):  # select(Entity).from_statement(...)
        return writes(clause.element)
    if isinstance(clause, TextualSelect):  # text(...).columns(...)
        return writes(clause.element)
    if isinstance(clause, TextClause):
        return not _text_reads(clause.text)
    if getattr(clause, "is_select", False) is not True:
        return True
    # with_for_update() leaves a ForUpdateArg on the statement (select(), unions); there
    # is no public accessor for it.
    return getattr(clause, "_for_update_arg", None) is not None


def _qos(value: object) -> QoS:
    if isinstance(value, QoS):
        return value
    if isinstance(value, str):
        for member in QoS:
            if member.value == value.strip().upper():
                return member
    raise sa_exc.ArgumentError(
        f"invalid {QOS_OPTION} execution option {value!r}: expected RW_STRICT (the master) "
        "or RO_RELAXED (a replica)"
    )


def _check_engine(engine: object, role: str) -> Engine:
    if not isinstance(engine, Engine):
        raise sa_exc.ArgumentError(
            f"RoutingSession: {role} must be a SQLAlchemy Engine "
            f"(create_engine('mysql+sqlrouter://...')), not {type(engine).__name__}"
        )
    if not isinstance(engine.dialect, SqlrouterDialect):
        raise sa_exc.ArgumentError(
            f"RoutingSession: {role} must be a mysql+sqlrouter (or mariadb+sqlrouter) "
            f"engine, not {engine.url.render_as_string(hide_password=True)!r}"
        )
    return engine


class RoutingSession(ORMSession):
    """An ORM session that sends writes to ``writer`` and reads to ``reader``.

    ``writer`` is a ``RW_STRICT`` and ``reader`` a ``RO_RELAXED`` ``mysql+sqlrouter``
    engine of the same service.  ``causal_token`` continues a session begun elsewhere:
    a token (``str(session.causal_token)`` of another session, process or request), or
    a :class:`sqlrouter.Session` to share; by default the session of the enclosing
    ``with sqlrouter.session():`` block, if any, else a new one.  Other keywords are
    :class:`sqlalchemy.orm.Session`'s (``bind`` and ``binds`` excepted: the session
    chooses its engine for each statement).
    """

    def __init__(
        self,
        *,
        writer: Engine,
        reader: Engine,
        causal_token: CausalToken | str | Session | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("bind", "binds"):
            if kwargs.get(name) is not None:
                raise sa_exc.ArgumentError(
                    f"RoutingSession: {name}= is not accepted; the session sends each "
                    "statement to writer= or reader= itself"
                )
            kwargs.pop(name, None)
        self._writer = _check_engine(writer, "writer")
        self._reader = _check_engine(reader, "reader")
        if writer is reader:
            raise sa_exc.ArgumentError(
                "RoutingSession: writer and reader must be two engines, a qos=RW_STRICT "
                "one and a qos=RO_RELAXED one, not the same engine"
            )
        if writer.url.host != reader.url.host:
            raise sa_exc.ArgumentError(
                f"RoutingSession: writer and reader must be engines of one service, not "
                f"{writer.url.host!r} and {reader.url.host!r}"
            )
        if isinstance(causal_token, Session):
            self._sqlrouter_session = causal_token
        elif causal_token is None:
            self._sqlrouter_session = current_session() or Session()
        else:
            self._sqlrouter_session = Session(causal_token)
        #: The transaction has written: its statements go to the writer until it ends.
        self._sqlrouter_wrote = False
        super().__init__(bind=writer, **kwargs)

    @property
    def writer(self) -> Engine:
        return self._writer

    @property
    def reader(self) -> Engine:
        return self._reader

    @property
    def sqlrouter_session(self) -> Session:
        """The :class:`sqlrouter.Session` that this session's connections share."""
        return self._sqlrouter_session

    @property
    def causal_token(self) -> CausalToken:
        """What this session has written or read; ``str()`` it to carry it on."""
        return self._sqlrouter_session.token

    def __repr__(self) -> str:
        return (
            f"<RoutingSession service={self._writer.url.host!r} "
            f"wrote={self._sqlrouter_wrote} token={str(self.causal_token)!r}>"
        )

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: ClauseElement | None = None,
        bind: Engine | SAConnection | None = None,
        _sa_skip_events: bool | None = None,
        _sa_skip_for_implicit_returning: bool = False,
        **kw: Any,
    ) -> Engine | SAConnection:
        """The writer or the reader, for ``clause`` (see the module's documentation)."""
        if bind is not None:  # bind_arguments={"bind": ...}: the caller chose
            return bind
        write = self._flushing or writes(clause)
        # The do_orm_execute listener below puts the qos of the call, the statement or
        # the session in the bind arguments; a statement can also come without it
        # (Session.get_bind(clause=stmt) called directly).
        qos = kw.get(QOS_OPTION)
        if qos is None and isinstance(clause, Executable):
            qos = clause.get_execution_options().get(QOS_OPTION)
        if qos is not None and _qos(qos) is QoS.RO_RELAXED:
            if write:
                raise sa_exc.InvalidRequestError(
                    f"{QOS_OPTION}='RO_RELAXED' given for a statement that writes or locks "
                    f"({_describe(clause, self._flushing)}): it runs on the master"
                )
            return self._reader
        if write:
            self._sqlrouter_wrote = True
            return self._writer
        if qos is not None or self._sqlrouter_wrote:  # qos=RW_STRICT
            return self._writer
        return self._reader

    def _share_token(self, connection: SAConnection) -> None:
        """Bind a connection the transaction just took to this session's causal token."""
        dbapi = routed(connection.connection)
        if dbapi is None:
            return
        if connection.engine is self._writer:
            role, expected = "writer", QoS.RW_STRICT
        elif connection.engine is self._reader:
            role, expected = "reader", QoS.RO_RELAXED
        else:  # bind_arguments={"bind": ...}: the caller chose the engine
            role, expected = "", dbapi.qos
        if dbapi.qos is not expected:
            raise sa_exc.ArgumentError(
                f"RoutingSession: the {role} engine "
                f"{connection.engine.url.render_as_string(hide_password=True)!r} opens "
                f"qos={dbapi.qos.value} connections; it must open qos={expected.value} ones "
                f"(add qos={expected.value} to its URL)"
            )
        bind_session(connection.connection.info, dbapi, self._sqlrouter_session)


def _describe(clause: ClauseElement | None, flushing: bool) -> str:
    if flushing:
        return "a flush"
    if clause is None:
        return "no statement given"
    text = str(clause).split(None, 1)
    return f"{text[0] if text else type(clause).__name__} ..."


@event.listens_for(RoutingSession, "after_begin")
def _after_begin(
    session: ORMSession, transaction: SessionTransaction, connection: SAConnection
) -> None:
    if isinstance(session, RoutingSession):
        session._share_token(connection)


@event.listens_for(RoutingSession, "after_transaction_end")
def _after_transaction_end(session: ORMSession, transaction: SessionTransaction) -> None:
    if isinstance(session, RoutingSession) and transaction.parent is None:
        session._sqlrouter_wrote = False


@event.listens_for(RoutingSession, "do_orm_execute")
def _qos_option(state: ORMExecuteState) -> None:
    # get_bind() receives the statement, not the execution options of the call
    # (session.execute(stmt, execution_options={"qos": ...})) nor those of the session:
    # the merged options are passed on in the bind arguments.
    options: _ExecuteOptions = state.execution_options
    qos = options.get(QOS_OPTION)
    if qos is not None:
        state.bind_arguments.setdefault(QOS_OPTION, qos)


class AsyncRoutingSession(AsyncSession):
    """:class:`RoutingSession` under asyncio: ``writer`` and ``reader`` are
    ``create_async_engine("mysql+sqlrouter://...")`` engines (``RW_STRICT`` and
    ``RO_RELAXED``); the other keywords are :class:`RoutingSession`'s and
    :class:`~sqlalchemy.ext.asyncio.AsyncSession`'s."""

    sync_session_class = RoutingSession

    def __init__(
        self,
        *,
        writer: AsyncEngine,
        reader: AsyncEngine,
        causal_token: CausalToken | str | Session | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            writer=_sync_engine(writer, "writer"),
            reader=_sync_engine(reader, "reader"),
            causal_token=causal_token,
            **kwargs,
        )

    @property
    def routing_session(self) -> RoutingSession:
        """The :class:`RoutingSession` this session runs."""
        sync = self.sync_session
        assert isinstance(sync, RoutingSession)  # noqa: S101  (sync_session_class)
        return sync

    @property
    def causal_token(self) -> CausalToken:
        """What this session has written or read; ``str()`` it to carry it on."""
        return self.routing_session.causal_token

    @property
    def sqlrouter_session(self) -> Session:
        """The :class:`sqlrouter.Session` that this session's connections share."""
        return self.routing_session.sqlrouter_session


def _sync_engine(engine: object, role: str) -> Engine:
    if not isinstance(engine, AsyncEngine):
        raise sa_exc.ArgumentError(
            f"AsyncRoutingSession: {role} must be a SQLAlchemy AsyncEngine "
            f"(create_async_engine('mysql+sqlrouter://...')), not {type(engine).__name__}"
        )
    return _check_engine(engine.sync_engine, role)


def async_routing_sessionmaker(
    writer: AsyncEngine, reader: AsyncEngine, **kwargs: Any
) -> async_sessionmaker[AsyncRoutingSession]:
    """``async_sessionmaker(class_=AsyncRoutingSession, writer=..., reader=..., **kwargs)``."""
    _sync_engine(writer, "writer")
    _sync_engine(reader, "reader")
    return async_sessionmaker(class_=AsyncRoutingSession, writer=writer, reader=reader, **kwargs)


def routing_sessionmaker(
    writer: Engine, reader: Engine, **kwargs: Any
) -> sessionmaker[RoutingSession]:
    """``sessionmaker(class_=RoutingSession, writer=writer, reader=reader, **kwargs)``.

    ``Session(causal_token=...)`` then continues a session begun elsewhere.
    """
    _check_engine(writer, "writer")
    _check_engine(reader, "reader")
    return sessionmaker(class_=RoutingSession, writer=writer, reader=reader, **kwargs)
