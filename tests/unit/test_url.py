"""Unit tests of sqlrouter.url: parsing, validation and rendering of service URLs."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import pickle
import ssl
import traceback
from typing import Any
from urllib.parse import quote, urlsplit

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymysql.connections import Connection
from pymysql.cursors import DictCursor, SSCursor, SSDictCursor

from sqlrouter._urlparams import _CONNECT_ARGS
from sqlrouter.errors import ProgrammingError
from sqlrouter.gtid import CausalToken
from sqlrouter.topology import MAX_LAG_RANGE
from sqlrouter.url import (
    KNOWN_PARAMETERS,
    URL_PARAMETERS,
    Consistency,
    Fallback,
    QoS,
    ServiceURL,
    parse_url,
)

SECRET = "Sup3r$ecret@/:%?#&="
ENCODED_SECRET = quote(SECRET, safe="")


def error_of(url: str | ServiceURL | None = None, /, **overrides: Any) -> str:
    """The message of the ProgrammingError that parse_url raises."""
    with pytest.raises(ProgrammingError) as info:
        parse_url(url, **overrides)
    return str(info.value)


def chain_text(exc: BaseException) -> str:
    """The text of an exception and of every exception it carries."""
    texts = []
    current: BaseException | None = exc
    while current is not None:
        texts.append(repr(current.args))
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# --- the URL's parts ------------------------------------------------------------------


def test_minimal_url_has_the_documented_defaults() -> None:
    url = parse_url("sqlrouter://shop")
    assert url == ServiceURL(service="shop")
    assert url.database is None
    assert url.user is None
    assert url.password is None
    assert url.qos is QoS.RW_STRICT
    assert url.max_lag is None
    assert url.fallback is Fallback.MASTER
    assert url.registry is None
    assert url.connect_timeout == 10.0
    assert url.read_timeout is None
    assert url.write_timeout is None
    assert url.failover_timeout == 0.0
    assert url.consistency is Consistency.SESSION
    assert url.consistency_wait == 0.1
    assert url.causal_token is None
    assert dict(url.connect_args) == {}


def test_full_url() -> None:
    url = parse_url("sqlrouter://app:secret@shop/shopdb?qos=RO_RELAXED&max_lag=2")
    assert (url.user, url.password, url.service, url.database) == (
        "app",
        "secret",
        "shop",
        "shopdb",
    )
    assert url.qos is QoS.RO_RELAXED
    assert url.max_lag == 2.0
    assert isinstance(url.max_lag, float)


@pytest.mark.parametrize(
    "text",
    [
        "mysql+sqlrouter://app:secret@shop/shopdb",
        "SQLRouter://app:secret@shop/shopdb",
        "MYSQL+SQLROUTER://app:secret@shop/shopdb",
        "sqlrouter://app:secret@shop/shopdb/".rstrip("/"),
    ],
)
def test_schemes(text: str) -> None:
    assert parse_url(text) == parse_url("sqlrouter://app:secret@shop/shopdb")


def test_service_case_is_kept() -> None:
    assert parse_url("sqlrouter://Shop.EU-1_a").service == "Shop.EU-1_a"


@pytest.mark.parametrize("path", ["", "/"])
def test_no_database(path: str) -> None:
    assert parse_url(f"sqlrouter://shop{path}").database is None


def test_user_without_password() -> None:
    url = parse_url("sqlrouter://app@shop")
    assert url.user == "app"
    assert url.password is None


def test_empty_password_is_kept() -> None:
    url = parse_url("sqlrouter://app:@shop")
    assert url.password == ""


def test_database_is_percent_decoded() -> None:
    assert parse_url("sqlrouter://shop/my%20db%2Fx").database == "my db/x"


@pytest.mark.parametrize(
    "password",
    ["p@ss", "a:b", "a/b", "100%", "wh?t", "#hash", "a&b=c", "p@ss:w/o%r?d", "@@", "é ü 日本", " "],
)
def test_password_is_percent_decoded(password: str) -> None:
    url = parse_url(f"sqlrouter://app:{quote(password, safe='')}@shop/db")
    assert url.password == password
    assert (url.user, url.service, url.database) == ("app", "shop", "db")


@pytest.mark.parametrize("user", ["a@b", "a:b", "domain/user", "50%", "who?"])
def test_user_is_percent_decoded(user: str) -> None:
    url = parse_url(f"sqlrouter://{quote(user, safe='')}:pw@shop")
    assert url.user == user
    assert url.password == "pw"


def test_urlsplit_splits_user_info_at_the_last_at_sign() -> None:
    # The parser relies on this: a password may hold a raw '@'.
    parts = urlsplit("sqlrouter://app:p@ss@w@rd@shop/db")
    assert parts.username == "app"
    assert parts.password == "p@ss@w@rd"
    assert parts.netloc.rpartition("@")[2] == "shop"


def test_unencoded_at_sign_in_password() -> None:
    url = parse_url("sqlrouter://app:p@ss%40x@shop/db")
    assert url.password == "p@ss@x"
    assert url.service == "shop"


def test_unencoded_colon_in_password() -> None:
    assert parse_url("sqlrouter://app:a:b@shop").password == "a:b"


# --- routing parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "attribute", "expected"),
    [
        ("qos=RO_RELAXED", "qos", QoS.RO_RELAXED),
        ("qos=ro_relaxed", "qos", QoS.RO_RELAXED),
        ("qos=Rw_Strict", "qos", QoS.RW_STRICT),
        ("max_lag=2", "max_lag", 2.0),
        ("max_lag=0.25", "max_lag", 0.25),
        ("max_lag=0", "max_lag", 0.0),
        ("fallback=error", "fallback", Fallback.ERROR),
        ("fallback=MASTER", "fallback", Fallback.MASTER),
        ("registry=%2Fetc%2Fsqlrouter.toml", "registry", "/etc/sqlrouter.toml"),
        ("registry=dns%3Aexample.com", "registry", "dns:example.com"),
        ("connect_timeout=2.5", "connect_timeout", 2.5),
        ("connect_timeout=31536000", "connect_timeout", 31536000.0),
        ("read_timeout=30", "read_timeout", 30.0),
        ("write_timeout=0.5", "write_timeout", 0.5),
        ("failover_timeout=5", "failover_timeout", 5.0),
        ("failover_timeout=0", "failover_timeout", 0.0),
        ("consistency=none", "consistency", Consistency.NONE),
        ("consistency=SESSION", "consistency", Consistency.SESSION),
        ("consistency_wait=0", "consistency_wait", 0.0),
        ("consistency_wait=1.5", "consistency_wait", 1.5),
        ("causal_token=0-1-15", "causal_token", "0-1-15"),
        ("causal_token=1-2-7%2C0-1-15", "causal_token", "0-1-15,1-2-7"),
        ("causal_token=", "causal_token", None),
    ],
)
def test_routing_parameter(query: str, attribute: str, expected: object) -> None:
    url = parse_url(f"sqlrouter://shop/db?{query}")
    assert getattr(url, attribute) == expected


def test_every_routing_parameter_at_once() -> None:
    url = parse_url(
        "sqlrouter://shop/db?qos=RO_RELAXED&max_lag=3&fallback=error&registry=r.toml"
        "&connect_timeout=4&read_timeout=5&write_timeout=6&failover_timeout=7"
        "&consistency=none&consistency_wait=0.5&causal_token=0-1-9"
    )
    assert url == ServiceURL(
        service="shop",
        database="db",
        qos=QoS.RO_RELAXED,
        max_lag=3.0,
        fallback=Fallback.ERROR,
        registry="r.toml",
        connect_timeout=4.0,
        read_timeout=5.0,
        write_timeout=6.0,
        failover_timeout=7.0,
        consistency=Consistency.NONE,
        consistency_wait=0.5,
        causal_token="0-1-9",
    )


def test_trailing_ampersand_is_ignored() -> None:
    assert parse_url("sqlrouter://shop?qos=RO_RELAXED&").qos is QoS.RO_RELAXED


# --- PyMySQL connect() options --------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "name", "expected"),
    [
        ("autocommit=true", "autocommit", True),
        ("autocommit=FALSE", "autocommit", False),
        ("autocommit=1", "autocommit", True),
        ("autocommit=0", "autocommit", False),
        ("autocommit=Yes", "autocommit", True),
        ("autocommit=no", "autocommit", False),
        ("autocommit=on", "autocommit", True),
        ("autocommit=OFF", "autocommit", False),
        ("local_infile=true", "local_infile", True),
        ("use_unicode=false", "use_unicode", False),
        ("binary_prefix=true", "binary_prefix", True),
        ("ssl_disabled=true", "ssl_disabled", True),
        ("ssl_verify_cert=true", "ssl_verify_cert", True),
        ("ssl_verify_identity=false", "ssl_verify_identity", False),
        ("client_flag=2", "client_flag", 2),
        ("client_flag=0x20", "client_flag", 32),
        ("max_allowed_packet=1048576", "max_allowed_packet", 1048576),
        ("charset=utf8mb4", "charset", "utf8mb4"),
        ("collation=utf8mb4_bin", "collation", "utf8mb4_bin"),
        ("sql_mode=STRICT_ALL_TABLES%2CANSI_QUOTES", "sql_mode", "STRICT_ALL_TABLES,ANSI_QUOTES"),
        (
            "init_command=SET%20time_zone%3D%27%2B00%3A00%27",
            "init_command",
            "SET time_zone='+00:00'",
        ),
        ("program_name=shop-web", "program_name", "shop-web"),
        ("bind_address=127.0.0.2", "bind_address", "127.0.0.2"),
        ("ssl_ca=%2Fetc%2Fca.pem", "ssl_ca", "/etc/ca.pem"),
        ("ssl_cert=c.pem", "ssl_cert", "c.pem"),
        ("ssl_key=k.pem", "ssl_key", "k.pem"),
        ("ssl_key_password=kpw", "ssl_key_password", "kpw"),
        ("server_public_key=-----BEGIN", "server_public_key", b"-----BEGIN"),
    ],
)
def test_connect_option(query: str, name: str, expected: object) -> None:
    url = parse_url(f"sqlrouter://shop?{query}")
    assert url.connect_args == {name: expected}
    assert type(url.connect_args[name]) is type(expected)


def test_connect_args_is_read_only() -> None:
    url = parse_url("sqlrouter://shop?charset=utf8mb4")
    with pytest.raises(TypeError):
        url.connect_args["charset"] = "latin1"  # type: ignore[index]


def test_service_url_is_frozen() -> None:
    url = parse_url("sqlrouter://shop")
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.service = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "cursorclass", [DictCursor, SSCursor, SSDictCursor, pymysql.cursors.Cursor]
)
def test_cursorclass_keyword_is_passed_through(cursorclass: type[pymysql.cursors.Cursor]) -> None:
    url = parse_url("sqlrouter://shop", cursorclass=cursorclass)
    assert url.connect_args["cursorclass"] is cursorclass


def test_object_options_as_keywords() -> None:
    context = ssl.create_default_context()
    conv = dict(pymysql.converters.conversions)
    plugins: dict[str, Any] = {}
    url = parse_url("sqlrouter://shop", ssl=context, conv=conv, auth_plugin_map=plugins)
    assert url.connect_args["ssl"] is context
    assert url.connect_args["conv"] is conv
    assert url.connect_args["auth_plugin_map"] is plugins


def test_connect_args_are_accepted_by_pymysql() -> None:
    url = parse_url(
        "sqlrouter://app:pw@shop/shopdb?charset=utf8mb4&autocommit=true&local_infile=1"
        "&client_flag=0&max_allowed_packet=1048576&read_timeout=3&write_timeout=4"
        "&connect_timeout=2&program_name=t&init_command=SELECT%201&ssl_disabled=true",
        cursorclass=DictCursor,
    )
    connection = Connection(
        host="127.0.0.1",
        defer_connect=True,
        user=url.user,
        password=url.password or "",
        database=url.database,
        connect_timeout=url.connect_timeout,
        read_timeout=url.read_timeout,
        write_timeout=url.write_timeout,
        **url.connect_args,
    )
    assert connection.autocommit_mode is True
    assert connection.cursorclass is DictCursor
    assert connection.charset == "utf8mb4"


def test_every_pymysql_keyword_is_accepted_or_refused_with_a_reason() -> None:
    parameters = inspect.signature(Connection.__init__).parameters
    for name in parameters:
        if name == "self" or name in KNOWN_PARAMETERS or name in ("db", "passwd"):
            continue
        if name in ("read_timeout", "write_timeout", "connect_timeout"):
            continue
        message = error_of(service="shop", **{name: "x"})
        assert f"parameter {name!r} is not accepted: " in message


# --- Tungsten SQL Router URLs ---------------------------------------------------------


def test_tungsten_url() -> None:
    url = parse_url("jdbc:t-router://shop/shopdb?qos=RO_RELAXED&maxAppliedLatency=2")
    assert url == ServiceURL(service="shop", database="shopdb", qos=QoS.RO_RELAXED, max_lag=2.0)


def test_tungsten_user_and_password_in_the_query() -> None:
    url = parse_url(f"jdbc:t-router://shop/shopdb?user=app&password={ENCODED_SECRET}&qos=rw_strict")
    assert (url.user, url.password, url.qos) == ("app", SECRET, QoS.RW_STRICT)


def test_tungsten_prefix_is_case_insensitive_and_takes_our_names_too() -> None:
    url = parse_url("JDBC:T-Router://app:pw@shop?max_lag=1.5&charset=utf8mb4")
    assert (url.user, url.password, url.max_lag) == ("app", "pw", 1.5)
    assert url.connect_args == {"charset": "utf8mb4"}


def test_tungsten_max_lag_given_twice() -> None:
    message = error_of("jdbc:t-router://shop?maxAppliedLatency=1&max_lag=2")
    assert message == (
        "parameter 'max_lag' is given twice in the URL (as 'maxAppliedLatency' and 'max_lag')"
    )


def test_tungsten_password_in_user_info_and_query() -> None:
    message = error_of(f"jdbc:t-router://app:{ENCODED_SECRET}@shop?password=other1")
    assert message == "parameter 'password' is given twice in the URL"


def test_tungsten_session_id_is_explained() -> None:
    message = error_of("jdbc:t-router://shop/db?sessionId=DATABASE")
    assert "sessionId is not supported" in message
    assert "causal tokens" in message


def test_tungsten_names_of_a_cut_password_are_not_shown() -> None:
    # 'pass&word' unencoded: the query reads password=pass, then a parameter 'word'.
    message = error_of("jdbc:t-router://shop/db?password=pass&word=x")
    assert "word" not in message.replace("password", "")
    assert "percent-encode '&' in it as %26" in message


# --- keyword overrides ----------------------------------------------------------------


def test_keywords_override_the_url() -> None:
    url = parse_url(
        "sqlrouter://app:old@shop/db1?qos=RO_RELAXED&max_lag=5&charset=latin1",
        database="db2",
        password="new",
        qos="rw_strict",
        max_lag=1,
        charset="utf8mb4",
    )
    assert (url.database, url.password, url.qos, url.max_lag) == (
        "db2",
        "new",
        QoS.RW_STRICT,
        1.0,
    )
    assert url.connect_args == {"charset": "utf8mb4"}


def test_keywords_alone() -> None:
    url = parse_url(
        service="shop",
        db="shopdb",
        user="app",
        passwd="pw",
        qos=QoS.RO_RELAXED,
        max_lag=2,
        fallback=Fallback.ERROR,
        consistency="NONE",
        causal_token=CausalToken.parse("0-1-5"),
        autocommit=True,
        client_flag="3",
        ssl_verify_cert=0,
    )
    assert url == ServiceURL(
        service="shop",
        database="shopdb",
        user="app",
        password="pw",
        qos=QoS.RO_RELAXED,
        max_lag=2.0,
        fallback=Fallback.ERROR,
        consistency=Consistency.NONE,
        causal_token="0-1-5",
        connect_args={"autocommit": True, "client_flag": 3, "ssl_verify_cert": False},
    )


def test_connect_args_keyword_merges() -> None:
    url = parse_url(
        "sqlrouter://shop?charset=latin1&autocommit=1",
        connect_args={"charset": "utf8mb4", "cursorclass": DictCursor},
    )
    assert url.connect_args == {"charset": "utf8mb4", "autocommit": True, "cursorclass": DictCursor}


def test_none_removes_a_connect_option_but_autocommit_none_is_kept() -> None:
    url = parse_url("sqlrouter://shop?charset=latin1&autocommit=1", charset=None, autocommit=None)
    assert url.connect_args == {"autocommit": None}
    assert "autocommit" not in url.render()


def test_none_clears_optional_fields() -> None:
    url = parse_url(
        "sqlrouter://app:pw@shop/db?max_lag=3", database=None, password=None, max_lag=None
    )
    assert (url.database, url.password, url.max_lag) == (None, None, None)


def test_service_from_keyword_with_url_lacking_one() -> None:
    assert parse_url("sqlrouter:///db", service="shop") == ServiceURL(service="shop", database="db")


def test_parse_url_of_a_service_url() -> None:
    url = parse_url("sqlrouter://shop")
    assert parse_url(url) is url
    assert parse_url(url, qos="RO_RELAXED").qos is QoS.RO_RELAXED


def test_constructor_validates_and_converts() -> None:
    url = ServiceURL(service="shop", qos="ro_relaxed", max_lag="2")  # type: ignore[arg-type]
    assert url.qos is QoS.RO_RELAXED
    assert url.max_lag == 2.0
    with pytest.raises(ProgrammingError, match="invalid qos 'FAST'"):
        ServiceURL(service="shop", qos="FAST")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        (
            {"database": "a", "db": "b"},
            "parameter 'database' is given twice (as 'database' and 'db')",
        ),
        (
            {"password": "a1", "passwd": "b2"},
            "parameter 'password' is given twice (as 'password' and 'passwd')",
        ),
        (
            {"charset": "a", "connect_args": {"charset": "b"}},
            "parameter 'charset' is given twice",
        ),
    ],
)
def test_keyword_given_twice(keywords: dict[str, Any], expected: str) -> None:
    assert error_of(service="shop", **keywords) == expected


# --- set() ----------------------------------------------------------------------------


def test_set_makes_a_new_validated_object() -> None:
    url = parse_url("sqlrouter://app:pw@shop/db")
    relaxed = url.set(qos="RO_RELAXED", max_lag="1.5", db="other", charset="utf8mb4")
    assert relaxed is not url
    assert (relaxed.qos, relaxed.max_lag, relaxed.database) == (QoS.RO_RELAXED, 1.5, "other")
    assert relaxed.connect_args == {"charset": "utf8mb4"}
    assert url == parse_url("sqlrouter://app:pw@shop/db")
    with pytest.raises(ProgrammingError, match=r"invalid max_lag -1: expected a finite number"):
        url.set(max_lag=-1)


def test_set_merges_connect_args() -> None:
    url = parse_url("sqlrouter://shop?charset=utf8mb4").set(autocommit=True)
    assert url.connect_args == {"charset": "utf8mb4", "autocommit": True}


# --- rendering, repr, str -------------------------------------------------------------


def test_render_hides_the_password_by_default() -> None:
    url = parse_url(f"sqlrouter://app:{ENCODED_SECRET}@shop/shopdb?qos=RO_RELAXED&max_lag=2")
    assert url.render() == "sqlrouter://app:***@shop/shopdb?qos=RO_RELAXED&max_lag=2"
    assert str(url) == url.render()
    assert url.render(hide_password=False) == (
        f"sqlrouter://app:{ENCODED_SECRET}@shop/shopdb?qos=RO_RELAXED&max_lag=2"
    )


def test_render_writes_only_what_differs_from_the_defaults() -> None:
    url = parse_url("mysql+sqlrouter://shop?qos=RW_STRICT&connect_timeout=10&fallback=master")
    assert url.render() == "sqlrouter://shop"


def test_render_round_trips_every_text_parameter() -> None:
    text = (
        "sqlrouter://a%40b:p%2Fw@shop/my%20db?qos=RO_RELAXED&max_lag=0.5&fallback=error"
        "&registry=%2Fetc%2Fr.toml&connect_timeout=3&read_timeout=4&write_timeout=5"
        "&failover_timeout=6&consistency=none&consistency_wait=0&causal_token=0-1-2"
        "&autocommit=true&client_flag=2&charset=utf8mb4&server_public_key=KEY"
        "&ssl_key_password=kpw"
    )
    url = parse_url(text)
    assert parse_url(url.render(hide_password=False)) == url
    assert "ssl_key_password=***" in url.render()
    assert "kpw" not in url.render()


def test_render_leaves_out_object_options() -> None:
    url = parse_url("sqlrouter://shop?charset=utf8mb4", cursorclass=DictCursor)
    assert url.render() == "sqlrouter://shop?charset=utf8mb4"


def test_repr_is_informative() -> None:
    url = parse_url("sqlrouter://app:pw12@shop/shopdb?qos=RO_RELAXED&max_lag=2&charset=utf8mb4")
    assert repr(url) == (
        "ServiceURL(service='shop', database='shopdb', user='app', password='***', "
        "qos=QoS.RO_RELAXED, max_lag=2.0, connect_args={'charset': 'utf8mb4'})"
    )


@pytest.mark.parametrize(
    "password",
    [
        SECRET,
        "RW_STRICT",
        "?qos=RW_STRICT&max_lag=1",
        "app@shop/shopdb",
        "utf8mb4_bin",
        "sqlrouter://x:y@z",
        "***",
        # The password is also another value: that value is hidden where it shows.
        "utf8mb4",
        "shopdb",
        "shop",
        "app",
    ],
)
def test_repr_and_str_never_show_the_password(password: str) -> None:
    url = parse_url(
        "sqlrouter://app@shop/shopdb?qos=RO_RELAXED&charset=utf8mb4",
        password=password,
        ssl_key_password=password + "-key",
    )
    assert url.password == password
    for text in (repr(url), str(url), url.render(), f"{url}", f"{url!r}", repr([url])):
        assert password not in text.replace("***", "")
        assert quote(password, safe="") not in text.replace("***", "")
        assert password + "-key" not in text


def test_a_value_equal_to_the_password_is_hidden_in_str_and_repr() -> None:
    url = parse_url("sqlrouter://app:utf8mb4@shop/db?charset=utf8mb4")
    assert url.connect_args == {"charset": "utf8mb4"}
    assert str(url) == "sqlrouter://app:***@shop/db?charset=***"
    assert "utf8mb4" not in repr(url)
    assert parse_url(url.render(hide_password=False)) == url


def test_the_ssl_key_password_is_hidden_wherever_it_shows() -> None:
    url = parse_url("sqlrouter://app@shop/db?init_command=keypass99", ssl_key_password="keypass99")
    assert str(url) == "sqlrouter://app@shop/db?init_command=***&ssl_key_password=***"
    assert repr(url) == (
        "ServiceURL(service='shop', database='db', user='app', "
        "connect_args={'init_command': '***', 'ssl_key_password': '***'})"
    )


@pytest.mark.parametrize(("password", "key"), [("secret", "secretlong"), ("secretlong", "secret")])
def test_the_longer_of_two_secrets_is_hidden_whole(password: str, key: str) -> None:
    # Hiding the shorter secret first would leave "***long" of the longer one.
    url = parse_url(f"sqlrouter://app:{password}@shop/db?charset=secretlong", ssl_key_password=key)
    assert str(url) == "sqlrouter://app:***@shop/db?charset=***&ssl_key_password=***"
    assert "long" not in repr(url)


def test_secrets_of_fewer_than_three_characters_are_not_looked_for() -> None:
    # Hiding "ab" wherever it shows would hide ordinary values and tell the password.
    short = parse_url("sqlrouter://app:ab@shop/ab?charset=ab")
    assert str(short) == "sqlrouter://app:***@shop/ab?charset=ab"
    three = parse_url("sqlrouter://app:abc@shop/abc?charset=abc")
    assert str(three) == "sqlrouter://app:***@shop/***?charset=***"
    assert repr(three) == (
        "ServiceURL(service='shop', database='***', user='app', password='***', "
        "connect_args={'charset': '***'})"
    )


def test_qos_and_fallback_are_the_shared_enums() -> None:
    import sqlrouter.qos

    assert QoS is sqlrouter.qos.QoS
    assert Fallback is sqlrouter.qos.Fallback
    assert str(Consistency.NONE) == "none"


def test_ssl_dict_password_is_not_in_repr() -> None:
    url = parse_url(service="shop", ssl={"ca": "/ca.pem", "password": "ssl-secret"})
    assert "ssl-secret" not in repr(url)
    assert url.connect_args["ssl"]["password"] == "ssl-secret"


def test_hash_pickle_and_copy() -> None:
    url = parse_url(
        "sqlrouter://app:pw@shop/db?qos=RO_RELAXED&charset=utf8mb4", cursorclass=DictCursor
    )
    assert hash(url) == hash(parse_url(url.render(hide_password=False), cursorclass=DictCursor))
    assert {url: 1}[url] == 1
    assert pickle.loads(pickle.dumps(url)) == url  # noqa: S301  (our own bytes)
    assert copy.deepcopy(url) == url
    assert copy.copy(url) == url
    unhashable = parse_url(service="shop", conv={})
    assert isinstance(hash(unhashable), int)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlrouter://shop?qos=FAST", "invalid qos 'FAST': expected RW_STRICT or RO_RELAXED"),
        (
            "sqlrouter://shop?fallback=replica",
            "invalid fallback 'replica': expected master or error",
        ),
        (
            "sqlrouter://shop?consistency=strong",
            "invalid consistency 'strong': expected session or none",
        ),
        (
            "sqlrouter://shop?max_lag=-1",
            "invalid max_lag '-1': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?max_lag=abc",
            "invalid max_lag 'abc': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?max_lag=",
            "invalid max_lag '': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?max_lag=nan",
            "invalid max_lag 'nan': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?max_lag=inf",
            "invalid max_lag 'inf': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?connect_timeout=0",
            "invalid connect_timeout '0': expected a finite number of seconds > 0 and <= 31536000",
        ),
        (
            "sqlrouter://shop?connect_timeout=31536001",
            "invalid connect_timeout '31536001': expected a finite number of seconds > 0 "
            "and <= 31536000",
        ),
        (
            "sqlrouter://shop?read_timeout=0",
            "invalid read_timeout '0': expected a finite number of seconds > 0 and <= 31536000, "
            "or None",
        ),
        (
            "sqlrouter://shop?write_timeout=-2",
            "invalid write_timeout '-2': expected a finite number of seconds > 0 and <= 31536000, "
            "or None",
        ),
        (
            "sqlrouter://shop?failover_timeout=-0.1",
            "invalid failover_timeout '-0.1': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?max_lag=1e300",
            "invalid max_lag '1e300': expected a finite number of seconds >= 0 and <= 31536000",
        ),
        (
            "sqlrouter://shop?read_timeout=1e300",
            "invalid read_timeout '1e300': expected a finite number of seconds > 0 and <= 31536000",
        ),
        (
            "sqlrouter://shop?failover_timeout=31536001",
            "invalid failover_timeout '31536001': expected a finite number of seconds >= 0 and "
            "<= 31536000",
        ),
        (
            "sqlrouter://shop?consistency_wait=" + "9" * 400,
            "invalid consistency_wait '99999",
        ),
        (
            "sqlrouter://shop?consistency_wait=x",
            "invalid consistency_wait 'x': expected a finite number of seconds >= 0",
        ),
        (
            "sqlrouter://shop?causal_token=abc",
            "invalid causal_token 'abc': expected a causal token, a comma-separated list of GTIDs "
            "domain-server_id-sequence such as '0-1-15,1-2-7'",
        ),
        ("sqlrouter://shop?causal_token=0-99999999999-1", "invalid causal_token '0-99999999999-1'"),
        (
            "sqlrouter://shop?causal_token=" + "%2C".join(f"{d}-1-1" for d in range(1025)),
            "invalid causal_token '0-1-1,1-1-1,2-1-1,3-1-1,4-1-1,5-1-1,6-1-1,7-1-1,8-1-1,9-1-1,10",
        ),
        (
            "sqlrouter://shop?autocommit=maybe",
            "invalid autocommit 'maybe': expected true or false (or 1/0, yes/no, on/off)",
        ),
        (
            "sqlrouter://shop?client_flag=-1",
            "invalid client_flag '-1': expected an integer 0-2147483647",
        ),
        (
            "sqlrouter://shop?max_allowed_packet=0",
            "invalid max_allowed_packet '0': expected an integer 1-1073741824",
        ),
        (
            "sqlrouter://shop?max_allowed_packet=1.5",
            "invalid max_allowed_packet '1.5': expected an integer 1-1073741824",
        ),
        (
            "sqlrouter://shop?server_public_key=%C3%A9",
            "invalid server_public_key 'é': expected a PEM-encoded public key (ASCII text)",
        ),
        (
            "sqlrouter://shop?max_lga=1",
            "unknown parameter 'max_lga' in the URL: did you mean 'max_lag'?",
        ),
        (
            "sqlrouter://shop?QOS=RO_RELAXED",
            "unknown parameter 'QOS' in the URL: did you mean 'qos'?",
        ),
        (
            "sqlrouter://shop?charest=utf8",
            "unknown parameter 'charest' in the URL: did you mean 'charset'?",
        ),
        (
            "sqlrouter://shop?frobnicate=1",
            "unknown parameter 'frobnicate' in the URL: expected a routing parameter "
            "(qos, max_lag,",
        ),
        (
            "sqlrouter://shop?qos=RO_RELAXED&qos=RW_STRICT",
            "parameter 'qos' is given twice in the URL",
        ),
        ("sqlrouter://shop?charset=a&charset=b", "parameter 'charset' is given twice in the URL"),
        (
            "sqlrouter://shop?qos",
            "query parameter 'qos' in the URL has no value: expected name=value",
        ),
        (
            "sqlrouter://shop?host=db1",
            "parameter 'host' in the URL is not accepted: sqlrouter routes by service; "
            "pass service=... (a host is chosen by the router)",
        ),
        (
            "sqlrouter://shop?port=3307",
            "parameter 'port' in the URL is not accepted: sqlrouter routes by service; "
            "the port of each server comes from the registry",
        ),
        (
            "sqlrouter://shop?unix_socket=%2Ftmp%2Fs",
            "parameter 'unix_socket' in the URL is not accepted",
        ),
        (
            "sqlrouter://shop?defer_connect=1",
            "parameter 'defer_connect' in the URL is not accepted",
        ),
        ("sqlrouter://shop?read_default_file=my.cnf", "an option file can set the host"),
        ("sqlrouter://shop?compress=1", "PyMySQL does not support compression"),
        (
            "sqlrouter://shop?cursorclass=DictCursor",
            "parameter 'cursorclass' cannot be given in a URL: its value is a Python object; "
            "pass cursorclass=... as a keyword",
        ),
        ("sqlrouter://shop?ssl=1", "parameter 'ssl' cannot be given in a URL"),
        ("sqlrouter://shop?conv=1", "parameter 'conv' cannot be given in a URL"),
        ("sqlrouter://shop?password=x", "parameter 'password' is not accepted in the query"),
        ("sqlrouter://shop?user=x", "parameter 'user' is not accepted in the query"),
        ("sqlrouter://shop?database=x", "parameter 'database' is not accepted in the query"),
        ("sqlrouter://shop?db=x", "parameter 'db' is not accepted in the query"),
        (
            "sqlrouter://shop?maxAppliedLatency=2",
            "parameter 'maxAppliedLatency' is the Tungsten SQL Router name, read in "
            "jdbc:t-router:// URLs; in a sqlrouter:// URL use max_lag (seconds)",
        ),
        (
            "sqlrouter://svc:3306/db",
            "a port is not accepted after service 'svc': a service is a name, not host:port; "
            "the registry gives each server's host and port",
        ),
        (
            "sqlrouter:///db",
            "missing service: give it in the URL (sqlrouter://[user[:password]@]SERVICE",
        ),
        ("sqlrouter://app:pw@/db", "missing service"),
        ("sqlrouter://", "missing service"),
        (
            "sqlrouter://shop%20eu/db",
            "invalid service 'shop%20eu': expected a service name made of letters, digits, "
            "'_', '.' and '-'",
        ),
        ("sqlrouter://[::1]/db", "invalid service '[::1]': a service is a name, not an IP address"),
        (
            "mysql://shop/db",
            "unsupported URL scheme 'mysql': expected sqlrouter:// or mysql+sqlrouter://",
        ),
        (
            "jdbc:mysql://shop/db",
            "unsupported URL scheme 'jdbc': expected sqlrouter:// or mysql+sqlrouter:// (or "
            "jdbc:t-router://, the Tungsten SQL Router form, see docs/connect.md)",
        ),
        ("shop/db", "missing URL scheme: expected a sqlrouter:// or mysql+sqlrouter:// URL"),
        ("", "missing URL scheme"),
        ("sqlrouter:shop", "expected '//' after 'sqlrouter:'"),
        ("sqlrouter://shop/db#x", "a service URL has no '#fragment': percent-encode '#' as %23"),
        (
            "sqlrouter://shop/db/extra",
            "invalid database path '/db/extra': a service URL has one path segment",
        ),
        ("sqlrouter://[shop/db", "malformed service URL (not shown: it may contain a password)"),
    ],
)
def test_error_message(url: str, expected: str) -> None:
    assert expected in error_of(url)


@pytest.mark.parametrize(
    ("keywords", "expected"),
    [
        (
            {"host": "db1.example.com"},
            "parameter 'host' is not accepted: sqlrouter routes by service; pass service=... "
            "(a host is chosen by the router)",
        ),
        ({"port": 3306}, "parameter 'port' is not accepted: sqlrouter routes by service"),
        ({"max_lga": 1}, "unknown parameter 'max_lga': did you mean 'max_lag'?"),
        ({"databse": "x"}, "unknown parameter 'databse': did you mean 'database'?"),
        (
            {"cursor_class": DictCursor},
            "unknown parameter 'cursor_class': did you mean 'cursorclass'?",
        ),
        ({"qos": "FAST"}, "invalid qos 'FAST': expected RW_STRICT or RO_RELAXED"),
        ({"qos": None}, "invalid qos None: expected RW_STRICT or RO_RELAXED"),
        ({"qos": Fallback.MASTER}, "invalid qos <Fallback.MASTER: 'master'>"),
        (
            {"max_lag": -1},
            "invalid max_lag -1: expected a finite number of seconds >= 0 and <= 31536000, or None",
        ),
        ({"max_lag": True}, "invalid max_lag True"),
        ({"max_lag": 10**400}, "invalid max_lag 1000000"),
        ({"write_timeout": 10**400}, "invalid write_timeout 1000000"),
        ({"consistency_wait": 1e300}, "invalid consistency_wait 1e+300"),
        ({"connect_timeout": None}, "invalid connect_timeout None"),
        ({"autocommit": 2}, "invalid autocommit 2: expected true or false"),
        ({"client_flag": True}, "invalid client_flag True: expected an integer 0-2147483647"),
        (
            {"client_flag": 2**40},
            "invalid client_flag 1099511627776: expected an integer 0-2147483647",
        ),
        (
            {"max_allowed_packet": 10**400},
            "invalid max_allowed_packet 1000000",
        ),
        (
            {"cursorclass": "DictCursor"},
            "invalid cursorclass 'DictCursor': expected a PyMySQL cursor class",
        ),
        (
            {"cursorclass": dict},
            "invalid cursorclass <class 'dict'>: expected a PyMySQL cursor class",
        ),
        ({"ssl": "yes"}, "invalid ssl (str value): expected an ssl.SSLContext"),
        ({"conv": [1]}, "invalid conv [1]: expected a dict"),
        ({"charset": 8}, "invalid charset (int value): expected a string"),
        ({"ssl_key_password": 8}, "invalid ssl_key_password (***): expected a string"),
        ({"database": 5}, "invalid database (int value): expected a string"),
        ({"user": "a\0b"}, "invalid user 'a\\x00b': it contains a NUL character"),
        ({"password": "a\0b"}, "invalid password: it contains a NUL character"),
        ({"password": "a\ud800b"}, "invalid password: it holds a lone surrogate"),
        ({"service": "a b"}, "invalid service 'a b'"),
        ({"service": None}, "missing service"),
        ({"registry": 5}, "invalid registry 5: expected the path of a registry file"),
        ({"causal_token": 5}, "invalid causal_token 5"),
        (
            {"connect_args": [("charset", "x")]},
            "invalid connect_args (list value): expected a mapping",
        ),
    ],
)
def test_keyword_error_message(keywords: dict[str, Any], expected: str) -> None:
    keywords.setdefault("service", "shop")
    assert expected in error_of(**keywords)


def test_wrong_url_type() -> None:
    message = error_of(b"sqlrouter://shop")  # type: ignore[arg-type]
    assert message.startswith("invalid service URL (bytes value): expected a string such as")


def test_missing_service_without_anything() -> None:
    assert error_of() == (
        "missing service: give it in the URL "
        "(sqlrouter://[user[:password]@]SERVICE[/DATABASE][?param=value&...]) or as service=..."
    )


def test_long_values_are_cut_short_in_messages() -> None:
    message = error_of(f"sqlrouter://shop?qos={'x' * 1000}")
    assert len(message) < 200
    assert message.startswith("invalid qos 'xxx")


@pytest.mark.parametrize(
    "url",
    [
        f"sqlrouter://app:{ENCODED_SECRET}@shop?qos=FAST",
        f"sqlrouter://app:{ENCODED_SECRET}@shop?max_lga=1",
        f"sqlrouter://app:{ENCODED_SECRET}@shop?qos=a&qos=b",
        f"sqlrouter://app:{ENCODED_SECRET}@shop:3306/db",
        f"sqlrouter://app:{ENCODED_SECRET}@shop/db#frag",
        f"sqlrouter://app:{ENCODED_SECRET}@/db",
        f"sqlrouter://app:{ENCODED_SECRET}@[shop/db",
        f"sqlrouter://app:{ENCODED_SECRET}@shop/a/b",
        f"mysql://app:{ENCODED_SECRET}@shop/db",
        f"jdbc:t-router://shop?password={ENCODED_SECRET}&qos=FAST",
        f"jdbc:t-router://shop?password={ENCODED_SECRET}&password=x",
        # The password is also the bad value of another parameter.
        f"sqlrouter://app:{ENCODED_SECRET}@shop?qos={ENCODED_SECRET}",
        f"sqlrouter://app:{ENCODED_SECRET}@shop?ssl_key_password=x&autocommit={ENCODED_SECRET}",
        # Unencoded, the password cuts the URL in odd places.
        "sqlrouter://app:hunter2/x@shop/db",
        "sqlrouter://app:hunter2?x@shop/db",
        "sqlrouter://app:hunter2#x@shop/db",
        "sqlrouter://app:1234567/db",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ProgrammingError) as info:
        parse_url(url)
    text = chain_text(info.value)
    for secret in (SECRET, ENCODED_SECRET, "hunter2", "1234567"):
        assert secret not in text


@pytest.mark.parametrize(
    "keywords",
    [
        {"password": "RO_FAST_pw", "qos": "RO_FAST_pw"},
        {"passwd": "strong-horse", "max_lag": "strong-horse"},
        {"password": "strong-horse", "fallback": "strong-horse"},
        {"password": "strong-horse", "ssl_key_password": "x", "autocommit": "strong-horse"},
        {"ssl_key_password": "strong-horse", "charset": 5, "causal_token": "strong-horse"},
        {"password": "strong-horse", "service": "strong-horse?"},
        {"password": "strong-horse\0"},
        {"password": 12345678},
    ],
)
def test_keyword_errors_never_show_the_password(keywords: dict[str, Any]) -> None:
    keywords.setdefault("service", "shop")
    with pytest.raises(ProgrammingError) as info:
        parse_url("sqlrouter://app@shop", **keywords)
    text = chain_text(info.value)
    assert "strong-horse" not in text
    assert "RO_FAST_pw" not in text
    assert "12345678" not in text


def test_constructor_errors_never_show_the_password() -> None:
    with pytest.raises(ProgrammingError) as info:
        ServiceURL(service="shop", password="strong-horse", qos="strong-horse")  # type: ignore[arg-type]
    assert "strong-horse" not in chain_text(info.value)
    assert str(info.value) == "invalid qos '***': expected RW_STRICT or RO_RELAXED"


def test_known_parameters() -> None:
    assert {"service", "database", "user", "password", "qos", "max_lag", "cursorclass"} <= (
        KNOWN_PARAMETERS
    )
    assert {"host", "port", "db", "passwd", "connect_args"}.isdisjoint(KNOWN_PARAMETERS)
    assert URL_PARAMETERS <= KNOWN_PARAMETERS
    assert {"cursorclass", "conv", "ssl", "auth_plugin_map", "password"}.isdisjoint(URL_PARAMETERS)
    for name in URL_PARAMETERS:
        try:
            parse_url(f"sqlrouter://shop?{name}=1")
        except ProgrammingError as exc:
            assert str(exc).startswith(f"invalid {name} '1': expected ")


# --- properties -----------------------------------------------------------------------

services = st.from_regex(r"\A[A-Za-z0-9_.\-]+\Z")
texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"))
optional_texts = st.none() | texts
seconds = st.floats(min_value=0, max_value=MAX_LAG_RANGE[1])


@given(
    service=services,
    database=st.none() | texts.filter(bool),
    user=optional_texts,
    password=optional_texts,
    qos=st.sampled_from(QoS),
    max_lag=st.none() | seconds,
    fallback=st.sampled_from(Fallback),
    registry=st.none() | texts.filter(bool),
    charset=st.none() | texts,
)
def test_render_then_parse_round_trips(
    *,
    service: str,
    database: str | None,
    user: str | None,
    password: str | None,
    qos: QoS,
    max_lag: float | None,
    fallback: Fallback,
    registry: str | None,
    charset: str | None,
) -> None:
    url = ServiceURL(
        service=service,
        database=database,
        user=user,
        password=password,
        qos=qos,
        max_lag=max_lag,
        fallback=fallback,
        registry=registry,
        connect_args={"charset": charset},
    )
    parsed = parse_url(url.render(hide_password=False))
    if user is None and password is not None:
        # "sqlrouter://:password@service": the user info is there, with an empty user.
        url = url.set(user="")
    assert parsed == url
    assert (parsed.user, parsed.password, parsed.database) == (url.user, password, database)


@given(texts)
def test_parse_raises_only_programming_error_on_any_text(text: str) -> None:
    with contextlib.suppress(ProgrammingError):
        parse_url(text)


@given(st.sampled_from(["sqlrouter://", "jdbc:t-router://", "mysql+sqlrouter://app:pw@"]), texts)
def test_parse_raises_only_programming_error_on_any_url_body(prefix: str, text: str) -> None:
    try:
        url = parse_url(prefix + text)
    except ProgrammingError:
        return
    # Whatever parses renders to a URL that parses back to the same value.
    assert parse_url(url.render(hide_password=False)) == url


@given(st.sampled_from(sorted(URL_PARAMETERS)), texts)
def test_any_parameter_value_is_converted_or_refused(name: str, value: str) -> None:
    try:
        url = parse_url(f"sqlrouter://shop?{name}={quote(value, safe='')}")
    except ProgrammingError as exc:
        assert name in str(exc)
        return
    assert parse_url(url.render(hide_password=False)) == url


# --- passwords never in an error, whatever they hold ----------------------------------

#: Password pieces made of letters that no message uses four of in a row.
_PIECE = st.text("QJXZWK", min_size=4, max_size=6)
_SEPARATORS = st.sampled_from(["@", ":", "/", "%", "?", "&", "=", "#", "%zz", "%4", ";", " "])


@st.composite
def _passwords(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A password of distinctive pieces separated by URL-special characters."""
    pieces = draw(st.lists(_PIECE, min_size=1, max_size=4))
    seps = draw(st.lists(_SEPARATORS, min_size=len(pieces), max_size=len(pieces)))
    lead = draw(st.sampled_from(["", "@", "&", "="]))
    return lead + "".join(p + s for p, s in zip(pieces, seps, strict=True)), pieces


