"""The DNS resolver: dnspython behind the :class:`~sqlrouter.registry._dns.Resolver` seam.

The only module that imports dnspython (about 25 ms to import): a DNS registry loads it
when it builds its default resolver, so a process that reads no DNS registry never does.
"""

from __future__ import annotations

from types import MappingProxyType

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from ._dns import Addresses, NameNotFound, ResolverUnavailable, SrvAnswer, SrvRecord
from ._dnsspec import DEFAULT_TIMEOUT

__all__ = ["DnspythonResolver"]


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
