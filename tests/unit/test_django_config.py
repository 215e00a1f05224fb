"""sqlrouter.contrib.django without a server: settings, alias detection, use_master.

Nothing here configures Django's settings (the integration module does, once per
process): these are the pure parts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from sqlrouter.contrib.django import use_master
from sqlrouter.contrib.django._config import service_url
from sqlrouter.contrib.django.routers import find_aliases, master_forced
from sqlrouter.qos import QoS

ENGINE = "sqlrouter.contrib.django"
SECRET = "pw@:/%x"
URL = "sqlrouter://app:pw%40%3A%2F%25x@shop/shopdb?qos=RO_RELAXED&max_lag=2"


def entry(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ENGINE": ENGINE,
        "NAME": "",
        "USER": "",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "OPTIONS": {},
    }
    base.update(settings)
    return base


# -- service_url ------------------------------------------------------------------------


def test_url_form() -> None:
    url = service_url(entry(OPTIONS={"url": URL}), "replica")
    assert (url.service, url.database, url.user, url.password) == ("shop", "shopdb", "app", SECRET)
    assert url.qos is QoS.RO_RELAXED
    assert url.max_lag == 2.0


def test_settings_form() -> None:
    settings = entry(
        NAME="shopdb",
        USER="app",
        PASSWORD=SECRET,
        OPTIONS={
            "service": "shop",
            "qos": "RW_STRICT",
            "registry": "/etc/r.toml",
            "charset": "utf8",
        },
    )
    url = service_url(settings, "default")
    assert (url.service, url.database, url.user, url.password) == ("shop", "shopdb", "app", SECRET)
    assert url.registry == "/etc/r.toml"
    assert url.connect_args["charset"] == "utf8"


def test_settings_override_the_url_and_options_override_its_parameters() -> None:
    settings = entry(NAME="test_shopdb", USER="admin", OPTIONS={"url": URL, "qos": "RW_STRICT"})
    url = service_url(settings, "default")
    assert (url.database, url.user, url.password, url.qos) == (
        "test_shopdb",
        "admin",
        SECRET,
        QoS.RW_STRICT,
    )


def test_name_none_means_no_database() -> None:
    # Django's connection "to no database" (creating the test database) passes NAME=None.
    assert service_url(entry(NAME=None, OPTIONS={"url": URL}), "default").database is None


def test_isolation_level_is_djangos() -> None:
    url = service_url(entry(OPTIONS={"url": URL, "isolation_level": "repeatable read"}), "x")
    assert "isolation_level" not in url.connect_args


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (entry(HOST="db.example", OPTIONS={"url": URL}), "HOST and PORT are not used"),
        (entry(PORT="3306", OPTIONS={"url": URL}), "HOST and PORT are not used"),
        (entry(NAME="shopdb"), "no service: set OPTIONS['service']"),
        (entry(OPTIONS=["url"]), "OPTIONS must be a dict"),
        (entry(OPTIONS={"url": 42}), "OPTIONS['url'] must be a service URL string"),
        (
            entry(NAME="a", OPTIONS={"service": "s", "database": "b"}),
            "'database' is given twice, in NAME and in OPTIONS",
        ),
        (entry(OPTIONS={"url": URL, "qos": "FAST"}), "invalid qos 'FAST'"),
        (entry(OPTIONS={"url": URL, "max_lags": 1}), "did you mean 'max_lag'"),
        (entry(OPTIONS={"service": "s", "host": "h"}), "parameter 'host' is not accepted"),
    ],
)
def test_bad_settings_name_the_alias_and_the_problem(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        service_url(settings, "replica")
    message = str(caught.value)
    assert message.startswith("DATABASES['replica']: ")
    assert expected in message
    assert SECRET not in message


def test_password_never_in_an_error() -> None:
    bad = URL.replace("max_lag=2", f"max_lag={SECRET}")
    with pytest.raises(ImproperlyConfigured) as caught:
        service_url(entry(PASSWORD=SECRET, OPTIONS={"url": bad}), "replica")
    assert SECRET not in str(caught.value)
    assert "pw%40" not in str(caught.value)


# -- find_aliases -----------------------------------------------------------------------


def rw(service: str = "shop") -> dict[str, Any]:
    return entry(OPTIONS={"service": service, "qos": "RW_STRICT"})


def ro(service: str = "shop") -> dict[str, Any]:
    return entry(OPTIONS={"service": service, "qos": "RO_RELAXED"})


def test_default_writes_and_the_relaxed_alias_of_its_service_reads() -> None:
    found = find_aliases({"default": rw(), "replica": ro(), "other": ro("stats")})
    assert (found.write, found.read) == ("default", "replica")
    assert set(found.urls) == {"default", "replica", "other"}


def test_the_only_strict_alias_writes_even_when_not_default() -> None:
    databases = {"default": {"ENGINE": "django.db.backends.sqlite3"}, "p": rw(), "r": ro()}
    found = find_aliases(databases)
    assert (found.write, found.read) == ("p", "r")


def test_without_a_relaxed_alias_reads_go_to_the_write_alias() -> None:
    found = find_aliases({"default": rw()})
    assert (found.write, found.read) == ("default", "default")


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        ({"a": rw(), "b": rw()}, "several ('a', 'b')"),
        ({"default": ro()}, "none with ENGINE 'sqlrouter.contrib.django' and qos RW_STRICT"),
        ({"default": rw(), "r1": ro(), "r2": ro()}, "several RO_RELAXED aliases"),
    ],
)
def test_ambiguous_aliases_ask_to_name_them(
    databases: dict[str, dict[str, Any]], expected: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        find_aliases(databases)
    assert expected in str(caught.value)
    assert 'QoSRouter(write="...", read="...")' in str(caught.value)


def test_named_aliases() -> None:
    found = find_aliases({"a": rw(), "b": rw(), "r1": ro(), "r2": ro()}, write="b", read="r2")
    assert (found.write, found.read) == ("b", "r2")
    with pytest.raises(ImproperlyConfigured, match="alias 'nope' is not in DATABASES"):
        find_aliases({"default": rw()}, read="nope")


# -- use_master ---------------------------------------------------------------------------


def test_use_master_nests_and_restores() -> None:
    assert not master_forced()
    outer = use_master()
    with outer:
        assert master_forced()
        with outer, use_master():
            assert master_forced()
        assert master_forced()
    assert not master_forced()


def test_use_master_decorates_sync_and_async_functions() -> None:
    @use_master
    def plain() -> bool:
        return master_forced()

    @use_master()
    async def coroutine() -> bool:
        await asyncio.sleep(0)
        return master_forced()

    assert plain() is True
    assert asyncio.run(coroutine()) is True
    assert asyncio.iscoroutinefunction(coroutine)
    assert not master_forced()


def test_use_master_stays_in_its_context() -> None:
    seen: list[bool] = []

    async def main() -> None:
        async def other() -> None:
            await asyncio.sleep(0.01)
            seen.append(master_forced())

        task = asyncio.create_task(other())  # created outside: not forced
        async with use_master():
            await asyncio.sleep(0.02)
            seen.append(master_forced())
        await task

    asyncio.run(main())
    thread_saw: list[bool] = []
    with use_master():
        worker = threading.Thread(target=lambda: thread_saw.append(master_forced()))
        worker.start()
        worker.join(timeout=10)
    assert sorted(seen) == [False, True]
    assert thread_saw == [False]


# -- the MySQLdb stand-in -------------------------------------------------------------------

_IMPORT_CHECK = """
import sys
import django
from django.conf import settings
settings.configure()
import sqlrouter.contrib.django.base as base
assert "MySQLdb" not in sys.modules, "the stand-in leaked"
import django.db.backends.mysql.base as mysql
try:
    mysql.Database.connect()
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
assert base.DatabaseWrapper.Database.__name__ == "sqlrouter"
"""


def test_backend_imports_without_mysqlclient_and_leaves_no_mysqldb() -> None:
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed: Django's module uses it")
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ImproperlyConfigured Error loading MySQLdb module."
