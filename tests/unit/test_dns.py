"""DNS SRV registries: spec parsing, RFC 2782 ordering, the role convention, TTLs,
outages, lists of registries, and the dnspython resolver against a real DNS server.

The registry logic runs against :class:`ScriptedDns`, a resolver seam that answers
from a dict (DNS, not a database, and no sleeping: the clock is a variable).  The
dnspython resolver runs against the real authoritative server of
``tests/fixtures/dns.py`` on loopback.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sqlrouter
import sqlrouter.registry.find
from sqlrouter.registry import (
    RegistryError,
    RegistryNotSupported,
    ServiceNotFound,
    StaticRegistry,
    find_registry,
    write_registry_file,
)
from sqlrouter.registry._dns import (
    Addresses,
    InvalidAnswer,
    NameNotFound,
    ResolverUnavailable,
    SrvAnswer,
    SrvRecord,
    build_datasources,
    order_srv,
    resolve_service,
    srv_name,
)
from sqlrouter.registry._dnsspec import DnsSettings, parse_dns_spec
from sqlrouter.registry._resolver import DnspythonResolver
from sqlrouter.registry.chain import ChainRegistry
from sqlrouter.registry.dns import SECRETS_CHECK_INTERVAL, DnsRegistry
from sqlrouter.registry.find import close_dns_registries, get_dns_registry
from sqlrouter.topology import Credentials, DataSource, Role, Service
from tests.fixtures.dns import DnsServer, Srv

DOMAIN = "example.test"
SHOP = f"_mysql._tcp.shop.{DOMAIN}"
SHOP_MASTER = f"_master._mysql._tcp.shop.{DOMAIN}"


@pytest.fixture(autouse=True)
def _forget_shared_registries() -> Iterator[None]:
    yield
    close_dns_registries()


def message(exc: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc.value.args[1])


# --------------------------------------------------------------------------- a seam


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedDns:
    """A :class:`~sqlrouter.registry._dns.Resolver` answering from dicts; ``down`` is an outage."""

    def __init__(self) -> None:
        self.srv_records: dict[str, tuple[list[SrvRecord], int]] = {}
        self.hosts: dict[str, tuple[list[str], int]] = {}
        self.down = False
        self.asked: list[str] = []

    def publish(
        self,
        members: list[tuple[str, int]],
        master: tuple[str, int] | None = None,
        *,
        service: str = "shop",
        ttl: int = 30,
    ) -> None:
        base = f"_mysql._tcp.{service}.{DOMAIN}"
        self.srv_records[base] = ([SrvRecord(10, 10, p, t) for t, p in members], ttl)
        self.srv_records.pop(f"_master.{base}", None)
        if master is not None:
            self.srv_records[f"_master.{base}"] = ([SrvRecord(10, 10, master[1], master[0])], ttl)
        for target, _ in members:
            self.hosts.setdefault(target, (["127.0.0.1"], ttl))

    def describe(self) -> str:
        return "scripted DNS"

    def srv(self, name: str) -> SrvAnswer:
        self.asked.append(name)
        if self.down:
            raise ResolverUnavailable(name, "no answer from scripted DNS within 2s")
        if name in self.srv_records:
            records, ttl = self.srv_records[name]
            return SrvAnswer(tuple(records), ttl)
        if any(known.endswith("." + name) for known in self.srv_records):
            raise NameNotFound(name, "has no SRV record (NODATA)", nxdomain=False, ttl=7)
        raise NameNotFound(name, "does not exist (NXDOMAIN)", nxdomain=True, ttl=7)

    def addresses(self, host: str) -> Addresses:
        self.asked.append(host)
        if self.down:
            raise ResolverUnavailable(host, "no answer")
        if host not in self.hosts:
            raise NameNotFound(host, "does not exist (NXDOMAIN)", nxdomain=True)
        ips, ttl = self.hosts[host]
        return Addresses(tuple(ips), ttl)


def first_always(bound: int) -> int:
    """A ``randbelow`` that always draws 0: RFC 2782 then keeps the sorted order."""
    del bound
    return 0


def scripted_registry(dns: ScriptedDns, clock: Clock, **settings: object) -> DnsRegistry:
    return DnsRegistry(
        DOMAIN,
        resolver=dns,
        settings=DnsSettings(**settings),  # type: ignore[arg-type]
        clock=clock,
        randbelow=first_always,
        background=False,
    )


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("value", "location"),
    [
        ("example.test", "dns:example.test"),
        ("Example.TEST.", "dns:example.test"),
        (" example.test ", "dns:example.test"),
        ("//127.0.0.1:5353/example.test", "dns://127.0.0.1:5353/example.test"),
        ("//127.0.0.1/example.test", "dns://127.0.0.1:53/example.test"),
        ("//[::1]:5353/example.test", "dns://[::1]:5353/example.test"),
        ("//[::1]/example.test", "dns://[::1]:53/example.test"),
        ("//127.0.0.1:5353/_svc.example-1.test", "dns://127.0.0.1:5353/_svc.example-1.test"),
    ],
)
def test_parse_dns_spec_locations(value: str, location: str) -> None:
    spec = parse_dns_spec(value)
    assert spec.location == location
    assert str(spec) == location
    assert spec.options == {}


def test_parse_dns_spec_options() -> None:
    spec = parse_dns_spec(
        "//127.0.0.1:53/example.test?monitor_user=mon&monitor_password_file=/s/mon"
        "&max_lag=2.5&monitor_interval=0.2&probe_timeout=3&heartbeat=false"
        "&heartbeat_table=hb.beat&timeout=0.5&admin_user=adm&replication_user=repl"
    )
    assert spec.nameserver == ("127.0.0.1", 53)
    assert spec.domain == "example.test"
    assert dict(spec.options) == {
        "monitor_user": "mon",
        "monitor_password_file": "/s/mon",
        "max_lag": "2.5",
        "monitor_interval": "0.2",
        "probe_timeout": "3",
        "heartbeat": "false",
        "heartbeat_table": "hb.beat",
        "timeout": "0.5",
        "admin_user": "adm",
        "replication_user": "repl",
    }
    assert str(spec).startswith("dns://127.0.0.1:53/example.test?admin_user=adm&heartbeat=")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "no domain: expected dns:DOMAIN or dns://IP[:PORT]/DOMAIN"),
        ("//127.0.0.1:53", "no domain after the nameserver"),
        ("///example.test", "no nameserver between // and /"),
        ("//ns1.example.test/example.test", "invalid nameserver 'ns1.example.test': expected an"),
        ("//127.0.0.1:0/example.test", "invalid nameserver port '0': expected 1-65535"),
        ("//127.0.0.1:dns/example.test", "invalid nameserver port 'dns'"),
        ("//[::1/example.test", "invalid nameserver '[::1': missing ']'"),
        ("example..test", "invalid domain 'example..test': each label is 1-63"),
        ("-bad.test", "invalid domain '-bad.test'"),
        ("a/b", "unexpected '/' in domain 'a/b'"),
        ("x.test?colour=blue", "unknown option 'colour' (known options: monitor_user, "),
        ("x.test?monitor_password=s3cret", "option monitor_password: a password is not accepted"),
        ("x.test?max_lag=1&max_lag=2", "option max_lag is given twice"),
        ("x.test?max_lag=-1", "option max_lag: expected a number of seconds 0-31536000, got '-1'"),
        ("x.test?max_lag=1e400", "option max_lag: expected a number of seconds 0-31536000"),
        ("x.test?timeout=0", "option timeout: expected a number of seconds 0.05-60, got '0'"),
        ("x.test?timeout=61", "option timeout: expected a number of seconds 0.05-60, got '61'"),
        ("x.test?probe_timeout=nan", "option probe_timeout: expected a number of seconds 0.05-60"),
        (
            "x.test?probe_timeout=1e300",
            "option probe_timeout: expected a number of seconds 0.05-60",
        ),
        (
            "x.test?monitor_interval=1e-300",
            "option monitor_interval: expected a number of seconds 0.05-3600, got '1e-300'",
        ),
        (
            "x.test?monitor_interval=" + "9" * 5000,
            "option monitor_interval: expected a number of seconds 0.05-3600, got '999999",
        ),
        ("x.test?heartbeat=yes", "option heartbeat: expected true or false, got 'yes'"),
        ("x.test?heartbeat_table=nodot", "option heartbeat_table: expected 'schema.table'"),
        ("x.test?monitor_user=", "option monitor_user is empty"),
        ("x.test?admin_password_file=/p", "option admin_password_file needs admin_user"),
        ("x.test?novalue", "invalid options 'novalue': expected key=value&key=value"),
    ],
)
def test_parse_dns_spec_errors(value: str, expected: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_dns_spec(value)
    assert str(exc.value).startswith(expected), str(exc.value)


def test_a_password_never_shows_in_the_error() -> None:
    with pytest.raises(ValueError) as exc:
        parse_dns_spec("x.test?admin_password=s3cret")
    assert "s3cret" not in str(exc.value)


def test_srv_names() -> None:
    assert srv_name("shop", DOMAIN) == SHOP
    assert srv_name("Shop", DOMAIN) == SHOP
    assert srv_name("shop", DOMAIN, master=True) == SHOP_MASTER
    assert srv_name("eu.shop", DOMAIN) == f"_mysql._tcp.eu.shop.{DOMAIN}"
    for bad in ("a..b", "-a", "a b", "x" * 64):
        with pytest.raises(ValueError, match=r"cannot be looked up in DNS"):
            srv_name(bad, DOMAIN)
    with pytest.raises(ValueError, match=r"longer than 253 characters"):
        srv_name(".".join(["x" * 60] * 4), DOMAIN)


# --------------------------------------------------------------------------- RFC 2782


def rec(target: str, priority: int = 10, weight: int = 10, port: int = 3306) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def test_order_srv_sorts_by_priority_first() -> None:
    records = [rec("c", 30), rec("a", 10), rec("b", 20)]
    assert [r.target for r in order_srv(records, randbelow=first_always)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("draw", "first"),
    # Weights 1 (a) and 3 (b): running sums 1 and 4; the first record whose running sum
    # is >= the number drawn in [0, 4] comes first.
    [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "b")],
)
def test_order_srv_weighted_selection(draw: int, first: str) -> None:
    drawn: list[int] = []

    def randbelow(bound: int) -> int:
        drawn.append(bound)
        return draw if len(drawn) == 1 else 0

    ordered = order_srv([rec("b", weight=3), rec("a", weight=1)], randbelow=randbelow)
    assert ordered[0].target == first
    assert drawn == [5, (1 if first == "b" else 3) + 1]


def test_order_srv_puts_weight_zero_first_and_ignores_the_answer_order() -> None:
    records = [rec("x", weight=5), rec("z", weight=0), rec("y", weight=5)]
    ordered = order_srv(records, randbelow=first_always)
    assert [r.target for r in ordered] == ["z", "x", "y"]
    assert order_srv(list(reversed(records)), randbelow=first_always) == ordered


def test_order_srv_refuses_a_broken_random_source() -> None:
    with pytest.raises(ValueError, match=r"randbelow\(21\) returned 99"):
        order_srv([rec("a"), rec("b")], randbelow=lambda bound: 99)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 4)),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    st.randoms(use_true_random=False),
)
def test_order_srv_is_a_priority_sorted_permutation(
    rows: list[tuple[int, int, int]], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    records = [SrvRecord(p, w, port, f"h{i}") for i, (p, w, port) in enumerate(rows)]
    ordered = order_srv(records, randbelow=rnd.randrange)
    assert sorted(ordered, key=repr) == sorted(records, key=repr)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


# --------------------------------------------------------------------------- roles, names


ADDRS = {"db1.x.test": "127.0.0.1", "db2.x.test": "127.0.0.2", "db3.y.test": "127.0.0.3"}


def test_datasources_from_members_and_the_master_label() -> None:
    members = [rec("db1.x.test"), rec("db2.x.test", port=3307), rec("db3.y.test")]
    built = build_datasources(members, [rec("db1.x.test")], ADDRS, randbelow=first_always)
    assert built == (
        DataSource("db1", "127.0.0.1", 3306, Role.MASTER, 10),
        DataSource("db2", "127.0.0.2", 3307, Role.REPLICA, 10),
        DataSource("db3", "127.0.0.3", 3306, Role.REPLICA, 10),
    )


def test_without_a_master_label_every_member_is_a_replica() -> None:
    built = build_datasources([rec("db1.x.test")], [], ADDRS)
    assert [ds.role for ds in built] == [Role.REPLICA]


def test_a_master_published_only_under_the_label_is_a_member() -> None:
    built = build_datasources([rec("db2.x.test")], [rec("db1.x.test", priority=0)], ADDRS)
    assert {(ds.name, ds.role) for ds in built} == {("db1", Role.MASTER), ("db2", Role.REPLICA)}


def test_names_stay_unique() -> None:
    addrs = {"db1.x.test": "127.0.0.1", "db1.y.test": "127.0.0.2", "solo.x.test": "127.0.0.3"}
    members = [
        rec("db1.x.test"),
        rec("db1.y.test"),
        rec("solo.x.test", port=3306),
        rec("solo.x.test", port=3307),
    ]
    names = {ds.name for ds in build_datasources(members, [], addrs)}
    assert names == {"db1.x.test", "db1.y.test", "solo.x.test-3306", "solo.x.test-3307"}


def test_weights_follow_the_best_priority_of_the_replicas() -> None:
    members = [
        rec("db1.x.test", priority=0, weight=0),  # the master, at its own priority
        rec("db2.x.test", priority=10, weight=3),
        rec("db3.y.test", priority=20, weight=5),  # a backup: only when db2 cannot serve
    ]
    built = {ds.name: ds.weight for ds in build_datasources(members, [members[0]], ADDRS)}
    assert built == {"db1": 0, "db2": 3, "db3": 0}


def test_all_zero_weights_at_the_best_priority_count_as_equal() -> None:
    members = [rec("db2.x.test", weight=0), rec("db3.y.test", weight=0)]
    assert {ds.weight for ds in build_datasources(members, [], ADDRS)} == {1}


@pytest.mark.parametrize(
    ("members", "masters", "expected"),
    [
        (
            [rec("db1.x.test"), rec("db2.x.test")],
            [rec("db1.x.test"), rec("db2.x.test")],
            "more than one master is published (db1.x.test:3306, db2.x.test:3306)",
        ),
        ([rec("db1.x.test", port=0)], [], "db1.x.test has port 0"),
        ([rec(".")], [], "no server: the records say the service is not available"),
    ],
)
def test_answers_that_do_not_describe_a_service(
    members: list[SrvRecord], masters: list[SrvRecord], expected: str
) -> None:
    with pytest.raises(ValueError) as exc:
        build_datasources(members, masters, ADDRS)
    assert str(exc.value).startswith(expected)


# --------------------------------------------------------------------------- resolving


def test_resolve_service_reads_members_master_and_addresses() -> None:
    dns = ScriptedDns()
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307)], ("db1.x.test", 3306), ttl=30)
    dns.hosts["db2.x.test"] = (["127.0.0.9", "127.0.0.2"], 12)
    settings = DnsSettings(max_lag=3.0, monitor_credentials=Credentials("mon", "pw"))
    resolved = resolve_service(
        dns, "shop", DOMAIN, settings=settings, source="dns:x", randbelow=first_always
    )
    assert resolved.ttl == 12
    assert resolved.service == Service(
        name="shop",
        datasources=(
            DataSource("db1", "127.0.0.1", 3306, Role.MASTER, 10),
            DataSource("db2", "127.0.0.2", 3307, Role.REPLICA, 10),
        ),
        max_lag=3.0,
        monitor_credentials=Credentials("mon", "pw"),
        source="dns:x",
    )
    assert dns.asked == [SHOP, SHOP_MASTER, "db1.x.test", "db2.x.test"]


def test_resolve_service_uses_the_additional_section() -> None:
    class WithGlue(ScriptedDns):
        def srv(self, name: str) -> SrvAnswer:
            answer = super().srv(name)
            glue = {r.target: Addresses(("127.0.0.5",), 3) for r in answer.records}
            return SrvAnswer(answer.records, answer.ttl, glue)

    dns = WithGlue()
    dns.publish([("db1.x.test", 3306)])
    resolved = resolve_service(dns, "shop", DOMAIN, settings=DnsSettings(), source="dns:x")
    assert resolved.service.datasources[0].host == "127.0.0.5"
    assert resolved.ttl == 3
    assert "db1.x.test" not in dns.asked


def test_resolve_service_names_the_record_that_does_not_exist() -> None:
    with pytest.raises(NameNotFound) as exc:
        resolve_service(ScriptedDns(), "shop", DOMAIN, settings=DnsSettings(), source="x")
    assert str(exc.value) == f"{SHOP} does not exist (NXDOMAIN)"


def test_resolve_service_with_only_a_master_label() -> None:
    dns = ScriptedDns()
    dns.srv_records[SHOP_MASTER] = ([rec("db1.x.test")], 30)
    dns.hosts["db1.x.test"] = (["127.0.0.1"], 30)
    resolved = resolve_service(dns, "shop", DOMAIN, settings=DnsSettings(), source="x")
    assert [(ds.name, ds.role) for ds in resolved.service.datasources] == [("db1", Role.MASTER)]


def test_resolve_service_refuses_a_target_without_address() -> None:
    dns = ScriptedDns()
    dns.publish([("db1.x.test", 3306)])
    del dns.hosts["db1.x.test"]
    with pytest.raises(InvalidAnswer) as exc:
        resolve_service(dns, "shop", DOMAIN, settings=DnsSettings(), source="x")
    assert str(exc.value) == (
        f"{SHOP}: target db1.x.test (port 3306) has no address: does not exist (NXDOMAIN)"
    )


# --------------------------------------------------------------------------- the registry


def test_registry_lookup_resolves_once_then_serves_the_answer() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307)], ("db1.x.test", 3306), ttl=30)
    registry = scripted_registry(dns, clock)
    service = registry.lookup("shop")
    assert [ds.name for ds in service.datasources] == ["db1", "db2"]
    assert service.source == "dns:example.test"
    asked = len(dns.asked)
    assert registry.lookup("shop") is service
    clock.now += 29
    assert registry.refresh() is False
    assert len(dns.asked) == asked  # the TTL has not expired: DNS is not asked
    assert registry.services() == ["shop"]
    assert registry.last_error is None
    assert repr(registry) == "<DnsRegistry dns:example.test [services: shop | ok | idle]>"


def test_registry_follows_changes_when_the_ttl_expires() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307)], ("db1.x.test", 3306), ttl=30)
    registry = scripted_registry(dns, clock)
    first = registry.lookup("shop")
    dns.publish(
        [("db1.x.test", 3306), ("db2.x.test", 3307), ("db3.y.test", 3308)],
        ("db2.x.test", 3307),
        ttl=30,
    )
    clock.now += 29.9
    assert registry.refresh() is False
    assert registry.lookup("shop") is first
    clock.now += 0.2
    assert registry.refresh() is True
    service = registry.lookup("shop")
    assert {(ds.name, ds.role) for ds in service.datasources} == {
        ("db1", Role.REPLICA),
        ("db2", Role.MASTER),
        ("db3", Role.REPLICA),
    }
    assert registry.refresh() is False


def test_the_same_servers_in_another_order_are_no_change() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307)], ttl=5)
    highest = [False]

    def randbelow(bound: int) -> int:
        return bound - 1 if highest[0] else 0

    registry = DnsRegistry(
        DOMAIN,
        resolver=dns,
        settings=DnsSettings(),
        clock=clock,
        randbelow=randbelow,
        background=False,
    )
    first = registry.lookup("shop")
    assert [ds.name for ds in first.datasources] == ["db1", "db2"]
    highest[0] = True  # RFC 2782 now draws db2 first
    clock.now += 10
    assert registry.refresh() is False
    assert registry.lookup("shop") is first
    # A new member: the new answer's order is used.
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307), ("db3.y.test", 3308)], ttl=5)
    clock.now += 10
    assert registry.refresh() is True
    assert [ds.name for ds in registry.lookup("shop").datasources] == ["db3", "db2", "db1"]


def test_registry_floors_the_ttl() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)], ttl=0)
    registry = scripted_registry(dns, clock)
    registry.lookup("shop")
    asked = len(dns.asked)
    clock.now += 0.5
    registry.refresh()
    assert len(dns.asked) == asked
    clock.now += 0.6
    registry.refresh()
    assert len(dns.asked) > asked


def test_an_outage_keeps_the_last_good_answer_and_says_so() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)], ("db1.x.test", 3306), ttl=10)
    registry = scripted_registry(dns, clock)
    service = registry.lookup("shop")
    dns.down = True
    clock.now += 10
    assert registry.refresh() is False
    assert registry.lookup("shop") is service
    clock.now += 2.5
    assert registry.last_error == (
        "registry dns:example.test: service 'shop': cannot resolve "
        f"{SHOP}: no answer from scripted DNS within 2s "
        "(failing for 2.5s; serving the last good answer, 12.5s old)"
    )
    assert repr(registry) == "<DnsRegistry dns:example.test [services: shop | stale | idle]>"
    # Retried after the TTL; still down, still the same answer.
    asked = len(dns.asked)
    clock.now += 10
    registry.refresh()
    assert len(dns.asked) == asked + 1
    assert "failing for 12.5s" in (registry.last_error or "")
    dns.down = False
    clock.now += 10
    assert registry.refresh() is False  # the same servers
    assert registry.last_error is None


def test_a_name_removed_from_dns_keeps_the_last_answer() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)], ttl=10)
    registry = scripted_registry(dns, clock)
    service = registry.lookup("shop")
    dns.srv_records.clear()
    clock.now += 10
    registry.refresh()
    assert registry.lookup("shop") is service
    assert (registry.last_error or "").startswith(
        f"registry dns:example.test: service 'shop': {SHOP} does not exist (NXDOMAIN); "
        "it was published before (failing for 0.0s; serving the last good answer"
    )


def test_invalid_records_keep_the_last_good_answer() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306), ("db2.x.test", 3307)], ("db1.x.test", 3306), ttl=10)
    registry = scripted_registry(dns, clock)
    service = registry.lookup("shop")
    dns.srv_records[SHOP_MASTER] = ([rec("db1.x.test"), rec("db2.x.test", port=3307)], 10)
    clock.now += 10
    registry.refresh()
    assert registry.lookup("shop") is service
    assert "unusable records: " + SHOP + ": more than one master" in (registry.last_error or "")


def test_an_unknown_service_names_the_record_looked_up() -> None:
    dns, clock = ScriptedDns(), Clock()
    registry = scripted_registry(dns, clock)
    with pytest.raises(ServiceNotFound) as exc:
        registry.lookup("shop")
    assert message(exc) == (
        f"registry dns:example.test: no service 'shop': {SHOP} does not exist (NXDOMAIN)"
    )
    assert exc.value.service == "shop"
    # The negative answer is kept for its TTL, then asked again.
    asked = len(dns.asked)
    with pytest.raises(ServiceNotFound):
        registry.lookup("shop")
    assert len(dns.asked) == asked
    dns.publish([("db1.x.test", 3306)])
    clock.now += 7
    assert registry.refresh() is True
    assert registry.lookup("shop").datasources[0].name == "db1"


def test_a_service_name_dns_cannot_hold_is_not_found() -> None:
    registry = scripted_registry(ScriptedDns(), Clock())
    with pytest.raises(ServiceNotFound, match=r"service name 'a\.\.b' cannot be looked up"):
        registry.lookup("a..b")


def test_no_answer_the_first_time_is_an_error_and_is_not_kept() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)])
    dns.down = True
    registry = scripted_registry(dns, clock)
    with pytest.raises(RegistryError) as exc:
        registry.lookup("shop")
    assert not isinstance(exc.value, ServiceNotFound)
    assert message(exc) == (
        f"registry dns:example.test: service 'shop': cannot resolve {SHOP}: "
        "no answer from scripted DNS within 2s"
    )
    dns.down = False
    assert registry.lookup("shop").datasources[0].name == "db1"


def test_settings_and_credentials_come_from_the_spec(tmp_path: Path) -> None:
    secret = tmp_path / "mon.password"
    secret.write_text("p@ss:w/rd%\n", encoding="utf-8")
    secret.chmod(0o600)
    dns = ScriptedDns()
    dns.publish([("db1.x.test", 3306)])
    registry = DnsRegistry(
        f"{DOMAIN}?monitor_user=mon&monitor_password_file=mon.password&max_lag=2"
        "&monitor_interval=0.25&heartbeat=false&admin_user=adm",
        resolver=dns,
        base=tmp_path,
        background=False,
    )
    service = registry.lookup("shop")
    assert service.monitor_credentials == Credentials("mon", "p@ss:w/rd%")
    assert service.admin_credentials == Credentials("adm", "")
    assert (service.max_lag, service.monitor_interval) == (2.0, 0.25)
    assert service.heartbeat.enabled is False
    assert "p@ss" not in repr(service) + repr(registry) + registry.describe()


def test_a_rotated_password_file_is_read_again(tmp_path: Path) -> None:
    secret = tmp_path / "mon.password"
    secret.write_text("first\n", encoding="utf-8")
    secret.chmod(0o600)
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)])
    registry = DnsRegistry(
        f"{DOMAIN}?monitor_user=mon&monitor_password_file=mon.password",
        resolver=dns,
        base=tmp_path,
        clock=clock,
        background=False,
    )
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "first")
    assert registry.refresh() is False
    secret.write_text("second\n", encoding="utf-8")
    os.utime(secret, ns=(secret.stat().st_mtime_ns + 10**10,) * 2)
    clock.now += SECRETS_CHECK_INTERVAL
    assert registry.refresh() is True  # the service changed: its credentials
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "second")
    # Unreadable now: the password read before stays, and last_error says why.
    secret.chmod(0o622)
    clock.now += SECRETS_CHECK_INTERVAL
    assert registry.refresh() is False
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "second")
    assert registry.last_error == (
        f"registry dns:example.test: monitor_password_file: "
        f"{secret} has mode 0622: a password file must not be writable by group or others "
        f"(chmod 600 {secret}) (the password read before is used)"
    )
    secret.chmod(0o600)
    clock.now += SECRETS_CHECK_INTERVAL
    registry.refresh()
    assert registry.last_error is None
    assert "first" not in repr(registry) and "second" not in repr(registry)


def test_a_password_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        DnsRegistry(
            f"{DOMAIN}?monitor_user=mon&monitor_password_file=/dev/null",
            resolver=ScriptedDns(),
            base=tmp_path,
        )
    assert message(exc) == (
        "registry dns:example.test: monitor_password_file: /dev/null is not a regular file: "
        "a password file must be one (a FIFO, a device or a directory is refused)"
    )


def test_an_unreadable_password_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        DnsRegistry(
            f"{DOMAIN}?monitor_user=mon&monitor_password_file=nope",
            resolver=ScriptedDns(),
            base=tmp_path,
        )
    assert message(exc) == (
        f"registry dns:example.test: monitor_password_file: cannot read {tmp_path / 'nope'}: "
        "No such file or directory"
    )


# --------------------------------------------------------------------------- lists


def static(name: str, source: str) -> StaticRegistry:
    return StaticRegistry(
        [Service(name, (DataSource("db1", "127.0.0.1", 3306),), source=source)], source=source
    )


def test_the_first_registry_that_knows_the_service_wins() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)], service="shop")
    dns.publish([("db1.x.test", 3306)], service="dnsonly")
    registry = scripted_registry(dns, clock)
    chain = ChainRegistry([static("shop", "first"), registry])
    assert chain.lookup("shop").source == "first"
    assert chain.lookup("dnsonly").source == "dns:example.test"
    reverse = ChainRegistry([registry, static("shop", "second")])
    assert reverse.lookup("shop").source == "dns:example.test"
    assert chain.describe() == "first, then dns:example.test"
    assert chain.services() == ["shop", "dnsonly"]


def test_a_list_that_does_not_know_the_service_says_what_each_said() -> None:
    chain = ChainRegistry([static("shop", "first"), scripted_registry(ScriptedDns(), Clock())])
    with pytest.raises(ServiceNotFound) as exc:
        chain.lookup("shpo")
    assert message(exc) == (
        "no registry of first, then dns:example.test defines service 'shpo': "
        "registry first: no service 'shpo' (did you mean 'shop'? known services: shop); "
        "registry dns:example.test: no service 'shpo': "
        f"_mysql._tcp.shpo.{DOMAIN} does not exist (NXDOMAIN)"
    )


def test_a_list_stops_at_a_registry_that_does_not_answer() -> None:
    dns = ScriptedDns()
    dns.down = True
    chain = ChainRegistry([scripted_registry(dns, Clock()), static("shop", "second")])
    with pytest.raises(RegistryError, match=r"cannot resolve _mysql\._tcp\.shop\."):
        chain.lookup("shop")


def test_a_list_reports_every_registry_error_and_refreshes_all() -> None:
    dns, clock = ScriptedDns(), Clock()
    dns.publish([("db1.x.test", 3306)], ttl=5)
    registry = scripted_registry(dns, clock)
    chain = ChainRegistry([static("other", "first"), registry])
    chain.lookup("shop")
    dns.down = True
    clock.now += 5
    assert chain.refresh() is False
    assert (chain.last_error or "").startswith("registry dns:example.test: service 'shop'")
    assert chain.control == {}
    with pytest.raises(ValueError, match="at least one registry"):
        ChainRegistry([])


# --------------------------------------------------------------------------- find_registry


def write_file(path: Path, name: str = "shop") -> Path:
    return write_registry_file(path, [Service(name, (DataSource("db1", "127.0.0.1", 3306),))])


def test_find_registry_shares_one_dns_registry_per_spec(tmp_path: Path) -> None:
    first = find_registry("dns://127.0.0.1:5353/example.test", environ={}, cwd=tmp_path)
    assert isinstance(first, DnsRegistry)
    assert first.describe() == "dns://127.0.0.1:5353/example.test"
    assert find_registry("dns://127.0.0.1:5353/Example.Test.", environ={}, cwd=tmp_path) is first
    env = {"SQLROUTER_REGISTRY": "dns://127.0.0.1:5353/example.test"}
    assert find_registry(None, environ=env, cwd=tmp_path) is first
    other = find_registry("dns://127.0.0.1:5354/example.test", environ={}, cwd=tmp_path)
    assert other is not first
    close_dns_registries()
    assert find_registry("dns://127.0.0.1:5353/example.test", environ={}, cwd=tmp_path) is not (
        first
    )


def test_find_registry_builds_shared_lists(tmp_path: Path) -> None:
    write_file(tmp_path / "a.toml")
    spec = "file:a.toml,dns://127.0.0.1:5353/example.test"
    chain = find_registry(spec, environ={}, cwd=tmp_path)
    assert isinstance(chain, ChainRegistry)
    assert chain.describe() == (
        f"file {tmp_path / 'a.toml'}, then dns://127.0.0.1:5353/example.test"
    )
    assert find_registry(spec, environ={}, cwd=tmp_path) is chain
    assert chain.lookup("shop").source == str(tmp_path / "a.toml")
    write_file(tmp_path / "b.toml", "other")
    two_files = find_registry("file:a.toml,file:b.toml", environ={}, cwd=tmp_path)
    assert two_files.services() == ["shop", "other"]


def test_find_registry_errors_name_the_entry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        find_registry("file:missing.toml,dns:example.test", environ={}, cwd=tmp_path)
    assert message(exc) == (
        "no registry file: registry=file:missing.toml,dns:example.test: file:missing.toml = "
        f"{tmp_path / 'missing.toml'} (not found)"
    )
    with pytest.raises(RegistryError) as exc:
        find_registry("dns://ns.example.test/example.test", environ={}, cwd=tmp_path)
    # The spec is said once, not "registry=dns:X: dns:X: ...".
    assert message(exc).startswith(
        "registry=dns://ns.example.test/example.test: invalid nameserver 'ns.example.test'"
    )
    env = {"SQLROUTER_REGISTRY": "dns:example.test?bogus=1"}
    with pytest.raises(RegistryError) as exc:
        find_registry(None, environ=env, cwd=tmp_path)
    assert message(exc).startswith(
        "$SQLROUTER_REGISTRY=dns:example.test?bogus=1: "
        "unknown option 'bogus' (known options: monitor_user, "
    )
    # In a list, the entry at fault is named after the list.
    with pytest.raises(RegistryError) as exc:
        find_registry("dns:example.test?bogus=1,file:x.toml", environ={}, cwd=tmp_path)
    assert message(exc).startswith(
        "registry=dns:example.test?bogus=1,file:x.toml: dns:example.test?bogus=1: unknown option"
    )


def test_the_shared_dns_registries_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlrouter.registry.find, "MAX_SHARED", 3)
    kept = [get_dns_registry(f"//127.0.0.1:5353/d{i}.test", base=tmp_path) for i in range(3)]
    assert get_dns_registry("//127.0.0.1:5353/d0.test", base=tmp_path) is kept[0]
    with pytest.raises(RegistryError) as exc:
        get_dns_registry("//127.0.0.1:5353/d3.test", base=tmp_path)
    assert message(exc) == (
        "registry dns://127.0.0.1:5353/d3.test: this process uses 3 DNS registries already "
        "(each registry= text with other options is one), the most it keeps: use fewer "
        "distinct registry specs"
    )
    chains = [
        find_registry(f"dns://127.0.0.1:5353/d{i}.test,dns://127.0.0.1:5353/d0.test", environ={})
        for i in (1, 2)
    ]
    assert isinstance(chains[0], ChainRegistry)
    chains.append(find_registry("dns://127.0.0.1:5353/d0.test,dns://127.0.0.1:5353/d1.test"))
    with pytest.raises(RegistryError) as exc:
        find_registry("dns://127.0.0.1:5353/d0.test,dns://127.0.0.1:5353/d2.test", environ={})
    assert "this process uses 3 lists of registries already" in message(exc)
    close_dns_registries()  # sqlrouter.shutdown() forgets them: new ones may come
    assert get_dns_registry("//127.0.0.1:5353/d3.test", base=tmp_path) is not None


def test_resolve_registry_path_explains_that_dns_has_no_path(tmp_path: Path) -> None:
    from sqlrouter.registry import resolve_registry_path

    with pytest.raises(RegistryNotSupported) as exc:
        resolve_registry_path("dns:example.test", environ={}, cwd=tmp_path)
    assert "dns:example.test is a DNS registry, which has no file path" in message(exc)


def test_get_dns_registry_makes_password_files_absolute(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x", encoding="utf-8")
    (tmp_path / "pw").chmod(0o600)
    registry = get_dns_registry(
        "//127.0.0.1:5353/example.test?monitor_user=m&monitor_password_file=pw", base=tmp_path
    )
    assert registry.spec.options["monitor_password_file"] == str(tmp_path / "pw")


# --------------------------------------------------------------------------- real DNS


@pytest.fixture
def server() -> Iterator[DnsServer]:
    srv = DnsServer("example.test", soa_ttl=9)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def resolver_of(server: DnsServer, timeout: float = 2.0) -> DnspythonResolver:
    return DnspythonResolver((server.host, server.port), timeout=timeout)


def test_dnspython_reads_srv_records_and_their_glue(server: DnsServer) -> None:
    server.set_srv(SHOP, [Srv("db1.example.test", 3306, 10, 5), Srv("DB2.example.test", 3307)])
    server.set_address("db1.example.test", "127.0.0.1", ttl=4)
    answer = resolver_of(server).srv(SHOP)
    assert set(answer.records) == {
        SrvRecord(10, 5, 3306, "db1.example.test"),
        SrvRecord(10, 10, 3307, "db2.example.test"),
    }
    assert answer.ttl == 1
    assert dict(answer.glue) == {"db1.example.test": Addresses(("127.0.0.1",), 4)}


def test_dnspython_not_found_answers_carry_the_negative_ttl(server: DnsServer) -> None:
    server.set_srv(SHOP_MASTER, [Srv("db1.example.test", 3306)])
    resolver = resolver_of(server)
    with pytest.raises(NameNotFound) as exc:
        resolver.srv(f"_mysql._tcp.nosuch.{DOMAIN}")
    assert (exc.value.nxdomain, exc.value.ttl) == (True, 9)
    assert str(exc.value) == f"_mysql._tcp.nosuch.{DOMAIN} does not exist (NXDOMAIN)"
    with pytest.raises(NameNotFound) as exc:
        resolver.srv(SHOP)  # exists: _master._mysql._tcp.shop is below it
    assert exc.value.nxdomain is False
    assert str(exc.value) == f"{SHOP} has no SRV record (the name exists, NODATA)"


def test_dnspython_addresses_fall_back_to_aaaa(server: DnsServer) -> None:
    server.set_address("v4.example.test", "127.0.0.3", ttl=6)
    server.set_address("v6.example.test", "::1", ttl=8)
    resolver = resolver_of(server)
    assert resolver.addresses("v4.example.test") == Addresses(("127.0.0.3",), 6)
    assert resolver.addresses("v6.example.test") == Addresses(("::1",), 8)
    with pytest.raises(NameNotFound, match="does not exist"):
        resolver.addresses("none.example.test")


def test_dnspython_failures_are_unavailable(server: DnsServer) -> None:
    resolver = resolver_of(server, timeout=0.3)
    with pytest.raises(ResolverUnavailable) as exc:
        resolver.srv("_mysql._tcp.shop.elsewhere.test")  # outside the zone: REFUSED
    assert "answered REFUSED" in str(exc.value)
    server.stop()
    with pytest.raises(ResolverUnavailable) as exc:
        resolver.srv(SHOP)
    assert str(exc.value) == (
        f"{SHOP}: no answer from nameserver 127.0.0.1:{server.port} within 0.3s"
    )
    assert repr(resolver) == f"<DnspythonResolver nameserver 127.0.0.1:{server.port} timeout=0.3s>"


def test_dnspython_follows_truncation_to_tcp(server: DnsServer) -> None:
    many = [Srv(f"replica-{i:02d}-long-host-name.example.test", 3306 + i) for i in range(30)]
    server.set_srv(SHOP, many)
    assert len(resolver_of(server).srv(SHOP).records) == 30


def test_system_resolver_spec_uses_resolv_conf() -> None:
    try:
        registry = DnsRegistry(DOMAIN, background=False)
    except RegistryError as exc:
        pytest.skip(f"no system resolver here: {exc}")
    assert registry.describe() == "dns:example.test"
    assert registry.resolver.describe().startswith("the system resolver (")


def test_a_registry_on_a_real_server_refreshes_in_its_own_thread(server: DnsServer) -> None:
    server.set_srv(SHOP, [Srv("db1.example.test", 3306)])
    server.set_address("db1.example.test")
    registry = find_registry(server.spec("example.test"), environ={})
    assert isinstance(registry, DnsRegistry)
    assert registry.lookup("shop").datasources[0].host == "127.0.0.1"
    workers = [t for t in threading.enumerate() if t.name == "sqlrouter-dns-example.test"]
    assert len(workers) == 1
    assert "| refreshing]>" in repr(registry)
    sqlrouter.shutdown()  # stops it, like every sqlrouter thread
    assert not workers[0].is_alive()
