"""The service registry: which services exist, and what each is made of.

A registry maps a service name (the host part of a ``sqlrouter://`` URL) to a
:class:`~sqlrouter.topology.Service`.  :class:`Registry` is the interface; this module
implements it for a TOML file (:class:`FileRegistry`) and for services given in code
(:class:`StaticRegistry`); :mod:`sqlrouter.dns_registry` implements it for DNS SRV records
(``dns:DOMAIN``) and for lists of registries (``file:PATH,dns:DOMAIN``).

The file format, every key, how the file is found and how it is reloaded are described
in ``docs/registry.md``.  In short::

    [services.shop]
    max_lag = 1.0
    [[services.shop.datasources]]
    name = "db1"
    host = "10.0.0.1"
    port = 3306
    role = "master"

Loading validates everything and raises :class:`RegistryError`, whose message names the
file, the service and the field (``registry /etc/sqlrouter.toml: service 'shop':
datasources[1].port: expected an integer 1-65535, got 'abc'``).  A running process
re-stats the file at most every 0.5 s (:meth:`FileRegistry.refresh`) and reloads it
when it changed; a broken edit keeps the last good content and is reported in
:attr:`FileRegistry.last_error`, so that it never breaks running applications.

Passwords never appear in an error message or a ``repr``.
"""

from __future__ import annotations

import abc
import collections
import datetime as dt
import difflib
import logging
import math
import os
import re
import stat as stat_mode
import tempfile
import time
import tomllib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from .. import _forksafe
from ..errors import NotSupportedError, ProgrammingError
from ..topology import (
    MAX_LAG_RANGE,
    MONITOR_INTERVAL_RANGE,
    PROBE_TIMEOUT_RANGE,
    WEIGHT_RANGE,
    Credentials,
    DataSource,
    HeartbeatSettings,
    Role,
    Service,
    range_text,
)

__all__ = [
    "DEFAULT_FILENAME",
    "DEFAULT_MAX_KEPT",
    "DEFAULT_REFRESH_INTERVAL",
    "ENV_VAR",
    "ER_REGISTRY",
    "FileRegistry",
    "Registry",
    "RegistryCache",
    "RegistryError",
    "RegistryNotSupported",
    "RegistrySpec",
    "ServiceNotFound",
    "StaticRegistry",
    "find_registry",
    "get_registry",
    "load_registry_file",
    "parse_registry_spec",
    "render_registry",
    "resolve_registry_path",
    "write_registry_file",
]

logger = logging.getLogger("sqlrouter.registry")

#: Client-side error number of :class:`RegistryError` (see :mod:`sqlrouter.errors`).
ER_REGISTRY: Final = 3910
#: The environment variable naming the registry when the URL has no ``registry=``.
ENV_VAR: Final = "SQLROUTER_REGISTRY"
#: The file looked for in the current directory when nothing else names a registry.
DEFAULT_FILENAME: Final = "sqlrouter.toml"
#: Seconds between two looks at the file by :meth:`FileRegistry.refresh`.
DEFAULT_REFRESH_INTERVAL: Final = 0.5

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class RegistryError(ProgrammingError):
    """A registry could not be found or read, is invalid, or lacks a service.

    ``args`` is ``(ER_REGISTRY, message)``; the message names the registry (a file
    path), the service and the field.  ``path``, ``service`` and ``field`` hold the
    same, or ``""`` where they do not apply.
    """

    __module__ = "sqlrouter"

    def __init__(
        self, errno: int, message: str, *, path: str = "", service: str = "", field: str = ""
    ) -> None:
        super().__init__(errno, message)
        self.path = path
        self.service = service
        self.field = field


class RegistryNotSupported(RegistryError, NotSupportedError):
    """The registry names a kind of registry that cannot be used where it is given."""

    __module__ = "sqlrouter"


class ServiceNotFound(RegistryError):
    """The registry works, and does not define the service asked for.

    A list of registries (``file:PATH,dns:DOMAIN``) asks the next one only after this
    error; any other :class:`RegistryError` stops the search.
    """

    __module__ = "sqlrouter"


def _error(path: str, detail: str, *, service: str = "", field: str = "") -> RegistryError:
    parts = [f"registry {path}"]
    if service:
        parts.append(f"service {service!r}")
    if field:
        parts.append(field)
    parts.append(detail)
    return RegistryError(ER_REGISTRY, ": ".join(parts), path=path, service=service, field=field)


# --------------------------------------------------------------------------- interface


