"""The database router: reads to the RO_RELAXED alias, writes to the RW_STRICT alias.

``DATABASE_ROUTERS = ["sqlrouter.contrib.django.QoSRouter"]`` finds the two aliases in
``DATABASES`` (ENGINE ``sqlrouter.contrib.django``): the write alias is ``default``
when it is RW_STRICT, else the only RW_STRICT alias; the read alias is the only
RO_RELAXED alias of the same service (none: reads go to the write alias).  Name them
when that is ambiguous:
``DATABASE_ROUTERS = [QoSRouter(write="primary", read="replica")]``.

Reads go to the master instead when :func:`use_master` is in force, and inside a
transaction (``atomic()``) on the write alias: a replica cannot see what the
transaction has not committed yet.  Reads after a commit see it through the causal
token that the middleware shares between the two aliases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

from sqlrouter.qos import QoS
from sqlrouter.url import ServiceURL

from ._config import ENGINE, is_sqlrouter, service_key, service_url

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["QoSRouter", "RouterAliases", "find_aliases", "master_forced", "use_master"]

_F = TypeVar("_F", bound=Callable[..., Any])

_forced: ContextVar[bool] = ContextVar("sqlrouter.contrib.django.use_master", default=False)


def master_forced() -> bool:
    """Whether :func:`use_master` is in force in the current context."""
    return _forced.get()


class _UseMaster:
    """``with use_master():`` / ``async with use_master():`` / ``@use_master()``."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: list[Token[bool]] = []

    def __repr__(self) -> str:
        return f"<sqlrouter.contrib.django.use_master active={bool(self._tokens)}>"

    def __enter__(self) -> None:
        self._tokens.append(_forced.set(True))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _forced.reset(self._tokens.pop())

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: _F) -> _F:
        return _decorate(func)


def _decorate(func: _F) -> _F:
    if iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            token = _forced.set(True)
            try:
                return await func(*args, **kwargs)
            finally:
                _forced.reset(token)

        return cast(_F, run_async)

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _forced.set(True)
        try:
            return func(*args, **kwargs)
        finally:
            _forced.reset(token)

    return cast(_F, run)


@overload
def use_master(func: _F, /) -> _F: ...
@overload
def use_master(func: None = None, /) -> _UseMaster: ...
def use_master(func: _F | None = None, /) -> _F | _UseMaster:
    """Send reads to the master (the write alias) while in force.

    A context manager (``with use_master():``, ``async with use_master():``) and a
    decorator of sync and async functions and views (``@use_master`` or
    ``@use_master()``).  It lives in a :mod:`contextvars` variable: it follows the
    code into ``sync_to_async`` and the async ORM, and never leaks into another
    request or thread.
    """
    if func is None:
        return _UseMaster()
    return _decorate(func)


@dataclass(frozen=True)
class RouterAliases:
    """The aliases :class:`QoSRouter` uses, and the service URL of each sqlrouter alias."""

    write: str
    read: str
    urls: Mapping[str, ServiceURL]


def find_aliases(
    databases: Mapping[str, Mapping[str, Any]],
    *,
    write: str | None = None,
    read: str | None = None,
) -> RouterAliases:
    """The write and read aliases in ``databases`` (Django's ``DATABASES``); pure.

    ``write`` and ``read`` name them; left out, they are found as the module's
    docstring says.  Raises :class:`ImproperlyConfigured` saying what is ambiguous or
    missing, and how to name the aliases.
    """
    urls = MappingProxyType(
        {
            alias: service_url(entry, alias)
            for alias, entry in databases.items()
            if is_sqlrouter(entry)
        }
    )
    for given in (write, read):
        if given is not None and given not in databases:
            raise ImproperlyConfigured(
                f"QoSRouter: alias {given!r} is not in DATABASES "
                f"(aliases: {', '.join(map(repr, databases))})"
            )
    if write is None:
        strict = [alias for alias, url in urls.items() if url.qos is QoS.RW_STRICT]
        if DEFAULT_DB_ALIAS in strict:
            write = DEFAULT_DB_ALIAS
        elif len(strict) == 1:
            write = strict[0]
        else:
            which = (
                f"several ({', '.join(map(repr, strict))})"
                if strict
                else f"none with ENGINE {ENGINE!r} and qos RW_STRICT"
            )
            raise ImproperlyConfigured(
                f"QoSRouter: cannot tell which DATABASES alias takes the writes: {which}; "
                'name it: DATABASE_ROUTERS = [QoSRouter(write="...", read="...")]'
            )
    if read is None:
        if write not in urls:
            raise ImproperlyConfigured(
                f"QoSRouter: the write alias {write!r} does not use ENGINE {ENGINE!r}; "
                'name the read alias: QoSRouter(write="...", read="...")'
            )
        key = service_key(urls[write])
        relaxed = [
            alias
            for alias, url in urls.items()
            if url.qos is QoS.RO_RELAXED and service_key(url) == key
        ]
        if len(relaxed) > 1:
            raise ImproperlyConfigured(
                f"QoSRouter: several RO_RELAXED aliases of service {urls[write].service!r} "
                f"({', '.join(map(repr, relaxed))}); name the one for reads: "
                'QoSRouter(write="...", read="...")'
            )
        read = relaxed[0] if relaxed else write
    return RouterAliases(write=write, read=read, urls=urls)


class QoSRouter:
    """Reads to the RO_RELAXED alias, writes (and migrations) to the RW_STRICT alias.

    ``write`` and ``read`` name the aliases; left out, they are found in
    ``DATABASES`` as the module's docstring says, when the router is first used.
    """

    def __init__(self, *, write: str | None = None, read: str | None = None) -> None:
        self._write = write
        self._read = read
        self._found: RouterAliases | None = None

    def __repr__(self) -> str:
        found = self._found
        if found is None:
            return "<QoSRouter (aliases not read yet)>"
        return f"<QoSRouter write={found.write!r} read={found.read!r}>"

    @property
    def aliases(self) -> RouterAliases:
        """The aliases in use (read from ``DATABASES`` at the first call)."""
        found = self._found
        if found is None:
            found = self._found = find_aliases(
                settings.DATABASES, write=self._write, read=self._read
            )
        return found

    # -- Django's router interface -----------------------------------------------------

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        found = self.aliases
        if _forced.get() or connections[found.write].in_atomic_block:
            return found.write
        return found.read

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return self.aliases.write

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """True between objects of aliases of one service; else no opinion."""
        urls = self.aliases.urls
        url1 = urls.get(obj1._state.db or "")
        url2 = urls.get(obj2._state.db or "")
        if url1 is None or url2 is None:
            return None
        return True if service_key(url1) == service_key(url2) else None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        """Only through the write alias: never through a RO_RELAXED alias."""
        found = self.aliases
        url = found.urls.get(db)
        if url is None:
            return None
        if db == found.write:
            return True
        write_url = found.urls.get(found.write)
        if url.qos is QoS.RO_RELAXED or (
            write_url is not None and service_key(url) == service_key(write_url)
        ):
            return False
        return None
