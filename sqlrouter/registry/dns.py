"""Registries read from DNS SRV records.

``registry=dns:DOMAIN`` (the system resolver) or ``registry=dns://IP[:PORT]/DOMAIN``
(that nameserver) reads service SERVICE from the SRV records
``_mysql._tcp.SERVICE.DOMAIN``, the declared master from
``_master._mysql._tcp.SERVICE.DOMAIN``, and the targets' A/AAAA records; see
``docs/registry.md`` for the convention and :mod:`sqlrouter.registry._dns` for the
parsing.

:class:`DnsRegistry` resolves a service the first time it is looked up (the caller
waits, at most ``timeout`` seconds), then keeps every answer for its TTL and
re-resolves it in a background thread of its own when the TTL expires, so that
``lookup()`` never waits for DNS again.  A failed re-resolution (timeout, SERVFAIL, a
name gone) keeps the last good answer and says so in :attr:`DnsRegistry.last_error`;
``sqlrouter.shutdown()`` stops the threads.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final

from .. import _forksafe
from ..topology import Service
from . import _dns
from ._checks import _read_password_file, _Secret, _secrets_changed, _Where
from ._dns import (
    DEFAULT_NEGATIVE_TTL,
    DnsError,
    InvalidAnswer,
    NameNotFound,
    Resolver,
    resolve_service,
    same_service,
)
from ._dnsspec import (
    CREDENTIAL_ROLES,
    DEFAULT_TIMEOUT,
    DnsSettings,
    DnsSpec,
    parse_dns_spec,
    settings_from_options,
)
from .base import ER_REGISTRY, Registry, RegistryError, ServiceNotFound

__all__ = [
    "DEFAULT_MAX_RETRY",
    "DEFAULT_MIN_TTL",
    "SECRETS_CHECK_INTERVAL",
    "DnsRegistry",
]

logger = logging.getLogger("sqlrouter.registry")

#: Answers are kept at least this many seconds, whatever their TTL (0 included).
DEFAULT_MIN_TTL: Final = 1.0
#: After a failed re-resolution, the next try comes after the answer's TTL, but at most
#: this many seconds later.
DEFAULT_MAX_RETRY: Final = 30.0
#: The background thread looks at its work at least this often (seconds).
_MAX_SLEEP: Final = 60.0
#: Seconds between two looks (``stat``) at the password files of the spec.
SECRETS_CHECK_INTERVAL: Final = 0.5
_JOIN_TIMEOUT: Final = 5.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the registry knows of one service name; replaced whole, never changed."""

    #: The last good answer; ``None`` when DNS said the service is not published.
    service: Service | None
    #: Why the service is not published (the message of :class:`ServiceNotFound`).
    missing: str | None
    #: The TTL (seconds, floored at ``min_ttl``) of the last good answer.
    ttl: float
    #: ``clock()`` when the resolution that produced the last good answer started.
    resolved_at: float
    #: ``clock()`` when the next resolution is due.
    due: float
    #: Why the last resolution failed (the last good answer is still served), or ``None``.
    error: str | None = None
    #: ``clock()`` of the first of the failures in a row.
    failing_since: float | None = None
    #: ``clock()`` when the resolution that produced this entry started (later wins).
    started: float = 0.0


