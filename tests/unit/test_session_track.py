"""Decoding the session state of OK packets: the GTID of each write (sqlrouter._session_track).

The fixtures are OK packets captured from a real server, byte for byte.  How they were
captured: a throwaway MariaDB 10.11.19-MariaDB-0+deb12u1 (Debian 12 package), started
with ``mariadbd --no-defaults --log-bin --server-id=1`` on a loopback port (binlog_format
MIXED, the default), was sent each statement below by a PyMySQL 1.2.4 connection opened
with ``client_flag=1 << 23`` (CLIENT_SESSION_TRACK) and ``autocommit=True``, after
``SET SESSION session_track_system_variables='last_gtid'``.  A subclass of
``pymysql.connections.Connection`` recorded every payload ``_read_packet`` returned.
The same server's global default was
``autocommit,character_set_client,character_set_connection,character_set_results,time_zone``,
which does not include last_gtid.  The tests need no server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymysql.protocol import MysqlPacket, OKPacketWrapper

import sqlrouter._session_track as session_track
from sqlrouter._session_track import (
    CLIENT_SESSION_TRACK,
    SERVER_SESSION_STATE_CHANGED,
    SESSION_TRACK_GTIDS,
    SESSION_TRACK_SCHEMA,
    SESSION_TRACK_STATE_CHANGE,
    SESSION_TRACK_SYSTEM_VARIABLES,
    SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
    SESSION_TRACK_TRANSACTION_STATE,
    SessionState,
    decode_session_state,
    last_gtid_from_ok,
)
from sqlrouter.gtid import CausalToken


@dataclass(frozen=True)
class Captured:
    sql: str
    packet: bytes
    last_gtid: str | None
    info: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    schema: str | None = None
    state_changed: bool = False
    transaction_state: str | None = None
    transaction_characteristics: str | None = None


_SQL_MODE = (
    "REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,IGNORE_BAD_TABLE_OPTIONS,"
    "ONLY_FULL_GROUP_BY,NO_UNSIGNED_SUBTRACTION,NO_DIR_IN_CREATE,NO_AUTO_VALUE_ON_ZERO,"
    "NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ALLOW_INVALID_DATES,ERROR_FOR_DIVISION_BY_ZERO,TRADITIONAL,NO_AUTO_CREATE_USER,"
    "HIGH_NOT_PRECEDENCE,NO_ENGINE_SUBSTITUTION,PAD_CHAR_TO_FULL_LENGTH"
)

# Whole OK packet payloads (header 0x00 to the end), in the order they were sent on one
# connection; the table test.sqlrouter_capture was dropped at the end.
CAPTURED: dict[str, Captured] = {
    "create_table": Captured(
        "CREATE TABLE IF NOT EXISTS test.sqlrouter_capture "
        "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))",
        bytes.fromhex("0000000240000000120010096c6173745f6774696405302d312d37"),
        last_gtid="0-1-7",
        variables={"last_gtid": "0-1-7"},
    ),
    "insert_autocommit": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('a')",
        bytes.fromhex("0001010240000000120010096c6173745f6774696405302d312d38"),
        last_gtid="0-1-8",
        variables={"last_gtid": "0-1-8"},
    ),
    "begin": Captured("BEGIN", bytes.fromhex("00000003000000"), last_gtid=None),
    "insert_in_transaction": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('b')",
        bytes.fromhex("00010203000000"),
        last_gtid=None,
    ),
    "commit": Captured(
        "COMMIT",
        bytes.fromhex("0000000240000000120010096c6173745f6774696405302d312d39"),
        last_gtid="0-1-9",
        variables={"last_gtid": "0-1-9"},
    ),
    # With binlog_format=MIXED the UPDATE is logged as a statement, matched rows or not.
    "update_no_rows": Captured(
        "UPDATE test.sqlrouter_capture SET v = 'z' WHERE id = -1",
        bytes.fromhex(
            "0000000240000028526f7773206d6174636865643a203020204368616e6765643a2030202057"
            "61726e696e67733a2030130011096c6173745f6774696406302d312d3130"
        ),
        last_gtid="0-1-10",
        info="Rows matched: 0  Changed: 0  Warnings: 0",
        variables={"last_gtid": "0-1-10"},
    ),
    "use_schema": Captured(
        "USE test",
        bytes.fromhex("00000002400000000701050474657374"),
        last_gtid=None,
        schema="test",
    ),
    "multi_row_insert": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('c'), ('d'), ('e')",
        bytes.fromhex(
            "00030302400000265265636f7264733a203320204475706c6963617465733a20302020576172"
            "6e696e67733a2030130011096c6173745f6774696406302d312d3131"
        ),
        last_gtid="0-1-11",
        info="Records: 3  Duplicates: 0  Warnings: 0",
        variables={"last_gtid": "0-1-11"},
    ),
    # Entries of types 2, 4 and 5 (state change, transaction characteristics and state).
    "set_more_tracking": Captured(
        "SET SESSION session_track_state_change=ON, "
        "session_track_transaction_info='CHARACTERISTICS', "
        "session_track_system_variables='last_gtid,autocommit'",
        bytes.fromhex("0000000240000000110201310509085f5f5f5f5f5f5f5f040100"),
        last_gtid=None,
        state_changed=True,
        transaction_state="________",
        transaction_characteristics="",
    ),
    "start_transaction_tracked": Captured(
        "START TRANSACTION READ WRITE",
        bytes.fromhex(
            "00000003400000002b050908545f5f5f5f5f5f5f041e1d5354415254205452414e5341435449"
            "4f4e20524541442057524954453b"
        ),
        last_gtid=None,
        transaction_state="T_______",
        transaction_characteristics="START TRANSACTION READ WRITE;",
    ),
    "insert_tracked": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('f')",
        bytes.fromhex("00010603400000000b050908545f5f5f575f5f5f"),
        last_gtid=None,
        transaction_state="T___W___",
    ),
    "commit_tracked": Captured(
        "COMMIT",
        bytes.fromhex(
            "0000000240000000210011096c6173745f6774696406302d312d31320509085f5f5f5f5f5f5f5f040100"
        ),
        last_gtid="0-1-12",
        variables={"last_gtid": "0-1-12"},
        transaction_state="________",
        transaction_characteristics="",
    ),
    "drop_table": Captured(
        "DROP TABLE test.sqlrouter_capture",
        bytes.fromhex("0000000240000000130011096c6173745f6774696406302d312d3133"),
        last_gtid="0-1-13",
        variables={"last_gtid": "0-1-13"},
    ),
    # Same server, a second connection with binlog_format=ROW: nothing is logged.
    "update_no_rows_row_format": Captured(
        "UPDATE test.sqlrouter_capture SET v = 'z' WHERE id = -1",
        bytes.fromhex(
            "0000000200000028526f7773206d6174636865643a203020204368616e6765643a2030202057"
            "61726e696e67733a2030"
        ),
        last_gtid=None,
        info="Rows matched: 0  Changed: 0  Warnings: 0",
    ),
    "rollback": Captured("ROLLBACK", bytes.fromhex("00000002000000"), last_gtid=None),
    # A third connection, tracking 'last_gtid,sql_mode', after
    # SET SESSION gtid_domain_id=7, server_id=42, gtid_seq_no=18446744073709551615.
    "insert_max_sequence": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('big')",
        bytes.fromhex(
            "0001010240000000260024096c6173745f6774696419372d34322d3138343436373434303733"
            "373039353531363135"
        ),
        last_gtid="7-42-18446744073709551615",
        variables={"last_gtid": "7-42-18446744073709551615"},
    ),
    # 395 bytes of value: every length is a 3-byte length-encoded integer (0xfc).
    "set_long_sql_mode": Captured(
        f"SET SESSION sql_mode='{_SQL_MODE}'",
        bytes.fromhex(
            "00000002c2000000fc9b0100fc97010873716c5f6d6f6465fc8b015245414c5f41535f464c4f4154"
            "2c50495045535f41535f434f4e4341542c414e53495f51554f5445532c49474e4f52455f53504143"
            "452c49474e4f52455f4241445f5441424c455f4f5054494f4e532c4f4e4c595f46554c4c5f47524f"
            "55505f42592c4e4f5f554e5349474e45445f5355425452414354494f4e2c4e4f5f4449525f494e5f"
            "4352454154452c4e4f5f4155544f5f56414c55455f4f4e5f5a45524f2c4e4f5f4241434b534c4153"
            "485f455343415045532c5354524943545f5452414e535f5441424c45532c5354524943545f414c4c"
            "5f5441424c45532c4e4f5f5a45524f5f494e5f444154452c4e4f5f5a45524f5f444154452c414c4c"
            "4f575f494e56414c49445f44415445532c4552524f525f464f525f4449564953494f4e5f42595f5a"
            "45524f2c545241444954494f4e414c2c4e4f5f4155544f5f4352454154455f555345522c48494748"
            "5f4e4f545f505245434544454e43452c4e4f5f454e47494e455f535542535449545554494f4e2c50"
            "41445f434841525f544f5f46554c4c5f4c454e475448"
        ),
        last_gtid=None,
        variables={"sql_mode": _SQL_MODE},
    ),
    # The sequence wrapped past 2**64-1: the server reported last_gtid as empty.
    "insert_after_sequence_wrap": Captured(
        "INSERT INTO test.sqlrouter_capture (v) VALUES ('x')",
        bytes.fromhex("00010202c20000000d000b096c6173745f6774696400"),
        last_gtid=None,
        variables={"last_gtid": ""},
    ),
    "drop_table_domain_7": Captured(
        "DROP TABLE test.sqlrouter_capture",
        bytes.fromhex("00000002c2000000130011096c6173745f6774696406372d34322d31"),
        last_gtid="7-42-1",
        variables={"last_gtid": "7-42-1"},
    ),
    # The machine's own MariaDB 10.11.19 on 127.0.0.1:3306 runs with log_bin=0: a commit
    # writes no GTID, and the OK packet carries no session state at all.
    "commit_binlog_off": Captured("COMMIT", bytes.fromhex("00000002000000"), last_gtid=None),
}

# SELECT v FROM test.sqlrouter_capture WHERE id = 1 ends with this EOF packet (PyMySQL
# does not ask for CLIENT_DEPRECATE_EOF): no OK packet, so no session state to read.
SELECT_EOF = bytes.fromhex("fe00000200")

# The statement that turns tracking on reports nothing itself.
SET_TRACKING_OK = bytes.fromhex("00000002000000")


def split_ok(packet: bytes) -> tuple[int, bytes]:
    """``(server_status, message)`` as PyMySQL's own OK packet parser gives them."""
    ok = OKPacketWrapper(MysqlPacket(packet, "utf8"))
    server_status: int = ok.server_status
    message: bytes = ok.message
    return server_status, message