_TUNGSTEN_FORMS = [
    "jdbc:t-router://shop/db?user=app&password={pw}&qos=RO_RELAXED",
    "jdbc:t-router://shop/db?password={pw}",
    "jdbc:t-router://shop/db?qos=BAD&password={pw}",
    "jdbc:t-router://shop/db?password={pw}&maxAppliedLatency=x",
    "jdbc:t-router://shop?password={pw}&password={pw}",
    "jdbc:t-router://app:{pw}@shop/db?qos=RO_RELAXED",
    "jdbc:t-router://app:{pw}@shop/db?qos=BAD",
    "jdbc:t-router://app:{pw}@shop/db?password={pw}",
    "jdbc:t-router://app:{pw}@shop:1/db",
    "jdbc:t-router://app:{pw}@/db",
    "JDBC:T-ROUTER://shop/db?max_lag=1&password={pw}&qos=x",
]


#: The same mistakes in the sqlrouter:// form (where a password belongs in the user info).
_SQLROUTER_FORMS = [
    form.replace("jdbc:t-router://", "sqlrouter://").replace("JDBC:T-ROUTER://", "sqlrouter://")
    for form in _TUNGSTEN_FORMS
]


def _rendered(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` shows: messages, reprs, causes and contexts."""
    texts = ["".join(traceback.format_exception(exc))]
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


@given(
    st.sampled_from(_TUNGSTEN_FORMS + _SQLROUTER_FORMS),
    _passwords(),
    st.sampled_from(["raw", "encoded", "half"]),
)
def test_no_part_of_a_password_is_in_a_url_error(
    form: str, password: tuple[str, list[str]], encoding: str
) -> None:
    text, pieces = password
    if encoding == "encoded":
        text = quote(text, safe="")
    elif encoding == "half":  # encoded by someone who forgot some characters
        text = quote(text, safe="@:&")
    try:
        parse_url(form.format(pw=text))
    except ProgrammingError as exc:
        shown = _rendered(exc)
        for piece in pieces:
            assert piece not in shown, (form, text, shown)


@pytest.mark.parametrize(
    ("url", "keywords"),
    [
        ("sqlrouter://app:QXZJ\udcffKWQJ@shop/db", {}),
        ("sqlrouter://app:QXZJ\udcffKWQJ@shop/db?qos=bad", {}),
        ("sqlrouter://app:QXZJ\udcffKWQJ@shop", {}),
        ("jdbc:t-router://shop/db?user=app&password=QXZJ\udcffKWQJ", {}),
        ("jdbc:t-router://app:QXZJ\udcffKWQJ@shop/db", {}),
        ("sqlrouter://app@shop/db", {"password": "QXZJ\udcffKWQJ"}),
        ("sqlrouter://app@shop/db", {"password": "QXZJ\udcffKWQJ", "qos": "QXZJ\udcffKWQJ"}),
        (None, {"service": "shop", "database": "db", "passwd": "\udcff"}),
        ("sqlrouter://app:QXZJ\ud800KWQJ@shop/db?qos=bad", {}),
        ("sqlrouter://app@shop/db", {"ssl_key_password": "QXZJ\udcffKWQJ", "charset": 5}),
    ],
)
def test_a_lone_surrogate_in_a_password_is_a_programming_error_without_it(
    url: str | None, keywords: dict[str, Any]
) -> None:
    with pytest.raises(ProgrammingError) as info:
        parse_url(url, **keywords)
    shown = _rendered(info.value)
    for piece in ("QXZJ", "KWQJ", "\udcff", "\\udcff", "%ED%B3%BF", "%FF"):
        assert piece not in shown, shown


def test_a_surrogate_password_is_refused_by_name() -> None:
    message = error_of("sqlrouter://app:QXZJ\udcffKWQJ@shop/db")
    assert message == "invalid password: it holds a lone surrogate, not text"


def test_the_tungsten_form_is_named_only_to_jdbc_users() -> None:
    for url in ("mysql://shop/db", "shop/db", "postgresql://shop"):
        assert "t-router" not in error_of(url), url
    assert "jdbc:t-router://" in error_of("jdbc:mysql://shop/db")


@pytest.mark.parametrize(
    "query",
    [
        # As docs/registry.md writes the spec: the URL's '&' splits it, and it is put back.
        "registry=dns:db.example.com?monitor_user=mon&monitor_password_file=/etc/m.pw&qos=RO_RELAXED",
        # The spec's options as parameters of the URL, in any order.
        "qos=RO_RELAXED&monitor_password_file=/etc/m.pw&registry=dns:db.example.com&monitor_user=mon",
        # Percent-encoded as a whole, as before.
        "registry=dns%3Adb.example.com%3Fmonitor_user%3Dmon%26monitor_password_file%3D%2Fetc%2Fm.pw"
        "&qos=RO_RELAXED",
    ],
)
def test_a_dns_registry_spec_needs_no_percent_encoding_in_a_url(query: str) -> None:
    url = parse_url(f"sqlrouter://app:pw@shop/shopdb?{query}")
    assert url.qos is QoS.RO_RELAXED
    registry = url.registry or ""
    location, _, options = registry.partition("?")
    assert location == "dns:db.example.com"
    assert sorted(options.split("&")) == ["monitor_password_file=/etc/m.pw", "monitor_user=mon"]
    assert parse_url(url.render(hide_password=False)).registry == url.registry


def test_dns_registry_options_without_a_dns_registry_say_where_they_go() -> None:
    message = error_of("sqlrouter://shop?monitor_user=mon")
    assert "'monitor_user' in the URL is an option of a DNS registry" in message
    assert "the URL has no registry=dns:" in message
    message = error_of("sqlrouter://shop?registry=/etc/sqlrouter.toml&timeout=3")
    assert "registry='/etc/sqlrouter.toml' is not a DNS registry" in message
    # max_lag is the URL's own parameter, whatever the registry.
    assert parse_url("sqlrouter://shop?registry=dns:d.example&max_lag=3").max_lag == 3.0


# --- connect_args of a ServiceURL built directly ------------------------------------------


@pytest.mark.parametrize(
    ("connect_args", "error"),
    [
        (
            {"charsett": "x"},
            "unknown parameter 'charsett' in connect_args: did you mean 'charset'?",
        ),
        (
            {"frobnicate": 1},
            "unknown parameter 'frobnicate' in connect_args: expected a PyMySQL connect() "
            f"option ({', '.join(sorted(_CONNECT_ARGS))})",
        ),
        (
            {"host": "db1"},
            "parameter 'host' in connect_args is not accepted: sqlrouter routes by service; "
            "pass service=... (a host is chosen by the router)",
        ),
        (
            {"qos": "RW_STRICT"},
            "connect_args holds 'qos', which is no PyMySQL connect() option: give it as "
            "ServiceURL(qos=...)",
        ),
        (
            {"db": "x"},
            "connect_args holds 'db', which is no PyMySQL connect() option: give it as "
            "ServiceURL(database=...)",
        ),
        (
            {1: "x"},
            "invalid connect_args key 1 (int): expected the name of a PyMySQL connect() option",
        ),
    ],
)
def test_service_url_connect_args_take_pymysql_options_only(
    connect_args: dict[object, object], error: str
) -> None:
    with pytest.raises(ProgrammingError) as excinfo:
        ServiceURL(service="shop", connect_args=connect_args)  # type: ignore[arg-type]
    assert str(excinfo.value) == error


def test_connect_args_keys_must_be_strings() -> None:
    with pytest.raises(ProgrammingError) as excinfo:
        parse_url("sqlrouter://shop", connect_args={b"charset": "x"})
    assert str(excinfo.value) == (
        "invalid connect_args key b'charset' (bytes): expected the name of a PyMySQL "
        "connect() option"
    )
    with pytest.raises(ProgrammingError, match=r"invalid connect_args key 2 \(int\)"):
        parse_url("sqlrouter://shop").set(connect_args={2: "x"})


def test_connect_args_none_is_the_default_except_for_autocommit() -> None:
    url = ServiceURL(service="shop", connect_args={"charset": None, "autocommit": None})
    assert dict(url.connect_args) == {"autocommit": None}


# --- rendering, repr and hash, exactly ------------------------------------------------------


def test_booleans_render_as_true_and_false() -> None:
    url = parse_url("sqlrouter://shop", autocommit=True, ssl_verify_cert=False, local_infile=False)
    assert (
        url.render() == "sqlrouter://shop?autocommit=true&ssl_verify_cert=false&local_infile=false"
    )


def test_repr_skips_every_field_left_at_its_default() -> None:
    url = parse_url("sqlrouter://shop?max_lag=2")
    assert repr(url) == "ServiceURL(service='shop', max_lag=2.0)"
    assert repr(parse_url("sqlrouter://app@shop?fallback=error&causal_token=0-1-5")) == (
        "ServiceURL(service='shop', user='app', fallback=Fallback.ERROR, causal_token='0-1-5')"
    )


def test_repr_hides_a_password_too_short_to_be_looked_for_elsewhere() -> None:
    assert repr(parse_url("sqlrouter://app:ab@shop")) == (
        "ServiceURL(service='shop', user='app', password='***')"
    )


def test_repr_of_object_and_text_options_that_mention_password() -> None:
    # Only an ssl *mapping*'s "password" entry is a secret of its own; an SSLContext or
    # a text that contains the word is shown as it is.
    context = ssl.create_default_context()
    assert repr(parse_url("sqlrouter://shop", ssl=context)) == (
        f"ServiceURL(service='shop', connect_args={{'ssl': {context!r}}})"
    )
    assert repr(parse_url("sqlrouter://shop", init_command="SET @password = 1")) == (
        "ServiceURL(service='shop', connect_args={'init_command': 'SET @password = 1'})"
    )


def test_urls_that_differ_hash_apart() -> None:
    urls = [
        parse_url("sqlrouter://shop"),
        parse_url("sqlrouter://shop?qos=RO_RELAXED"),
        parse_url("sqlrouter://shop/db"),
        parse_url("sqlrouter://other"),
        parse_url("sqlrouter://shop?charset=utf8mb4"),
        parse_url("sqlrouter://shop?autocommit=true"),
    ]
    assert len({hash(url) for url in urls}) == len(urls)


def test_render_hides_short_secrets_by_name() -> None:
    # Too short to be looked for in other values, but hidden where they are themselves.
    url = parse_url("sqlrouter://app:ab@shop", ssl_key_password="cd")
    assert url.render() == "sqlrouter://app:***@shop?ssl_key_password=***"
    assert url.render(hide_password=False) == "sqlrouter://app:ab@shop?ssl_key_password=cd"


def test_render_leaves_out_objects_and_nones_and_goes_on() -> None:
    url = parse_url("sqlrouter://shop", cursorclass=DictCursor, autocommit=None, charset="utf8mb4")
    assert list(url.connect_args) == ["cursorclass", "autocommit", "charset"]
    assert url.render() == "sqlrouter://shop?charset=utf8mb4"


def test_dns_registry_options_error_word_for_word() -> None:
    assert error_of("sqlrouter://shop?monitor_user=mon") == (
        "parameter 'monitor_user' in the URL is an option of a DNS registry, but the URL has "
        "no registry=dns:...: give it with registry=dns:DOMAIN in the same URL "
        "(registry=dns:DOMAIN&monitor_user=...), or in $SQLROUTER_REGISTRY "
        "(dns:DOMAIN?monitor_user=...); a registry file sets it in [services.NAME]"
    )
    # Two registries: that is the error, whichever comes first.
    assert error_of(
        "sqlrouter://shop?registry=/etc/r.toml&registry=dns:d.example&monitor_user=mon"
    ) == ("parameter 'registry' is given twice in the URL")


def test_dns_registry_options_fold_readably() -> None:
    # Paths keep their ':' and '~'; what a spec cannot hold as it is gets encoded.
    url = parse_url("sqlrouter://shop?registry=dns:d.example&monitor_password_file=/a:b/~c%20d")
    assert url.registry == "dns:d.example?monitor_password_file=/a:b/~c%20d"


_PORT_HELP = (
    ": a service is a name, not host:port; the registry gives each server's host and port.  "
    "If this is user:password, the password holds a '/', '?', '#' or '@' that must be "
    "percent-encoded"
)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("sqlrouter://shop:3306/db", f"a port is not accepted after service 'shop'{_PORT_HELP}"),
        # Not a service name, or a URL that may hold a cut secret: nothing is quoted.
        ("sqlrouter://bad$name:3306/db", f"a port is not accepted{_PORT_HELP}"),
        ("sqlrouter://shop:3306/db?ssl_key_password=x", f"a port is not accepted{_PORT_HELP}"),
        (
            "sqlrouter://shop/a/b",
            "invalid database path '/a/b': a service URL has one path segment, the database; "
            "percent-encode '/' as %2F",
        ),
        (
            "jdbc:t-router://shop?password=a&b=c",
            "unknown parameter (not shown: the query holds a password; percent-encode '&' in "
            "it as %26) in the URL",
        ),
        (
            "sqlrouter://shop?qos=RW_STRICT&autocommit",
            "query parameter 'autocommit' in the URL has no value: expected name=value",
        ),
        (
            "jdbc:t-router://shop?maxAppliedLatencyy=2",
            "unknown parameter 'maxAppliedLatencyy' in the URL: did you mean 'maxAppliedLatency'?",
        ),
    ],
)
def test_url_errors_word_for_word(url: str, error: str) -> None:
    assert error_of(url) == error


def test_tungsten_names_are_suggested_in_tungsten_urls_only() -> None:
    assert "did you mean" not in error_of("sqlrouter://shop?maxappliedlatency=1")


_BLIND_QOS = (
    "invalid qos (not shown: the URL may hold a password): expected RW_STRICT or RO_RELAXED"
)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("jdbc:t-router://app@shop?user=other", "parameter 'user' is given twice in the URL"),
        # A URL that may hold a cut secret quotes none of its values, even in the errors
        # of the values' checks: a secret in the query, an '@' in the query or the path.
        ("sqlrouter://shop?ssl_key_password=x&qos=FAST", _BLIND_QOS),
        ("sqlrouter://shop?qos=F@ST", _BLIND_QOS),
        ("sqlrouter://shop/d@b?qos=FAST", _BLIND_QOS),
        (
            "http://shop",
            "unsupported URL scheme 'http': expected sqlrouter:// or mysql+sqlrouter://",
        ),
        (
            "sqlrouter://[shop",
            "malformed service URL (not shown: it may contain a password): unbalanced '[' or "
            "']', or a character that must be percent-encoded; expected "
            "sqlrouter://[user[:password]@]SERVICE[/DATABASE][?param=value&...]",
        ),
        (
            "sqlrouter://shop#x",
            "a service URL has no '#fragment': percent-encode '#' as %23 (in a password, for "
            "example)",
        ),
        (
            "sqlrouter://[::1]/db",
            "invalid service '[::1]': a service is a name, not an IP address; the registry "
            "gives each server's address",
        ),
        ("sqlrouter://shop:1:2/db", f"a port is not accepted after service 'shop'{_PORT_HELP}"),
        # The decoded password is hidden too, not only its encoded form.
        (
            "sqlrouter://app:a%2Fb%2Fc@shop/a/b/c",
            "invalid database path '/***': a service URL has one path segment, the database; "
            "percent-encode '/' as %2F",
        ),
    ],
)
def test_more_url_errors_word_for_word(url: str, error: str) -> None:
    assert error_of(url) == error


def test_a_tungsten_url_may_start_with_spaces() -> None:
    assert parse_url("  jdbc:t-router://shop/db?maxAppliedLatency=2").max_lag == 2.0


def test_keyword_errors_word_for_word() -> None:
    assert error_of(service="shop", connect_args=[("a", 1)]) == (
        "invalid connect_args (list value): expected a mapping of PyMySQL connect() options"
    )
    assert error_of(service="shop", connect_arg={}) == (
        "unknown parameter 'connect_arg': did you mean 'connect_args'?"
    )
    # The password of a ServiceURL given to parse_url is hidden in the keywords' errors.
    url = parse_url("sqlrouter://app:hunter22@shop")
    assert error_of(url, qos="hunter22") == "invalid qos '***': expected RW_STRICT or RO_RELAXED"
    # ... also where the ServiceURL is not built yet: a keyword named like it.
    assert error_of(url, **{"hunter22": 1}).startswith("unknown parameter '***': expected")


def test_service_url_hides_its_ssl_key_password_in_errors() -> None:
    with pytest.raises(ProgrammingError) as excinfo:
        ServiceURL(
            service="shop",
            qos="keysecret1",  # type: ignore[arg-type]
            connect_args={"ssl_key_password": "keysecret1"},
        )
    assert str(excinfo.value) == "invalid qos '***': expected RW_STRICT or RO_RELAXED"
