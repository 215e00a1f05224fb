"""DNS SRV service discovery: parsing, RFC 2782 ordering, and the resolver seam.

What a DNS registry publishes (the convention documented in ``docs/registry.md``):

- ``_mysql._tcp.SERVICE.DOMAIN`` SRV records: the servers of SERVICE, one record each
  (priority, weight, port, target host name);
- ``_master._mysql._tcp.SERVICE.DOMAIN`` SRV record (optional, at most one server):
  the server declared master.  A server published only there is a member too.  Every
  other member is declared a replica.  The monitor verifies both.
- an A or AAAA record for each target.

Everything here is pure except :class:`DnspythonResolver`, the one class that talks
to a DNS server, behind the :class:`Resolver` protocol; :func:`resolve_service`
combines the two and only touches the resolver it is given.  Randomness (RFC 2782
weighted ordering) comes from a ``randbelow`` seam.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import parse_qsl, unquote

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from ..topology import (
    MAX_LAG_RANGE,
    MONITOR_INTERVAL_RANGE,
    PROBE_TIMEOUT_RANGE,
    Credentials,
    DataSource,
    HeartbeatSettings,
    Role,
    Service,
    range_text,
)

__all__ = [
    "CREDENTIAL_ROLES",
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_TIMEOUT",
    "SPEC_OPTIONS",
    "Addresses",
    "DnsError",
    "DnsSettings",
    "DnsSpec",
    "DnspythonResolver",
    "InvalidAnswer",
    "NameNotFound",
    "Resolved",
    "Resolver",
    "ResolverUnavailable",
    "SrvAnswer",
    "SrvRecord",
    "build_datasources",
    "order_srv",
    "parse_dns_spec",
    "resolve_service",
    "same_service",
    "settings_from_options",
    "srv_name",
]

#: Seconds allowed to one DNS resolution (all the nameservers and retries included).
DEFAULT_TIMEOUT: Final = 2.0
#: Seconds a "does not exist" answer is kept when the server gives no SOA to say.
DEFAULT_NEGATIVE_TTL: Final = 5.0

_SERVICE_LABELS: Final = ("_mysql", "_tcp")
_MASTER_LABEL: Final = "_master"
_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

Randbelow = Callable[[int], int]


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record; ``target`` is lowercase, without the final dot (``.`` for none)."""

    priority: int
    weight: int
    port: int
    target: str

    def __str__(self) -> str:
        return f"{self.target}:{self.port}"


@dataclass(frozen=True, slots=True)
class Addresses:
    """The IP addresses of one host name, and the TTL of that answer."""

    ips: tuple[str, ...]
    ttl: int


@dataclass(frozen=True, slots=True)
class SrvAnswer:
    """The SRV records of one name, the TTL of the answer, and the addresses of the
    targets that the server put in the additional section."""

    records: tuple[SrvRecord, ...]
    ttl: int
    glue: Mapping[str, Addresses] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Resolved:
    """A service read from DNS, and how many seconds that answer may be kept."""

    service: Service
    ttl: int