# An encoder, to build packets from entries (and round-trip them through the decoder).


def lenenc(value: int, width: int = 0) -> bytes:
    """A length-encoded integer; ``width`` forces a longer form than needed (0: shortest)."""
    if width == 0:
        width = 1 if value < 0xFB else 3 if value < 1 << 16 else 4 if value < 1 << 24 else 9
    if width == 1:
        return bytes([value])
    prefix = {3: 0xFC, 4: 0xFD, 9: 0xFE}[width]
    return bytes([prefix]) + value.to_bytes(width - 1, "little")


def lenstr(data: bytes, width: int = 0) -> bytes:
    return lenenc(len(data), width) + data


Entry = tuple[int, bytes]  # (type, data) as the server writes them


def variable(name: bytes, value: bytes, width: int = 0) -> Entry:
    return SESSION_TRACK_SYSTEM_VARIABLES, lenstr(name, width) + lenstr(value, width)


def encode(entries: list[Entry], info: bytes = b"", width: int = 0) -> bytes:
    block = b"".join(bytes([kind]) + lenstr(data, width) for kind, data in entries)
    return lenstr(info, width) + lenstr(block, width)


def with_flag() -> list[str]:
    return [
        name
        for name, case in CAPTURED.items()
        if split_ok(case.packet)[0] & SERVER_SESSION_STATE_CHANGED
    ]


