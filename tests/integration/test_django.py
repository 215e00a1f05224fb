"""The Django integration on a real cluster: tests/django_project run by Django's test client.

One private sandbox for the module (Django's settings are configured once per
process): 1 master (server_id 1) and 2 replicas, db2 delayed by 3 s (within the replica
alias's ``max_lag`` of 10 s, so it is a candidate for reads) and db3 caught up.
Django's test-database machinery creates ``test_appdb`` through the RW_STRICT alias,
with the replica alias as its mirror.  The app user may create and use that database
only (``GRANT ALL ON `test\\_appdb`.*``, the one grant the test adds).

Django's test client never closes connections between requests (it disconnects
``close_old_connections``): its connections are persistent, which is the case where
sqlrouter must move a connection opened during one request to the next request's
causal token.  The per-request case (``CONN_MAX_AGE = 0``) calls
``close_old_connections()`` after each request, as Django's request handler does.

The failover test changes the topology for good: it runs last.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import IntegrityError, close_old_connections, connections, router
from django.test import AsyncClient, Client
from django.test.utils import setup_databases, teardown_databases

import sqlrouter
from sqlrouter.sandbox import Sandbox, SandboxError, find_server_binaries

pytestmark = pytest.mark.sandbox

SETTINGS = "tests.django_project.settings"
TEST_DB = "test_appdb"
DELAY = 3
COOKIE = "sqlrouter_causal"
DDL = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")


@dataclass
class Project:
    sb: Sandbox
    #: SQL run through each alias while Django created the test databases.
    setup_sql: dict[str, list[str]] = field(default_factory=dict)


def _recorder(into: list[str]) -> Callable[..., Any]:
    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        into.append(sql)
        return execute(sql, params, many, context)

    return record


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    try:
        find_server_binaries()
    except SandboxError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    sb = Sandbox(Path(tmp_path_factory.mktemp("django")) / "sb", ephemeral=True)
    try:
        sb.up(replicas=2)
        yield sb
    finally:
        sb.destroy()


@pytest.fixture(scope="module")
def project(sandbox: Sandbox) -> Iterator[Project]:
    sb = sandbox
    if settings.configured and settings.SETTINGS_MODULE != SETTINGS:
        pytest.fail(f"Django settings were configured before this module, not from {SETTINGS}")
    # Root, through the master's socket: MariaDB reads '_' as a wildcard, hence '\_'.
    sb.query("db1", "GRANT ALL PRIVILEGES ON `test\\_appdb`.* TO 'app'@'127.0.0.1'")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQLROUTER_DJANGO_URL", sb.url("RW_STRICT"))
        mp.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        django.setup()
    setup_sql: dict[str, list[str]] = {"default": [], "replica": []}
    with ExitStack() as stack:
        for alias, into in setup_sql.items():
            stack.enter_context(connections[alias].execute_wrapper(_recorder(into)))
        old_config = setup_databases(
            verbosity=0, interactive=False, aliases=dict.fromkeys(("default", "replica"))
        )
    try:
        for replica in ("db2", "db3"):
            sb.wait_caught_up(replica)
        sb.fault("db2", "delay", DELAY)
        yield Project(sb, setup_sql)
    finally:
        connections.close_all()
        try:
            teardown_databases(old_config, verbosity=0)
        finally:
            connections.close_all()
            sqlrouter.shutdown()


@pytest.fixture(autouse=True)
def _clean(project: Project) -> Iterator[None]:
    connections.close_all()  # each test opens its own (CONN_MAX_AGE applies at connect)
    saved = {alias: connections[alias].settings_dict["CONN_MAX_AGE"] for alias in connections}
    yield
    for alias, value in saved.items():
        connections[alias].settings_dict["CONN_MAX_AGE"] = value
    connections.close_all()
    sqlrouter.shutdown()


def conn_max_age(seconds: float | None) -> None:
    for alias in ("default", "replica"):
        connections[alias].settings_dict["CONN_MAX_AGE"] = seconds


def replica_on(name: str) -> None:
    """Reopen the replica alias's connection until it is on ``name``.

    Set-up, not an assertion: a fresh session (nothing to wait for) lets both
    replicas qualify, and the router spreads new connections over them.
    """
    wrapper = connections["replica"]
    for _ in range(20):
        wrapper.close()
        with sqlrouter.session():
            wrapper.ensure_connection()
        if wrapper.connection.datasource.name == name:
            return
    pytest.fail(f"the replica alias never connected to {name}")


def on_db2(sb: Sandbox, text: str) -> bool:
    rows = sb.query("db2", f"SELECT COUNT(*) FROM {TEST_DB}.shop_note WHERE text = '{text}'")
    return bool(rows[0][0])


def new_text() -> str:
    return f"note-{uuid.uuid4().hex[:12]}"


# -- test databases and migrations --------------------------------------------------------


def test_test_database_created_on_master_and_mirrored(project: Project) -> None:
    assert connections["default"].settings_dict["NAME"] == TEST_DB
    assert connections["replica"].settings_dict["NAME"] == TEST_DB
    created = [sql for sql in project.setup_sql["default"] if sql.startswith("CREATE TABLE")]
    assert any("`shop_note`" in sql for sql in created), project.setup_sql["default"]
    assert project.setup_sql["replica"] == []
    tables = {row[0] for row in project.sb.query("db1", f"SHOW TABLES FROM {TEST_DB}")}
    assert {"shop_author", "shop_note", "django_migrations"} <= tables
    connections["default"].ensure_connection()
    assert connections["default"].connection.datasource.name == "db1"


def test_migrations_only_through_the_write_alias(project: Project) -> None:
    assert router.allow_migrate("default", "shop") is True
    assert router.allow_migrate("replica", "shop") is False
    ran: list[str] = []
    with connections["replica"].execute_wrapper(_recorder(ran)):
        call_command("migrate", database="replica", verbosity=0)
    assert not [sql for sql in ran if sql.lstrip().upper().startswith(DDL)], ran


# -- the ORM outside requests ---------------------------------------------------------------


def test_duplicate_key_raises_django_integrity_error(project: Project) -> None:
    from tests.django_project.shop.models import Author

    name = new_text()
    Author.objects.create(name=name)
    with pytest.raises(IntegrityError) as caught:
        Author.objects.create(name=name)
    assert caught.value.args[0] == 1062
    assert isinstance(caught.value.__cause__, sqlrouter.IntegrityError)


def test_aliases_of_one_thread_share_a_token_and_relate(project: Project) -> None:
    from tests.django_project.shop.models import Author, Note

    replica_on("db2")  # delayed: the read below must not be served by it
    name = new_text()
    Author.objects.create(name=name)
    author = Author.objects.get(name=name)  # the router reads through the replica alias
    assert author._state.db == "replica"
    assert connections["replica"].connection.datasource.name != "db2"
    note = Note(author=author, text=new_text())  # allow_relation: same service
    note.save()
    assert note._state.db == "default"


# -- requests ----------------------------------------------------------------------------


def test_page_after_write_shows_it_with_persistent_connections(project: Project) -> None:
    sb = project.sb
    conn_max_age(None)
    user = Client()
    replica_on("db2")
    page = user.get("/notes/").json()
    assert (page["alias"], page["server_id"]) == ("replica", 2)

    text = new_text()
    posted = user.post("/notes/", {"author": "ann", "text": text})
    assert posted.status_code == 302
    assert COOKIE in posted.cookies
    page = user.get(posted["Location"]).json()
    assert text in page["notes"]
    assert page["server_id"] in (1, 3)  # db2 had not applied the write
    carried = sqlrouter.CausalToken.parse(posted.cookies[COOKIE].value.split(":")[0])
    assert sqlrouter.CausalToken.parse(page["token"]).covers(carried)
    assert not on_db2(sb, text), "db2 applied the write already: the test proves nothing"

    # Another user, without the cookie, reads from the delayed replica: stale, as allowed.
    other = Client()
    replica_on("db2")
    page = other.get("/notes/").json()
    assert page["server_id"] == 2
    assert text not in page["notes"]
    # The first user, on the same (persistent) connection, still sees the write.
    replica_on("db2")
    page = user.get("/notes/").json()
    assert text in page["notes"]
    assert page["server_id"] != 2


def test_page_after_write_shows_it_with_per_request_connections(project: Project) -> None:
    sb = project.sb
    conn_max_age(0)
    user = Client()
    served: list[int] = []
    for _ in range(6):
        text = new_text()
        posted = user.post("/notes/", {"author": "bob", "text": text})
        close_old_connections()  # what Django's handler does at the end of a request
        assert posted.status_code == 302
        page = user.get(posted["Location"]).json()
        close_old_connections()
        assert text in page["notes"]
        served.append(page["server_id"])
    assert 2 not in served, served  # db2 lags by 3 s: it never had the last write
    assert connections["replica"].connection is None

    # Once the replicas have caught up, the same user's reads go to replicas again.
    # (db2 qualifies for the user's token once the monitor has seen it catch up.)
    sb.wait_caught_up("db2", timeout=DELAY + 10)
    served = []
    deadline = time.monotonic() + 10
    while set(served) != {2, 3} and time.monotonic() < deadline:
        page = user.get("/notes/").json()
        close_old_connections()
        served.append(page["server_id"])
        time.sleep(0.1)
    assert set(served) == {2, 3}, served  # new connections spread over both replicas


def test_other_users_read_from_replicas(project: Project) -> None:
    conn_max_age(0)
    Client().post("/notes/", {"author": "cy", "text": new_text()})
    close_old_connections()
    served = []
    for _ in range(4):
        page = Client().get("/notes/").json()
        close_old_connections()
        served.append(page["server_id"])
    assert set(served) <= {2, 3}, served


def test_async_views(project: Project) -> None:
    sb = project.sb
    conn_max_age(None)
    text = new_text()
    replica_on("db2")

    async def scenario() -> tuple[int, dict[str, Any], bool]:
        client = AsyncClient()
        posted = await client.post("/notes/async/", {"author": "dee", "text": text})
        page = (await client.get(posted["Location"])).json()
        return posted.status_code, page, COOKIE in posted.cookies

    status, page, cookie_set = async_to_sync(scenario)()
    assert status == 302
    assert cookie_set
    assert text in page["notes"]
    assert page["server_id"] in (1, 3)
    assert not on_db2(sb, text)


def test_use_master_reads_from_the_master(project: Project) -> None:
    page = Client().get("/notes/master/").json()
    assert (page["alias"], page["server_id"]) == ("default", 1)
    page = Client().get("/notes/").json()
    assert page["alias"] == "replica"


def test_reads_inside_a_transaction_go_to_the_master(project: Project) -> None:
    response = Client().post("/notes/atomic/", {"author": "eve", "text": new_text()})
    assert response.json() == {"found": True, "alias": "default"}


def test_cookie_is_set_only_by_requests_that_wrote(project: Project) -> None:
    user = Client()
    assert COOKIE not in user.get("/notes/").cookies
    posted = user.post("/notes/", {"author": "fay", "text": new_text()})
    assert COOKIE in posted.cookies
    assert COOKIE not in user.get("/notes/").cookies  # kept by the client, not re-sent
    forged = Client()
    forged.cookies[COOKIE] = "0-1-999999999"  # unsigned: ignored
    page = forged.get("/notes/").json()
    assert page["server_id"] in (2, 3)


def test_cookie_settings(project: Project) -> None:
    from django.test import override_settings

    from sqlrouter.contrib.django.middleware import CookieSettings

    with override_settings(SQLROUTER_CAUSAL_COOKIE=None):
        assert CookieSettings.from_settings() is None
    with override_settings(SQLROUTER_CAUSAL_COOKIE={}, SESSION_COOKIE_SECURE=True):
        cookie = CookieSettings.from_settings()
        assert cookie is not None
        assert (cookie.name, cookie.max_age, cookie.secure) == ("sqlrouter_causal", 300, True)
    for bad, expected in [
        ({"maxage": 1}, "unknown key(s) 'maxage'; accepted: name, max_age"),
        ({"max_age": 0}, "must be a whole number of seconds > 0, not 0"),
        ({"name": ""}, "['name'] must be a non-empty string"),
        ("x", "must be a dict of cookie settings, or None"),
    ]:
        with (
            override_settings(SQLROUTER_CAUSAL_COOKIE=bad),
            pytest.raises(ImproperlyConfigured) as caught,
        ):
            CookieSettings.from_settings()
        assert expected in str(caught.value)


def test_dbshell_runs_on_the_routed_server(
    project: Project, capfd: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("mysql") is None:
        pytest.skip("no mysql command-line client")
    query = ["--", "-N", "-B", "-e", "SELECT @@server_id"]
    call_command("dbshell", "--database", "default", *query)
    assert capfd.readouterr().out.split() == ["1"]
    call_command("dbshell", "--database", "replica", *query)
    assert capfd.readouterr().out.split() in (["2"], ["3"])
    args, env = connections["replica"].client.settings_to_cmd_args_env(
        connections["replica"].settings_dict, []
    )
    password = project.sb.state.app.password
    assert env == {"MYSQL_PWD": password}
    assert not [arg for arg in args if password in arg]


def test_connection_refused_a_write_as_read_only_is_replaced(project: Project) -> None:
    """What a demoted master answers before any monitor has noticed: errno 1290.

    A trigger makes the master refuse one particular row with that errno (the
    monitor sees nothing unusual, so only the backend can condemn the connection).
    """
    sb = project.sb
    conn_max_age(None)
    refused = new_text()
    sb.query(
        "db1",
        f"CREATE TRIGGER {TEST_DB}.refuse BEFORE INSERT ON {TEST_DB}.shop_note FOR EACH ROW "
        f"IF NEW.text = '{refused}' THEN SIGNAL SQLSTATE 'HY000' SET MESSAGE_TEXT = "
        "'read-only (test)', MYSQL_ERRNO = 1290; END IF",
    )
    try:
        user = Client(raise_request_exception=False)
        assert user.post("/notes/", {"author": "hal", "text": new_text()}).status_code == 302
        wrapper = connections["default"]
        first = wrapper.connection
        failed = user.post("/notes/", {"author": "hal", "text": refused})
        assert failed.status_code == 500
        assert vars(failed)["exc_info"][1].args[0] == 1290  # set by the test client
        assert wrapper.connection is first
        assert wrapper.is_usable() is False  # although the server answers pings
        assert first.open
        # The next request replaces it before its first query (no request end needed).
        assert user.post("/notes/", {"author": "hal", "text": new_text()}).status_code == 302
        assert wrapper.connection is not first
        assert not first.open
        assert wrapper.is_usable() is True
    finally:
        sb.query("db1", f"DROP TRIGGER {TEST_DB}.refuse")


# -- failover: runs last, the cluster's topology changes ------------------------------------


def test_connection_to_a_demoted_master_is_replaced(project: Project) -> None:
    sb = project.sb
    conn_max_age(None)
    user = Client(raise_request_exception=False)
    assert user.post("/notes/", {"author": "gus", "text": new_text()}).status_code == 302
    close_old_connections()
    assert connections["default"].connection.datasource.name == "db1"

    # Switchover by hand: db1 read-only, db3 (caught up) promoted, db2 repointed to it
    # (until it is, db2 replicates from db1 and nobody is the master).
    sb.query("db1", "SET GLOBAL read_only = 1")
    sb.wait_caught_up("db3")
    with sb.cursor("db3") as cur:
        cur.execute("STOP SLAVE")
        cur.execute("RESET SLAVE ALL")
        cur.execute("SET GLOBAL read_only = 0")
    with sb.cursor("db2") as cur:
        cur.execute("STOP SLAVE")
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s", (sb.node("db3").port,)
        )
        cur.execute("START SLAVE")

    failed = user.post("/notes/", {"author": "gus", "text": new_text()})
    assert failed.status_code == 500
    close_old_connections()  # end of request: Django drops the condemned connection

    # Until the monitor's next round sees db3 as the master, a new connection may still
    # be routed to db1 and fail the same way, or find no master; then the next request
    # succeeds on db3.
    text = new_text()
    deadline = time.monotonic() + 10
    statuses = []
    while True:
        posted = user.post("/notes/", {"author": "gus", "text": text})
        close_old_connections()
        statuses.append(posted.status_code)
        if posted.status_code == 302 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert posted.status_code == 302, statuses
    assert connections["default"].connection.datasource.name == "db3"
    rows = sb.query("db3", f"SELECT COUNT(*) FROM {TEST_DB}.shop_note WHERE text = '{text}'")
    assert rows[0][0] == 1
    assert text in user.get(posted["Location"]).json()["notes"]
