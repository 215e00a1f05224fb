"""Session state in OK packets: the GTID of each write, with no extra round trip.

A master connection negotiates ``CLIENT_SESSION_TRACK`` and runs
``SET SESSION session_track_system_variables='last_gtid'`` (MariaDB).  From then on,
the OK packet of every statement that commits a transaction to the binary log carries
the GTID the server gave it, and :func:`last_gtid_from_ok` reads it.

PyMySQL parses an OK packet up to ``warning_count`` and keeps the rest as
``message``.  With ``CLIENT_SESSION_TRACK`` negotiated, that rest is (MariaDB's and
MySQL's protocol documentation, "OK_Packet" and "Session State Information")::

    string<lenenc>  info                       absent when the packet ends here
    if server_status & SERVER_SESSION_STATE_CHANGED:
        int<lenenc>     length of all the entries that follow
        entries, each:
            int<1>          type
            int<lenenc>     length of the data
            data, by type:
              0  system variable     string<lenenc> name, string<lenenc> value
              1  schema              string<lenenc> name
              2  state change        the byte "1" itself (not length-encoded)
              3  GTIDs (MySQL)       int<1> encoding (0), string<lenenc> GTID set
              4  trx characteristics string<lenenc>
              5  trx state           string<lenenc>

The decoder is strict, because a misread length would misread the GTID: the fields of
an entry must fill it exactly, and the entries must end where the packet ends.  Unknown
types (and a type 3 entry of an unknown encoding) are skipped by their length.  Offsets
in error messages count from the first byte after ``warning_count``.

Without ``CLIENT_SESSION_TRACK`` the info is the whole rest of the packet
(``string<EOF>``) and the server never sets ``SERVER_SESSION_STATE_CHANGED``; this
module assumes the capability was negotiated.  MySQL has no ``last_gtid``: with
``session_track_gtids=OWN_GTID`` its GTIDs come as type 3 entries, which
:func:`decode_session_state` returns as :attr:`SessionState.gtids`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "CLIENT_SESSION_TRACK",
    "SERVER_SESSION_STATE_CHANGED",
    "SESSION_TRACK_GTIDS",
    "SESSION_TRACK_SCHEMA",
    "SESSION_TRACK_STATE_CHANGE",
    "SESSION_TRACK_SYSTEM_VARIABLES",
    "SESSION_TRACK_TRANSACTION_CHARACTERISTICS",
    "SESSION_TRACK_TRANSACTION_STATE",
    "SessionState",
    "decode_session_state",
    "last_gtid_from_ok",
]

CLIENT_SESSION_TRACK = 1 << 23
SERVER_SESSION_STATE_CHANGED = 0x4000

SESSION_TRACK_SYSTEM_VARIABLES = 0
SESSION_TRACK_SCHEMA = 1
SESSION_TRACK_STATE_CHANGE = 2
SESSION_TRACK_GTIDS = 3
SESSION_TRACK_TRANSACTION_CHARACTERISTICS = 4
SESSION_TRACK_TRANSACTION_STATE = 5

_LAST_GTID = b"last_gtid"
_EMPTY_VARIABLES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SessionState:
    """What one OK packet says about the session.

    Text is decoded as UTF-8 with ``surrogateescape``: no byte is lost, and decoding
    never fails.  When an entry comes twice, the later one wins.  Entries of a type this
    module does not know are kept, undecoded, in ``unknown`` as ``(type, data)``.
    """

    info: str = ""
    system_variables: Mapping[str, str] = field(default_factory=lambda: _EMPTY_VARIABLES)
    schema: str | None = None
    state_changed: bool = False
    gtids: str | None = None
    transaction_characteristics: str | None = None
    transaction_state: str | None = None
    unknown: tuple[tuple[int, bytes], ...] = ()

    @property
    def last_gtid(self) -> str | None:
        """MariaDB's ``last_gtid`` (``domain-server_id-seq``), or None if absent or empty."""
        return self.system_variables.get("last_gtid") or None


