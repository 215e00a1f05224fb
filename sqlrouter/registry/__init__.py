"""The service registry: which services exist, and what each is made of.

A registry maps a service name (the host part of a ``sqlrouter://`` URL) to a
:class:`~sqlrouter.topology.Service`.  :class:`Registry` is the interface
(:mod:`.base`); the implementations are a TOML file (:mod:`.file`, written by
:mod:`._write`), DNS SRV records (:mod:`.dns`), lists of registries (:mod:`.chain`)
and services given in code (:class:`StaticRegistry`).  :func:`find_registry`
(:mod:`.find`) turns a ``registry=`` spec into the shared registry it names.
"""

from __future__ import annotations

from ._write import (
    render_registry,
    write_registry_file,
)
from .base import (
    ER_REGISTRY,
    Registry,
    RegistryError,
    RegistryNotSupported,
    ServiceNotFound,
    StaticRegistry,
)
from .chain import (
    ChainRegistry,
)
from .dns import (
    DEFAULT_MAX_RETRY,
    DEFAULT_MIN_TTL,
    SECRETS_CHECK_INTERVAL,
    DnsRegistry,
)
from .file import (
    DEFAULT_MAX_KEPT,
    DEFAULT_REFRESH_INTERVAL,
    FileRegistry,
    RegistryCache,
    get_registry,
    load_registry_file,
)
from .find import (
    DEFAULT_FILENAME,
    ENV_VAR,
    MAX_SHARED,
    RegistrySpec,
    close_dns_registries,
    find_registry,
    get_chain_registry,
    get_dns_registry,
    parse_registry_spec,
    resolve_registry_path,
)

__all__ = [
    "DEFAULT_FILENAME",
    "DEFAULT_MAX_KEPT",
    "DEFAULT_MAX_RETRY",
    "DEFAULT_MIN_TTL",
    "DEFAULT_REFRESH_INTERVAL",
    "ENV_VAR",
    "ER_REGISTRY",
    "MAX_SHARED",
    "SECRETS_CHECK_INTERVAL",
    "ChainRegistry",
    "DnsRegistry",
    "FileRegistry",
    "Registry",
    "RegistryCache",
    "RegistryError",
    "RegistryNotSupported",
    "RegistrySpec",
    "ServiceNotFound",
    "StaticRegistry",
    "close_dns_registries",
    "find_registry",
    "get_chain_registry",
    "get_dns_registry",
    "get_registry",
    "load_registry_file",
    "parse_registry_spec",
    "render_registry",
    "resolve_registry_path",
    "write_registry_file",
]
