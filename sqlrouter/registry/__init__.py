"""The service registry: which services exist, and what each is made of."""

from __future__ import annotations

from .file import (
    DEFAULT_FILENAME,
    DEFAULT_MAX_KEPT,
    DEFAULT_REFRESH_INTERVAL,
    ENV_VAR,
    ER_REGISTRY,
    FileRegistry,
    Registry,
    RegistryCache,
    RegistryError,
    RegistryNotSupported,
    RegistrySpec,
    ServiceNotFound,
    StaticRegistry,
    find_registry,
    get_registry,
    load_registry_file,
    parse_registry_spec,
    render_registry,
    resolve_registry_path,
    write_registry_file,
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
