"""Service URLs: what an application asks sqlrouter for.

A service URL names a *service* (a replicated cluster), not a host::

    sqlrouter://[user[:password]@]SERVICE[/DATABASE][?param=value&...]

``mysql+sqlrouter://`` means the same (it is the form SQLAlchemy passes on), and the
Tungsten SQL Router form ``jdbc:t-router://SERVICE/DATABASE?qos=RO_RELAXED&
maxAppliedLatency=2`` is read too, with ``maxAppliedLatency`` as ``max_lag`` and
``user``/``password`` accepted as query parameters.

:func:`parse_url` turns a URL and/or keyword arguments into a :class:`ServiceURL`, an
immutable, validated and typed value.  User, password and database are percent-decoded;
query parameters are either routing parameters (``qos``, ``max_lag``, ``fallback``,
timeouts, session consistency, ``registry``) or PyMySQL ``connect()`` options
(``charset``, ``autocommit``, ``ssl_ca``...), converted to the type PyMySQL expects
and kept in :attr:`ServiceURL.connect_args`.  Options that are Python objects
(``cursorclass``, ``conv``, ``ssl``, ``auth_plugin_map``) are accepted as keywords
only.

Bad input raises :class:`sqlrouter.errors.ProgrammingError` with a message naming the
parameter, the value and what is accepted.  Numbers of seconds are at most 31536000 (a
year; beyond, a socket or a wait cannot take them).  No message, ``repr`` or ``str``
ever shows the password (nor ``ssl_key_password``), nor any part of one: when the URL
may hold a password cut in pieces by an unencoded character (an ``@`` after the host,
or a secret in the query, as the ``jdbc:t-router`` form's ``password=``), messages quote
no value of the URL at all; a password that is not text (a lone surrogate) is refused
by name, without its value.

This module is pure: no I/O, no environment reads.  A ``registry`` left as ``None`` is
resolved later, by the registry layer.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from ._urlparams import (
    _ACCEPTED_SCHEMES,
    _ALIASES,
    _BLIND,
    _CONNECT_ARGS,
    _FIELD_CHECKS,
    _HIDDEN,
    _LOCATION_PARAMETERS,
    _OBJECT_ARGS,
    _REGISTRY_ENTRY_SPLIT,
    _REGISTRY_OPTIONS,
    _ROUTING_PARAMETERS,
    _SCHEMES,
    _SECRET_ARGS,
    _SERVICE_RE,
    _TEXT_ARGS,
    _TUNGSTEN_NAMES,
    _TUNGSTEN_PREFIX,
    _URL_FORM,
    KNOWN_PARAMETERS,
    URL_PARAMETERS,
    Consistency,
    _bad_key,
    _blinding,
    _check_connect_args,
    _check_service,
    _conceal,
    _hiding,
    _show,
    _unknown,
)
from .errors import ProgrammingError
from .qos import Fallback, QoS

__all__ = [
    "KNOWN_PARAMETERS",
    "URL_PARAMETERS",
    "Consistency",
    "Fallback",
    "QoS",
    "ServiceURL",
    "parse_url",
]


# --------------------------------------------------------------------------------------
# Rendering


def _render_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _render_value(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _render_number(value)
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def _repr_connect_arg(name: str, value: object) -> object:
    if name in _SECRET_ARGS:
        return _HIDDEN
    if name == "ssl" and isinstance(value, Mapping) and "password" in value:
        return {**value, "password": _HIDDEN}
    return value


#: Parameters whose values are secrets, wherever they come from.
_SECRET_NAMES: Final = frozenset({"password", "passwd"}) | _SECRET_ARGS


def _secrets_of(fields: Mapping[str, Any], connect_args: object) -> list[object]:
    found = [fields.get("password")]
    if isinstance(connect_args, Mapping):
        found += [connect_args.get(name) for name in _SECRET_ARGS]
    return found


def _empty_connect_args() -> Mapping[str, Any]:
    return MappingProxyType({})


# --------------------------------------------------------------------------------------
# The value


@dataclass(frozen=True, slots=True, repr=False)
class ServiceURL:
    """A parsed, validated service URL.  Immutable: :meth:`set` makes a changed copy.

    Build one with :func:`parse_url`.  The constructor validates and converts its
    arguments the same way (so ``ServiceURL(service="shop", qos="ro_relaxed")`` holds
    ``QoS.RO_RELAXED``).

    ``max_lag`` ``None`` means the registry's default (1 second when it has none).
    ``registry`` ``None`` means: ``$SQLROUTER_REGISTRY``, then ``./sqlrouter.toml``,
    resolved by the registry layer.  ``read_timeout``/``write_timeout`` ``None``
    mean no timeout.  ``connect_args`` holds the PyMySQL ``connect()`` options to
    pass on, typed; ``None`` given for one removes it (PyMySQL's default applies),
    except ``autocommit=None``, which PyMySQL reads as "the server's default".
    """

    service: str
    database: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    qos: QoS = QoS.RW_STRICT
    max_lag: float | None = None
    fallback: Fallback = Fallback.MASTER
    registry: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float | None = None
    write_timeout: float | None = None
    failover_timeout: float = 0.0
    consistency: Consistency = Consistency.SESSION
    consistency_wait: float = 0.1
    causal_token: str | None = None
    connect_args: Mapping[str, Any] = field(default_factory=_empty_connect_args)

    def __post_init__(self) -> None:
        with _hiding(_secrets_of({"password": self.password}, self.connect_args)):
            for name, check in _FIELD_CHECKS.items():
                object.__setattr__(self, name, check(name, getattr(self, name)))
            object.__setattr__(self, "connect_args", _check_connect_args(self.connect_args))

    def set(self, **changes: Any) -> ServiceURL:
        """A copy with ``changes`` applied, validated as :func:`parse_url` validates.

        Takes the keywords :func:`parse_url` takes: fields, aliases (``db``,
        ``passwd``) and PyMySQL ``connect()`` options, which are merged into
        ``connect_args``.
        """
        return parse_url(self, **changes)

    def render(self, *, hide_password: bool = True) -> str:
        """This URL as a ``sqlrouter://`` string that :func:`parse_url` reads back.

        User, password and database are percent-encoded; only parameters that differ
        from their defaults are written.  With ``hide_password`` (the default) the
        password and ``ssl_key_password`` are written as ``***``.  Options that are
        Python objects (``cursorclass``, ``conv``, ``ssl``, ``auth_plugin_map``) have
        no text form and are left out.
        """
        if not hide_password:
            return self._render(hide=False)
        # A password that is also (part of) another value is hidden there too.
        with _hiding(self._secrets()):
            return self._render(hide=True)

    def _render(self, *, hide: bool) -> str:
        def text(value: str) -> str:
            return quote(_conceal(value) if hide else value, safe="*")

        netloc = ""
        if self.user is not None or self.password is not None:
            netloc = text(self.user or "")
            if self.password is not None:
                netloc += ":" + (_HIDDEN if hide else text(self.password))
            netloc += "@"
        netloc += _conceal(self.service) if hide else self.service
        path = "" if self.database is None else "/" + text(self.database)
        pairs: list[str] = []
        for name in _ROUTING_PARAMETERS:
            value = getattr(self, name)
            if value != _DEFAULTS[name]:
                pairs.append(f"{name}={text(_render_value(value))}")
        for name, value in self.connect_args.items():
            if name in _OBJECT_ARGS or value is None:
                continue
            shown = _HIDDEN if name in _SECRET_ARGS and hide else text(_render_value(value))
            pairs.append(f"{name}={shown}")
        query = "?" + "&".join(pairs) if pairs else ""
        return f"sqlrouter://{netloc}{path}{query}"

    def _secrets(self) -> list[object]:
        return _secrets_of({"password": self.password}, self.connect_args)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        parts = []
        with _hiding(self._secrets()):
            for name in _FIELD_CHECKS:
                value = getattr(self, name)
                if name != "service" and value == _DEFAULTS[name]:
                    continue
                if name == "password":
                    parts.append(f"password={_HIDDEN!r}")
                elif isinstance(value, enum.Enum):
                    parts.append(f"{name}={type(value).__name__}.{value.name}")
                else:
                    parts.append(f"{name}={_conceal(repr(value))}")
            if self.connect_args:
                shown = {k: _repr_connect_arg(k, v) for k, v in self.connect_args.items()}
                parts.append(f"connect_args={_conceal(repr(shown))}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __hash__(self) -> int:
        # connect_args may hold unhashable objects (conv, ssl): hash its keys only.
        scalars = tuple(getattr(self, name) for name in _FIELD_CHECKS)
        return hash((scalars, frozenset(self.connect_args)))

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], ServiceURL], tuple[dict[str, Any]]]:
        # A mappingproxy does not pickle: rebuild from plain values.
        state = {name: getattr(self, name) for name in _FIELD_CHECKS}
        state["connect_args"] = dict(self.connect_args)
        return (_rebuild, (state,))


def _rebuild(state: dict[str, Any]) -> ServiceURL:
    return ServiceURL(**state)


_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        f.name: f.default
        for f in dataclasses.fields(ServiceURL)
        if f.default is not dataclasses.MISSING
    }
)


# --------------------------------------------------------------------------------------
# Parsing


class _Collected:
    """Raw values gathered from a URL and keywords, before ServiceURL validates them."""

    __slots__ = ("blind", "connect_args", "fields", "sources")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.connect_args: dict[str, Any] = {}
        self.sources: dict[str, str] = {}  # canonical name -> the name it was given as
        #: The URL may hold a cut password: messages quote none of its values.
        self.blind = False

    def claim(self, canonical: str, given: str, where: str) -> None:
        """Note that ``canonical`` was given (as ``given``); it may be given only once."""
        previous = self.sources.get(canonical)
        if previous is not None:
            both = f" (as {previous!r} and {given!r})" if previous != given else ""
            raise ProgrammingError(f"parameter {canonical!r} is given twice{where}{both}")
        self.sources[canonical] = given


def _split_url(url: str) -> _Collected:
    """The raw values of a URL string's parts and query parameters."""
    tungsten = url.lstrip()[: len(_TUNGSTEN_PREFIX)].lower() == _TUNGSTEN_PREFIX
    text = url.lstrip()[len("jdbc:") :] if tungsten else url
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None:
        # urlsplit's message quotes the netloc, which holds the password: neither it nor
        # (raising outside the handler) the ValueError as __context__ is shown.
        raise ProgrammingError(
            "malformed service URL (not shown: it may contain a password): unbalanced "
            "'[' or ']', or a character that must be percent-encoded; expected "
            f"{_URL_FORM}"
        )
    if not tungsten and parts.scheme not in _SCHEMES:
        if not parts.scheme:
            raise ProgrammingError(f"missing URL scheme: expected a {_ACCEPTED_SCHEMES} URL")
        tungsten_hint = (
            " (or jdbc:t-router://, the Tungsten SQL Router form, see docs/connect.md)"
            if parts.scheme.lower() == "jdbc"
            else ""
        )
        raise ProgrammingError(
            f"unsupported URL scheme {_show(parts.scheme)}: expected {_ACCEPTED_SCHEMES}"
            f"{tungsten_hint}"
        )
    if not parts.netloc and parts.path and not parts.path.startswith("/"):
        raise ProgrammingError(f"expected '//' after '{parts.scheme}:': {_URL_FORM}")
    if "#" in text:
        raise ProgrammingError(
            "a service URL has no '#fragment': percent-encode '#' as %23 (in a password, "
            "for example)"
        )

    pairs = parse_qsl(parts.query, keep_blank_values=True)
    # An '@' after the host: an unencoded '/', '?' or '#' cut the user info (and its
    # password) in two.  A secret in the query (a Tungsten URL's password, an
    # ssl_key_password) may be cut by an unencoded '&' or '=' into pieces that look like
    # other parameters.  In either case no message quotes a value of this URL.
    cut = "@" in parts.path or "@" in parts.query or "@" in parts.fragment
    blind = cut or any(name in _SECRET_NAMES for name, _ in pairs)
    with _blinding(blind):
        collected = _split_parts(parts, pairs, tungsten=tungsten)
    collected.blind = blind
    return collected


def _split_parts(parts: SplitResult, pairs: list[tuple[str, str]], *, tungsten: bool) -> _Collected:
    collected = _Collected()
    where = " in the URL"
    # urlsplit splits user info from host at the *last* '@' (netloc.rpartition), so a
    # password may hold an '@', encoded or not.
    host_part = parts.netloc.rpartition("@")[2]
    if host_part.startswith("["):
        raise ProgrammingError(
            f"invalid service {_show(host_part)}: a service is a name, not an IP address; "
            "the registry gives each server's address"
        )
    if ":" in host_part:
        name = host_part.partition(":")[0]
        # The text after ':' is not shown: without an '@' it may be a password.
        shown = f" after service {_show(name)}" if _SERVICE_RE.match(name) else ""
        if _BLIND.get():
            shown = ""
        raise ProgrammingError(
            f"a port is not accepted{shown}: a service is a name, not host:port; the "
            "registry gives each server's host and port.  If this is user:password, "
            "the password holds a '/', '?', '#' or '@' that must be percent-encoded"
        )
    if host_part:
        collected.fields["service"] = host_part
        collected.claim("service", "service", where)
    if parts.username is not None:
        collected.fields["user"] = unquote(parts.username)
        collected.claim("user", "user", where)
    if parts.password is not None:
        collected.fields["password"] = unquote(parts.password)
        collected.claim("password", "password", where)
    pairs = _fold_registry_options(pairs)
    secrets = [value for name, value in pairs if name in _SECRET_NAMES]
    with _hiding([parts.password, collected.fields.get("password"), *secrets]):
        _read_path_and_query(collected, parts.path, parts.query, pairs, tungsten=tungsten)
    return collected


def _fold_registry_options(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Move the DNS registry options among a URL's parameters into its ``registry=``.

    ``?registry=dns:d?monitor_user=m&monitor_password_file=f`` (a spec written as in
    docs/registry.md, whose ``&`` the URL splits) and ``?registry=dns:d&monitor_user=m``
    both give the registry ``dns:d?monitor_user=m&monitor_password_file=f``: no ``%26``
    is needed.  An option without a ``registry=`` whose last entry is ``dns:`` is an
    error saying so.
    """
    options = [(name, value) for name, value in pairs if name in _REGISTRY_OPTIONS]
    if not options:
        return pairs
    specs = [value for name, value in pairs if name == "registry"]
    if len(specs) > 1:
        return pairs  # "given twice" is the error to report
    last = _REGISTRY_ENTRY_SPLIT.split(specs[0])[-1].strip() if specs else ""
    if not last.lower().startswith("dns:"):
        name = options[0][0]
        found = (
            f"registry={_show(specs[0])} is not a DNS registry"
            if specs
            else "the URL has no registry=dns:..."
        )
        raise ProgrammingError(
            f"parameter {name!r} in the URL is an option of a DNS registry, but {found}: "
            f"give it with registry=dns:DOMAIN in the same URL (registry=dns:DOMAIN&{name}="
            f"...), or in $SQLROUTER_REGISTRY (dns:DOMAIN?{name}=...); a registry file "
            "sets it in [services.NAME]"
        )
    joined = "&".join(f"{name}={quote(value, safe='/:~')}" for name, value in options)
    spec = specs[0] + ("&" if "?" in last else "?") + joined
    return [
        (name, spec if name == "registry" else value)
        for name, value in pairs
        if name not in _REGISTRY_OPTIONS
    ]


def _read_path_and_query(
    collected: _Collected,
    path: str,
    query: str,
    pairs: list[tuple[str, str]],
    *,
    tungsten: bool,
) -> None:
    where = " in the URL"
    if path not in ("", "/"):
        database = path[1:]
        if "/" in database:
            raise ProgrammingError(
                f"invalid database path {_show(path)}: a service URL has one path "
                "segment, the database; percent-encode '/' as %2F"
            )
        collected.fields["database"] = unquote(database)
        collected.claim("database", "database", where)

    # A Tungsten URL may hold the password in its query: if an unencoded '&' cut it,
    # the names that follow are pieces of the password, so they are not quoted.
    hidden = tungsten and any(name == "password" for name, _ in pairs)

    def label(name: str) -> str:
        if hidden:
            return "(not shown: the query holds a password; percent-encode '&' in it as %26)"
        return _show(name)

    for item in query.split("&"):
        if item and "=" not in item:
            raise ProgrammingError(
                f"query parameter {label(unquote(item))}{where} has no value: expected name=value"
            )
    for name, value in pairs:
        canonical = _TUNGSTEN_NAMES.get(name, name) if tungsten else name
        if canonical in _LOCATION_PARAMETERS or canonical in _ALIASES:
            if not (tungsten and name in ("user", "password")):
                raise ProgrammingError(
                    f"parameter {name!r} is not accepted in the query: give it in the URL "
                    f"itself, {_URL_FORM}"
                )
        elif canonical in _OBJECT_ARGS:
            raise ProgrammingError(
                f"parameter {name!r} cannot be given in a URL: its value is a Python "
                f"object; pass {name}=... as a keyword to sqlrouter.connect() or parse_url()"
            )
        elif canonical == "maxAppliedLatency":
            raise ProgrammingError(
                "parameter 'maxAppliedLatency' is the Tungsten SQL Router name, read in "
                "jdbc:t-router:// URLs; in a sqlrouter:// URL use max_lag (seconds)"
            )
        elif canonical not in URL_PARAMETERS:
            if hidden:
                raise ProgrammingError(f"unknown parameter {label(name)}{where}")
            candidates = URL_PARAMETERS | (frozenset(_TUNGSTEN_NAMES) if tungsten else set())
            raise _unknown(name, candidates, in_url=True)
        collected.claim(canonical, name, where)
        if canonical in _TEXT_ARGS:
            collected.connect_args[canonical] = value
        else:
            collected.fields[canonical] = value


def parse_url(url: str | ServiceURL | None = None, /, **overrides: Any) -> ServiceURL:
    """Parse a service URL, apply keyword ``overrides``, validate, return a ServiceURL.

    ``url`` is a ``sqlrouter://``, ``mysql+sqlrouter://`` or ``jdbc:t-router://``
    string, a :class:`ServiceURL`, or ``None`` (everything from keywords).  Keywords
    override the URL: ``service``, ``database`` (alias ``db``), ``user``,
    ``password`` (alias ``passwd``), the routing parameters (``qos``, ``max_lag``,
    ...), any PyMySQL ``connect()`` option (``charset="utf8mb4"``,
    ``cursorclass=DictCursor``...), and ``connect_args`` (a mapping of such options).
    Values may be strings, converted as URL values are, or already typed
    (``qos=QoS.RO_RELAXED``, ``max_lag=2``, ``autocommit=True``).

    Raises :class:`~sqlrouter.errors.ProgrammingError` naming the parameter, the value
    and what is accepted.  Never shows the password.
    """
    given: list[tuple[str, Any]] = []
    if "connect_args" in overrides:
        extra = overrides["connect_args"]
        if not isinstance(extra, Mapping):
            raise ProgrammingError(
                f"invalid connect_args ({type(extra).__name__} value): expected a mapping of "
                "PyMySQL connect() options"
            )
        for name, value in extra.items():
            if not isinstance(name, str):
                raise _bad_key(name)
            given.append((name, value))
    given.extend((name, value) for name, value in overrides.items() if name != "connect_args")
    secrets = [value for name, value in given if name in _SECRET_NAMES]
    if isinstance(url, ServiceURL):
        secrets.append(url.password)
    with _hiding(secrets):
        return _parse(url, given)


def _parse(url: object, given: list[tuple[str, Any]]) -> ServiceURL:
    if isinstance(url, ServiceURL):
        if not given:
            return url
        collected = _Collected()
        collected.fields = {name: getattr(url, name) for name in _FIELD_CHECKS}
        collected.connect_args = dict(url.connect_args)
    elif isinstance(url, str):
        collected = _split_url(url)
    elif url is None:
        collected = _Collected()
    else:
        raise ProgrammingError(
            f"invalid service URL ({type(url).__name__} value): expected a string such as "
            f"{_URL_FORM}, a ServiceURL or None"
        )

    keywords = _Collected()
    for name, value in given:
        canonical = _ALIASES.get(name, name)
        if canonical in _FIELD_CHECKS:
            keywords.claim(canonical, name, "")
            collected.fields[canonical] = value
        elif canonical in _CONNECT_ARGS:
            keywords.claim(canonical, name, "")
            collected.connect_args[canonical] = value
        else:
            raise _unknown(name, KNOWN_PARAMETERS | {*_ALIASES, "connect_args"}, in_url=False)

    if collected.fields.get("service") in (None, ""):
        # Checked here, before the other fields, so that it is the error reported.
        _check_service("service", None)
    with _blinding(collected.blind):
        return ServiceURL(**collected.fields, connect_args=collected.connect_args)
