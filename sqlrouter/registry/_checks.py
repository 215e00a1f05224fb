"""Checking a registry's input: typed values, and password files.

Shared by the TOML file registry and the DNS registry's options: :class:`_Where` checks
one value and builds the error that names the registry, the service and the field;
:func:`_read_password_file` reads a password file (a small private regular file), and
the fingerprints of the files read tell a registry when one changed (a rotation).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import stat as stat_mode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..topology import (
    range_text,
)
from .base import RegistryError, _error

__all__ = [
    "MAX_PASSWORD_FILE",
]

logger = logging.getLogger("sqlrouter.registry")


#: What identifies one version of a file: device, inode, mtime_ns, size.  An atomic
#: replace (rename) changes the inode even when the mtime does not move.
_Fingerprint = tuple[int, int, int, int]


#: A password file read: its absolute path, and its fingerprint then, with its mode (a
#: chmod matters: a file others may write is refused).
_Secret = tuple[str, tuple[int, ...]]


#: The largest password file read (bytes): a password, not a document.
MAX_PASSWORD_FILE: Final = 4096


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _secret_print(st: os.stat_result) -> tuple[int, ...]:
    return (*_fingerprint(st), st.st_mode)


def _secret_print_of(path: str) -> tuple[int, ...]:
    try:
        return _secret_print(os.stat(path))
    except OSError:
        return ()  # cannot be looked at


def _secrets_changed(secrets: Iterable[_Secret]) -> bool:
    """Whether a password file looked at before has changed since: one ``stat`` each."""
    return any(_secret_print_of(path) != fingerprint for path, fingerprint in secrets)


def _show(value: object) -> str:
    """A value as a message shows it: short, in TOML words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _unknown_keys(table: Mapping[str, Any], known: Sequence[str]) -> str | None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"unknown key {key!r} ({hint}known keys: {', '.join(known)})"
    return None


@dataclass(frozen=True, slots=True)
class _Where:
    """The part of the file being validated, to build error messages."""

    path: str
    service: str = ""

    def error(self, field: str, detail: str) -> RegistryError:
        return _error(self.path, detail, service=self.service, field=field)

    def describe(self, field: str) -> str:
        """``registry PATH: service 'NAME': FIELD``, as errors start."""
        parts = [f"registry {self.path}"]
        if self.service:
            parts.append(f"service {self.service!r}")
        if field:
            parts.append(field)
        return ": ".join(parts)

    def check_keys(self, field: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
        problem = _unknown_keys(table, known)
        if problem is not None:
            raise self.error(field, problem)

    def table(self, field: str, value: object, header: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"expected a table ({header}), got {_show(value)}")
        return value

    def string(self, field: str, value: object, *, secret: bool = False) -> str:
        if not isinstance(value, str):
            if secret:
                raise self.error(field, "expected a string")
            raise self.error(field, f"expected a string, got {_show(value)}")
        return value

    def boolean(self, field: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(field, f"expected true or false, got {_show(value)}")
        return value

    def integer(self, field: str, value: object, low: int, high: int | None = None) -> int:
        expected = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        return value

    def seconds(self, field: str, value: object, bounds: tuple[float, float]) -> float:
        low, high = bounds
        expected = f"a number of seconds {range_text(bounds)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not low <= number <= high:  # NaN fails too
            raise self.error(field, f"expected {expected}, got {_show(value)}")
        return number


def _read_password_file(
    where: _Where, field: str, value: object, base: Path, secrets: list[_Secret]
) -> str:
    """The password in the file ``value`` names (relative to ``base``); noted in ``secrets``.

    Only a regular file of at most :data:`MAX_PASSWORD_FILE` bytes that group and others
    cannot write is read (a FIFO, a device such as ``/dev/zero`` or a directory is
    refused without being opened); one that they can read is read with a warning.
    """
    name = where.string(field, value)
    if not name:
        raise where.error(field, "expected a file path, got ''")
    file = Path(os.path.abspath(base / Path(name).expanduser()))
    # Noted before anything can fail, so that a fix of this file is noticed as a change.
    secrets.append((str(file), _secret_print_of(str(file))))
    try:
        st = os.stat(file)
        if not stat_mode.S_ISREG(st.st_mode):
            raise where.error(
                field,
                f"{file} is not a regular file: a password file must be one (a FIFO, a "
                "device or a directory is refused)",
            )
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise where.error(field, f"cannot read {file}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # what was opened: the path may have changed since the stat
        mode = stat_mode.S_IMODE(st.st_mode)
        if not stat_mode.S_ISREG(st.st_mode):
            raise where.error(field, f"{file} is not a regular file: a password file must be one")
        if mode & 0o022:
            raise where.error(
                field,
                f"{file} has mode {mode:04o}: a password file must not be writable by group "
                f"or others (chmod 600 {file})",
            )
        if st.st_size > MAX_PASSWORD_FILE:
            raise where.error(
                field,
                f"{file} holds {st.st_size} bytes: a password file holds at most "
                f"{MAX_PASSWORD_FILE}",
            )
        try:
            data = os.read(fd, MAX_PASSWORD_FILE + 1)
        except OSError as exc:
            raise where.error(field, f"cannot read {file}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD_FILE:  # it grew after the fstat
        raise where.error(
            field, f"{file} holds over {MAX_PASSWORD_FILE} bytes: a password file holds less"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise where.error(field, f"{file} is not UTF-8 text") from None
    if mode & 0o044:
        logger.warning(
            "%s: %s has mode %04o: other users can read this password; chmod 600 %s",
            where.describe(field),
            file,
            mode,
            file,
        )
    secrets[-1] = (str(file), _secret_print(st))  # what was read
    # Editors and `echo` end the file with a newline that is not part of the password.
    return text.rstrip("\r\n")
