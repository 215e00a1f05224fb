"""Writing a registry file (the sandbox, and tools that generate one)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from ..topology import (
    Credentials,
    Service,
)
from ._parse import _parse_document

__all__ = [
    "render_registry",
    "write_registry_file",
]


_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write a {type(value).__name__} to a registry file")


def _render_table(header: str, table: Mapping[str, Any], lines: list[str]) -> None:
    lines.append(f"[{header}]")
    subtables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines.append("")
        _render_table(f"{header}.{_toml_key(key)}", value, lines)


def _render_credentials(header: str, credentials: Credentials, lines: list[str]) -> None:
    lines.append("")
    lines.append(f"[{header}]")
    lines.append(f"user = {_toml_string(credentials.user)}")
    lines.append(f"password = {_toml_string(credentials.password)}")


def render_registry(
    services: Iterable[Service], *, control: Mapping[str, Any] | None = None
) -> str:
    """The text of a registry file describing ``services`` (passwords included)."""
    lines = [
        "# sqlrouter registry: the services this process may connect to.",
        "# The format is described in sqlrouter's docs/registry.md.",
    ]
    if control is not None:
        lines.append("")
        _render_table("control", control, lines)
    seen: set[str] = set()
    for service in services:
        if service.name in seen:
            raise ValueError(f"service {service.name!r} is given twice")
        seen.add(service.name)
        prefix = f"services.{_toml_key(service.name)}"
        lines += [
            "",
            f"[{prefix}]",
            f"max_lag = {_toml_value(float(service.max_lag))}",
            f"monitor_interval = {_toml_value(float(service.monitor_interval))}",
            f"probe_timeout = {_toml_value(float(service.probe_timeout))}",
            "",
            f"[{prefix}.heartbeat]",
            f"enabled = {_toml_value(service.heartbeat.enabled)}",
            f"table = {_toml_string(service.heartbeat.table)}",
        ]
        if service.monitor_credentials is not None:
            _render_credentials(f"{prefix}.monitor", service.monitor_credentials, lines)
        if service.admin_credentials is not None:
            _render_credentials(f"{prefix}.admin", service.admin_credentials, lines)
        if service.replication_credentials is not None:
            _render_credentials(f"{prefix}.replication", service.replication_credentials, lines)
        for ds in service.datasources:
            lines += [
                "",
                f"[[{prefix}.datasources]]",
                f"name = {_toml_string(ds.name)}",
                f"host = {_toml_string(ds.host)}",
                f"port = {ds.port}",
                f"role = {_toml_string(ds.role.value)}",
                f"weight = {ds.weight}",
            ]
    return "\n".join(lines) + "\n"


def write_registry_file(
    path: str | os.PathLike[str],
    services: Iterable[Service],
    *,
    control: Mapping[str, Any] | None = None,
) -> Path:
    """Write a registry file for ``services``; returns its absolute path.

    The text is validated as :func:`load_registry_file` would before anything is
    written (:class:`RegistryError` if a service is invalid).  The file is created
    with mode 0600, since it holds passwords, and replaces any previous file
    atomically, so that a process reloading it never reads half a file.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    text = render_registry(services, control=control)
    _parse_document(text, target)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target
