"""The middleware: one causal token per request, carried to the next one in a cookie.

``CausalConsistencyMiddleware`` runs each request inside ``with sqlrouter.session():``,
so every connection the request uses, through any alias, shares one causal token: a
read through the RO_RELAXED alias sees what the request wrote through the RW_STRICT
alias.  It lives in a :mod:`contextvars` variable, so it works the same under WSGI and
ASGI, for sync and async views.

When the request wrote, the response carries the token in a signed cookie (setting
``SQLROUTER_CAUSAL_COOKIE``) and the user's next requests start from it, for its
``max_age``: the page after a redirect shows the user's write even while replicas lag,
and still reads from a replica when one has applied it.  Other users' requests carry
no such token and read from replicas as before.  The cookie is signed with
``SECRET_KEY``: a client cannot forge a token that would send its reads to the master.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.response import HttpResponseBase

import sqlrouter
from sqlrouter.consistency import Session
from sqlrouter.gtid import CausalToken

__all__ = ["CausalConsistencyMiddleware", "CookieSettings"]

logger = logging.getLogger("sqlrouter.contrib.django")

_SETTING: Final = "SQLROUTER_CAUSAL_COOKIE"


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """The causal-token cookie, from the ``SQLROUTER_CAUSAL_COOKIE`` setting.

    ``max_age`` should exceed the ``max_lag`` of the read alias: once a replica is
    within ``max_lag``, it has applied anything written longer ago than that.
    ``path``, ``domain``, ``secure`` and ``samesite`` default to the session cookie's
    settings (``SESSION_COOKIE_PATH``...).
    """

    name: str = "sqlrouter_causal"
    max_age: int = 300
    salt: str = "sqlrouter.contrib.django.causal"
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    httponly: bool = True
    samesite: str | None = "Lax"

    @classmethod
    def from_settings(cls) -> CookieSettings | None:
        """The cookie settings, or None when the setting is ``None`` (no cookie)."""
        raw = getattr(settings, _SETTING, {})
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ImproperlyConfigured(
                f"{_SETTING} must be a dict of cookie settings, or None for no cookie; "
                f"not {type(raw).__name__}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(map(str, raw)) - set(known))
        if unknown:
            raise ImproperlyConfigured(
                f"{_SETTING}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(known)}"
            )
        values: dict[str, Any] = {
            "path": settings.SESSION_COOKIE_PATH,
            "domain": settings.SESSION_COOKIE_DOMAIN,
            "secure": settings.SESSION_COOKIE_SECURE,
            "samesite": settings.SESSION_COOKIE_SAMESITE,
            **raw,
        }
        max_age = values.get("max_age", cls.__dataclass_fields__["max_age"].default)
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age <= 0:
            raise ImproperlyConfigured(
                f"{_SETTING}['max_age'] must be a whole number of seconds > 0, not {max_age!r}"
            )
        name = values.get("name", cls.__dataclass_fields__["name"].default)
        if not isinstance(name, str) or not name:
            raise ImproperlyConfigured(f"{_SETTING}['name'] must be a non-empty string")
        return cls(**values)


class _RequestSession(Session):
    """A request's session, which knows whether the request wrote.

    sqlrouter merges the GTID of each write it captures with :meth:`advance_gtid`;
    positions that reads observed are merged with :meth:`advance`.  Only a write
    makes the response carry the token.
    """

    __slots__ = ("wrote",)

    def __init__(self, token: CausalToken | None = None) -> None:
        super().__init__(token)
        self.wrote = False

    def advance_gtid(self, gtid: str) -> None:
        version = self.version
        super().advance_gtid(gtid)
        if self.version != version:
            self.wrote = True


_GetResponse = Callable[[HttpRequest], HttpResponseBase]
_AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class CausalConsistencyMiddleware:
    """One causal token per request, shared by every alias; carried on in a cookie.

    Put it before any middleware that queries the database (the session and
    authentication middleware read it):
    ``MIDDLEWARE = ["sqlrouter.contrib.django.CausalConsistencyMiddleware", ...]``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: _GetResponse | _AsyncGetResponse) -> None:
        self.get_response = get_response
        self.cookie = CookieSettings.from_settings()
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __repr__(self) -> str:
        cookie = self.cookie.name if self.cookie is not None else None
        return f"<CausalConsistencyMiddleware cookie={cookie!r}>"

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self._async:
            return self._acall(request)
        session = self._start(request)
        with sqlrouter.session(session):
            response = cast(_GetResponse, self.get_response)(request)
        self._finish(response, session)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        session = self._start(request)
        with sqlrouter.session(session):
            response = await cast(_AsyncGetResponse, self.get_response)(request)
        self._finish(response, session)
        return response

    def _start(self, request: HttpRequest) -> _RequestSession:
        cookie = self.cookie
        if cookie is None:
            return _RequestSession()
        raw = request.get_signed_cookie(
            cookie.name, default=None, salt=cookie.salt, max_age=cookie.max_age
        )
        if not raw:
            return _RequestSession()
        try:
            return _RequestSession(CausalToken.parse(raw))
        except ValueError as exc:
            logger.debug("ignoring the causal token cookie %r: %s", cookie.name, exc)
            return _RequestSession()

    def _finish(self, response: HttpResponseBase, session: _RequestSession) -> None:
        cookie = self.cookie
        if cookie is None or not session.wrote:
            return
        response.set_signed_cookie(
            cookie.name,
            str(session.token),
            salt=cookie.salt,
            max_age=cookie.max_age,
            path=cookie.path,
            domain=cookie.domain,
            secure=cookie.secure,
            httponly=cookie.httponly,
            samesite=cookie.samesite,
        )
