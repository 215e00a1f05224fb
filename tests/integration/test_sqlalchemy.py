"""The ``mysql+sqlrouter`` SQLAlchemy dialect against a real sandbox cluster.

Also runs SQLAlchemy's compliance suite through both ``mysql+sqlrouter`` and
``mysql+pymysql`` (``tests/sqla_suite``), and the examples of ``docs/sqlalchemy.md``.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pymysql
import pytest
import sqlalchemy
from sqlalchemy import create_engine, exc, text
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import sqlrouter
from sqlrouter.contrib.sqlalchemy import MariaDBDialect_sqlrouter, MySQLDialect_sqlrouter
from sqlrouter.errors import ER_CONNECTION_INVALIDATED, ER_NO_MASTER, ER_NO_REPLICA
from sqlrouter.sandbox import Sandbox
from tests.fixtures.sqla import sa_url

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "sqlalchemy.md"
#: A password with the characters that break hand-made URL parsers.
ODD_PASSWORD = "p@ss:w/rd%41?#&x"


def server_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT @@server_id")).scalar_one())


def dbapi_connection(conn: sqlalchemy.Connection) -> sqlrouter.Connection:
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlrouter.Connection)
    return raw


# --------------------------------------------------------------------------------------
# Registration and URLs (no server needed)


def test_registered_by_entry_point_not_by_import() -> None:
    points = {
        ep.name: ep.value for ep in importlib.metadata.entry_points(group="sqlalchemy.dialects")
    }
    assert points["mysql.sqlrouter"] == "sqlrouter.contrib.sqlalchemy:MySQLDialect_sqlrouter"
    assert points["mariadb.sqlrouter"] == "sqlrouter.contrib.sqlalchemy:MariaDBDialect_sqlrouter"
    # A fresh interpreter: importing sqlrouter does not register anything, and
    # create_engine finds the dialect through the entry point alone.
    code = (
        "import sys, sqlrouter, sqlalchemy\n"
        "assert 'sqlrouter.contrib.sqlalchemy' not in sys.modules\n"
        "e = sqlalchemy.create_engine('mysql+sqlrouter://app:pw@shop/shopdb')\n"
        "m = sqlalchemy.create_engine('mariadb+sqlrouter://app:pw@shop/shopdb')\n"
        "print(type(e.dialect).__name__, e.dialect.driver, type(m.dialect).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["MySQLDialect_sqlrouter", "sqlrouter", "MariaDBDialect_sqlrouter"]


def test_dialect_is_the_pymysql_dialect_with_sqlrouter_as_dbapi() -> None:
    engine = create_engine("mysql+sqlrouter://app:pw@shop/shopdb")
    dialect = engine.dialect
    assert isinstance(dialect, MySQLDialect_sqlrouter)
    assert isinstance(dialect, MySQLDialect_pymysql)
    assert cast(object, dialect.loaded_dbapi) is sqlrouter
    assert dialect.dbapi_version == sqlalchemy.util.parse_version_string(sqlrouter.__version__)
    assert dialect.supports_server_side_cursors
    assert engine.url.render_as_string() == "mysql+sqlrouter://app:***@shop/shopdb"
    mariadb = create_engine("mariadb+sqlrouter://app:pw@shop/shopdb").dialect
    assert isinstance(mariadb, MariaDBDialect_sqlrouter) and mariadb.is_mariadb


def test_url_parameters_reach_sqlrouter_typed() -> None:
    engine = create_engine(
        f"mysql+sqlrouter://app:{quote(ODD_PASSWORD, safe='')}@shop/shop%2Fdb"
        "?qos=ro_relaxed&max_lag=1&fallback=error&autocommit=true&connect_timeout=3"
        "&read_timeout=2.5&consistency_wait=0&charset=utf8mb4&client_flag=0x10"
        "&registry=/etc/sqlrouter.toml"
    )
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    assert list(args) == []
    assert kwargs == {
        "service": "shop",
        "database": "shop/db",
        "user": "app",
        "password": ODD_PASSWORD,
        "qos": sqlrouter.QoS.RO_RELAXED,
        "max_lag": 1.0,
        "fallback": sqlrouter.Fallback.ERROR,
        "autocommit": True,
        "connect_timeout": 3.0,
        "read_timeout": 2.5,
        "consistency_wait": 0.0,
        "charset": "utf8mb4",
        # FOUND_ROWS (2) added: rowcount counts matched rows, as SQLAlchemy expects.
        "client_flag": 0x10 | pymysql.constants.CLIENT.FOUND_ROWS,
        "registry": "/etc/sqlrouter.toml",
    }
    assert type(kwargs["max_lag"]) is float and type(kwargs["autocommit"]) is bool
    # What create_connect_args returns is what sqlrouter.connect() takes.
    parsed = sqlrouter.parse_url(**kwargs)
    assert parsed.max_lag == 1.0 and parsed.connect_args["autocommit"] is True


def test_minimal_url() -> None:
    engine = create_engine("mysql+sqlrouter://shop")
    assert engine.dialect.create_connect_args(engine.url) == (
        [],
        {"service": "shop", "client_flag": pymysql.constants.CLIENT.FOUND_ROWS},
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+sqlrouter://app:{pw}@shop:3306/db", "a port is not accepted after service 'shop'"),
        ("mysql+sqlrouter://app:{pw}@/db", "it names no service"),
        ("mysql+sqlrouter://app:{pw}@shop/db?max_lag=soon", "invalid max_lag 'soon'"),
        ("mysql+sqlrouter://app:{pw}@shop/db?qos=FAST", "invalid qos 'FAST'"),
        ("mysql+sqlrouter://app:{pw}@shop/db?autocommit=maybe", "invalid autocommit 'maybe'"),
        ("mysql+sqlrouter://app:{pw}@shop/db?maxlag=1", "did you mean 'max_lag'?"),
        ("mysql+sqlrouter://app:{pw}@shop/db?port=3306", "parameter 'port' in the URL is not"),
        ("mysql+sqlrouter://app:{pw}@shop/db?user=x", "parameter 'user' is not accepted in"),
        ("mysql+sqlrouter://app:{pw}@shop/db?qos=RW_STRICT&qos=RO_RELAXED", "given twice"),
        ("mysql+sqlrouter://app:{pw}@shop/db?cursorclass=SSCursor", "cannot be given in a URL"),
        ("mysql+sqlrouter://app:{pw}@sh*p/db", "invalid service"),
    ],
)
def test_bad_urls_are_argument_errors(url: str, message: str) -> None:
    secret = "Sup3rS3cret"
    with pytest.raises(exc.ArgumentError) as info:
        create_engine(url.format(pw=secret))
    text_ = str(info.value)
    assert text_.startswith("invalid mysql+sqlrouter URL: ")
    assert message in text_
    assert secret not in text_ and secret not in repr(info.value.__cause__)


def test_disconnect_classification() -> None:
    # The DB-API module's errors are typed as a Protocol in SQLAlchemy.
    is_disconnect = cast(Any, create_engine("mysql+sqlrouter://shop").dialect).is_disconnect
    disconnects: list[Exception] = [
        sqlrouter.ConnectionInvalidated(ER_CONNECTION_INVALIDATED, "db1 was demoted"),
        sqlrouter.NoMasterAvailable(ER_NO_MASTER, "no writable master", service="shop"),
        sqlrouter.NoReplicaAvailable(ER_NO_REPLICA, "no replica within 1s", service="shop"),
        # The same numbers, re-raised as plain OperationalErrors.
        sqlrouter.OperationalError(ER_CONNECTION_INVALIDATED, "invalidated"),
        sqlrouter.OperationalError(ER_NO_MASTER, "no master"),
        # PyMySQL's own.
        sqlrouter.OperationalError(2013, "Lost connection to MySQL server during query"),
        sqlrouter.OperationalError(2006, "MySQL server has gone away"),
        sqlrouter.InterfaceError(0, ""),
        sqlrouter.Error("Already closed"),
    ]
    for error in disconnects:
        assert is_disconnect(error, None, None), error
    for error in [
        sqlrouter.ProgrammingError(1064, "You have an error in your SQL syntax"),
        sqlrouter.IntegrityError(1062, "Duplicate entry '1' for key 'PRIMARY'"),
        sqlrouter.OperationalError(1205, "Lock wait timeout exceeded"),
    ]:
        assert not is_disconnect(error, None, None), error


# --------------------------------------------------------------------------------------
# Against the sandbox


def test_rw_strict_lands_on_the_master(cluster: Sandbox, engines: Callable[..., Engine]) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT @@server_id, @@read_only")).one() == (1, 0)
        raw = dbapi_connection(conn)
        assert raw.datasource is not None and raw.datasource.name == "db1"
        assert raw.qos is sqlrouter.QoS.RW_STRICT
    assert isinstance(engine.dialect, MySQLDialect_sqlrouter) and engine.dialect.is_mariadb


def test_ro_relaxed_lands_on_replicas(cluster: Sandbox, engines: Callable[..., Engine]) -> None:
    # NullPool: every connect is routed anew.
    engine = engines(sa_url(cluster, "RO_RELAXED", max_lag=1), poolclass=NullPool)
    seen = {server_id(engine) for _ in range(8)}
    assert seen <= {2, 3} and seen, seen


def test_url_parameters_are_typed_on_the_connection(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    engine = engines(
        sa_url(cluster, "RO_RELAXED", max_lag="1.5", autocommit="true", connect_timeout=3)
    )
    with engine.connect() as conn:
        raw = dbapi_connection(conn)
        assert raw.url.qos is sqlrouter.QoS.RO_RELAXED
        assert raw.url.max_lag == 1.5 and isinstance(raw.url.max_lag, float)
        assert raw.url.connect_timeout == 3.0
        assert raw.connect_timeout == 3.0
        assert raw.url.connect_args["autocommit"] is True
        assert raw.datasource is not None and raw.datasource.name in {"db2", "db3"}
    # connect_args= overrides the URL, as with any SQLAlchemy dialect.
    engine = engines(sa_url(cluster, "RO_RELAXED"), connect_args={"qos": "RW_STRICT"})
    assert server_id(engine) == 1


def test_duplicate_key_raises_integrity_error(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    table = f"sqla_dup_{uuid.uuid4().hex[:8]}"
    engine = engines(sa_url(cluster, "RW_STRICT"))
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20) UNIQUE)"))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (1, 'a')"))
        with pytest.raises(exc.IntegrityError) as info, engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (2, 'a')"))
        assert isinstance(info.value.orig, sqlrouter.IntegrityError)
        assert isinstance(info.value.orig, pymysql.err.IntegrityError)
        assert info.value.orig.args[0] == 1062  # ER_DUP_ENTRY
        assert not info.value.connection_invalidated
        with engine.connect() as conn:  # the pooled connection is still good
            assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == 1
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


def _connection_id(conn: sqlalchemy.Connection) -> int:
    return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar_one())


def test_pool_pre_ping_replaces_a_dead_connection(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"), pool_pre_ping=True, pool_size=1)
    with engine.connect() as conn:
        first = _connection_id(conn)
    cluster.query("db1", f"KILL {first}")
    with engine.connect() as conn:  # pre-ping fails, the pool opens a routed connection
        second = _connection_id(conn)
        assert conn.execute(text("SELECT @@server_id")).scalar_one() == 1
    assert second != first


def test_without_pre_ping_a_dead_connection_is_a_disconnect(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"), pool_size=1)
    with engine.connect() as conn:
        first = _connection_id(conn)
    cluster.query("db1", f"KILL {first}")
    with pytest.raises(exc.OperationalError) as info, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert info.value.connection_invalidated  # is_disconnect() said so: the pool drops it
    with engine.connect() as conn:
        assert _connection_id(conn) != first


def test_ping_never_reconnects(cluster: Sandbox, engines: Callable[..., Engine]) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"))
    raw = engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        assert isinstance(dbapi, sqlrouter.Connection)
        assert engine.dialect.do_ping(dbapi) is True
        cluster.query("db1", f"KILL {dbapi.thread_id()}")
        with pytest.raises(sqlrouter.Error) as info:
            engine.dialect.do_ping(dbapi)
        assert engine.dialect.is_disconnect(info.value, dbapi, None)
        assert not dbapi.open  # not reconnected behind the pool's back
    finally:
        raw.invalidate()


def test_an_invalidated_connection_is_a_disconnect(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"), pool_size=1)
    with engine.connect() as conn:
        first = _connection_id(conn)
        # What sqlrouter does to a connection whose server was demoted or went down.
        dbapi_connection(conn).invalidate("db1 was demoted (test)")
        with pytest.raises(exc.OperationalError) as info:
            conn.execute(text("SELECT 1"))
    assert isinstance(info.value.orig, sqlrouter.ConnectionInvalidated)
    assert info.value.connection_invalidated
    assert "db1 was demoted (test)" in str(info.value)
    with engine.connect() as conn:  # the pool dropped it: a new, routed connection
        assert _connection_id(conn) != first


def test_pre_ping_drops_a_connection_invalidated_in_the_pool(
    cluster: Sandbox, engines: Callable[..., Engine]
) -> None:
    engine = engines(sa_url(cluster, "RW_STRICT"), pool_size=1, pool_pre_ping=True)
    with engine.connect() as conn:
        first = _connection_id(conn)
        pooled = dbapi_connection(conn)
    pooled.invalidate("db1 went down (test)")  # while it waits in the pool
    with engine.connect() as conn:
        assert _connection_id(conn) != first
        assert dbapi_connection(conn) is not pooled
    assert not pooled.open


def test_a_routing_failure_is_a_disconnect(
    make_cluster: Callable[..., Sandbox], engines: Callable[..., Engine]
) -> None:
    sb = make_cluster(replicas=0)
    engine = engines(sa_url(sb, "RO_RELAXED", fallback="error"))
    with pytest.raises(exc.OperationalError) as info:
        engine.connect()
    assert isinstance(info.value.orig, sqlrouter.NoReplicaAvailable)
    assert info.value.connection_invalidated
    assert sb.state.app.password not in str(info.value)


# --------------------------------------------------------------------------------------
# docs/sqlalchemy.md


def _doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_doc_examples_run(
    cluster: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ``python`` block of docs/sqlalchemy.md, in order, in one namespace.

    The examples name the service ``shop``, database ``shopdb``, user ``app`` and
    password ``secret``; they run against the sandbox's with its registry in
    ``$SQLROUTER_REGISTRY``.
    """
    st = cluster.state
    monkeypatch.setenv("SQLROUTER_REGISTRY", str(cluster.registry_path))
    credentials = f"{quote(st.app.user, safe='')}:{quote(st.app.password, safe='')}"
    real = f"{credentials}@{st.service}/{st.database}"
    blocks = _doc_blocks()
    assert len(blocks) >= 4
    before = {row[0] for row in cluster.query("db1", f"SHOW TABLES FROM `{st.database}`")}
    namespace: dict[str, Any] = {"__name__": "docs_sqlalchemy"}
    try:
        for number, block in enumerate(blocks, 1):
            code = block.replace("app:secret@shop/shopdb", real)
            compiled = compile(
                code, f"docs/sqlalchemy.md block {number}", "exec", dont_inherit=True
            )
            exec(compiled, namespace)  # noqa: S102  (our own documentation)
    finally:
        for value in namespace.values():
            if isinstance(value, Engine):
                value.dispose()
        after = {row[0] for row in cluster.query("db1", f"SHOW TABLES FROM `{st.database}`")}
        for table in after - before:
            cluster.query("db1", f"DROP TABLE `{st.database}`.`{table}`")
    assert st.app.password not in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# SQLAlchemy's compliance suite