def test_constants() -> None:
    assert CLIENT_SESSION_TRACK == 0x800000
    assert SERVER_SESSION_STATE_CHANGED == 0x4000
    assert [
        SESSION_TRACK_SYSTEM_VARIABLES,
        SESSION_TRACK_SCHEMA,
        SESSION_TRACK_STATE_CHANGE,
        SESSION_TRACK_GTIDS,
        SESSION_TRACK_TRANSACTION_CHARACTERISTICS,
        SESSION_TRACK_TRANSACTION_STATE,
    ] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("name", CAPTURED)
def test_last_gtid_of_captured_packet(name: str) -> None:
    case = CAPTURED[name]
    server_status, message = split_ok(case.packet)
    assert last_gtid_from_ok(server_status, message) == case.last_gtid


@pytest.mark.parametrize("name", CAPTURED)
def test_decode_captured_packet(name: str) -> None:
    case = CAPTURED[name]
    server_status, message = split_ok(case.packet)
    state = decode_session_state(message, server_status)
    assert state == SessionState(
        info=case.info,
        system_variables=case.variables,
        schema=case.schema,
        state_changed=case.state_changed,
        transaction_state=case.transaction_state,
        transaction_characteristics=case.transaction_characteristics,
    )
    assert state.last_gtid == case.last_gtid


