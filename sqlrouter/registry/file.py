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
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .. import _forksafe
from ..topology import (
    Service,
)
from ._checks import (
    _Fingerprint,
    _fingerprint,
    _Secret,
    _secrets_changed,
)
from ._parse import _parse_document
from .base import Registry, RegistryError, _error

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