def _junit(path: Path, driver: str, cases: dict[str, str]) -> Path:
    body = {
        "passed": "",
        "failed": '<failure message="AssertionError"/>',
        "error": '<error message="failed on teardown"/>',
        "skipped": '<skipped message="marked as skip"/>',
    }
    rows = "".join(
        f'<testcase classname="test_suite.{name.split("::")[0]}_mariadb+{driver}_10_11_19" '
        f'name="{name.split("::")[1]}">{body[outcome]}</testcase>'
        for name, outcome in cases.items()
    )
    path.write_text(f"<testsuites><testsuite>{rows}</testsuite></testsuites>")
    return path


def test_the_comparison_reports_what_sqlrouter_fails(tmp_path: Path) -> None:
    from tests.sqla_suite.run import SuiteRun, compare, parse_junit

    ours = parse_junit(
        _junit(
            tmp_path / "a.xml",
            "sqlrouter",
            {"A::t1": "passed", "A::t2[x-y]": "failed", "B::t3": "skipped", "B::t4": "passed"},
        )
    )
    theirs = parse_junit(
        _junit(
            tmp_path / "b.xml",
            "pymysql",
            {"A::t1": "passed", "A::t2[x-y]": "passed", "B::t3": "passed", "B::t4": "error"},
        )
    )
    assert ours == {
        "A::t1": "passed",
        "A::t2[x-y]": "failed",
        "B::t3": "skipped",
        "B::t4": "passed",
    }
    result = compare(SuiteRun("sqlrouter", ours, 1.0), SuiteRun("pymysql", theirs, 1.0))
    assert result.regressions == {
        "A::t2[x-y]": ("failed", "passed"),
        "B::t3": ("skipped", "passed"),
    }
    assert result.improvements == {"B::t4": ("passed", "error")}
    assert result.unexplained == result.regressions