class Registry(abc.ABC):
    """Where services come from.

    An abstract base rather than a Protocol so that every registry shares the
    defaults below and the same "no such service" message.  Implementations hand out
    immutable values only, and are safe to use from several threads.
    """

    @abc.abstractmethod
    def lookup(self, service_name: str) -> Service:
        """The service called ``service_name``; :class:`RegistryError` if there is none."""

    @abc.abstractmethod
    def services(self) -> list[str]:
        """The names of the services this registry knows, in the order it defines them."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the services come from, for messages: ``file /etc/sqlrouter.toml``."""

    @property
    def control(self) -> Mapping[str, Any]:
        """The process-wide ``[control]`` settings, read-only and uninterpreted."""
        return _EMPTY

    @property
    def last_error(self) -> str | None:
        """Why the last reload failed (the last good content is still served), or ``None``."""
        return None

    def refresh(self, *, force: bool = False) -> bool:
        """Look for changes at the source; ``True`` when what it serves changed."""
        del force
        return False

    def _unknown_service(self, name: str, known: Sequence[str]) -> ServiceNotFound:
        where = self.describe()
        if not known:
            detail = "the registry defines no services"
        else:
            ranked = difflib.get_close_matches(name, known, n=len(known), cutoff=0.0)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            detail = f"{hint}known services: {', '.join(ranked)}"
        return ServiceNotFound(
            ER_REGISTRY, f"registry {where}: no service {name!r} ({detail})", service=name
        )


class StaticRegistry(Registry):
    """Services given in code, for tests and for applications that build their own."""

    def __init__(
        self,
        services: Iterable[Service],
        *,
        control: Mapping[str, Any] | None = None,
        source: str = "<code>",
    ) -> None:
        by_name: dict[str, Service] = {}
        for service in services:
            if service.name in by_name:
                raise ValueError(f"service {service.name!r} is given twice")
            by_name[service.name] = service
        self._services: Mapping[str, Service] = MappingProxyType(by_name)
        self._control = _freeze_table(control or {})
        self._source = source

    def lookup(self, service_name: str) -> Service:
        try:
            return self._services[service_name]
        except KeyError:
            raise self._unknown_service(service_name, list(self._services)) from None

    def services(self) -> list[str]:
        return list(self._services)

    def describe(self) -> str:
        return self._source

    @property
    def control(self) -> Mapping[str, Any]:
        return self._control

    def __repr__(self) -> str:
        return f"<StaticRegistry {self._source} [services: {', '.join(self._services)}]>"


# --------------------------------------------------------------------------- validation

#: What identifies one version of a file: device, inode, mtime_ns, size.  An atomic
#: replace (rename) changes the inode even when the mtime does not move.
_Fingerprint = tuple[int, int, int, int]
#: A password file read: its absolute path, and its fingerprint then, with its mode (a
#: chmod matters: a file others may write is refused).
_Secret = tuple[str, tuple[int, ...]]
#: The largest password file read (bytes): a password, not a document.
MAX_PASSWORD_FILE: Final = 4096


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _secret_print(st: os.stat_result) -> tuple[int, ...]:
    return (*_fingerprint(st), st.st_mode)


def _secret_print_of(path: str) -> tuple[int, ...]:
    try:
        return _secret_print(os.stat(path))
    except OSError:
        return ()  # cannot be looked at


def _secrets_changed(secrets: Iterable[_Secret]) -> bool:
    """Whether a password file looked at before has changed since: one ``stat`` each."""
    return any(_secret_print_of(path) != fingerprint for path, fingerprint in secrets)


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
)
_HEARTBEAT_KEYS: Final = ("enabled", "table")
_CREDENTIAL_KEYS: Final = ("user", "password", "password_file")
_DATASOURCE_KEYS: Final = ("name", "host", "port", "role", "weight")

#: Service names are the host of a ``sqlrouter://`` URL, which is case-insensitive,
#: and will be DNS labels for the DNS registry: keep them lowercase.
_SERVICE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DATASOURCE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEARTBEAT_TABLE_RE: Final = re.compile(r"[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}")
_DEFAULTS: Final = Service(name="-", datasources=())