def test_captured_gtids_are_causal_tokens() -> None:
    gtids = [c.last_gtid for c in CAPTURED.values() if c.last_gtid is not None]
    token = CausalToken().merge(*(CausalToken.parse(g) for g in gtids))
    assert str(token) == "0-1-13,7-42-18446744073709551615"


def test_select_ends_without_ok_packet() -> None:
    eof = MysqlPacket(SELECT_EOF, "utf8")
    assert eof.is_eof_packet()
    assert not eof.is_ok_packet()


def test_enabling_tracking_reports_nothing() -> None:
    server_status, message = split_ok(SET_TRACKING_OK)
    assert message == b""
    assert last_gtid_from_ok(server_status, message) is None
    assert decode_session_state(message, server_status) == SessionState()


def test_flag_absent_returns_none_without_reading_message() -> None:
    # Garbage that would not decode: the flag is checked first.
    assert last_gtid_from_ok(0x0002, b"\xff\xff") is None
    assert last_gtid_from_ok(0x0003, b"") is None


def test_flag_absent_reads_only_info() -> None:
    _, message = split_ok(CAPTURED["commit"].packet)
    # The same bytes, if the server had not set the flag, are an info string and junk.
    with pytest.raises(ValueError, match=r"at byte 1 .*expected the end of the packet"):
        decode_session_state(message, 0x0002)
    assert decode_session_state(b"\x03abc", 0x0002) == SessionState(info="abc")


@pytest.mark.parametrize("name", with_flag())
def test_every_truncation_raises_value_error(name: str) -> None:
    server_status, message = split_ok(CAPTURED[name].packet)
    for cut in range(len(message)):
        with pytest.raises(ValueError, match="malformed session state in OK packet at byte"):
            decode_session_state(message[:cut], server_status)
        with pytest.raises(ValueError, match="malformed session state in OK packet at byte"):
            last_gtid_from_ok(server_status, message[:cut])


@pytest.mark.parametrize("name", with_flag())
def test_trailing_bytes_raise_value_error(name: str) -> None:
    server_status, message = split_ok(CAPTURED[name].packet)
    with pytest.raises(ValueError, match="session state that end the packet"):
        decode_session_state(message + b"\x00", server_status)
    with pytest.raises(ValueError, match="session state that end the packet"):
        last_gtid_from_ok(server_status, message + b"\x00")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            b"",
            "at byte 0 after warning_count: expected the length of the info string, "
            "found the end of the data",
        ),
        (
            b"\x00",
            "at byte 1 after warning_count: expected the length of the session state, "
            "found the end of the data",
        ),
        (
            b"\xfb",
            "at byte 0 after warning_count: expected the length of the info string, "
            "found byte 0xfb, which does not start a length-encoded integer",
        ),
        (b"\xff", "found byte 0xff, which does not start a length-encoded integer"),
        (
            b"\x05ab",
            "at byte 1 after warning_count: expected 5 bytes of the info string, "
            "found only 2 bytes left",
        ),
        (
            b"\xfc\x01",
            "at byte 0 after warning_count: expected the 3-byte length of the info "
            "string, found only 2 bytes left",
        ),
        (
            b"\x00\x04\x00",
            "at byte 2 after warning_count: expected 4 bytes of session state "
            "that end the packet, found 1 byte",
        ),
        (
            b"\x00\x03\x00\x05\x01",
            "at byte 4 after warning_count: expected 5 bytes of the data "
            "of an entry, found only 1 byte left",
        ),
        # The name's length (9) runs past its entry (3 bytes), though not past the packet.
        (
            b"\x00\x0e\x00\x03\x09last_gtid\x00\x00",
            "at byte 5 after warning_count: expected 9 bytes of a system variable name, "
            "found only 2 bytes left",
        ),
        (
            b"\x00\x04\x00\x02\x01a",
            "at byte 6 after warning_count: expected the length of a system variable value, "
            "found the end of the data",
        ),
        (
            b"\x00\x06\x00\x02\x01a\x01\x00",
            "at byte 6 after warning_count: expected the length of a system variable value, "
            "found the end of the entry",
        ),
        (
            b"\x00\x06\x00\x04\x01a\x00\x00",
            "at byte 7 after warning_count: expected the end of the system variable entry, "
            "found 1 byte more",
        ),
        (b"\x00\x05\x01\x03\x01ab", "expected the end of the schema entry, found 1 byte more"),
        # One byte too long for its entry, not for the packet.
        (
            b"\x00\x05\x01\x03\x03ab\x00"[:-1],
            "at byte 5 after warning_count: expected 3 bytes of a schema name, "
            "found only 2 bytes left",
        ),
        (b"\x00\x03\x05\x01\x09", "expected 9 bytes of a transaction description"),
        (b"\x00\x04\x03\x02\x00\x05", "expected 5 bytes of a GTID set"),
    ],
)
def test_malformed_message_names_offset_and_expectation(message: bytes, error: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        decode_session_state(message)
    assert str(excinfo.value).startswith("malformed session state in OK packet at byte ")
    assert error in str(excinfo.value)


def test_system_variable_errors_also_stop_last_gtid() -> None:
    with pytest.raises(ValueError, match="expected 9 bytes of a system variable name"):
        last_gtid_from_ok(0x4002, b"\x00\x0e\x00\x03\x09last_gtid\x00\x00")


_GTID_NAME = lenenc(9) + b"last_gtid"


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        # The value stops one byte short of its entry.
        (b"\x00\x0f" + _GTID_NAME + b"\x030-19", "expected the end of the system variable"),
        # The entry stops one byte short of its value.
        (b"\x00\x0f" + _GTID_NAME + b"\x050-1-9", "expected 5 bytes of a system variable value"),
        # The same two, behind another entry.
        (b"\x02\x011\x00\x0f" + _GTID_NAME + b"\x030-19", "expected the end of the system"),
        (b"\x02\x011\x00\x0f" + _GTID_NAME + b"\x050-1-9", "expected 5 bytes of a system"),
    ],
)
def test_malformed_last_gtid_entry_raises(entries: bytes, error: str) -> None:
    message = b"\x00" + lenenc(len(entries)) + entries
    with pytest.raises(ValueError, match=error):
        last_gtid_from_ok(0x4002, message)
    with pytest.raises(ValueError, match=error):
        decode_session_state(message)