def _fail(pos: int, expected: str, found: str) -> ValueError:
    return ValueError(
        f"malformed session state in OK packet at byte {pos} after warning_count: "
        f"expected {expected}, found {found}"
    )


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _lenenc(buf: bytes, pos: int, limit: int, what: str) -> tuple[int, int]:
    """Read the length of ``what``, a length-encoded integer: ``(value, next pos)``.

    ``what`` goes into a message only on error, so the happy path allocates nothing but
    the result tuple.
    """
    if pos >= limit:
        found = "the end of the data" if limit == len(buf) else "the end of the entry"
        raise _fail(pos, f"the length of {what}", found)
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        width = 2
    elif first == 0xFD:
        width = 3
    elif first == 0xFE:
        width = 8
    else:
        raise _fail(
            pos,
            f"the length of {what}",
            f"byte 0x{first:02x}, which does not start a length-encoded integer",
        )
    end = pos + 1 + width
    if end > limit:
        raise _fail(
            pos, f"the {width + 1}-byte length of {what}", f"only {_bytes(limit - pos)} left"
        )
    return int.from_bytes(buf[pos + 1 : end], "little"), end


def _span(buf: bytes, pos: int, limit: int, what: str) -> tuple[int, int]:
    """Locate the length-encoded string ``what`` at ``pos``: ``(start, end)`` of its bytes."""
    length, start = _lenenc(buf, pos, limit, what)
    end = start + length
    if end > limit:
        raise _fail(start, f"{_bytes(length)} of {what}", f"only {_bytes(limit - start)} left")
    return start, end


def _text(buf: bytes, start: int, end: int) -> str:
    return buf[start:end].decode("utf-8", "surrogateescape")


def _block(buf: bytes) -> tuple[int, int, int, int]:
    """Locate the info string and the entries: ``(info start, info end, first entry, end)``.

    The session state must end the packet.
    """
    info_start, info_end = _span(buf, 0, len(buf), "the info string")
    total, first = _lenenc(buf, info_end, len(buf), "the session state")
    block_end = first + total
    if block_end != len(buf):
        raise _fail(
            first,
            f"{_bytes(total)} of session state that end the packet",
            _bytes(len(buf) - first),
        )
    return info_start, info_end, first, block_end


def _entry(buf: bytes, pos: int, block_end: int) -> tuple[int, int, int]:
    """Read the header of the entry at ``pos``: ``(type, data start, data end)``."""
    kind = buf[pos]
    start, end = _span(buf, pos + 1, block_end, "the data of an entry")
    return kind, start, end


def _expect_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise _fail(pos, f"the end of the {what} entry", f"{_bytes(end - pos)} more")


def _variable(message: bytes, start: int, end: int) -> tuple[int, int, int, int]:
    """The name's and the value's spans of a system-variable entry at ``start:end``."""
    name_start, name_end = _span(message, start, end, "a system variable name")
    value_start, value_end = _span(message, name_end, end, "a system variable value")
    _expect_end(value_end, end, "system variable")
    return name_start, name_end, value_start, value_end


