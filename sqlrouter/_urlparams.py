"""The parameters of a service URL: which exist, and how each value is checked and typed.

Pure, and private to :mod:`sqlrouter.url`: the tables of routing parameters and of
PyMySQL ``connect()`` options, the converters that turn text from a URL or a keyword
value into the typed value (each names the parameter in its message), and the hiding
of secrets from every message.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import quote

from pymysql.cursors import Cursor

from .errors import ProgrammingError
from .gtid import MAX_DOMAINS, MAX_TEXT, CausalToken
from .qos import Fallback, QoS
from .registry._dnsspec import SPEC_OPTIONS
from .topology import MAX_LAG_RANGE

__all__ = ["KNOWN_PARAMETERS", "URL_PARAMETERS", "Consistency"]


class Consistency(enum.Enum):
    """Whether a session reads its own writes (``session``) or not (``none``)."""

    SESSION = "session"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------------------
# Parameter tables

#: The password stands in for itself in rendered URLs and reprs.
_HIDDEN: Final = "***"

#: Routing parameters accepted in a URL query and as keywords (ServiceURL fields).
_ROUTING_PARAMETERS: Final = (
    "qos",
    "max_lag",
    "fallback",
    "registry",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "failover_timeout",
    "consistency",
    "consistency_wait",
    "causal_token",
)

#: The parts of the URL outside the query (ServiceURL fields).
_LOCATION_PARAMETERS: Final = ("service", "database", "user", "password")

# PyMySQL Connection.__init__ keywords passed through in connect_args, by type.
_BOOL_ARGS: Final = frozenset(
    {
        "autocommit",
        "local_infile",
        "use_unicode",
        "binary_prefix",
        "ssl_disabled",
        "ssl_verify_cert",
        "ssl_verify_identity",
    }
)
#: name -> (smallest, largest): PyMySQL packs client_flag as a signed 32-bit integer, and
#: a server's max_allowed_packet is at most 1 GiB.
_INT_ARGS: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {"client_flag": (0, 2**31 - 1), "max_allowed_packet": (1, 2**30)}
)
_STR_ARGS: Final = frozenset(
    {
        "charset",
        "collation",
        "sql_mode",
        "init_command",
        "program_name",
        "bind_address",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_key_password",
    }
)
#: PyMySQL hands this to ``load_pem_public_key``, which wants bytes.
_BYTES_ARGS: Final = frozenset({"server_public_key"})
#: Python objects: keywords only, never in a URL string.
_OBJECT_ARGS: Final = frozenset({"cursorclass", "conv", "ssl", "auth_plugin_map"})
#: Connect arguments whose values are secrets.
_SECRET_ARGS: Final = frozenset({"ssl_key_password"})

_TEXT_ARGS: Final = _BOOL_ARGS | frozenset(_INT_ARGS) | _STR_ARGS | _BYTES_ARGS
_CONNECT_ARGS: Final = _TEXT_ARGS | _OBJECT_ARGS

_ROUTES_BY_SERVICE: Final = "sqlrouter routes by service"
#: PyMySQL keywords that must not reach PyMySQL from a service URL, and why.
_REJECTED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "host": f"{_ROUTES_BY_SERVICE}; pass service=... (a host is chosen by the router)",
        "port": f"{_ROUTES_BY_SERVICE}; the port of each server comes from the registry",
        "unix_socket": (
            f"{_ROUTES_BY_SERVICE}; how to reach each server (host and port) comes from "
            "the registry"
        ),
        "defer_connect": "the router opens the connection to the server it chooses",
        "read_default_file": (
            "an option file can set the host, socket, user and password behind the "
            "router's back; give the options in the URL or as keywords instead"
        ),
        "read_default_group": (
            "an option file can set the host, socket, user and password behind the "
            "router's back; give the options in the URL or as keywords instead"
        ),
        "compress": "PyMySQL does not support compression",
        "named_pipe": "PyMySQL does not support named pipes",
        "sessionId": (
            "Tungsten's sessionId is not supported; sqlrouter keeps a session's reads "
            "consistent with its writes by causal tokens (consistency=session)"
        ),
    }
)

#: Keyword aliases, as PyMySQL accepts them.
_ALIASES: Final[Mapping[str, str]] = MappingProxyType({"db": "database", "passwd": "password"})

#: Every keyword :func:`parse_url` and :meth:`ServiceURL.set` accept (besides the
#: aliases ``db`` and ``passwd``, and ``connect_args``): the URL parts, the routing
#: parameters and the PyMySQL ``connect()`` options passed through.
KNOWN_PARAMETERS: Final[frozenset[str]] = frozenset(
    _LOCATION_PARAMETERS + _ROUTING_PARAMETERS
) | frozenset(_CONNECT_ARGS)

#: The parameter names accepted in the query of a ``sqlrouter://`` URL.
URL_PARAMETERS: Final[frozenset[str]] = frozenset(_ROUTING_PARAMETERS) | _TEXT_ARGS

#: Options of a DNS registry spec (``dns:DOMAIN?key=value&...``) that a URL takes as
#: parameters of its own after ``registry=dns:...``: they join the spec (see
#: :func:`_fold_registry_options`).  ``max_lag`` is the URL's own parameter.
_REGISTRY_OPTIONS: Final = frozenset(SPEC_OPTIONS) - URL_PARAMETERS
_REGISTRY_ENTRY_SPLIT: Final = re.compile(r",(?=\s*(?:file|dns):)", re.IGNORECASE)

#: In ``jdbc:t-router://`` URLs: Tungsten's names for ours.
_TUNGSTEN_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {"maxAppliedLatency": "max_lag", "user": "user", "password": "password"}
)

_SCHEMES: Final = ("sqlrouter", "mysql+sqlrouter")
_TUNGSTEN_PREFIX: Final = "jdbc:t-router://"
#: The schemes named in messages; the Tungsten form only to those who wrote ``jdbc:``.
_ACCEPTED_SCHEMES: Final = "sqlrouter:// or mysql+sqlrouter://"
_URL_FORM: Final = "sqlrouter://[user[:password]@]SERVICE[/DATABASE][?param=value&...]"

_SERVICE_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
#: The longest timeout (seconds): PyMySQL's bound of connect_timeout, a year.  Beyond
#: it a socket or a wait cannot take the number (OverflowError).
_MAX_TIMEOUT: Final = 31536000.0


# --------------------------------------------------------------------------------------
# Value conversion.  Every function takes the parameter name (for the message) and a
# value that is either text from a URL or a keyword value, and returns the typed value.


#: The passwords of the URL being parsed.  Messages never quote a password on purpose;
#: this catches one that is also the (bad) value of another parameter, or a piece of a
#: URL that an unencoded character cut in the wrong place.
_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("sqlrouter.url._SECRETS", default=())

#: Secrets shorter than this are not looked for: they would hide ordinary values.
_MIN_HIDDEN: Final = 3


@contextmanager
def _hiding(secrets: Iterable[object]) -> Iterator[None]:
    """While parsing: :func:`_show` hides ``secrets`` (the strings among them) too."""
    found = tuple(s for s in secrets if isinstance(s, str) and len(s) >= _MIN_HIDDEN)
    token = _SECRETS.set(_SECRETS.get() + found)
    try:
        yield
    finally:
        _SECRETS.reset(token)


def _conceal(text: str) -> str:
    """``text`` with every secret of the current :func:`_hiding` block as ``***``."""
    for secret in sorted(_SECRETS.get(), key=len, reverse=True):
        # errors=: a password may hold a lone surrogate (text decoded from bytes with
        # surrogateescape); an encoding error would carry the password.
        encoded = quote(secret, safe="", errors="surrogatepass")
        for form in (secret, repr(secret)[1:-1], encoded):
            text = text.replace(form, _HIDDEN)
    return text


#: Whether messages quote no value at all: the URL being parsed may hold a password
#: that an unencoded character cut into pieces, which then look like other values.
_BLIND: ContextVar[bool] = ContextVar("sqlrouter.url._BLIND", default=False)
_NOT_SHOWN: Final = "(not shown: the URL may hold a password)"


@contextmanager
def _blinding(blind: bool) -> Iterator[None]:
    """While parsing: with ``blind``, :func:`_show` quotes nothing."""
    token = _BLIND.set(_BLIND.get() or blind)
    try:
        yield
    finally:
        _BLIND.reset(token)


def _show(value: object) -> str:
    """How a message quotes a value the user gave: ``repr``, without secrets, cut short."""
    if _BLIND.get():
        return _NOT_SHOWN
    text = _conceal(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


_E = TypeVar("_E", bound=enum.Enum)


def _enum_converter(cls: type[_E]) -> Callable[[str, object], _E]:
    by_value = {member.value.lower(): member for member in cls}
    expected = " or ".join(member.value for member in cls)

    def convert(name: str, value: object) -> _E:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = by_value.get(value.strip().lower())
            if member is not None:
                return member
        raise ProgrammingError(f"invalid {name} {_show(value)}: expected {expected}")

    return convert


def _seconds(
    *, optional: bool = False, positive: bool = False, maximum: float | None = None
) -> Callable[[str, object], float | None]:
    bound = "> 0" if positive else ">= 0"
    if maximum is not None:
        bound += f" and <= {maximum:.0f}"
    expected = f"a finite number of seconds {bound}"
    if optional:
        expected += ", or None"

    def convert(name: str, value: object) -> float | None:
        if value is None and optional:
            return None
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if (
            number is None
            or not math.isfinite(number)
            or number < 0
            or (positive and number == 0)
            or (maximum is not None and number > maximum)
        ):
            raise ProgrammingError(f"invalid {name} {_show(value)}: expected {expected}")
        return number

    return convert


def _to_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ProgrammingError(
        f"invalid {name} {_show(value)}: expected true or false (or 1/0, yes/no, on/off)"
    )


def _to_int(name: str, value: object) -> int:
    minimum, maximum = _INT_ARGS[name]
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else int(text)
        except ValueError:
            number = None
    if number is None or not minimum <= number <= maximum:
        raise ProgrammingError(
            f"invalid {name} {_show(value)}: expected an integer {minimum}-{maximum}"
        )
    return number


def _to_str(name: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return value
    shown = _HIDDEN if name in _SECRET_ARGS else f"{type(value).__name__} value"
    raise ProgrammingError(f"invalid {name} ({shown}): expected a string")


def _to_bytes(name: str, value: object) -> bytes:
    try:
        if isinstance(value, bytes):
            value.decode("ascii")
            return value
        if isinstance(value, str):
            return value.encode("ascii")
    except UnicodeError:
        pass
    raise ProgrammingError(
        f"invalid {name} {_show(value)}: expected a PEM-encoded public key (ASCII text)"
    )


def _to_cursorclass(name: str, value: object) -> type[Cursor]:
    if isinstance(value, type) and issubclass(value, Cursor):
        return value
    raise ProgrammingError(
        f"invalid {name} {_show(value)}: expected a PyMySQL cursor class such as "
        "pymysql.cursors.DictCursor or SSCursor (as a keyword, not in a URL)"
    )


def _to_mapping(name: str, value: object) -> Mapping[Any, Any]:
    if isinstance(value, Mapping):
        return value
    raise ProgrammingError(f"invalid {name} {_show(value)}: expected a dict (as a keyword)")


def _to_ssl(name: str, value: object) -> ssl.SSLContext | Mapping[str, Any]:
    if isinstance(value, ssl.SSLContext | Mapping):
        return value
    raise ProgrammingError(
        f"invalid {name} ({type(value).__name__} value): expected an ssl.SSLContext "
        "(as a keyword), or the ssl_ca, ssl_cert, ssl_key... parameters"
    )


_CONNECT_ARG_CONVERTERS: Final[Mapping[str, Callable[[str, object], Any]]] = MappingProxyType(
    {
        **dict.fromkeys(_BOOL_ARGS, _to_bool),
        **dict.fromkeys(_INT_ARGS, _to_int),
        **dict.fromkeys(_STR_ARGS, _to_str),
        **dict.fromkeys(_BYTES_ARGS, _to_bytes),
        "cursorclass": _to_cursorclass,
        "conv": _to_mapping,
        "auth_plugin_map": _to_mapping,
        "ssl": _to_ssl,
    }
)


def _check_text(name: str, value: object, *, secret: bool = False) -> str | None:
    """User, password and database: any text PyMySQL can send (no NUL, valid UTF-8)."""
    if value is None:
        return None
    shown = "" if secret else f" {_show(value)}"
    if not isinstance(value, str):
        raise ProgrammingError(f"invalid {name} ({type(value).__name__} value): expected a string")
    if "\0" in value:
        raise ProgrammingError(f"invalid {name}{shown}: it contains a NUL character")
    if not value.isascii() and any(0xD800 <= ord(char) <= 0xDFFF for char in value):
        raise ProgrammingError(f"invalid {name}{shown}: it holds a lone surrogate, not text")
    return value


def _check_service(name: str, value: object) -> str:
    if value is None or value == "":
        raise ProgrammingError(
            f"missing service: give it in the URL ({_URL_FORM}) or as service=..."
        )
    if not isinstance(value, str) or _SERVICE_RE.match(value) is None:
        raise ProgrammingError(
            f"invalid service {_show(value)}: expected a service name made of letters, "
            "digits, '_', '.' and '-'"
        )
    return value


def _check_database(name: str, value: object) -> str | None:
    return _check_text(name, value) or None


def _check_user(name: str, value: object) -> str | None:
    return _check_text(name, value)


def _check_password(name: str, value: object) -> str | None:
    return _check_text(name, value, secret=True)


def _check_registry(name: str, value: object) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProgrammingError(
            f"invalid {name} {_show(value)}: expected the path of a registry file or a registry URL"
        )
    return value


def _check_causal_token(name: str, value: object) -> str | None:
    if isinstance(value, CausalToken):
        return str(value) or None
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return str(CausalToken.parse(value)) or None
        except ValueError:
            pass
    raise ProgrammingError(
        f"invalid {name} {_show(value)}: expected a causal token, a comma-separated list "
        "of GTIDs domain-server_id-sequence such as '0-1-15,1-2-7' (32-bit domain and "
        f"server id, 64-bit sequence; at most {MAX_DOMAINS} domains, {MAX_TEXT} characters)"
    )


_FIELD_CHECKS: Final[Mapping[str, Callable[[str, object], Any]]] = MappingProxyType(
    {
        "service": _check_service,
        "database": _check_database,
        "user": _check_user,
        "password": _check_password,
        "qos": _enum_converter(QoS),
        "max_lag": _seconds(optional=True, maximum=MAX_LAG_RANGE[1]),
        "fallback": _enum_converter(Fallback),
        "registry": _check_registry,
        "connect_timeout": _seconds(positive=True, maximum=_MAX_TIMEOUT),
        "read_timeout": _seconds(optional=True, positive=True, maximum=_MAX_TIMEOUT),
        "write_timeout": _seconds(optional=True, positive=True, maximum=_MAX_TIMEOUT),
        "failover_timeout": _seconds(maximum=_MAX_TIMEOUT),
        "consistency": _enum_converter(Consistency),
        "consistency_wait": _seconds(maximum=_MAX_TIMEOUT),
        "causal_token": _check_causal_token,
    }
)


def _unknown(
    name: str, candidates: Iterable[str], *, in_url: bool, in_connect_args: bool = False
) -> ProgrammingError:
    """The error for a parameter nobody knows, with the closest known name if any.

    ``in_connect_args``: a key of a ServiceURL's ``connect_args``, where only PyMySQL
    ``connect()`` options are accepted.
    """
    where = " in the URL" if in_url else " in connect_args" if in_connect_args else ""
    hint = _REJECTED.get(name)
    if hint is not None:
        return ProgrammingError(f"parameter {_show(name)}{where} is not accepted: {hint}")
    names = sorted(candidates)
    by_lower = {candidate.lower(): candidate for candidate in names}
    close = by_lower.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, names, n=1)), None
    )
    if close is not None:
        return ProgrammingError(f"unknown parameter {_show(name)}{where}: did you mean {close!r}?")
    options = ", ".join(sorted(_TEXT_ARGS if in_url else _CONNECT_ARGS))
    if in_connect_args:
        return ProgrammingError(
            f"unknown parameter {_show(name)}{where}: expected a PyMySQL connect() option "
            f"({options})"
        )
    routing = ", ".join(_ROUTING_PARAMETERS)
    return ProgrammingError(
        f"unknown parameter {_show(name)}{where}: expected a routing parameter ({routing}) "
        f"or a PyMySQL connect() option ({options})"
    )


def _bad_key(name: object) -> ProgrammingError:
    """The error for a key of connect_args that is not a string."""
    return ProgrammingError(
        f"invalid connect_args key {_show(name)} ({type(name).__name__}): expected the name "
        "of a PyMySQL connect() option"
    )


def _check_connect_args(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProgrammingError(
            f"invalid connect_args ({type(value).__name__} value): expected a mapping of "
            "PyMySQL connect() options"
        )
    checked: dict[str, Any] = {}
    for name, arg in value.items():
        if not isinstance(name, str):
            raise _bad_key(name)
        if name in KNOWN_PARAMETERS.difference(_CONNECT_ARGS) or name in _ALIASES:
            # parse_url() takes these among connect_args; a ServiceURL's fields do not.
            raise ProgrammingError(
                f"connect_args holds {name!r}, which is no PyMySQL connect() option: give "
                f"it as ServiceURL({_ALIASES.get(name, name)}=...)"
            )
        if name not in _CONNECT_ARGS:
            raise _unknown(name, _CONNECT_ARGS, in_url=False, in_connect_args=True)
        if arg is None and name != "autocommit":
            continue  # PyMySQL's default; autocommit=None means "the server's default"
        checked[name] = None if arg is None else _CONNECT_ARG_CONVERTERS[name](name, arg)
    return MappingProxyType(checked)
