"""A list of registries (``registry=file:PATH,dns:DOMAIN``): the first that knows a
service serves it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..topology import (
    Service,
)
from .base import ER_REGISTRY, Registry, ServiceNotFound

__all__ = [
    "ChainRegistry",
]


class ChainRegistry(Registry):
    """A list of registries: the first one that knows a service serves it.

    Only :class:`ServiceNotFound` moves on to the next registry.  Any other error (a
    DNS server that does not answer the first lookup) stops the search: which
    registry serves a service never depends on which one is reachable.
    """

    def __init__(self, registries: Sequence[Registry]) -> None:
        if not registries:
            raise ValueError("a list of registries needs at least one registry")
        self._registries = tuple(registries)

    @property
    def registries(self) -> tuple[Registry, ...]:
        return self._registries

    def lookup(self, service_name: str) -> Service:
        misses: list[str] = []
        for registry in self._registries:
            try:
                return registry.lookup(service_name)
            except ServiceNotFound as exc:
                misses.append(str(exc.args[1]))
        raise ServiceNotFound(
            ER_REGISTRY,
            f"no registry of {self.describe()} defines service {service_name!r}: "
            + "; ".join(misses),
            service=service_name,
        )

    def services(self) -> list[str]:
        names: dict[str, None] = {}
        for registry in self._registries:
            names.update(dict.fromkeys(registry.services()))
        return list(names)

    def describe(self) -> str:
        return ", then ".join(registry.describe() for registry in self._registries)

    @property
    def control(self) -> Mapping[str, Any]:
        """The ``[control]`` table of the first registry that has one."""
        for registry in self._registries:
            if registry.control:
                return registry.control
        return MappingProxyType({})

    @property
    def last_error(self) -> str | None:
        errors = [e for e in (registry.last_error for registry in self._registries) if e]
        return "; ".join(errors) if errors else None

    def refresh(self, *, force: bool = False) -> bool:
        changed = [registry.refresh(force=force) for registry in self._registries]
        return any(changed)

    def __repr__(self) -> str:
        return f"<ChainRegistry {self.describe()}>"
