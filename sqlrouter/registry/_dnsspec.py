"""A ``dns:`` registry spec: ``dns:DOMAIN`` or ``dns://IP[:PORT]/DOMAIN``, and its options.

Pure: :func:`parse_dns_spec` validates the text, :func:`settings_from_options` turns
the options into the service settings DNS cannot publish.  :data:`SPEC_OPTIONS` is
also what :mod:`sqlrouter.url` folds into a URL's ``registry=``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl, unquote

from ..topology import (
    MAX_LAG_RANGE,
    MONITOR_INTERVAL_RANGE,
    PROBE_TIMEOUT_RANGE,
    Credentials,
    HeartbeatSettings,
    Service,
    range_text,
)

__all__ = [
    "CREDENTIAL_ROLES",
    "DEFAULT_TIMEOUT",
    "SPEC_OPTIONS",
    "DnsSettings",
    "DnsSpec",
    "parse_dns_spec",
    "settings_from_options",
]


#: Seconds allowed to one DNS resolution (all the nameservers and retries included).
DEFAULT_TIMEOUT: Final = 2.0


_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


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