@pytest.mark.parametrize("name", [b"last_gtid_x", b"last_gti", b"LAST_GTID", b"xlast_gtid"])
def test_only_last_gtid_itself_is_read(name: bytes) -> None:
    for entries in (
        [variable(name, b"0-1-9")],
        [variable(name, b"0-1-9"), (SESSION_TRACK_STATE_CHANGE, b"1")],
    ):
        assert last_gtid_from_ok(0x4002, encode(entries)) is None


def test_entries_of_other_types_are_skipped_by_length() -> None:
    # A state change, a MySQL GTID set, a future type 9 and a type 3 with an encoding we
    # do not know, around the last_gtid entry.
    entries = (
        b"\x02\x011"
        + b"\x03\x2a\x00\x283E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"
        + b"\x09\x05\x00last"
        + b"\x00\x10\x09last_gtid\x050-1-9"
        + b"\x03\x03\x01\x01x"
    )
    message = b"\x00" + bytes([len(entries)]) + entries
    assert last_gtid_from_ok(0x4002, message) == "0-1-9"
    state = decode_session_state(message)
    assert state.state_changed
    assert state.gtids == "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"
    assert state.unknown == ((9, b"\x00last"), (3, b"\x01\x01x"))
    assert state.last_gtid == "0-1-9"


def test_last_entry_wins() -> None:
    entries = b"\x00\x10\x09last_gtid\x050-1-8" + b"\x00\x10\x09last_gtid\x050-1-9"
    message = b"\x00" + bytes([len(entries)]) + entries
    assert last_gtid_from_ok(0x4002, message) == "0-1-9"
    assert decode_session_state(message).system_variables == {"last_gtid": "0-1-9"}


def test_undecodable_text_is_kept() -> None:
    entries = b"\x01\x03\x02\xff\xfe"
    state = decode_session_state(b"\x00" + bytes([len(entries)]) + entries)
    assert state.schema is not None
    assert state.schema.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_session_state_is_an_immutable_value() -> None:
    _, message = split_ok(CAPTURED["commit"].packet)
    state = decode_session_state(message)
    with pytest.raises(AttributeError):
        state.info = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        state.system_variables["last_gtid"] = "0-1-1"  # type: ignore[index]
    assert state.last_gtid == "0-1-9"