def _show(value: object) -> str:
    """A value as a message shows it: short, in TOML words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _unknown_keys(table: Mapping[str, Any], known: Sequence[str]) -> str | None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"unknown key {key!r} ({hint}known keys: {', '.join(known)})"
    return None


@dataclass(frozen=True, slots=True)
class _Where:
    """The part of the file being validated, to build error messages."""

    path: str
    service: str = ""

    def error(self, field: str, detail: str) -> RegistryError:
        return _error(self.path, detail, service=self.service, field=field)

    def describe(self, field: str) -> str:
        """``registry PATH: service 'NAME': FIELD``, as errors start."""
        parts = [f"registry {self.path}"]
        if self.service:
            parts.append(f"service {self.service!r}")
        if field:
            parts.append(field)
        return ": ".join(parts)

    def check_keys(self, field: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
        problem = _unknown_keys(table, known)
        if problem is not None:
            raise self.error(field, problem)

    def table(self, field: str, value: object, header: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"expected a table ({header}), got {_show(value)}")
        return value

    def string(self, field: str, value: object, *, secret: bool = False) -> str:
        if not isinstance(value, str):
            if secret:
                raise self.error(field, "expected a string")
            raise self.error(field, f"expected a string, got {_show(value)}")
        return value

    def boolean(self, field: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(field, f"expected true or false, got {_show(value)}")
        return value

    def integer(self, field: str, value: object, low: int, high: int | None = None) -> int:
        expected = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        return value

    def seconds(self, field: str, value: object, bounds: tuple[float, float]) -> float:
        low, high = bounds
        expected = f"a number of seconds {range_text(bounds)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not low <= number <= high:  # NaN fails too
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        return number


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
        source=str(path),
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


def _read_password_file(
    where: _Where, field: str, value: object, base: Path, secrets: list[_Secret]
) -> str:
    """The password in the file ``value`` names (relative to ``base``); noted in ``secrets``.

    Only a regular file of at most :data:`MAX_PASSWORD_FILE` bytes that group and others
    cannot write is read (a FIFO, a device such as ``/dev/zero`` or a directory is
    refused without being opened); one that they can read is read with a warning.
    """
    name = where.string(field, value)
    if not name:
        raise where.error(field, "expected a file path, got ''")
    file = Path(os.path.abspath(base / Path(name).expanduser()))
    # Noted before anything can fail, so that a fix of this file is noticed as a change.
    secrets.append((str(file), _secret_print_of(str(file))))
    try:
        st = os.stat(file)
        if not stat_mode.S_ISREG(st.st_mode):
            raise where.error(
                field,
                f"{file} is not a regular file: a password file must be one (a FIFO, a "
                "device or a directory is refused)",
            )
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise where.error(field, f"cannot read {file}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # what was opened: the path may have changed since the stat
        mode = stat_mode.S_IMODE(st.st_mode)
        if not stat_mode.S_ISREG(st.st_mode):
            raise where.error(field, f"{file} is not a regular file: a password file must be one")
        if mode & 0o022:
            raise where.error(
                field,
                f"{file} has mode {mode:04o}: a password file must not be writable by group "
                f"or others (chmod 600 {file})",
            )
        if st.st_size > MAX_PASSWORD_FILE:
            raise where.error(
                field,
                f"{file} holds {st.st_size} bytes: a password file holds at most "
                f"{MAX_PASSWORD_FILE}",
            )
        try:
            data = os.read(fd, MAX_PASSWORD_FILE + 1)
        except OSError as exc:
            raise where.error(field, f"cannot read {file}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD_FILE:  # it grew after the fstat
        raise where.error(
            field, f"{file} holds over {MAX_PASSWORD_FILE} bytes: a password file holds less"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise where.error(field, f"{file} is not UTF-8 text") from None
    if mode & 0o044:
        logger.warning(
            "%s: %s has mode %04o: other users can read this password; chmod 600 %s",
            where.describe(field),
            file,
            mode,
            file,
        )
    secrets[-1] = (str(file), _secret_print(st))  # what was read
    # Editors and `echo` end the file with a newline that is not part of the password.
    return text.rstrip("\r\n")


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


def _freeze(value: object) -> object:
    if isinstance(value, Mapping):
        return _freeze_table(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _freeze_table(table: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({key: _freeze(item) for key, item in table.items()})


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


@dataclass(frozen=True, slots=True)
class RegistrySpec:
    """One entry of a ``registry=`` list: ``file:PATH`` or ``dns:DOMAIN``."""

    kind: Literal["file", "dns"]
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


_ENTRY_SPLIT_RE: Final = re.compile(r",(?=\s*(?:file|dns):)", re.IGNORECASE)
_KIND_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def parse_registry_spec(spec: str, *, origin: str = "registry=") -> tuple[RegistrySpec, ...]:
    """Parse ``PATH``, ``file:PATH``, ``dns:DOMAIN`` or a comma-separated list of these.

    A comma only separates entries when ``file:`` or ``dns:`` follows it, so a bare
    path may hold commas.  ``origin`` names where the text came from, for messages.
    """
    if not spec.strip():
        raise RegistryError(ER_REGISTRY, f"{origin} is empty: give a registry file path")
    entries: list[RegistrySpec] = []
    for raw in _ENTRY_SPLIT_RE.split(spec):
        part = raw.strip()
        match = _KIND_RE.match(part)
        if match is None:
            kind, value = "file", part
        else:
            kind, value = match.group(1).lower(), part[match.end() :].strip()
        if kind == "file":
            if value.startswith("///"):
                value = value[2:]  # file:///abs/path
            elif value.startswith("//"):
                raise RegistryError(
                    ER_REGISTRY,
                    f"{origin}{spec}: {part!r}: a file: URL with a host is not supported; "
                    "write file:/absolute/path or file:relative/path",
                )
            if not value:
                raise RegistryError(ER_REGISTRY, f"{origin}{spec}: {part!r} has no path")
            entries.append(RegistrySpec("file", value))
        elif kind == "dns":
            if not value:
                raise RegistryError(ER_REGISTRY, f"{origin}{spec}: {part!r} has no domain")
            entries.append(RegistrySpec("dns", value))
        else:
            raise RegistryError(
                ER_REGISTRY,
                f"{origin}{spec}: unknown registry kind {kind!r}: "
                "expected a path, file:PATH or dns:DOMAIN",
            )
    return tuple(entries)


def _file_of(spec: str, origin: str) -> str:
    entries = parse_registry_spec(spec, origin=origin)
    dns = [entry for entry in entries if entry.kind == "dns"]
    if dns:
        raise RegistryNotSupported(
            ER_REGISTRY,
            f"{origin}{spec}: {dns[0]} is a DNS registry, which has no file path; "
            "find_registry() reads DNS registries and lists of registries",
        )
    if len(entries) > 1:
        raise RegistryError(
            ER_REGISTRY,
            f"{origin}{spec}: more than one registry file; only one is supported",
        )
    return entries[0].value


def _why_not_a_file(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "not found"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not stat_mode.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def resolve_registry_path(
    explicit: str | None,
    *,
    environ: Mapping[str, str] = os.environ,
    cwd: str | os.PathLike[str] | None = None,
    given_as: str = "registry=",
) -> Path:
    """The absolute path of the registry file to use.

    The first of these that is given decides, relative paths are relative to ``cwd``
    (default: the current directory), and ``~`` is expanded:

    1. ``explicit``: the URL's ``registry=`` (``PATH`` or ``file:PATH``);
    2. ``$SQLROUTER_REGISTRY`` (same forms; an empty value counts as not set);
    3. ``./sqlrouter.toml``.

    :class:`RegistryError` says every place it looked when the chosen file does not
    exist; :class:`RegistryNotSupported` when a ``dns:`` registry is named (it has no
    path: :func:`find_registry` reads it).  ``given_as`` names ``explicit`` in messages
    (``"--registry "`` for a command-line option).
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    label = given_as.strip()

    def absolute(text: str) -> Path:
        return Path(os.path.abspath(base / Path(text).expanduser()))

    if explicit is not None:
        path = absolute(_file_of(explicit, given_as))
        why = _why_not_a_file(path)
        if why is None:
            return path
        raise RegistryError(
            ER_REGISTRY,
            f"no registry file: looked at {given_as}{explicit} = {path} ({why}); "
            f"${ENV_VAR} and ./{DEFAULT_FILENAME} are only used when {label} is not given",
        )
    looked = f"looked at {label} (not given)"
    env = environ.get(ENV_VAR, "")
    if env.strip():
        path = absolute(_file_of(env, f"${ENV_VAR}="))
        why = _why_not_a_file(path)
        if why is None:
            return path
        raise RegistryError(
            ER_REGISTRY,
            f"no registry file: {looked}, ${ENV_VAR}={env} = {path} ({why}); "
            f"./{DEFAULT_FILENAME} is only used when ${ENV_VAR} is not set",
        )
    state = "not set" if ENV_VAR not in environ else "empty"
    path = absolute(DEFAULT_FILENAME)
    why = _why_not_a_file(path)
    if why is None:
        return path
    raise RegistryError(
        ER_REGISTRY,
        f"no registry file: {looked}, ${ENV_VAR} ({state}), ./{DEFAULT_FILENAME} = {path} ({why})",
    )


