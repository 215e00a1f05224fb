"""A registry file's text to services: TOML read and every key validated (pure).

:func:`_parse_document` returns the services and the raw ``[control]`` table, or raises
:class:`~sqlrouter.registry.RegistryError` naming the file, the service and the field.
Reading the file, reloading it and the cache are :mod:`sqlrouter.registry.file`; the
format is described in ``docs/registry.md``.  Passwords never appear in an error.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from ..topology import (
    AUTOFAILOVER_AGENTS_RANGE,
    AUTOFAILOVER_BACKOFF_RANGE,
    AUTOFAILOVER_LEASE_RANGE,
    AUTOFAILOVER_PERIOD_RANGE,
    AUTOFAILOVER_ROUNDS_RANGE,
    MAX_LAG_RANGE,
    MONITOR_INTERVAL_RANGE,
    PROBE_TIMEOUT_RANGE,
    WEIGHT_RANGE,
    AutofailoverSettings,
    Credentials,
    DataSource,
    HeartbeatSettings,
    Role,
    Service,
)
from ._checks import _read_password_file, _Secret, _show, _Where
from .base import _freeze_table

__all__ = ["_parse_document"]


_TOP_KEYS: Final = ("control", "services")
_SERVICE_KEYS: Final = (
    "max_lag",
    "monitor_interval",
    "probe_timeout",
    "heartbeat",
    "monitor",
    "admin",
    "replication",
    "datasources",
    "autofailover",
)
_AUTOFAILOVER_KEYS: Final = (
    "enabled",
    "etcd",
    "rounds",
    "interval",
    "period",
    "lease_ttl",
    "min_agents",
    "backoff_base",
    "backoff_cap",
)
#: An etcd endpoint: ``host:port`` (a name or an IPv4 address; IPv6 in brackets).
_ENDPOINT_RE: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):(\d{1,5})")
_HEARTBEAT_KEYS: Final = ("enabled", "table")
_CREDENTIAL_KEYS: Final = ("user", "password", "password_file")
_DATASOURCE_KEYS: Final = ("name", "host", "port", "role", "weight")

#: Service names are the host of a ``sqlrouter://`` URL, which is case-insensitive,
#: and will be DNS labels for the DNS registry: keep them lowercase.
_SERVICE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DATASOURCE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEARTBEAT_TABLE_RE: Final = re.compile(r"[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}")
_DEFAULTS: Final = Service(name="-", datasources=())


def _parse_document(
    text: str, path: Path, secrets: list[_Secret] | None = None
) -> tuple[Mapping[str, Service], Mapping[str, Any]]:
    """Validate a registry file's text into services and the raw ``[control]`` table.

    Relative ``password_file`` paths are relative to ``path``'s directory, and are read;
    each one read is added to ``secrets``.
    """
    if secrets is None:
        secrets = []
    where = _Where(str(path))
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        if detail.endswith("(at end of document)"):
            # Say where the end is, as tomllib does for every other position.
            line = text.count("\n") + 1
            column = len(text) - (text.rfind("\n") + 1) + 1
            detail = f"{detail[:-1]}: line {line}, column {column})"
        raise where.error("", f"invalid TOML: {detail}") from None
    except ValueError:  # tomllib reads integers with int(): at most 4300 digits
        raise where.error("", "invalid TOML: an integer of over 4300 digits") from None
    where.check_keys("", document, _TOP_KEYS)
    control = where.table("control", document.get("control", {}), "[control]")
    tables = where.table("services", document.get("services", {}), "[services.NAME]")
    services: dict[str, Service] = {}
    for name, table in tables.items():
        services[name] = _parse_service(name, table, path, secrets)
    return MappingProxyType(services), _freeze_table(control)


def _parse_service(name: str, table: object, path: Path, secrets: list[_Secret]) -> Service:
    where = _Where(str(path), service=name)
    if not _SERVICE_NAME_RE.fullmatch(name):
        raise where.error(
            "",
            "invalid service name: use 1-63 lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit (it is the host of a sqlrouter:// URL, "
            "which is case-insensitive)",
        )
    svc = where.table("", table, f"[services.{name}]")
    where.check_keys("", svc, _SERVICE_KEYS)
    max_lag = where.seconds("max_lag", svc.get("max_lag", _DEFAULTS.max_lag), MAX_LAG_RANGE)
    monitor_interval = where.seconds(
        "monitor_interval",
        svc.get("monitor_interval", _DEFAULTS.monitor_interval),
        MONITOR_INTERVAL_RANGE,
    )
    probe_timeout = where.seconds(
        "probe_timeout", svc.get("probe_timeout", _DEFAULTS.probe_timeout), PROBE_TIMEOUT_RANGE
    )
    heartbeat = _parse_heartbeat(where, svc.get("heartbeat", {}))
    folder = path.parent
    monitor = _parse_credentials(where, "monitor", svc.get("monitor"), folder, secrets)
    admin = _parse_credentials(where, "admin", svc.get("admin"), folder, secrets)
    replication = _parse_credentials(where, "replication", svc.get("replication"), folder, secrets)
    datasources = _parse_datasources(where, svc.get("datasources"))
    autofailover = _parse_autofailover(where, svc.get("autofailover", {}))
    if autofailover.enabled and admin is not None:
        # A new leader ends every other session of the admin account on every server
        # (docs/autofailover.md, "Fencing the leaders"): the probes' or replication's.
        for what, other in (("monitor", monitor), ("replication", replication)):
            if other is not None and other.user == admin.user:
                raise where.error(
                    "admin",
                    f"user {admin.user!r} is also the {what} account: with autofailover "
                    "enabled, a new leader ends every session of the admin account on "
                    f"every server (the {what} sessions too); give the automation an "
                    "account of its own",
                )
    return Service(
        name=name,
        datasources=datasources,
        max_lag=max_lag,
        monitor_interval=monitor_interval,
        probe_timeout=probe_timeout,
        heartbeat=heartbeat,
        monitor_credentials=monitor,
        admin_credentials=admin,
        replication_credentials=replication,
        autofailover=autofailover,
        source=str(path),
    )


def _parse_autofailover(where: _Where, value: object) -> AutofailoverSettings:
    header = f"[services.{where.service}.autofailover]"
    table = where.table("autofailover", value, header)
    where.check_keys("autofailover", table, _AUTOFAILOVER_KEYS)
    defaults = AutofailoverSettings()
    enabled = where.boolean("autofailover.enabled", table.get("enabled", False))
    raw = table.get("etcd", [])
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise where.error(
            "autofailover.etcd",
            f"expected a list of 'host:port' strings (etcd's client endpoints), got {_show(raw)}",
        )
    for endpoint in raw:
        match = _ENDPOINT_RE.fullmatch(endpoint)
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise where.error(
                "autofailover.etcd",
                f"expected 'host:port' with a port 1-65535, got {_show(endpoint)}",
            )
    if enabled and not raw:
        raise where.error(
            "autofailover.etcd",
            "automatic failover is enabled but no etcd endpoint is given: "
            "etcd = ['127.0.0.1:2379', ...]",
        )
    low, high = AUTOFAILOVER_ROUNDS_RANGE
    rounds = where.integer("autofailover.rounds", table.get("rounds", defaults.rounds), low, high)
    interval = (
        where.seconds("autofailover.interval", table["interval"], MONITOR_INTERVAL_RANGE)
        if "interval" in table
        else None
    )
    period = where.seconds(
        "autofailover.period", table.get("period", defaults.period), AUTOFAILOVER_PERIOD_RANGE
    )
    low, high = AUTOFAILOVER_LEASE_RANGE
    lease_ttl = where.integer(
        "autofailover.lease_ttl", table.get("lease_ttl", defaults.lease_ttl), low, high
    )
    low, high = AUTOFAILOVER_AGENTS_RANGE
    min_agents = where.integer(
        "autofailover.min_agents", table.get("min_agents", defaults.min_agents), low, high
    )
    backoff_base = where.seconds(
        "autofailover.backoff_base",
        table.get("backoff_base", defaults.backoff_base),
        AUTOFAILOVER_BACKOFF_RANGE,
    )
    backoff_cap = where.seconds(
        "autofailover.backoff_cap",
        table.get("backoff_cap", defaults.backoff_cap),
        AUTOFAILOVER_BACKOFF_RANGE,
    )
    if backoff_base > backoff_cap:

        def shown(key: str) -> str:  # as written (:g rounds 12345.68 to 12345.7)
            if key in table:
                return _show(table[key])
            return f"{getattr(defaults, key):g} (the default)"

        raise where.error(
            "autofailover.backoff_base",
            f"expected a number of seconds at most backoff_cap = {shown('backoff_cap')}, "
            f"got {shown('backoff_base')}",
        )
    return AutofailoverSettings(
        enabled=enabled,
        etcd=tuple(raw),
        rounds=rounds,
        interval=interval,
        period=period,
        lease_ttl=lease_ttl,
        min_agents=min_agents,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
    )


def _parse_heartbeat(where: _Where, value: object) -> HeartbeatSettings:
    table = where.table("heartbeat", value, f"[services.{where.service}.heartbeat]")
    where.check_keys("heartbeat", table, _HEARTBEAT_KEYS)
    enabled = where.boolean("heartbeat.enabled", table.get("enabled", True))
    name = where.string("heartbeat.table", table.get("table", HeartbeatSettings().table))
    if not _HEARTBEAT_TABLE_RE.fullmatch(name):
        raise where.error(
            "heartbeat.table",
            "expected 'schema.table' (each of 1-64 letters, digits, '_' or '$'), "
            f"got {_show(name)}",
        )
    return HeartbeatSettings(enabled=enabled, table=name)


def _parse_credentials(
    where: _Where, key: str, value: object, base: Path, secrets: list[_Secret]
) -> Credentials | None:
    if value is None:
        return None
    table = where.table(key, value, f"[services.{where.service}.{key}]")
    where.check_keys(key, table, _CREDENTIAL_KEYS)
    if "user" not in table:
        raise where.error(f"{key}.user", "missing (a credentials table needs a user)")
    user = where.string(f"{key}.user", table["user"])
    if not user:
        raise where.error(f"{key}.user", "expected a non-empty string, got ''")
    if "password" in table and "password_file" in table:
        raise where.error(key, "give either password or password_file, not both")
    if "password_file" in table:
        password = _read_password_file(
            where, f"{key}.password_file", table["password_file"], base, secrets
        )
    else:
        password = where.string(f"{key}.password", table.get("password", ""), secret=True)
    return Credentials(user=user, password=password)


def _parse_datasources(where: _Where, value: object) -> tuple[DataSource, ...]:
    header = f"[[services.{where.service}.datasources]]"
    if value is None or value == []:
        raise where.error("datasources", f"a service needs at least one datasource ({header})")
    if not isinstance(value, list):
        raise where.error(
            "datasources", f"expected an array of tables ({header}), got {_show(value)}"
        )
    result: list[DataSource] = []
    names: dict[str, int] = {}
    addresses: dict[tuple[str, int], int] = {}
    for index, item in enumerate(value):
        at = f"datasources[{index}]"
        ds = _parse_datasource(where, at, item, header)
        if ds.name in names:
            raise where.error(
                f"{at}.name", f"duplicate name {ds.name!r} (also datasources[{names[ds.name]}])"
            )
        address = (ds.host.lower(), ds.port)
        if address in addresses:
            first = addresses[address]
            raise where.error(
                at,
                f"duplicate address {ds.address} "
                f"(also datasources[{first}] {result[first].name!r})",
            )
        names[ds.name] = index
        addresses[address] = index
        result.append(ds)
    masters = [ds.name for ds in result if ds.role is Role.MASTER]
    if len(masters) > 1:
        raise where.error(
            "datasources",
            f"more than one declared master ({', '.join(masters)}): declare at most one; "
            "the monitor observes which server really is the master",
        )
    return tuple(result)


def _parse_datasource(where: _Where, at: str, item: object, header: str) -> DataSource:
    table = where.table(at, item, header)
    where.check_keys(at, table, _DATASOURCE_KEYS)
    for required in ("name", "host", "port"):
        if required not in table:
            raise where.error(
                f"{at}.{required}", "missing (every datasource needs name, host and port)"
            )
    name = where.string(f"{at}.name", table["name"])
    if not _DATASOURCE_NAME_RE.fullmatch(name):
        raise where.error(
            f"{at}.name",
            "expected 1-64 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit, got {_show(name)}",
        )
    host = where.string(f"{at}.host", table["host"])
    if not host or len(host) > 255 or any(ch.isspace() for ch in host):
        raise where.error(f"{at}.host", f"expected a host name or IP address, got {_show(host)}")
    port = where.integer(f"{at}.port", table["port"], 1, 65535)
    role_name = where.string(f"{at}.role", table.get("role", Role.REPLICA.value))
    try:
        role = Role(role_name)
    except ValueError:
        raise where.error(
            f"{at}.role", f"expected 'master' or 'replica', got {_show(role_name)}"
        ) from None
    weight = where.integer(f"{at}.weight", table.get("weight", 1), 1, WEIGHT_RANGE[1])
    return DataSource(name=name, host=host, port=port, role=role, weight=weight)


# --------------------------------------------------------------------------- the file