def expected_state(entries: list[Entry], info: bytes) -> SessionState:
    """What the decoder must return, computed from the unencoded entries."""

    def text(data: bytes) -> str:
        return data.decode("utf-8", "surrogateescape")

    def inner(data: bytes) -> bytes:
        # The single length-encoded string that fills ``data``.
        first = data[0]
        skip = 1 if first < 0xFB else {0xFC: 3, 0xFD: 4, 0xFE: 9}[first]
        return data[skip:]

    variables: dict[str, str] = {}
    schema: str | None = None
    state_changed = False
    gtids: str | None = None
    characteristics: str | None = None
    trx_state: str | None = None
    unknown: list[tuple[int, bytes]] = []
    for kind, data in entries:
        if kind == SESSION_TRACK_SYSTEM_VARIABLES:
            first = data[0]
            skip = 1 if first < 0xFB else {0xFC: 3, 0xFD: 4, 0xFE: 9}[first]
            name_len = int.from_bytes(data[1:skip], "little") if skip > 1 else first
            rest = data[skip + name_len :]
            variables[text(data[skip : skip + name_len])] = text(inner(rest))
        elif kind == SESSION_TRACK_SCHEMA:
            schema = text(inner(data))
        elif kind == SESSION_TRACK_STATE_CHANGE:
            state_changed = data == b"1"
        elif kind == SESSION_TRACK_GTIDS and data[:1] == b"\x00":
            gtids = text(inner(data[1:]))
        elif kind == SESSION_TRACK_TRANSACTION_CHARACTERISTICS:
            characteristics = text(inner(data))
        elif kind == SESSION_TRACK_TRANSACTION_STATE:
            trx_state = text(inner(data))
        else:
            unknown.append((kind, data))
    return SessionState(
        info=text(info),
        system_variables=variables,
        schema=schema,
        state_changed=state_changed,
        gtids=gtids,
        transaction_characteristics=characteristics,
        transaction_state=trx_state,
        unknown=tuple(unknown),
    )