def find_registry(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    cwd: str | os.PathLike[str] | None = None,
    given_as: str = "registry=",
) -> Registry:
    """The shared registry named by ``registry=``, the environment or the directory.

    What ``connect()`` calls.  One file: :func:`resolve_registry_path` then
    :func:`get_registry`.  A ``dns:`` entry or a list (``file:PATH,dns:DOMAIN``): the
    shared :class:`~sqlrouter.dns_registry.DnsRegistry` of each ``dns:`` entry and the
    shared :class:`FileRegistry` of each file (which must exist), in a shared
    :class:`~sqlrouter.dns_registry.ChainRegistry` when there are several.  The same
    text gives the same registry object, so that every ``connect()`` to a service
    shares one monitor.  ``given_as`` names ``explicit`` in messages.
    """
    text, origin = explicit, given_as
    if text is None:
        env = environ.get(ENV_VAR, "")
        text, origin = (env, f"${ENV_VAR}=") if env.strip() else (None, "")
    if text is None:
        return get_registry(
            resolve_registry_path(explicit, environ=environ, cwd=cwd, given_as=given_as)
        )
    entries = parse_registry_spec(text, origin=origin)
    if len(entries) == 1 and entries[0].kind == "file":
        return get_registry(
            resolve_registry_path(explicit, environ=environ, cwd=cwd, given_as=given_as)
        )
    # dns_registry builds on this module: imported here, when a DNS registry is named.
    from . import dns as dns_registry  # noqa: PLC0415 - a module-level import would be circular

    base = Path(cwd) if cwd is not None else Path.cwd()
    members: list[Registry] = []
    for entry in entries:
        if entry.kind == "dns":
            members.append(
                dns_registry.get_dns_registry(entry.value, origin=f"{origin}{text}", base=base)
            )
            continue
        path = Path(os.path.abspath(base / Path(entry.value).expanduser()))
        why = _why_not_a_file(path)
        if why is not None:
            raise RegistryError(
                ER_REGISTRY, f"no registry file: {origin}{text}: {entry} = {path} ({why})"
            )
        members.append(get_registry(path))
    return members[0] if len(members) == 1 else dns_registry.get_chain_registry(members)


