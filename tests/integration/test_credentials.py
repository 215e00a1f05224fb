"""Credentials: a wrong password never blinds the monitor, refused logins say so, a
monitor's missing privilege names its grant, and a closed connection says why.

The registry here names no ``[monitor]`` account: the monitor logs in with the
credentials of the process's connect() calls (user ``appmon``, given the monitor's grants).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

import sqlrouter
from sqlrouter._runtime import handles
from sqlrouter.sandbox import Sandbox
from tests.fixtures.helpers import server_id

pytestmark = pytest.mark.sandbox

PASSWORD = "right-Pa55word"
WRONG = "wrong-Pa55word"


def _registry_without_monitor(sb: Sandbox, into: Path) -> Path:
    text = sb.registry_path.read_text()
    text = re.sub(r"\[services\.sandbox\.monitor\]\n(?:[^\[\n][^\n]*\n)*", "", text)
    assert "services.sandbox.monitor" not in text
    path = into / "no-monitor.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def registry(cluster: Sandbox, tmp_path: Path) -> Iterator[Path]:
    with cluster.cursor("db1") as cur:
        for user, grants in (
            (
                "appmon",
                (
                    "SLAVE MONITOR, BINLOG MONITOR ON *.*",
                    "SELECT, INSERT, UPDATE ON sqlrouter.heartbeat",
                ),
            ),
            ("noprivs", ()),
        ):
            cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (PASSWORD,))
            cur.execute(f"GRANT ALL ON appdb.* TO '{user}'@'127.0.0.1'")
            for grant in grants:
                cur.execute(f"GRANT {grant} TO '{user}'@'127.0.0.1'")
    cluster.wait_caught_up("db2")
    cluster.wait_caught_up("db3")
    try:
        yield _registry_without_monitor(cluster, tmp_path)
    finally:
        with cluster.cursor("db1") as cur:
            cur.execute("DROP USER 'appmon'@'127.0.0.1', 'noprivs'@'127.0.0.1'")


def url(
    registry: Path, qos: str, user: str = "appmon", password: str = PASSWORD, **params: object
) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"sqlrouter://{user}:{password}@sandbox/appdb?qos={qos}&registry={registry}{extra}"


def test_a_wrong_first_password_does_not_blind_the_monitor(registry: Path) -> None:
    # The first connect of the process has a typo: nothing can be observed with it.
    with pytest.raises(sqlrouter.OperationalError) as info:
        sqlrouter.connect(url(registry, "RW_STRICT", password=WRONG, failover_timeout=30))
    assert info.value.args[0] == 1045
    message = str(info.value)
    assert "authentication failed on every server" in message
    assert "Access denied for user 'appmon'" in message and WRONG not in message
    # A later connect with the right password works, and so does the monitor.
    rw = sqlrouter.connect(url(registry, "RW_STRICT"))
    ro = sqlrouter.connect(url(registry, "RO_RELAXED"))
    try:
        assert server_id(rw) == 1
        assert server_id(ro) in {2, 3}
        (handle,) = handles()
        assert handle.monitor._credentials.password == PASSWORD
        # Once logged in, a wrong password never replaces the monitor's credentials.
        for qos, where in (("RW_STRICT", "the master"), ("RO_RELAXED", "every server tried")):
            with pytest.raises(sqlrouter.OperationalError) as info:
                sqlrouter.connect(url(registry, qos, password=WRONG, failover_timeout=30))
            assert info.value.args[0] == 1045, info.value
            assert not isinstance(info.value, sqlrouter.RoutingError)
            message = info.value.args[1]
            assert message.startswith(f"service 'sandbox': authentication failed on {where} for")
            assert "not retried" in message and WRONG not in message
        assert handle.monitor._credentials.password == PASSWORD
        assert server_id(rw) == 1
    finally:
        rw.close()
        ro.close()


def test_a_missing_monitor_privilege_names_the_grant(registry: Path) -> None:
    with pytest.raises(sqlrouter.NoMasterAvailable) as info:
        sqlrouter.connect(url(registry, "RW_STRICT", user="noprivs"))
    message = str(info.value)
    assert "not observable (the monitor's account lacks a privilege: (1227)" in message
    assert "GRANT SLAVE MONITOR ON *.* TO 'noprivs'@'<host>'" in message
    assert "unreachable" not in message


def test_a_closed_connection_says_since_when_and_why(cluster: Sandbox) -> None:
    conn = sqlrouter.connect(cluster.url("RW_STRICT"))
    conn.close()
    with pytest.raises(sqlrouter.InterfaceError) as info, conn.cursor() as cur:
        cur.execute("SELECT 1")
    message = str(info.value)
    assert info.value.args[0] == 0
    assert re.search(
        r"service 'sandbox': connection to db1 \(127\.0\.0\.1:\d+\) already closed "
        r"\(closed by close\(\), \d+\.\ds ago\); open a new connection",
        message,
    ), message
    calls: list[Callable[[], object]] = [
        conn.commit,
        conn.rollback,
        conn.begin,
        conn.ping,
        conn.show_warnings,
        lambda: conn.autocommit(True),
        lambda: conn.select_db("appdb"),
        lambda: conn.set_character_set("utf8mb4"),
    ]
    for call in calls:
        with pytest.raises(sqlrouter.InterfaceError, match=r"db1 .* already closed \(closed by"):
            call()
    # Lost under a statement: the next use says how it was lost.
    lost = sqlrouter.connect(cluster.url("RW_STRICT", autocommit="true"))
    cluster.query("db1", f"KILL {lost.thread_id()}")  # type: ignore[no-untyped-call]
    with pytest.raises(pymysql.err.OperationalError), lost.cursor() as cur:
        cur.execute("SELECT 1")
    with pytest.raises(sqlrouter.InterfaceError, match=r"already closed \(lost during a statement"):
        lost.cursor().execute("SELECT 1")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("ssl_ca=/nonexistent", "cannot use the connection's options: [Errno 2] No such file"),
        ("charset=nope", "unknown charset 'nope' (try utf8mb4)"),
    ],
)
def test_bad_pymysql_options_are_programming_errors(
    cluster: Sandbox, option: str, message: str
) -> None:
    with pytest.raises(sqlrouter.ProgrammingError) as info:
        sqlrouter.connect(cluster.url("RW_STRICT") + "&" + option)
    assert str(info.value).startswith("service 'sandbox': ")
    assert message in str(info.value)


def test_route_with_a_wrong_password_leads_with_the_refusal(registry: Path) -> None:
    """``sqlrouter route`` as a connect would see it: without a [monitor] account the
    monitor logs in as the URL's user, and every server refuses that password."""
    proc = subprocess.run(
        [sys.executable, "-m", "sqlrouter", "route", url(registry, "RO_RELAXED", password=WRONG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no datasource: service 'sandbox': authentication failed on every server" in proc.stdout
    assert "not observable: the monitor's login was refused ((1045)" in proc.stdout
    assert WRONG not in proc.stdout + proc.stderr
