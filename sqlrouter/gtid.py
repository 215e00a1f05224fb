"""GTID positions and causal tokens.

A MariaDB GTID is ``domain-server_id-sequence``.  Within one replication domain the
sequence number only grows, so a position is, per domain, the highest sequence number
applied.  A :class:`CausalToken` is such a position: the highest GTID per domain that a
client session has written or read.  ``str(token)`` is a MariaDB GTID list
(``0-1-15,1-2-7``), which ``MASTER_GTID_WAIT()`` accepts as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["MAX_DOMAINS", "MAX_TEXT", "CausalToken", "Gtid", "format_gtid_list", "parse_gtid_list"]

_GTID_RE = re.compile(r"\s*(\d{1,10})-(\d{1,10})-(\d{1,20})\s*\Z", re.ASCII)
#: A GTID: ``(domain, server_id, sequence)``.
Gtid = tuple[int, int, int]
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1
#: The most GTIDs (one per replication domain), and characters, of a token read by
#: :meth:`CausalToken.parse`: a token comes from outside (a URL, a cookie, another
#: process), and every write of a session costs in proportion to its domains.  Far
#: above what a cluster has (a token built from a server's positions must read back:
#: 1024 GTIDs of the longest form fit in the text bound).
MAX_DOMAINS: Final = 1024
MAX_TEXT: Final = 65536


def _gtid(part: str) -> Gtid | None:
    """``"0-1-15"`` (spaces around allowed) as ``(0, 1, 15)``; ``None`` if it is no GTID."""
    m = _GTID_RE.match(part)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def parse_gtid_list(text: str | None) -> list[Gtid]:
    """A server's GTID list (``"0-1-5,0-2-9"``) as ``[(0, 1, 5), (0, 2, 9)]``, in order.

    Every GTID is kept (a ``@@gtid_binlog_state`` holds one per domain and server);
    :class:`ValueError` names a part that is not a GTID.
    """
    if text is None or not text.strip():
        return []
    out = []
    for part in text.split(","):
        gtid = _gtid(part)
        if gtid is None:
            raise ValueError(f"{part.strip()!r} is not a GTID (domain-server_id-sequence)")
        out.append(gtid)
    return out


def format_gtid_list(gtids: Iterable[Gtid]) -> str:
    """GTIDs as a GTID list (``0-1-5,0-2-9``), sorted: what the servers accept."""
    return ",".join(f"{d}-{s}-{n}" for d, s, n in sorted(gtids))


def _quoted(text: str) -> str:
    """``text`` as an error quotes it: whole when short, else its start and its length."""
    if len(text) <= 80:
        return repr(text)
    return f"{text[:40]!r}... ({len(text)} characters)"


class CausalToken:
    """An immutable GTID position: for each replication domain, ``(server_id, seq)``.

    Tokens merge (:meth:`merge`, ``|``: the highest sequence per domain) and compare
    (:meth:`covers`: every domain of the other token is reached).  The empty token
    covers nothing but the empty token and is covered by everything.
    """

    __slots__ = ("_by_domain", "_hash", "_text")
    __module__ = "sqlrouter"

    _by_domain: Mapping[int, tuple[int, int]]
    _text: str
    _hash: int

    def __init__(self, gtids: Iterable[tuple[int, int, int]] = ()) -> None:
        by_domain: dict[int, tuple[int, int]] = {}
        for domain, server_id, seq in gtids:
            if not all(type(v) is int for v in (domain, server_id, seq)):
                raise ValueError(f"GTID {domain}-{server_id}-{seq}: parts must be integers")
            if not (0 <= domain <= _MAX_U32 and 0 <= server_id <= _MAX_U32):
                raise ValueError(
                    f"GTID {domain}-{server_id}-{seq}: domain and server id are 32-bit"
                )
            if not 0 <= seq <= _MAX_U64:
                raise ValueError(f"GTID {domain}-{server_id}-{seq}: sequence is 64-bit")
            current = by_domain.get(domain)
            # Ties on the sequence keep the highest server id, so merging is symmetric.
            if current is None or (seq, server_id) > (current[1], current[0]):
                by_domain[domain] = (server_id, seq)
        object.__setattr__(self, "_by_domain", MappingProxyType(dict(sorted(by_domain.items()))))
        text = format_gtid_list((d, s, n) for d, (s, n) in self._by_domain.items())
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_hash", hash(text))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CausalToken is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("CausalToken is immutable")

    @classmethod
    def parse(cls, text: str | None) -> CausalToken:
        """Read a token from its ``str()`` form (a MariaDB GTID list).

        An empty string or ``None`` gives the empty token.  Anything else that is not a
        comma-separated list of ``domain-server_id-sequence`` raises :class:`ValueError`,
        and so does a list of more than :data:`MAX_DOMAINS` GTIDs or :data:`MAX_TEXT`
        characters.
        """
        return cls._read(text, bounded=True)

    @classmethod
    def from_gtid_list(cls, text: str | None) -> CausalToken:
        """Read a server's GTID list (``@@gtid_binlog_pos``, ``@@gtid_slave_pos``).

        As :meth:`parse`, without its bounds: what a server reports is not input from
        outside, and a server may use more domains than a token read from text may hold.
        """
        return cls._read(text, bounded=False)

    @classmethod
    def _read(cls, text: str | None, *, bounded: bool) -> CausalToken:
        if text is None or not text.strip():
            return EMPTY
        if bounded:
            if len(text) > MAX_TEXT:
                raise ValueError(
                    f"invalid causal token {_quoted(text)}: longer than {MAX_TEXT} characters"
                )
            if text.count(",") >= MAX_DOMAINS:
                raise ValueError(
                    f"invalid causal token {_quoted(text)}: more than {MAX_DOMAINS} GTIDs "
                    f"(a token holds one per replication domain, at most {MAX_DOMAINS})"
                )
        gtids = []
        for part in text.split(","):
            gtid = _gtid(part)
            if gtid is None:
                raise ValueError(
                    f"invalid causal token {_quoted(text)}: {_quoted(part.strip())} is not a "
                    "GTID; expected a comma-separated list of domain-server_id-sequence, "
                    "for example '0-1-15,1-2-7'"
                )
            gtids.append(gtid)
        try:
            return cls(gtids)
        except ValueError as exc:
            raise ValueError(f"invalid causal token {_quoted(text)}: {exc}") from None

    @property
    def domains(self) -> Mapping[int, tuple[int, int]]:
        """``{domain: (server_id, seq)}``, read-only."""
        return self._by_domain

    def seq(self, domain: int) -> int:
        """The sequence number reached in ``domain``, 0 when the domain is absent."""
        entry = self._by_domain.get(domain)
        return 0 if entry is None else entry[1]

    def merge(self, *others: CausalToken) -> CausalToken:
        """The smallest token that covers this one and every one of ``others``."""
        merged = self
        for other in others:
            if merged.covers(other) and (other == merged or not other.covers(merged)):
                continue
            if other.covers(merged) and not merged.covers(other):
                merged = other
                continue
            merged = CausalToken(
                (d, s, n) for t in (merged, other) for d, (s, n) in t._by_domain.items()
            )
        return merged

    __or__ = merge

    def covers(self, other: CausalToken) -> bool:
        """True when, in every domain of ``other``, this token's sequence is as high."""
        mine = self._by_domain
        for domain, (_, seq) in other._by_domain.items():
            entry = mine.get(domain)
            if entry is None or entry[1] < seq:
                return False
        return True

    def __bool__(self) -> bool:
        return bool(self._by_domain)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"CausalToken({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalToken):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (CausalToken.from_gtid_list, (self._text,))


EMPTY = CausalToken()