class DnsError(Exception):
    """A DNS resolution did not give a usable answer; ``name`` is the name looked up."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(self._message(name, detail))
        self.name = name
        self.detail = detail

    @staticmethod
    def _message(name: str, detail: str) -> str:
        return f"{name}: {detail}"


class NameNotFound(DnsError):
    """The name does not exist (NXDOMAIN, ``nxdomain``) or holds no record of the type
    (NODATA).  ``ttl`` is the negative TTL the server gave (its SOA), or ``None``.
    """

    def __init__(self, name: str, detail: str, *, nxdomain: bool, ttl: int | None = None) -> None:
        super().__init__(name, detail)
        self.nxdomain = nxdomain
        self.ttl = ttl

    @staticmethod
    def _message(name: str, detail: str) -> str:
        return f"{name} {detail}"


class ResolverUnavailable(DnsError):
    """No answer: timeout, SERVFAIL, REFUSED, no nameserver, network error."""


class InvalidAnswer(DnsError):
    """The records exist but do not describe a service (two masters, a bad target...)."""


class Resolver(Protocol):
    """The I/O seam: what a DNS registry asks of DNS.

    Names are absolute, lowercase and without the final dot.  Both methods raise
    :class:`NameNotFound` or :class:`ResolverUnavailable`.
    """

    def srv(self, name: str) -> SrvAnswer:
        """The SRV records of ``name``."""

    def addresses(self, host: str) -> Addresses:
        """The A records of ``host``, else its AAAA records."""

    def describe(self) -> str:
        """Who answers, for messages: ``nameserver 127.0.0.1:5353``."""


# --------------------------------------------------------------------------- the spec


_DEFAULTS: Final = Service(name="-", datasources=())


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Service settings that DNS cannot publish, given in the registry spec."""

    max_lag: float = _DEFAULTS.max_lag
    monitor_interval: float = _DEFAULTS.monitor_interval
    probe_timeout: float = _DEFAULTS.probe_timeout
    heartbeat: HeartbeatSettings = _DEFAULTS.heartbeat
    monitor_credentials: Credentials | None = None
    admin_credentials: Credentials | None = None
    replication_credentials: Credentials | None = None


@dataclass(frozen=True, slots=True)
class DnsSpec:
    """A parsed ``dns:DOMAIN`` or ``dns://IP[:PORT]/DOMAIN`` entry, options included.

    ``nameserver`` ``None`` means the system resolver (``/etc/resolv.conf``).
    ``options`` are the raw ``?key=value`` options, validated by :func:`parse_dns_spec`
    except for the password files, which the registry reads.
    """

    domain: str
    nameserver: tuple[str, int] | None = None
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def location(self) -> str:
        """The spec without its options: ``dns:example.test``, ``dns://127.0.0.1:53/x``."""
        if self.nameserver is None:
            return f"dns:{self.domain}"
        host, port = self.nameserver
        shown = f"[{host}]" if ":" in host else host
        return f"dns://{shown}:{port}/{self.domain}"

    def __str__(self) -> str:
        if not self.options:
            return self.location
        query = "&".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.location}?{query}"


#: The options of a DNS registry spec (``dns:DOMAIN?key=value&...``).
SPEC_OPTIONS: Final = (
    "monitor_user",
    "monitor_password_file",
    "admin_user",
    "admin_password_file",
    "replication_user",
    "replication_password_file",
    "max_lag",
    "monitor_interval",
    "probe_timeout",
    "heartbeat",
    "heartbeat_table",
    "timeout",
)
#: The accounts a DNS registry spec may name (``ROLE_user``, ``ROLE_password_file``).
CREDENTIAL_ROLES: Final = ("monitor", "admin", "replication")
_HEARTBEAT_TABLE_RE: Final = re.compile(r"[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}")
_SPEC_FORMS: Final = "expected dns:DOMAIN or dns://IP[:PORT]/DOMAIN, optionally ?key=value&..."


def _check_domain(text: str) -> str:
    domain = text.strip().lower().removesuffix(".")
    if not domain:
        raise ValueError(f"no domain: {_SPEC_FORMS}")
    if len(domain) > 240:
        raise ValueError(f"domain {text!r} is too long (at most 240 characters)")
    for label in domain.split("."):
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"invalid domain {text!r}: each label is 1-63 letters, digits, '-' or '_', "
                "not starting or ending with '-'"
            )
    return domain


def _check_nameserver(text: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid nameserver {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid nameserver {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"invalid nameserver {text!r}: expected an IP address (IPv6 in brackets), "
            "optionally with :PORT; a name would need DNS to be found"
        ) from None
    port = 53
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"invalid nameserver port {port_text!r}: expected 1-65535")
        port = int(port_text)
    return str(address), port


#: The accepted range of each number option (seconds).
_OPTION_RANGES: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "max_lag": MAX_LAG_RANGE,
        "monitor_interval": MONITOR_INTERVAL_RANGE,
        "probe_timeout": PROBE_TIMEOUT_RANGE,
        "timeout": (0.05, 60.0),
    }
)


