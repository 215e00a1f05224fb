"""The registry interface, its errors, and services given in code.

A registry maps a service name (the host part of a ``sqlrouter://`` URL) to a
:class:`~sqlrouter.topology.Service`.  :class:`Registry` is the interface; it is
implemented for a TOML file (:mod:`sqlrouter.registry.file`), DNS SRV records
(:mod:`sqlrouter.registry.dns`), lists of registries (:mod:`sqlrouter.registry.chain`)
and services given in code (:class:`StaticRegistry`, here).
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from ..errors import NotSupportedError, ProgrammingError
from ..topology import (
    Service,
)

__all__ = [
    "ER_REGISTRY",
    "Registry",
    "RegistryError",
    "RegistryNotSupported",
    "ServiceNotFound",
    "StaticRegistry",
]


#: Client-side error number of :class:`RegistryError` (see :mod:`sqlrouter.errors`).
ER_REGISTRY: Final = 3910


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


def _freeze(value: object) -> object:
    if isinstance(value, Mapping):
        return _freeze_table(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _freeze_table(table: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({key: _freeze(item) for key, item in table.items()})
