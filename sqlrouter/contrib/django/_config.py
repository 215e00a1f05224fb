"""Reading a ``DATABASES`` entry of ENGINE ``sqlrouter.contrib.django``: pure, no I/O.

The backend (``base.py``), the router and the test-database creation all need the
:class:`~sqlrouter.ServiceURL` an alias stands for; this module builds it, and turns
sqlrouter's errors into :class:`~django.core.exceptions.ImproperlyConfigured` naming
the alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

import sqlrouter
from sqlrouter.url import ServiceURL, parse_url

__all__ = ["DJANGO_OPTIONS", "ENGINE", "is_sqlrouter", "service_key", "service_url"]

#: The ``ENGINE`` of the backend.
ENGINE: Final = "sqlrouter.contrib.django"

#: ``OPTIONS`` keys read by Django's MySQL backend, not by sqlrouter.
DJANGO_OPTIONS: Final = frozenset({"isolation_level"})


def is_sqlrouter(settings_dict: Mapping[str, Any]) -> bool:
    """Whether a ``DATABASES`` entry uses this backend."""
    return settings_dict.get("ENGINE") == ENGINE


def service_url(settings_dict: Mapping[str, Any], alias: str) -> ServiceURL:
    """The service URL a ``DATABASES`` entry of this backend stands for.

    ``OPTIONS['url']`` (a ``sqlrouter://`` URL) is the base, if given; ``NAME``,
    ``USER`` and ``PASSWORD``, when not empty, override its database, user and
    password; every other ``OPTIONS`` key is a :func:`sqlrouter.parse_url` keyword
    (``service``, ``qos``, ``max_lag``, ``registry``, ``charset``...), except
    ``isolation_level``, which is Django's.  ``NAME`` ``None`` (Django's connection
    "to no database", used to create the test database) means no database.  ``HOST``
    and ``PORT`` must be empty: the registry gives each server's address.

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the alias and
    what is wrong, never showing a password.
    """
    where = f"DATABASES[{alias!r}]"
    if settings_dict.get("HOST") or settings_dict.get("PORT"):
        raise ImproperlyConfigured(
            f"{where}: HOST and PORT are not used by ENGINE {ENGINE!r}: sqlrouter routes "
            "by service, and the registry gives each server's host and port; leave them "
            "empty and set OPTIONS['service'] (or OPTIONS['url'])"
        )
    raw_options = settings_dict.get("OPTIONS") or {}
    if not isinstance(raw_options, Mapping):
        raise ImproperlyConfigured(
            f"{where}: OPTIONS must be a dict, not {type(raw_options).__name__}"
        )
    options = {str(k): v for k, v in raw_options.items() if k not in DJANGO_OPTIONS}
    url = options.pop("url", None)
    if url is not None and not isinstance(url, str | ServiceURL):
        raise ImproperlyConfigured(
            f"{where}: OPTIONS['url'] must be a service URL string such as "
            f"'sqlrouter://user:password@SERVICE/DATABASE?qos=RO_RELAXED', not "
            f"{type(url).__name__}"
        )
    location: dict[str, Any] = {}
    name = settings_dict.get("NAME", "")
    if name is None:
        location["database"] = None
    elif name:
        location["database"] = name
    for setting, keyword in (("USER", "user"), ("PASSWORD", "password")):
        value = settings_dict.get(setting)
        if value:
            location[keyword] = value
    for keyword in location:
        if keyword in options:
            setting = {"database": "NAME", "user": "USER", "password": "PASSWORD"}[keyword]
            raise ImproperlyConfigured(
                f"{where}: {keyword!r} is given twice, in {setting} and in OPTIONS; "
                f"keep only {setting}"
            )
    if url is None and "service" not in options:
        raise ImproperlyConfigured(
            f"{where}: no service: set OPTIONS['service'] (the service's name in the "
            "sqlrouter registry) or OPTIONS['url'] "
            "('sqlrouter://user:password@SERVICE/DATABASE?qos=...')"
        )
    try:
        return parse_url(url, **options, **location)
    except sqlrouter.ProgrammingError as exc:
        raise ImproperlyConfigured(f"{where}: {exc.args[-1]}") from exc


def service_key(url: ServiceURL) -> tuple[str, str]:
    """The service an alias reaches: aliases with one key see the same replicated data.

    The database is left out on purpose: Django renames it (``test_...``) alias by
    alias while it creates test databases.
    """
    return (url.registry or "", url.service)
