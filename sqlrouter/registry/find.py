"""Which registry a ``registry=`` spec names, and the registries a process shares.

``registry=`` (or ``$SQLROUTER_REGISTRY``, or ``./sqlrouter.toml``) is a file path,
``file:PATH``, ``dns:DOMAIN``, or a list of these (:func:`parse_registry_spec`).
:func:`find_registry` hands out one shared registry per spec: the same text gives the
same registry object, so that every ``connect()`` to a service shares one monitor.
Shared DNS registries and lists are bounded (:data:`MAX_SHARED`) and closed by
:func:`close_dns_registries` (``sqlrouter.shutdown()``).
"""

from __future__ import annotations

import logging
import os
import re
import stat as stat_mode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from .. import _forksafe
from ._dnsspec import CREDENTIAL_ROLES, parse_dns_spec
from .base import ER_REGISTRY, Registry, RegistryError, RegistryNotSupported
from .chain import ChainRegistry
from .dns import DnsRegistry
from .file import get_registry

__all__ = [
    "DEFAULT_FILENAME",
    "ENV_VAR",
    "MAX_SHARED",
    "RegistrySpec",
    "close_dns_registries",
    "find_registry",
    "get_chain_registry",
    "get_dns_registry",
    "parse_registry_spec",
    "resolve_registry_path",
]

logger = logging.getLogger("sqlrouter.registry")


#: The environment variable naming the registry when the URL has no ``registry=``.
ENV_VAR: Final = "SQLROUTER_REGISTRY"


#: The file looked for in the current directory when nothing else names a registry.
DEFAULT_FILENAME: Final = "sqlrouter.toml"


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
    shared :class:`~sqlrouter.registry.dns.DnsRegistry` of each ``dns:`` entry and the
    shared :class:`FileRegistry` of each file (which must exist), in a shared
    :class:`~sqlrouter.registry.chain.ChainRegistry` when there are several.  The same
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
    base = Path(cwd) if cwd is not None else Path.cwd()
    members: list[Registry] = []
    for entry in entries:
        if entry.kind == "dns":
            members.append(get_dns_registry(entry.value, origin=f"{origin}{text}", base=base))
            continue
        path = Path(os.path.abspath(base / Path(entry.value).expanduser()))
        why = _why_not_a_file(path)
        if why is not None:
            raise RegistryError(
                ER_REGISTRY, f"no registry file: {origin}{text}: {entry} = {path} ({why})"
            )
        members.append(get_registry(path))
    return members[0] if len(members) == 1 else get_chain_registry(members)


_cache_lock = _forksafe.lock()
_dns_registries: dict[str, DnsRegistry] = {}


_chains: dict[tuple[int, ...], ChainRegistry] = {}


#: The most DNS registries (and lists of registries) one process shares.  Each DNS
#: registry has a thread, and may be in use by a monitor: none is ever dropped before
#: ``sqlrouter.shutdown()``, so past this number new ones are refused.
MAX_SHARED: Final = 32


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's refresh threads: each registry starts
    one of its own at its next resolution (until then, callers re-resolve)."""
    for registry in list(_dns_registries.values()):
        registry._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_dns_registry(
    value: str, *, origin: str = "", base: str | os.PathLike[str] | None = None
) -> DnsRegistry:
    """The process-wide :class:`DnsRegistry` of ``value`` (what follows ``dns:``).

    One registry (one background thread) per spec, password files made absolute
    against ``base`` (default: the current directory).  ``origin`` (``registry=...``)
    starts error messages.
    """
    folder = Path(base) if base is not None else Path.cwd()
    try:
        spec = parse_dns_spec(value)
    except ValueError as exc:
        entry = f"dns:{value}"
        if not origin:
            where = f"registry {entry}"
        elif origin.endswith(entry):
            where = origin  # the whole spec is this entry: say it once
        else:
            where = f"{origin}: {entry}"
        raise RegistryError(ER_REGISTRY, f"{where}: {exc}") from None
    options = dict(spec.options)
    for key in (f"{role}_password_file" for role in CREDENTIAL_ROLES):
        if key in options:
            options[key] = os.path.abspath(folder / Path(options[key]).expanduser())
    spec = replace(spec, options=MappingProxyType(options))
    key = str(spec)
    with _cache_lock:
        registry = _dns_registries.get(key)
        if registry is None:
            if len(_dns_registries) >= MAX_SHARED:
                raise RegistryError(
                    ER_REGISTRY,
                    f"registry {spec.location}: this process uses {MAX_SHARED} DNS registries "
                    "already (each registry= text with other options is one), the most it "
                    "keeps: use fewer distinct registry specs",
                )
            registry = DnsRegistry(spec, base=folder)
            _dns_registries[key] = registry
    return registry


def get_chain_registry(registries: Sequence[Registry]) -> ChainRegistry:
    """The process-wide :class:`ChainRegistry` of these (shared) registries, in order."""
    key = tuple(id(registry) for registry in registries)
    with _cache_lock:
        chain = _chains.get(key)
        if chain is None:
            if len(_chains) >= MAX_SHARED:
                raise RegistryError(
                    ER_REGISTRY,
                    f"registry list {', then '.join(r.describe() for r in registries)}: this "
                    f"process uses {MAX_SHARED} lists of registries already, the most it "
                    "keeps: use fewer distinct registry= lists",
                )
            chain = ChainRegistry(registries)  # holds them: their ids stay theirs
            _chains[key] = chain
    return chain


def close_dns_registries() -> None:
    """Stop every shared DNS registry's thread and forget them (``sqlrouter.shutdown()``)."""
    with _cache_lock:
        registries = list(_dns_registries.values())
        _dns_registries.clear()
        _chains.clear()
    for registry in registries:
        registry.close()