@pytest.mark.timeout(1500)
@pytest.mark.parametrize(
    ("options", "ours_name", "theirs_name"),
    [
        pytest.param([], "sqlrouter", "pymysql", id="sync"),
        # mysql+sqlrouter_async (what create_async_engine uses) beside mysql+aiomysql
        pytest.param(["--asyncio"], "sqlrouter_async", "aiomysql", id="asyncio"),
    ],
)
def test_compliance_suite_passes_what_the_plain_driver_passes(
    tmp_path: Path, options: list[str], ours_name: str, theirs_name: str
) -> None:
    """tests/sqla_suite through sqlrouter's dialect and the plain driver's, same master."""
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.sqla_suite.run",
            *options,
            "--json",
            str(results),
            "--logs",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    data = json.loads(results.read_text())
    ours, theirs = data["runs"][ours_name], data["runs"][theirs_name]
    assert ours["counts"]["passed"] >= theirs["counts"]["passed"] > 1000, report
    assert data["regressions"] == {}, report
    assert ours["total"] == theirs["total"], report


@pytest.mark.parametrize("qos", ["RW_STRICT", "RO_RELAXED"])
def test_stream_results_and_yield_per_after_a_write(
    cluster: Sandbox, engines: Callable[..., Engine], qos: str
) -> None:
    """``stream_results`` uses PyMySQL's SSCursor: every row arrives after a write."""
    table = f"sqla_stream_{uuid.uuid4().hex[:8]}"
    writer = engines(sa_url(cluster, "RW_STRICT"))
    reader = engines(sa_url(cluster, qos, max_lag=5))
    with writer.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (n INT PRIMARY KEY)"))
    try:
        with sqlrouter.session():
            with writer.begin() as conn:
                conn.execute(
                    text(f"INSERT INTO {table} VALUES (:n)"), [{"n": n} for n in range(100)]
                )
                streamed = conn.execution_options(stream_results=True).execute(
                    text(f"SELECT n FROM {table} ORDER BY n")
                )
                assert [r.n for r in streamed] == list(range(100))
            with reader.connect() as conn:
                batches = conn.execution_options(yield_per=7).execute(
                    text(f"SELECT n FROM {table} ORDER BY n")
                )
                assert [r.n for r in batches] == list(range(100))
    finally:
        with writer.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))
