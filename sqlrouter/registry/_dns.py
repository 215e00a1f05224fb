"""DNS SRV service discovery: the records, RFC 2782 ordering, and the resolver seam.

What a DNS registry publishes (the convention documented in ``docs/registry.md``):

- ``_mysql._tcp.SERVICE.DOMAIN`` SRV records: the servers of SERVICE, one record each
  (priority, weight, port, target host name);
- ``_master._mysql._tcp.SERVICE.DOMAIN`` SRV record (optional, at most one server):
  the server declared master.  A server published only there is a member too.  Every
  other member is declared a replica.  The monitor verifies both.
- an A or AAAA record for each target.

Everything here is pure: the one class that talks to a DNS server,
:class:`~sqlrouter.registry._resolver.DnspythonResolver`, is behind the
:class:`Resolver` protocol, and :func:`resolve_service` only touches the resolver it is
given.  Randomness (RFC 2782 weighted ordering) comes from a ``randbelow`` seam.  The
``dns:`` spec and its options are :mod:`sqlrouter.registry._dnsspec`.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Protocol

from ..topology import DataSource, Role, Service
from ._dnsspec import _LABEL_RE, DnsSettings

__all__ = [
    "DEFAULT_NEGATIVE_TTL",
    "Addresses",
    "DnsError",
    "InvalidAnswer",
    "NameNotFound",
    "Resolved",
    "Resolver",
    "ResolverUnavailable",
    "SrvAnswer",
    "SrvRecord",
    "build_datasources",
    "order_srv",
    "resolve_service",
    "same_service",
    "srv_name",
]

#: Seconds a "does not exist" answer is kept when the server gives no SOA to say.
DEFAULT_NEGATIVE_TTL: Final = 5.0

_SERVICE_LABELS: Final = ("_mysql", "_tcp")
_MASTER_LABEL: Final = "_master"

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