class DnsRegistry(Registry):
    """The services published in DNS under one domain (see the module docstring).

    ``spec`` is what follows ``dns:`` (``example.test``, ``//127.0.0.1:5353/example.test``,
    options included) or a parsed :class:`~sqlrouter.registry._dnsspec.DnsSpec`.  Seams, for tests:
    ``resolver`` (default: dnspython, on the spec's nameserver or the system's),
    ``settings`` (default: from the spec's options, password files read relative to
    ``base``), ``clock``, ``randbelow`` (RFC 2782 ordering) and ``background``: with
    ``False`` no thread is started and :meth:`refresh` re-resolves the answers whose
    TTL expired, in the caller's thread.

    Raises :class:`RegistryError` when the options are invalid or a password file
    cannot be read.  Nothing is resolved before the first :meth:`lookup`.
    """

    def __init__(
        self,
        spec: str | DnsSpec,
        *,
        resolver: Resolver | None = None,
        settings: DnsSettings | None = None,
        base: str | os.PathLike[str] | None = None,
        clock: Clock = time.monotonic,
        randbelow: Callable[[int], int] = secrets.randbelow,
        background: bool = True,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_retry: float = DEFAULT_MAX_RETRY,
    ) -> None:
        if isinstance(spec, str):
            try:
                spec = parse_dns_spec(spec)
            except ValueError as exc:
                raise RegistryError(ER_REGISTRY, f"registry dns:{spec}: {exc}") from None
        self._spec = spec
        self._location = spec.location
        self._base = Path(base) if base is not None else Path.cwd()
        read: list[_Secret] = []
        if settings is None:
            settings = _settings_of(spec, self._base, read)
            self._read_settings = True
        else:
            self._read_settings = False  # given: never re-read
        self._settings = settings
        #: The password files of the spec, as read; a change is read again by refresh().
        self._secrets = tuple(read)
        self._secrets_error: str | None = None
        self._next_secrets_check = clock() + SECRETS_CHECK_INTERVAL
        self._secrets_lock = _forksafe.lock()
        if resolver is None:
            timeout = float(spec.options.get("timeout", DEFAULT_TIMEOUT))
            # dnspython (25 ms to import) is loaded here, by the first DNS registry that
            # needs a resolver: never by a process that reads no DNS registry.
            from ._resolver import DnspythonResolver  # noqa: PLC0415

            try:
                resolver = DnspythonResolver(spec.nameserver, timeout=timeout)
            except DnsError as exc:
                raise RegistryError(ER_REGISTRY, f"registry {self._location}: {exc}") from None
        self._resolver = resolver
        self._clock = clock
        self._randbelow = randbelow
        self._background = background
        self._min_ttl = min_ttl
        self._max_retry = max_retry
        self._lock = _forksafe.lock()
        self._wake = threading.Condition(self._lock)
        #: Serializes resolutions made in callers' threads (first lookups, refresh).
        self._resolving = _forksafe.lock()
        self._entries: Mapping[str, _Entry] = MappingProxyType({})
        self._generation = 0
        self._seen_generation = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the Registry interface ----------------------------------------------------

    @property
    def spec(self) -> DnsSpec:
        return self._spec

    @property
    def resolver(self) -> Resolver:
        return self._resolver

    def describe(self) -> str:
        return self._location

    def services(self) -> list[str]:
        """The services looked up so far that DNS publishes (DNS cannot list them all)."""
        return [name for name, entry in self._entries.items() if entry.service is not None]

    def lookup(self, service_name: str) -> Service:
        """The service as last resolved; resolved now (waiting for DNS) the first time.

        Raises :class:`ServiceNotFound` naming the record looked up when the service is
        not published, :class:`RegistryError` when DNS does not answer the first time
        or the records do not describe a service.
        """
        entry = self._entries.get(service_name)
        if entry is None:
            with self._resolving:
                entry = self._entries.get(service_name)
                if entry is None:
                    entry = self._first_resolution(service_name)
        if entry.service is None:
            raise ServiceNotFound(
                ER_REGISTRY,
                f"registry {self._location}: no service {service_name!r}: {entry.missing}",
                service=service_name,
            )
        return entry.service

    @property
    def last_error(self) -> str | None:
        """Why re-resolutions fail, per service, and how old the answers served are."""
        now = self._clock()
        problems: list[str] = []
        if self._secrets_error is not None:
            problems.append(f"{self._secrets_error} (the password read before is used)")
        for name, entry in self._entries.items():
            if entry.error is None:
                continue
            since = now - (entry.failing_since if entry.failing_since is not None else now)
            if entry.service is not None:
                kept = f"serving the last good answer, {now - entry.resolved_at:.1f}s old"
            else:
                kept = "still taken as not published"
            problems.append(f"service {name!r}: {entry.error} (failing for {since:.1f}s; {kept})")
        if not problems:
            return None
        return f"registry {self._location}: " + "; ".join(problems)

    def refresh(self, *, force: bool = False) -> bool:
        """``True`` when an answer changed a service since the last call.

        Never waits for DNS, except with ``force=True`` (re-resolve every service now)
        or when no background thread runs (``background=False``, or after
        :meth:`close`): then the answers whose TTL expired are re-resolved here.
        """
        self._follow_secrets(force=force)
        if force or not self._thread_alive():
            with self._resolving:
                self._resolve_due(everything=force)
        with self._lock:
            changed = self._generation != self._seen_generation
            self._seen_generation = self._generation
        return changed

    def close(self) -> None:
        """Stop the background thread (bounded wait); answers stay as they are."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning("registry %s: background thread did not stop", self._location)

    def __repr__(self) -> str:
        names = ", ".join(self.services()) or "none"
        health = "ok" if self.last_error is None else "stale"
        thread = "refreshing" if self._thread_alive() else "idle"
        return f"<DnsRegistry {self._location} [services: {names} | {health} | {thread}]>"

    # -- password files --------------------------------------------------------------

    def _follow_secrets(self, *, force: bool) -> None:
        """Read the password files again when one changed (a rotated password).

        At most every :data:`SECRETS_CHECK_INTERVAL` seconds (one ``stat`` per file),
        unless ``force``.  A file that cannot be read keeps the password read before, and
        says why in :attr:`last_error`.
        """
        if not self._read_settings or not self._secrets:
            return
        if not force and self._clock() < self._next_secrets_check:
            return
        if not self._secrets_lock.acquire(blocking=force):
            return  # another thread is looking at them right now
        try:
            self._next_secrets_check = self._clock() + SECRETS_CHECK_INTERVAL
            if _secrets_changed(self._secrets):
                self._read_secrets()
        finally:
            self._secrets_lock.release()

    def _read_secrets(self) -> None:
        """Read the password files; use them if they all are readable (under the lock)."""
        read: list[_Secret] = []
        try:
            settings = _settings_of(self._spec, self._base, read)
        except RegistryError as exc:
            error = str(exc.args[1]).removeprefix(f"registry {self._location}: ")
            if error != self._secrets_error:
                logger.warning(
                    "registry %s: %s; keeping the password read before", self._location, error
                )
            self._secrets_error = error
            self._secrets = tuple(read)  # tried again when one changes once more
            return
        if self._secrets_error is not None:
            logger.info("registry %s: the password files are readable again", self._location)
        self._secrets_error = None
        self._secrets = tuple(read)
        if settings == self._settings:
            return
        logger.info("registry %s: a password file changed: using it", self._location)
        with self._lock:
            self._settings = settings
            entries = {
                name: entry
                if entry.service is None
                else replace(entry, service=_with_settings(entry.service, settings))
                for name, entry in self._entries.items()
            }
            self._entries = MappingProxyType(entries)
            self._generation += 1

    # -- resolving -----------------------------------------------------------------

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _resolve(self, name: str) -> _dns.Resolved:
        return resolve_service(
            self._resolver,
            name,
            self._spec.domain,
            settings=self._settings,
            source=self._location,
            randbelow=self._randbelow,
        )

    def _floor(self, ttl: float) -> float:
        return max(self._min_ttl, ttl)

    def _first_resolution(self, name: str) -> _Entry:
        started = self._clock()
        try:
            resolved = self._resolve(name)
        except ValueError as exc:  # a service name that cannot be part of a DNS name
            raise ServiceNotFound(
                ER_REGISTRY, f"registry {self._location}: {exc}", service=name
            ) from None
        except NameNotFound as exc:
            ttl = self._floor(exc.ttl if exc.ttl is not None else DEFAULT_NEGATIVE_TTL)
            entry = _Entry(None, str(exc), ttl, started, started + ttl, started=started)
        except DnsError as exc:
            raise RegistryError(
                ER_REGISTRY,
                f"registry {self._location}: service {name!r}: {_problem(exc)}",
                service=name,
            ) from None
        else:
            ttl = self._floor(resolved.ttl)
            entry = _Entry(resolved.service, None, ttl, started, started + ttl, started=started)
            logger.info(
                "registry %s: service %r: %s (ttl %gs)",
                self._location,
                name,
                ", ".join(f"{ds.name} {ds.role}" for ds in resolved.service.datasources),
                resolved.ttl,
            )
        return self._store(name, entry, changed=False)

    def _store(self, name: str, entry: _Entry, *, changed: bool) -> _Entry:
        """Keep ``entry`` for ``name`` (unless a later resolution did); what is kept."""
        with self._lock:
            service = entry.service
            if service is not None and _with_settings(service, self._settings) != service:
                # Resolved with the credentials of its start: the latest ones serve.
                entry = replace(entry, service=_with_settings(service, self._settings))
            current = self._entries.get(name)
            if current is not None and current.started > entry.started:
                return current  # a later resolution already finished
            entries = dict(self._entries)
            entries[name] = entry
            self._entries = MappingProxyType(entries)
            if changed:
                self._generation += 1
            if self._background and not self._closed and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"sqlrouter-dns-{self._spec.domain}", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()
        return entry

    def _resolve_due(self, *, everything: bool = False) -> None:
        now = self._clock()
        for name, entry in list(self._entries.items()):
            if everything or entry.due <= now:
                self._re_resolve(name, entry)

    def _re_resolve(self, name: str, entry: _Entry) -> None:
        started = self._clock()
        try:
            resolved = self._resolve(name)
        except NameNotFound as exc:
            if entry.service is None:
                ttl = self._floor(exc.ttl if exc.ttl is not None else DEFAULT_NEGATIVE_TTL)
                fresh = _Entry(None, str(exc), ttl, started, started + ttl, started=started)
                self._store(name, fresh, changed=False)
                return
            self._failed(name, entry, started, f"{exc}; it was published before")
            return
        except DnsError as exc:
            self._failed(name, entry, started, _problem(exc))
            return
        ttl = self._floor(resolved.ttl)
        service = resolved.service
        changed = entry.service is None or not same_service(entry.service, service)
        if not changed and entry.service is not None:
            service = entry.service  # same servers: keep the order chosen before
        if entry.error is not None:
            logger.info("registry %s: service %r: DNS answers again", self._location, name)
        if changed:
            logger.info(
                "registry %s: service %r changed: %s",
                self._location,
                name,
                ", ".join(f"{ds.name} {ds.role}" for ds in service.datasources),
            )
        self._store(
            name,
            _Entry(service, None, ttl, started, started + ttl, started=started),
            changed=changed,
        )

    def _failed(self, name: str, entry: _Entry, started: float, error: str) -> None:
        if error != entry.error:
            logger.warning(
                "registry %s: service %r: %s; keeping the last good answer",
                self._location,
                name,
                error,
            )
        retry = min(entry.ttl, self._max_retry)
        failed = replace(
            entry,
            error=error,
            failing_since=entry.failing_since if entry.failing_since is not None else started,
            due=self._clock() + retry,
            started=started,
        )
        self._store(name, failed, changed=False)

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    now = self._clock()
                    due = min((e.due for e in self._entries.values()), default=None)
                    if due is not None and due <= now:
                        break
                    wait = _MAX_SLEEP if due is None else min(_MAX_SLEEP, due - now)
                    self._wake.wait(wait)
            try:
                self._resolve_due()
            except Exception:  # a bug must not stop the refreshing silently
                logger.exception("registry %s: background refresh failed", self._location)
                with self._lock:
                    if self._closed:
                        return
                    self._wake.wait(self._min_ttl)


def _problem(exc: DnsError) -> str:
    if isinstance(exc, InvalidAnswer):
        return f"unusable records: {exc}"
    return f"cannot resolve {exc}"


def _settings_of(spec: DnsSpec, base: Path, read: list[_Secret]) -> DnsSettings:
    """The spec's settings, its password files read (and noted in ``read``)."""
    where = _Where(spec.location)
    passwords: dict[str, str] = {}
    for role in CREDENTIAL_ROLES:
        key = f"{role}_password_file"
        if key in spec.options:
            passwords[role] = _read_password_file(where, key, spec.options[key], base, read)
    return settings_from_options(spec.options, passwords=passwords)


def _with_settings(service: Service, settings: DnsSettings) -> Service:
    """``service`` (as resolved) with the credentials of ``settings``."""
    return replace(
        service,
        monitor_credentials=settings.monitor_credentials,
        admin_credentials=settings.admin_credentials,
        replication_credentials=settings.replication_credentials,
    )


# --------------------------------------------------------------------------- sharing