widths = st.sampled_from([0, 0, 0, 3, 4, 9])
blobs = st.binary(max_size=300)
names = st.one_of(st.just(b"last_gtid"), st.binary(max_size=20))
gtid_texts = st.builds(
    lambda d, s, n: f"{d}-{s}-{n}".encode(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    width = draw(widths)
    kind = draw(
        st.sampled_from(["variable", "last_gtid", "schema", "state", "gtids", "trx", "unknown"])
    )
    if kind == "variable":
        return variable(draw(names), draw(blobs), width)
    if kind == "last_gtid":
        return variable(b"last_gtid", draw(st.one_of(gtid_texts, st.just(b""))), width)
    if kind == "schema":
        return SESSION_TRACK_SCHEMA, lenstr(draw(blobs), width)
    if kind == "state":
        return SESSION_TRACK_STATE_CHANGE, draw(st.sampled_from([b"1", b"0"]))
    if kind == "gtids":
        return SESSION_TRACK_GTIDS, b"\x00" + lenstr(draw(blobs), width)
    if kind == "trx":
        trx = draw(
            st.sampled_from(
                [SESSION_TRACK_TRANSACTION_CHARACTERISTICS, SESSION_TRACK_TRANSACTION_STATE]
            )
        )
        return trx, lenstr(draw(blobs), width)
    return draw(st.integers(6, 255)), draw(blobs)


@given(st.lists(entries(), max_size=6), st.binary(max_size=300), widths)
def test_encoded_entries_round_trip(entry_list: list[Entry], info: bytes, width: int) -> None:
    message = encode(entry_list, info, width)
    expected = expected_state(entry_list, info)
    assert decode_session_state(message) == expected
    assert decode_session_state(message, 0x4002 | 0x8000) == expected
    assert last_gtid_from_ok(0x4002, message) == expected.last_gtid


@given(st.one_of(gtid_texts, st.just(b"")), st.binary(max_size=260))
def test_fast_path_shape_matches_decoder(gtid: bytes, info: bytes) -> None:
    # The shape MariaDB sends after a commit, with info strings of every short length.
    message = encode([variable(b"last_gtid", gtid)], info)
    assert last_gtid_from_ok(0x4002, message) == (gtid.decode() or None)
    assert decode_session_state(message).last_gtid == (gtid.decode() or None)


@pytest.mark.parametrize("prefix", [0xFB, 0xFC, 0xFD, 0xFE, 0xFF])
def test_fast_path_does_not_take_a_long_length_for_a_short_one(prefix: int) -> None:
    # Read as one-byte lengths, these bytes are MariaDB's usual commit packet, and the
    # session state length (the byte ``prefix``) equals what follows.  But 0xfb to 0xff
    # start no one-byte length.
    size = prefix + 2
    value = b"0-1-" + b"9" * (size - 19)
    message = b"\x00" + bytes([prefix, 0, size - 4, 9]) + b"last_gtid" + lenstr(value)
    assert len(message) == size
    with pytest.raises(ValueError, match="malformed session state"):
        decode_session_state(message)
    with pytest.raises(ValueError, match="malformed session state"):
        last_gtid_from_ok(0x4002, message)


@pytest.mark.parametrize("prefix", [0xFB, 0xFC, 0xFD, 0xFE, 0xFF])
def test_fast_path_does_not_take_a_long_info_length_for_a_short_one(prefix: int) -> None:
    # An info "length" byte of 0xfb to 0xff followed by that many bytes, then the usual
    # last_gtid entry.
    message = bytes([prefix]) + b"x" * prefix + encode([variable(b"last_gtid", b"0-1-9")])[1:]
    with pytest.raises(ValueError, match="malformed session state"):
        decode_session_state(message)
    with pytest.raises(ValueError, match="malformed session state"):
        last_gtid_from_ok(0x4002, message)


@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_arbitrary_bytes_raise_only_value_error(message: bytes, server_status: int) -> None:
    try:
        state = decode_session_state(message, server_status)
    except ValueError:
        state = None
    try:
        gtid = last_gtid_from_ok(server_status, message)
    except ValueError:
        # The fast helper may only fail where the full decoder fails too.
        assert state is None
        return
    if state is not None:
        assert gtid == state.last_gtid


@given(st.lists(entries(), min_size=1, max_size=4), st.binary(max_size=40), st.data())
def test_corrupted_packets_raise_only_value_error(
    entry_list: list[Entry], info: bytes, data: st.DataObject
) -> None:
    message = bytearray(encode(entry_list, info))
    position = data.draw(st.integers(0, len(message) - 1))
    message[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    corrupted = bytes(message[:cut])
    try:
        state: SessionState | None = decode_session_state(corrupted)
    except ValueError:
        state = None
    try:
        gtid = last_gtid_from_ok(0x4002, corrupted)
    except ValueError:
        assert state is None
        return
    if state is not None:
        assert gtid == state.last_gtid


def outcome(message: bytes) -> tuple[str, str | None]:
    """What last_gtid_from_ok makes of ``message``: its result, or that it refused it."""
    try:
        return "gtid", last_gtid_from_ok(0x4002, message)
    except ValueError:
        return "refused", None


near_names = st.sampled_from([b"last_gtid", b"last_gtiD", b"Last_gtid", b"last_gti", b"last_gtidx"])


@given(
    st.binary(max_size=40),
    st.integers(0, 255),
    near_names,
    st.one_of(gtid_texts, st.just(b"")),
)
def test_fast_path_agrees_with_the_full_parser(
    info: bytes, kind: int, name: bytes, value: bytes
) -> None:
    # The commit packet's layout with any entry type and a name near last_gtid: the fast
    # path reads it as MariaDB writes it; the same entry behind a 3-byte session state
    # length goes through the full parser.  Only a system variable named last_gtid counts.
    data = lenstr(name) + lenstr(value)
    fast = encode([(kind, data)], info)
    full = lenstr(info) + lenstr(bytes([kind]) + lenstr(data), 3)
    assert outcome(fast) == outcome(full)
    found = outcome(fast)[1]
    if kind == SESSION_TRACK_SYSTEM_VARIABLES and name == b"last_gtid":
        assert found == (value.decode() or None)
    else:
        assert found is None


@given(
    st.binary(max_size=40),
    st.one_of(gtid_texts, st.just(b"")),
    st.data(),
)
def test_fast_path_shape_with_one_wrong_byte(
    info: bytes, value: bytes, data: st.DataObject
) -> None:
    # One byte of the commit packet's framing (a length, the type, the name) changed: a
    # GTID comes out only where the full decoder reads the same one, and nothing is read
    # where the decoder refuses the packet.
    message = bytearray(encode([variable(b"last_gtid", value)], info))
    b = len(info) + 1
    header = [0, b, b + 1, b + 2, b + 3, *range(b + 4, b + 13), b + 13]
    position = data.draw(st.sampled_from(header))
    message[position] = data.draw(st.integers(0, 255))
    try:
        state: SessionState | None = decode_session_state(bytes(message))
    except ValueError:
        state = None
    verdict, gtid = outcome(bytes(message))
    if state is None:
        assert gtid is None
    else:
        assert (verdict, gtid) == ("gtid", state.last_gtid)


@given(st.binary(max_size=300), st.one_of(gtid_texts, st.just(b"")))
def test_commit_packets_take_the_fast_path(info: bytes, value: bytes) -> None:
    # Every statement on a master connection reads its OK packet: MariaDB's commit
    # packet (short info, one short last_gtid entry) is read by slicing alone, never
    # by the general parser (which would then refuse to run here).
    def no_full_parse(buf: bytes) -> tuple[int, int, int, int]:
        raise AssertionError("the commit packet went through the full parser")

    message = encode([variable(b"last_gtid", value)], info)
    fast_enough = len(info) < 0xFB and len(message) - len(info) - 2 < 0xFB
    original = session_track._block
    session_track._block = no_full_parse
    try:
        if fast_enough:
            assert last_gtid_from_ok(0x4002, message) == (value.decode() or None)
        else:
            with pytest.raises(AssertionError, match="full parser"):
                last_gtid_from_ok(0x4002, message)
    finally:
        session_track._block = original


def test_info_string_errors_without_session_state() -> None:
    with pytest.raises(ValueError) as truncated:
        decode_session_state(b"\x05ab", 0x0002)
    assert str(truncated.value) == (
        "malformed session state in OK packet at byte 1 after warning_count: "
        "expected 5 bytes of the info string, found only 2 bytes left"
    )
    with pytest.raises(ValueError) as trailing:
        decode_session_state(b"\x01a\x00\x07", 0x0002)
    assert str(trailing.value) == (
        "malformed session state in OK packet at byte 2 after warning_count: "
        "expected the end of the packet after the info string, found 2 bytes more"
    )


def test_an_empty_gtids_entry_is_kept_unread() -> None:
    # A type 3 entry without even its encoding byte: skipped (kept in unknown), and the
    # entry after it is read from its own first byte.
    message = encode([(SESSION_TRACK_GTIDS, b""), variable(b"last_gtid", b"0-1-5")])
    state = decode_session_state(message)
    assert state.unknown == ((SESSION_TRACK_GTIDS, b""),)
    assert (state.gtids, state.last_gtid) == (None, "0-1-5")
    assert last_gtid_from_ok(0x4002, message) == "0-1-5"
    alone = decode_session_state(encode([(SESSION_TRACK_GTIDS, b"")]))
    assert alone.unknown == ((SESSION_TRACK_GTIDS, b""),)


@pytest.mark.parametrize(
    ("message", "server_status", "error"),
    [
        (
            b"\xfc\x01",
            0x0002,
            "expected the 3-byte length of the info string, found only 2 bytes left",
        ),
        (
            encode([(SESSION_TRACK_GTIDS, b"\x00" + lenstr(b"0-1-1") + b"x")]),
            0x4002,
            "expected the end of the GTIDs entry, found 1 byte more",
        ),
        (
            b"\x00\xfc\x01",
            0x4002,
            "expected the 3-byte length of the session state, found only 2 bytes left",
        ),
        (
            encode([(SESSION_TRACK_TRANSACTION_STATE, lenstr(b"T_") + b"xy")]),
            0x4002,
            "expected the end of the transaction entry, found 2 bytes more",
        ),
    ],
)
def test_error_messages_word_for_word(message: bytes, server_status: int, error: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        decode_session_state(message, server_status)
    assert str(excinfo.value).endswith(f"after warning_count: {error}")


@pytest.mark.parametrize("info_len", [0, 120, 200, 0xFA])
@pytest.mark.parametrize("state_len", [19, 0xF9, 0xFA])
def test_the_fast_path_takes_every_one_byte_length(info_len: int, state_len: int) -> None:
    # The longest info string and session state whose lengths fit in one byte (0xfa).
    value = b"0-1-" + b"9" * (state_len - 13 - 4)
    message = encode([variable(b"last_gtid", value)], b"i" * info_len)
    assert message[info_len + 1] == state_len
    original = session_track._block

    def no_full_parse(buf: bytes) -> tuple[int, int, int, int]:
        raise AssertionError("the commit packet went through the full parser")

    session_track._block = no_full_parse
    try:
        assert last_gtid_from_ok(0x4002, message) == value.decode()
    finally:
        session_track._block = original