def _seconds(key: str, text: str) -> float:
    low, high = _OPTION_RANGES[key]
    expected = f"a number of seconds {range_text((low, high))}"
    shown = repr(text) if len(text) <= 40 else repr(text[:36]) + "..."
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"option {key}: expected {expected}, got {shown}") from None
    if not low <= value <= high:  # NaN fails too
        raise ValueError(f"option {key}: expected {expected}, got {shown}")
    return value


def _check_options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    if not query:
        return options
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(f"invalid options {query!r}: expected key=value&key=value") from None
    for key, value in pairs:
        if key in ("monitor_password", "admin_password", "replication_password"):
            raise ValueError(
                f"option {key}: a password is not accepted in a registry spec (it would "
                f"show wherever the spec is shown); use {key}_file=PATH"
            )
        if key not in SPEC_OPTIONS:
            raise ValueError(f"unknown option {key!r} (known options: {', '.join(SPEC_OPTIONS)})")
        if key in options:
            raise ValueError(f"option {key} is given twice")
        options[key] = value
    for key in _OPTION_RANGES:
        if key in options:
            _seconds(key, options[key])
    if "heartbeat" in options and options["heartbeat"] not in ("true", "false"):
        raise ValueError(f"option heartbeat: expected true or false, got {options['heartbeat']!r}")
    table = options.get("heartbeat_table")
    if table is not None and not _HEARTBEAT_TABLE_RE.fullmatch(table):
        raise ValueError(
            "option heartbeat_table: expected 'schema.table' (each of 1-64 letters, digits, "
            f"'_' or '$'), got {table!r}"
        )
    for role in CREDENTIAL_ROLES:
        for key in (f"{role}_user", f"{role}_password_file"):
            if key in options and not options[key]:
                raise ValueError(f"option {key} is empty")
    for role in CREDENTIAL_ROLES:
        if f"{role}_password_file" in options and f"{role}_user" not in options:
            raise ValueError(f"option {role}_password_file needs {role}_user")
    return options


def parse_dns_spec(value: str) -> DnsSpec:
    """Parse what follows ``dns:`` in a registry spec; :class:`ValueError` says what is wrong.

    ``DOMAIN`` uses the system resolver; ``//IP[:PORT]/DOMAIN`` asks that nameserver
    (port 53 by default, IPv6 in brackets).  ``?key=value&...`` gives service settings
    (:data:`SPEC_OPTIONS`).
    """
    text = value.strip()
    text, _, query = text.partition("?")
    nameserver: tuple[str, int] | None = None
    if text.startswith("//"):
        authority, slash, domain = text[2:].partition("/")
        if not slash:
            raise ValueError(f"no domain after the nameserver: {_SPEC_FORMS}")
        if not authority:
            raise ValueError(f"no nameserver between // and /: {_SPEC_FORMS}")
        nameserver = _check_nameserver(unquote(authority))
        text = domain
    elif "/" in text:
        raise ValueError(f"unexpected '/' in domain {text!r}: {_SPEC_FORMS}")
    return DnsSpec(
        domain=_check_domain(unquote(text)),
        nameserver=nameserver,
        options=MappingProxyType(_check_options(query)),
    )


def settings_from_options(
    options: Mapping[str, str], *, passwords: Mapping[str, str] | None = None
) -> DnsSettings:
    """The :class:`DnsSettings` of validated options.

    ``passwords`` maps a role of :data:`CREDENTIAL_ROLES` to the content of its
    ``ROLE_password_file``, which the caller reads.
    """
    given = passwords or {}
    accounts: dict[str, Credentials | None] = {}
    for role in CREDENTIAL_ROLES:
        user = options.get(f"{role}_user")
        accounts[role] = Credentials(user, given.get(role, "")) if user else None
    defaults = DnsSettings()
    return DnsSettings(
        max_lag=float(options.get("max_lag", defaults.max_lag)),
        monitor_interval=float(options.get("monitor_interval", defaults.monitor_interval)),
        probe_timeout=float(options.get("probe_timeout", defaults.probe_timeout)),
        heartbeat=HeartbeatSettings(
            enabled=options.get("heartbeat", "true") == "true",
            table=options.get("heartbeat_table", defaults.heartbeat.table),
        ),
        monitor_credentials=accounts["monitor"],
        admin_credentials=accounts["admin"],
        replication_credentials=accounts["replication"],
    )