# --------------------------------------------------------------------------- writing

_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write a {type(value).__name__} to a registry file")


def _render_table(header: str, table: Mapping[str, Any], lines: list[str]) -> None:
    lines.append(f"[{header}]")
    subtables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines.append("")
        _render_table(f"{header}.{_toml_key(key)}", value, lines)


def _render_credentials(header: str, credentials: Credentials, lines: list[str]) -> None:
    lines.append("")
    lines.append(f"[{header}]")
    lines.append(f"user = {_toml_string(credentials.user)}")
    lines.append(f"password = {_toml_string(credentials.password)}")


def render_registry(
    services: Iterable[Service], *, control: Mapping[str, Any] | None = None
) -> str:
    """The text of a registry file describing ``services`` (passwords included)."""
    lines = [
        "# sqlrouter registry: the services this process may connect to.",
        "# The format is described in sqlrouter's docs/registry.md.",
    ]
    if control is not None:
        lines.append("")
        _render_table("control", control, lines)
    seen: set[str] = set()
    for service in services:
        if service.name in seen:
            raise ValueError(f"service {service.name!r} is given twice")
        seen.add(service.name)
        prefix = f"services.{_toml_key(service.name)}"
        lines += [
            "",
            f"[{prefix}]",
            f"max_lag = {_toml_value(float(service.max_lag))}",
            f"monitor_interval = {_toml_value(float(service.monitor_interval))}",
            f"probe_timeout = {_toml_value(float(service.probe_timeout))}",
            "",
            f"[{prefix}.heartbeat]",
            f"enabled = {_toml_value(service.heartbeat.enabled)}",
            f"table = {_toml_string(service.heartbeat.table)}",
        ]
        if service.monitor_credentials is not None:
            _render_credentials(f"{prefix}.monitor", service.monitor_credentials, lines)
        if service.admin_credentials is not None:
            _render_credentials(f"{prefix}.admin", service.admin_credentials, lines)
        if service.replication_credentials is not None:
            _render_credentials(f"{prefix}.replication", service.replication_credentials, lines)
        for ds in service.datasources:
            lines += [
                "",
                f"[[{prefix}.datasources]]",
                f"name = {_toml_string(ds.name)}",
                f"host = {_toml_string(ds.host)}",
                f"port = {ds.port}",
                f"role = {_toml_string(ds.role.value)}",
                f"weight = {ds.weight}",
            ]
    return "\n".join(lines) + "\n"


def write_registry_file(
    path: str | os.PathLike[str],
    services: Iterable[Service],
    *,
    control: Mapping[str, Any] | None = None,
) -> Path:
    """Write a registry file for ``services``; returns its absolute path.

    The text is validated as :func:`load_registry_file` would before anything is
    written (:class:`RegistryError` if a service is invalid).  The file is created
    with mode 0600, since it holds passwords, and replaces any previous file
    atomically, so that a process reloading it never reads half a file.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    text = render_registry(services, control=control)
    _parse_document(text, target)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
