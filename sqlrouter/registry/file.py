"""A registry file: services in TOML, validated, reloaded when the file changes.

The file format, every key, how the file is found and how it is reloaded are described
in ``docs/registry.md``.  In short::

    [services.shop]
    max_lag = 1.0
    [[services.shop.datasources]]
    name = "db1"
    host = "10.0.0.1"
    port = 3306
    role = "master"

Loading validates everything and raises :class:`~sqlrouter.registry.RegistryError`,
whose message names the file, the service and the field (``registry
/etc/sqlrouter.toml: service 'shop': datasources[1].port: expected an integer 1-65535,
got 'abc'``).  A running process re-stats the file at most every 0.5 s
(:meth:`FileRegistry.refresh`) and reloads it when it changed; a broken edit keeps the
last good content and is reported in :attr:`FileRegistry.last_error`, so that it never
breaks running applications.  Writing a file is :mod:`sqlrouter.registry._write`.

Passwords never appear in an error message or a ``repr``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
import tomllib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from .. import _forksafe
from ..topology import (
    AUTOFAILOVER_AGENTS_RANGE,
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
from ._checks import (
    _Fingerprint,
    _fingerprint,
    _read_password_file,
    _Secret,
    _secrets_changed,
    _show,
    _Where,
)
from .base import Registry, RegistryError, _error, _freeze_table

__all__ = [
    "DEFAULT_MAX_KEPT",
    "DEFAULT_REFRESH_INTERVAL",
    "FileRegistry",
    "RegistryCache",
    "get_registry",
    "load_registry_file",
]

logger = logging.getLogger("sqlrouter.registry")

#: Seconds between two looks at the file by :meth:`FileRegistry.refresh`.
DEFAULT_REFRESH_INTERVAL: Final = 0.5


# --------------------------------------------------------------------------- interface


# --------------------------------------------------------------------------- validation


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
    return AutofailoverSettings(
        enabled=enabled,
        etcd=tuple(raw),
        rounds=rounds,
        interval=interval,
        period=period,
        lease_ttl=lease_ttl,
        min_agents=min_agents,
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


@dataclass(frozen=True, slots=True)
class _Content:
    services: Mapping[str, Service]
    control: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _State:
    """What readers see; replaced whole, never changed."""

    content: _Content
    fingerprint: _Fingerprint | None
    last_error: str | None = None
    generation: int = 0
    #: The password files the content was read with (a change reloads the file).
    secrets: tuple[_Secret, ...] = ()


def _load(path: Path, secrets: list[_Secret]) -> tuple[_Content, _Fingerprint]:
    """The file's content and fingerprint; the password files looked at go to ``secrets``
    (those read, and the one that failed, if one did)."""
    try:
        with path.open("rb") as file:
            fingerprint = _fingerprint(os.fstat(file.fileno()))
            data = file.read()
    except OSError as exc:
        raise _error(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(str(path), f"not UTF-8 text (byte {exc.start})") from None
    services, control = _parse_document(text, path, secrets)
    return _Content(services, control), fingerprint


class FileRegistry(Registry):
    """The services of a TOML registry file, reloaded when the file changes.

    The constructor reads the file and raises :class:`RegistryError` if it cannot be
    read or is invalid.  Afterwards :meth:`refresh` re-stats it (at most every
    ``refresh_interval`` seconds of ``clock``) and reloads it when its inode, size or
    mtime changed; a reload that fails keeps the last good content and sets
    :attr:`last_error`.  Readers never block: they read an immutable state that
    :meth:`refresh` replaces whole, under a lock only refreshers take.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        # abspath, not resolve(): a symlink that is re-pointed (deployments) is followed
        # again on every stat.
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._lock = _forksafe.lock()
        secrets: list[_Secret] = []
        content, fingerprint = _load(self._path, secrets)
        self._state = _State(content, fingerprint, secrets=tuple(secrets))
        self._last_check = clock()
        logger.debug("registry %s: loaded services %s", self._path, ", ".join(content.services))

    @property
    def path(self) -> Path:
        """The absolute path of the file."""
        return self._path

    def lookup(self, service_name: str) -> Service:
        services = self._state.content.services
        try:
            return services[service_name]
        except KeyError:
            raise self._unknown_service(service_name, list(services)) from None

    def services(self) -> list[str]:
        return list(self._state.content.services)

    def describe(self) -> str:
        return f"file {self._path}"

    @property
    def control(self) -> Mapping[str, Any]:
        return self._state.content.control

    @property
    def last_error(self) -> str | None:
        return self._state.last_error

    @property
    def generation(self) -> int:
        """Incremented each time a reload changes the services or ``[control]``."""
        return self._state.generation

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the file if it changed; ``True`` when the services or ``[control]`` changed.

        Cheap enough to call on every ``connect()``: within ``refresh_interval`` of
        the last look it returns at once, and otherwise it costs one ``stat`` unless
        the file changed.  It never raises for a missing or broken file: the last
        good content stays, :attr:`last_error` says why, and a warning is logged once.
        ``force=True`` looks now, waiting for a refresh under way in another thread.
        """
        if not force and self._clock() - self._last_check < self._refresh_interval:
            return False
        if not self._lock.acquire(blocking=force):
            return False  # another thread is looking at the file right now
        try:
            self._last_check = self._clock()
            return self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> bool:
        state = self._state
        try:
            fingerprint: _Fingerprint | None = _fingerprint(os.stat(self._path))
        except OSError as exc:
            self._failed(state, f"registry {self._path}: cannot read the file: {exc.strerror}")
            return False
        # A rotated password (a password file changed, the registry not) is read too.
        if fingerprint == state.fingerprint and not _secrets_changed(state.secrets):
            return False
        secrets: list[_Secret] = []
        try:
            content, fingerprint = _load(self._path, secrets)
        except RegistryError as exc:
            # Tried again when the file, or a password file it names, changes once more.
            self._failed(state, str(exc.args[1]), fingerprint, tuple(secrets))
            return False
        changed = content != state.content
        if state.last_error is not None:
            logger.info("registry %s: the file is valid again", self._path)
        if changed:
            logger.info(
                "registry %s: reloaded, services %s", self._path, ", ".join(content.services)
            )
        self._state = _State(
            content if changed else state.content,
            fingerprint,
            None,
            state.generation + 1 if changed else state.generation,
            tuple(secrets),
        )
        return changed

    def _failed(
        self,
        state: _State,
        error: str,
        fingerprint: _Fingerprint | None = None,
        secrets: tuple[_Secret, ...] | None = None,
    ) -> None:
        if error != state.last_error:
            logger.warning("%s; keeping the services loaded before", error)
        self._state = _State(
            state.content,
            fingerprint,
            error,
            state.generation,
            state.secrets if secrets is None else secrets,
        )

    def __repr__(self) -> str:
        state = self._state
        services = ", ".join(state.content.services) or "none"
        health = "ok" if state.last_error is None else f"stale: {state.last_error}"
        return f"<FileRegistry {self._path} [services: {services} | {health}]>"


def load_registry_file(
    path: str | os.PathLike[str],
    *,
    clock: Callable[[], float] = time.monotonic,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
) -> FileRegistry:
    """Read and validate a registry file; :class:`RegistryError` says what is wrong."""
    return FileRegistry(path, clock=clock, refresh_interval=refresh_interval)


#: Registry files kept loaded by :class:`RegistryCache` when nothing else uses them.
DEFAULT_MAX_KEPT: Final = 64


class RegistryCache:
    """One :class:`FileRegistry` per absolute path, shared by every ``connect()``.

    Bounded: it holds the ``max_kept`` registries used last; older ones stay shared only
    while something else (a service's monitor) still holds them, and are freed after.
    So a registry in use is never loaded twice, and a process that names many files
    keeps only those it uses.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        max_kept: int = DEFAULT_MAX_KEPT,
    ) -> None:
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._max_kept = max_kept
        self._lock = _forksafe.lock()
        self._registries: weakref.WeakValueDictionary[str, FileRegistry] = (
            weakref.WeakValueDictionary()
        )
        #: The ones used last (strong references), the most recent last.
        self._kept: collections.OrderedDict[str, FileRegistry] = collections.OrderedDict()

    def get(self, path: str | os.PathLike[str]) -> FileRegistry:
        """The registry of ``path``, loaded on first use and refreshed (throttled) after.

        A file that cannot be loaded the first time raises :class:`RegistryError` and
        is not cached, so the next call tries again.
        """
        key = os.path.abspath(os.fspath(path))
        with self._lock:
            registry = self._registries.get(key)
            loaded = registry is None
            if registry is None:
                # Loaded under the lock so that concurrent first connects share one parse.
                registry = FileRegistry(
                    key, clock=self._clock, refresh_interval=self._refresh_interval
                )
                self._registries[key] = registry
            self._kept[key] = registry
            self._kept.move_to_end(key)
            while len(self._kept) > self._max_kept:
                self._kept.popitem(last=False)
        if not loaded:
            registry.refresh()
        return registry

    def clear(self) -> None:
        """Forget every registry (the next :meth:`get` reads the file again)."""
        with self._lock:
            self._registries.clear()
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._registries)

    def __repr__(self) -> str:
        return f"<RegistryCache [{', '.join(self._registries) or 'empty'}]>"


_CACHE: Final = RegistryCache()


def get_registry(path: str | os.PathLike[str]) -> FileRegistry:
    """The process-wide shared registry of ``path`` (see :meth:`RegistryCache.get`)."""
    return _CACHE.get(path)


# --------------------------------------------------------------------------- finding it


# --------------------------------------------------------------------------- writing