def decode_session_state(
    message: bytes, server_status: int = SERVER_SESSION_STATE_CHANGED
) -> SessionState:
    """Decode the rest of an OK packet after ``warning_count`` (PyMySQL's ``message``).

    The connection must have negotiated :data:`CLIENT_SESSION_TRACK`.  Without
    :data:`SERVER_SESSION_STATE_CHANGED` in ``server_status`` only the info string is
    read.  Malformed or truncated input raises :class:`ValueError` naming the offset.
    """
    if not server_status & SERVER_SESSION_STATE_CHANGED:
        if not message:
            return SessionState()
        start, end = _span(message, 0, len(message), "the info string")
        if end != len(message):
            raise _fail(
                end,
                "the end of the packet after the info string",
                f"{_bytes(len(message) - end)} more",
            )
        return SessionState(info=_text(message, start, end))

    info_start, info_end, pos, block_end = _block(message)
    info = _text(message, info_start, info_end)
    variables: dict[str, str] = {}
    schema: str | None = None
    state_changed = False
    gtids: str | None = None
    characteristics: str | None = None
    trx_state: str | None = None
    unknown: list[tuple[int, bytes]] = []
    while pos < block_end:
        kind, start, end = _entry(message, pos, block_end)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            name_start, name_end, value_start, value_end = _variable(message, start, end)
            variables[_text(message, name_start, name_end)] = _text(message, value_start, value_end)
        elif kind == SESSION_TRACK_SCHEMA:
            name_start, name_end = _span(message, start, end, "a schema name")
            _expect_end(name_end, end, "schema")
            schema = _text(message, name_start, name_end)
        elif kind == SESSION_TRACK_STATE_CHANGE:
            state_changed = message[start:end] == b"1"
        elif kind == SESSION_TRACK_GTIDS and start < end and message[start] == 0:
            gtid_start, gtid_end = _span(message, start + 1, end, "a GTID set")
            _expect_end(gtid_end, end, "GTIDs")
            gtids = _text(message, gtid_start, gtid_end)
        elif kind in (SESSION_TRACK_TRANSACTION_CHARACTERISTICS, SESSION_TRACK_TRANSACTION_STATE):
            text_start, text_end = _span(message, start, end, "a transaction description")
            _expect_end(text_end, end, "transaction")
            if kind == SESSION_TRACK_TRANSACTION_STATE:
                trx_state = _text(message, text_start, text_end)
            else:
                characteristics = _text(message, text_start, text_end)
        else:
            unknown.append((kind, message[start:end]))
        pos = end
    return SessionState(
        info=info,
        system_variables=MappingProxyType(variables) if variables else _EMPTY_VARIABLES,
        schema=schema,
        state_changed=state_changed,
        gtids=gtids,
        transaction_characteristics=characteristics,
        transaction_state=trx_state,
        unknown=tuple(unknown),
    )


def last_gtid_from_ok(server_status: int, message: bytes) -> str | None:
    """The ``last_gtid`` an OK packet reports, or None.

    None when ``server_status`` lacks :data:`SERVER_SESSION_STATE_CHANGED` (checked
    first, without reading ``message``), when ``last_gtid`` is not among the entries, or
    when its value is empty (no GTID yet).  Runs after every statement on a master
    connection, so it only slices out the value it returns, and looks inside no entry
    but the system variables.  Whenever :func:`decode_session_state` accepts the
    input, the result is ``decode_session_state(message, server_status).last_gtid``;
    malformed framing raises :class:`ValueError` as there.
    """
    if not server_status & SERVER_SESSION_STATE_CHANGED:
        return None
    # Fast path for what MariaDB sends after a commit: a short info string, then a session
    # state holding one short entry, last_gtid.  Every length is one byte and each one
    # must reach exactly to the end of the packet, so the layout is the only parse.
    #   [info len][info][state len][0][entry len][9]last_gtid[value len][value]
    size = len(message)
    info_len = message[0] if size else 0xFB
    b = info_len + 1
    if (
        info_len < 0xFB
        and size >= b + 14
        and size - b - 1 < 0xFB
        and message[b] == size - b - 1
        and message[b + 1] == SESSION_TRACK_SYSTEM_VARIABLES
        and message[b + 2] == size - b - 3
        and message[b + 3] == 9
        and message.startswith(_LAST_GTID, b + 4)
        and message[b + 13] == size - b - 14
    ):
        return _text(message, b + 14, size) or None

    _, _, pos, block_end = _block(message)
    found: str | None = None
    while pos < block_end:
        kind, start, end = _entry(message, pos, block_end)
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            name_start, name_end, value_start, value_end = _variable(message, start, end)
            if name_end - name_start == 9 and message.startswith(_LAST_GTID, name_start):
                found = _text(message, value_start, value_end) or None
        pos = end
    return found