# --------------------------------------------------------------------------- pure logic


def srv_name(service: str, domain: str, *, master: bool = False) -> str:
    """``_mysql._tcp.SERVICE.DOMAIN`` (``_master._mysql._tcp...`` with ``master``).

    :class:`ValueError` when ``service`` cannot be part of a DNS name.
    """
    labels = service.lower().split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"service name {service!r} cannot be looked up in DNS: each dot-separated "
                "part must be 1-63 letters, digits, '-' or '_'"
            )
    name = ".".join([*_SERVICE_LABELS, *labels, domain])
    if master:
        name = f"{_MASTER_LABEL}.{name}"
    if len(name) > 253:
        raise ValueError(f"service name {service!r} makes a DNS name longer than 253 characters")
    return name


def order_srv(
    records: Sequence[SrvRecord], *, randbelow: Randbelow = secrets.randbelow
) -> list[SrvRecord]:
    """The records in RFC 2782 order: by priority, then weighted-random within one.

    Within a priority, RFC 2782's selection is repeated until no record is left: the
    records not yet chosen, those of weight 0 first, each with the running sum of the
    weights; a number ``r`` is drawn uniformly in ``[0, sum]`` (``randbelow(sum + 1)``)
    and the first record whose running sum is at least ``r`` comes next.  Records are
    first sorted by (weight 0 first, target, port), so the result depends only on the
    records and ``randbelow``, not on the order the server sent them in.
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted(
            (r for r in records if r.priority == priority),
            key=lambda r: (r.weight != 0, r.target, r.port),
        )
        while group:
            total = sum(r.weight for r in group)
            pick = randbelow(total + 1)
            if not 0 <= pick <= total:
                raise ValueError(f"randbelow({total + 1}) returned {pick}")
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def _names(records: Sequence[SrvRecord]) -> dict[tuple[str, int], str]:
    """Datasource names: the target's first label when no other member has it, else the
    whole target name, else ``TARGET-PORT`` (one host, several ports)."""
    keys = [(r.target, r.port) for r in records]
    first = Counter(target.split(".")[0] for target, _ in keys)
    whole = Counter(target for target, _ in keys)
    names: dict[tuple[str, int], str] = {}
    for target, port in keys:
        label = target.split(".")[0]
        if first[label] == 1:
            names[(target, port)] = label
        elif whole[target] == 1:
            names[(target, port)] = target
        else:
            names[(target, port)] = f"{target}-{port}"
    return names


def _pick_address(ips: Sequence[str]) -> str:
    """The address to connect to: IPv4 before IPv6, then the lowest (stable over the
    rotations a server applies to its answers)."""
    parsed = [ipaddress.ip_address(ip) for ip in ips]
    return str(min(parsed, key=lambda a: (a.version, a)))


def build_datasources(
    members: Sequence[SrvRecord],
    masters: Sequence[SrvRecord],
    addresses: Mapping[str, str],
    *,
    randbelow: Randbelow = secrets.randbelow,
) -> tuple[DataSource, ...]:
    """The datasources an SRV answer describes, in RFC 2782 order.

    ``members`` are the ``_mysql._tcp`` records, ``masters`` the ``_master`` ones,
    ``addresses`` the IP address of each target.  Raises :class:`ValueError` for an
    answer that does not describe a service.

    Weights: the members at the lowest priority among those not declared master keep
    their SRV weight (all of them 1 if they are all 0); every other member gets weight
    0, which the router uses only when no member of positive weight qualifies.
    """
    distinct_masters = sorted({(r.target, r.port) for r in masters})
    if len(distinct_masters) > 1:
        shown = ", ".join(f"{t}:{p}" for t, p in distinct_masters)
        raise ValueError(f"more than one master is published ({shown}); publish at most one")
    by_key: dict[tuple[str, int], SrvRecord] = {}
    for record in (*members, *masters):
        if record.target in ("", "."):
            continue
        if record.port == 0:
            raise ValueError(f"{record.target} has port 0")
        by_key.setdefault((record.target, record.port), record)
    if not by_key:
        raise ValueError("no server: the records say the service is not available (target '.')")
    master_key = distinct_masters[0] if distinct_masters else None
    records = list(by_key.values())
    others = [r for key, r in by_key.items() if key != master_key] or records
    best = min(r.priority for r in others)
    best_all_zero = all(r.weight == 0 for r in others if r.priority == best)
    names = _names(records)
    result: list[DataSource] = []
    for record in order_srv(records, randbelow=randbelow):
        key = (record.target, record.port)
        weight = record.weight if record.priority == best else 0
        if record.priority == best and best_all_zero:
            weight = 1
        result.append(
            DataSource(
                name=names[key],
                host=addresses[record.target],
                port=record.port,
                role=Role.MASTER if key == master_key else Role.REPLICA,
                weight=weight,
            )
        )
    return tuple(result)


def same_service(old: Service, new: Service) -> bool:
    """Whether two answers describe the same service, ignoring the (random) order."""
    return (
        frozenset(old.datasources) == frozenset(new.datasources)
        and len(old.datasources) == len(new.datasources)
        and replace(old, datasources=()) == replace(new, datasources=())
    )


# --------------------------------------------------------------------------- resolving


def resolve_service(
    resolver: Resolver,
    service: str,
    domain: str,
    *,
    settings: DnsSettings,
    source: str,
    randbelow: Randbelow = secrets.randbelow,
) -> Resolved:
    """Read ``service`` from DNS through ``resolver``.

    Raises :class:`NameNotFound` (naming ``_mysql._tcp.SERVICE.DOMAIN``) when the
    service is not published, :class:`ResolverUnavailable` when DNS does not answer,
    :class:`InvalidAnswer` when the records do not describe a service.  The TTL is the
    smallest of the answers used.
    """
    name = srv_name(service, domain)
    master_name = srv_name(service, domain, master=True)
    ttls: list[int] = []
    missing: NameNotFound | None = None
    try:
        members = resolver.srv(name)
        ttls.append(members.ttl)
        member_records = members.records
        glue = dict(members.glue)
    except NameNotFound as exc:
        if exc.nxdomain:
            raise
        member_records, glue, missing = (), {}, exc
    try:
        masters = resolver.srv(master_name)
    except NameNotFound as exc:
        master_records: tuple[SrvRecord, ...] = ()
        if exc.ttl is not None:
            ttls.append(exc.ttl)
    else:
        master_records = masters.records
        ttls.append(masters.ttl)
        glue.update(masters.glue)
    if missing is not None and not master_records:
        raise missing
    addresses: dict[str, str] = {}
    for record in (*member_records, *master_records):
        target = record.target
        if target in ("", ".") or target in addresses:
            continue
        found = glue.get(target)
        if found is None or not found.ips:
            try:
                found = resolver.addresses(target)
            except NameNotFound as exc:
                raise InvalidAnswer(
                    name, f"target {target} (port {record.port}) has no address: {exc.detail}"
                ) from None
        ttls.append(found.ttl)
        addresses[target] = _pick_address(found.ips)
    try:
        datasources = build_datasources(
            member_records, master_records, addresses, randbelow=randbelow
        )
    except ValueError as exc:
        raise InvalidAnswer(name, str(exc)) from None
    resolved = Service(
        name=service,
        datasources=datasources,
        max_lag=settings.max_lag,
        monitor_interval=settings.monitor_interval,
        probe_timeout=settings.probe_timeout,
        heartbeat=settings.heartbeat,
        monitor_credentials=settings.monitor_credentials,
        admin_credentials=settings.admin_credentials,
        replication_credentials=settings.replication_credentials,
        source=source,
    )
    return Resolved(resolved, min(ttls) if ttls else 0)


# --------------------------------------------------------------------------- dnspython


def _negative_ttl(response: dns.message.Message | None) -> int | None:
    """RFC 2308: the negative TTL is the SOA record's TTL capped by its MINIMUM field."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            minimum = min(int(rdata.minimum) for rdata in rrset)
            return min(int(rrset.ttl), minimum)
    return None


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


class DnspythonResolver:
    """:class:`Resolver` with dnspython: the given nameserver, or the system's.

    ``timeout`` bounds each resolution (every nameserver and retry included).  Nothing
    is cached here: the registry keeps answers for their TTL itself.
    """

    def __init__(
        self, nameserver: tuple[str, int] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if nameserver is None:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as exc:
                raise ResolverUnavailable(
                    "/etc/resolv.conf", f"no system resolver is configured ({exc})"
                ) from None
            shown = ", ".join(str(ns) for ns in self._resolver.nameservers) or "none"
            self._description = f"the system resolver ({shown})"
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            host, port = nameserver
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
            shown = f"[{host}]" if ":" in host else host
            self._description = f"nameserver {shown}:{port}"
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._resolver.cache = None
        self.timeout = timeout

    def describe(self) -> str:
        return self._description

    def __repr__(self) -> str:
        return f"<DnspythonResolver {self._description} timeout={self.timeout:g}s>"

    def _query(self, name: str, rdtype: str) -> tuple[dns.resolver.Answer, dns.rrset.RRset]:
        qname = dns.name.from_text(name + ".")
        try:
            answer = self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses") or {}
            response = next(iter(responses.values()), None)
            raise NameNotFound(
                name, "does not exist (NXDOMAIN)", nxdomain=True, ttl=_negative_ttl(response)
            ) from None
        except dns.resolver.YXDOMAIN:
            raise NameNotFound(
                name, "is too long once its CNAME is followed (YXDOMAIN)", nxdomain=True
            ) from None
        except dns.resolver.LifetimeTimeout:
            raise ResolverUnavailable(
                name, f"no answer from {self._description} within {self.timeout:g}s"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise ResolverUnavailable(name, f"{self._description} failed: {exc}") from None
        except dns.exception.DNSException as exc:
            raise ResolverUnavailable(name, f"{self._description}: {exc}") from None
        if answer.rrset is None:
            raise NameNotFound(
                name,
                f"has no {rdtype} record (the name exists, NODATA)",
                nxdomain=False,
                ttl=_negative_ttl(answer.response),
            )
        return answer, answer.rrset

    def srv(self, name: str) -> SrvAnswer:
        answer, rrset = self._query(name, "SRV")
        records = tuple(
            SrvRecord(
                priority=int(rdata.priority),
                weight=int(rdata.weight),
                port=int(rdata.port),
                target=_text(rdata.target),
            )
            for rdata in rrset
        )
        glue: dict[str, Addresses] = {}
        for extra in answer.response.additional:
            if extra.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                host = _text(extra.name)
                ips = tuple(rdata.address for rdata in extra)
                ttl = int(extra.ttl)
                previous = glue.get(host)
                if previous is not None:
                    ips, ttl = previous.ips + ips, min(previous.ttl, ttl)
                glue[host] = Addresses(ips, ttl)
        return SrvAnswer(records, int(rrset.ttl), MappingProxyType(glue))

    def addresses(self, host: str) -> Addresses:
        try:
            _, rrset = self._query(host, "A")
        except NameNotFound as exc:
            if exc.nxdomain:
                raise
            _, rrset = self._query(host, "AAAA")
        return Addresses(tuple(rdata.address for rdata in rrset), int(rrset.ttl))
