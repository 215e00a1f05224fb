"""CausalToken (sqlrouter.gtid): the highest GTID per replication domain a session reached."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlrouter.gtid import MAX_DOMAINS, MAX_TEXT, CausalToken, format_gtid_list, parse_gtid_list

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1

# Few domains, so that generated tokens share domains often.
gtids = st.tuples(
    st.integers(0, 3) | st.integers(0, MAX_U32),
    st.integers(0, MAX_U32),
    st.integers(0, 20) | st.integers(0, MAX_U64),
)
gtid_lists = st.lists(gtids, max_size=8)
tokens = gtid_lists.map(CausalToken)


def highest(gtid_list: list[tuple[int, int, int]]) -> dict[int, int]:
    """The oracle: the highest sequence number per domain."""
    result: dict[int, int] = {}
    for domain, _, seq in gtid_list:
        result[domain] = max(seq, result.get(domain, seq))
    return result


def seqs(token: CausalToken) -> dict[int, int]:
    return {domain: seq for domain, (_, seq) in token.domains.items()}


# -- text form ------------------------------------------------------------------------


def test_str_is_a_sorted_mariadb_gtid_list() -> None:
    token = CausalToken([(1, 2, 7), (0, 1, 15), (1, 3, 6)])
    assert str(token) == "0-1-15,1-2-7"
    assert repr(token) == "CausalToken('0-1-15,1-2-7')"
    assert token.domains == {0: (1, 15), 1: (2, 7)}
    assert token.seq(0) == 15
    assert token.seq(1) == 7
    assert token.seq(2) == 0


def test_parse_reads_gtid_binlog_pos() -> None:
    text = "0-1-18,7-42-18446744073709551615"
    token = CausalToken.parse(text)
    assert str(token) == text
    assert CausalToken.from_gtid_list(text) == token
    assert token.domains == {0: (1, 18), 7: (42, MAX_U64)}


def test_parse_tolerates_whitespace_and_order() -> None:
    assert str(CausalToken.parse(" 1-2-7 ,\t0-1-15\n")) == "0-1-15,1-2-7"


def test_parse_keeps_the_highest_of_repeated_domains() -> None:
    assert str(CausalToken.parse("0-1-5,0-2-9,0-1-7")) == "0-2-9"


def test_largest_values_are_accepted() -> None:
    text = f"{MAX_U32}-{MAX_U32}-{MAX_U64}"
    assert str(CausalToken.parse(text)) == text


@given(gtid_lists)
def test_parse_str_round_trip(gtid_list: list[tuple[int, int, int]]) -> None:
    token = CausalToken(gtid_list)
    text = str(token)
    assert CausalToken.parse(text) == token
    assert str(CausalToken.parse(text)) == text
    assert seqs(token) == highest(gtid_list)
    assert list(token.domains) == sorted(token.domains)


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("abc", "abc"),
        ("0-1", "0-1"),
        ("0-1-2-3", "0-1-2-3"),
        ("0-1-x", "0-1-x"),
        ("-1-2-3", "-1-2-3"),
        ("0--1-2", "0--1-2"),
        ("0-1-2;1-2-3", "0-1-2;1-2-3"),
        ("0-1-2,", ""),
        (",0-1-2", ""),
        ("0-1-2,,1-2-3", ""),
        ("0-1-2, 1-2-x ", "1-2-x"),
        ("0 - 1 - 2", "0 - 1 - 2"),
        ("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5", "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"),
    ],
)
def test_parse_rejects_what_is_not_a_gtid_list(text: str, part: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse(text)
    assert str(excinfo.value) == (
        f"invalid causal token {text!r}: {part!r} is not a GTID; expected a comma-separated "
        "list of domain-server_id-sequence, for example '0-1-15,1-2-7'"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{MAX_U32 + 1}-1-1", f"GTID {MAX_U32 + 1}-1-1: domain and server id are 32-bit"),
        (f"0-{MAX_U32 + 1}-1", f"GTID 0-{MAX_U32 + 1}-1: domain and server id are 32-bit"),
        (f"0-1-{MAX_U64 + 1}", f"GTID 0-1-{MAX_U64 + 1}: sequence is 64-bit"),
        ("0-1-5,9999999999-1-1", "GTID 9999999999-1-1: domain and server id are 32-bit"),
    ],
)
def test_parse_rejects_out_of_range_numbers(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse(text)
    assert str(excinfo.value) == f"invalid causal token {text!r}: {reason}"


def test_parse_takes_at_most_max_domains() -> None:
    assert MAX_DOMAINS == 1024
    most = ",".join(f"{d}-1-1" for d in range(MAX_DOMAINS))
    assert len(CausalToken.parse(most).domains) == MAX_DOMAINS
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse(most + ",1024-1-1")
    message = str(excinfo.value)
    assert message.startswith("invalid causal token '0-1-1,1-1-1,2-1-1,3-1-1,4-1-1,5-1-1,6-1")
    assert message.endswith(
        f"... ({len(most) + 9} characters): more than 1024 GTIDs (a token holds one per "
        "replication domain, at most 1024)"
    )
    assert len(message) < 250


def test_parse_refuses_a_huge_token_at_once() -> None:
    huge = ",".join(f"{d}-1-1" for d in range(200_000))
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse(huge)
    assert "longer than 65536 characters" in str(excinfo.value)
    assert len(str(excinfo.value)) < 200
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse("0-1-1" + " " * MAX_TEXT)
    assert "longer than 65536 characters" in str(excinfo.value)
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse("x" * 1000)
    assert len(str(excinfo.value)) < 300


def test_a_servers_gtid_list_has_no_domain_bound() -> None:
    text = ",".join(f"{d}-1-{d}" for d in range(MAX_DOMAINS + 500))
    token = CausalToken.from_gtid_list(text)
    assert len(token.domains) == MAX_DOMAINS + 500 and str(token) == text
    with pytest.raises(ValueError, match="more than 1024 GTIDs"):
        CausalToken.parse(text)
    # Nor a length bound.
    assert CausalToken.from_gtid_list("0-1-1" + " " * MAX_TEXT) == CausalToken.parse("0-1-1")
    # A token built from servers' positions survives pickling.
    restored = pickle.loads(pickle.dumps(token))  # noqa: S301 - our own bytes
    assert restored == token


@pytest.mark.parametrize(
    "gtid", [(-1, 1, 1), (0, -1, 1), (0, 1, -1), (MAX_U32 + 1, 1, 1), (0, 1, MAX_U64 + 1)]
)
def test_constructor_rejects_out_of_range_numbers(gtid: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match=r"GTID -?\d+--?\d+--?\d+: .* (32|64)-bit"):
        CausalToken([gtid])


def test_parse_rejects_non_ascii_digits() -> None:
    with pytest.raises(ValueError, match="is not a GTID"):
        CausalToken.parse("\u0660-\u0661-\u0662")


# -- the empty token ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_text_is_the_empty_token(text: str | None) -> None:
    token = CausalToken.parse(text)
    assert token == CausalToken()
    assert token == CausalToken([])
    assert str(token) == ""
    assert repr(token) == "CausalToken('')"
    assert not token
    assert token.domains == {}
    assert token.seq(0) == 0


@given(tokens)
def test_empty_token_covers_only_the_empty_token(token: CausalToken) -> None:
    empty = CausalToken()
    assert token.covers(empty)
    assert token.covers(empty)
    assert empty.covers(token) == (not token)
    assert token.merge(empty) == token
    assert empty.merge(token) == token
    assert empty | token == token
    assert bool(token) == bool(token.domains)


# -- merge and covers -----------------------------------------------------------------


@given(gtid_lists, gtid_lists)
def test_merge_is_the_highest_sequence_per_domain(
    a_list: list[tuple[int, int, int]], b_list: list[tuple[int, int, int]]
) -> None:
    a, b = CausalToken(a_list), CausalToken(b_list)
    expected = highest(a_list + b_list)
    assert seqs(a.merge(b)) == expected
    assert seqs(a | b) == expected
    assert seqs(b | a) == expected
    assert (a | b).covers(a)
    assert (a | b).covers(b)


@given(st.lists(tokens, max_size=5))
def test_merge_of_many(token_list: list[CausalToken]) -> None:
    merged = CausalToken().merge(*token_list)
    expected: dict[int, int] = {}
    for token in token_list:
        for domain, seq in seqs(token).items():
            expected[domain] = max(seq, expected.get(domain, seq))
    assert seqs(merged) == expected
    assert all(merged.covers(token) for token in token_list)


@given(tokens, tokens, tokens)
def test_merge_is_associative_and_idempotent(
    a: CausalToken, b: CausalToken, c: CausalToken
) -> None:
    assert seqs((a | b) | c) == seqs(a | (b | c))
    assert a | a == a


@given(tokens)
def test_merge_returns_self_when_nothing_is_new(token: CausalToken) -> None:
    older = CausalToken((d, s, n // 2) for d, (s, n) in token.domains.items())
    assert token.merge(older) is token
    assert older.merge(token) == token


@given(tokens, tokens)
def test_covers_means_every_domain_is_reached(a: CausalToken, b: CausalToken) -> None:
    oracle = all(domain in a.domains and a.seq(domain) >= seq for domain, seq in seqs(b).items())
    assert a.covers(b) == oracle
    if a.covers(b) and b.covers(a):
        assert seqs(a) == seqs(b)


def test_covers_examples() -> None:
    token = CausalToken.parse("0-1-15,1-2-7")
    assert token.covers(CausalToken.parse("0-1-15"))
    assert token.covers(CausalToken.parse("0-9-3,1-2-7"))
    assert not token.covers(CausalToken.parse("0-1-16"))
    # A domain the token has never seen is not reached, even at a low sequence.
    assert not token.covers(CausalToken.parse("2-1-1"))
    assert not CausalToken.parse("0-1-15").covers(token)


# -- a value: immutable, hashable, picklable ------------------------------------------


def test_attributes_cannot_be_set() -> None:
    token = CausalToken.parse("0-1-5")
    with pytest.raises(AttributeError, match="CausalToken is immutable"):
        token._text = "0-1-6"
    with pytest.raises(AttributeError, match="CausalToken is immutable"):
        token.anything = 1
    assert str(token) == "0-1-5"


def test_domains_is_read_only() -> None:
    token = CausalToken.parse("0-1-5")
    domains = token.domains
    with pytest.raises(TypeError):
        domains[0] = (1, 999)  # type: ignore[index]
    assert token.seq(0) == 5


@given(gtid_lists)
def test_equal_tokens_hash_equal(gtid_list: list[tuple[int, int, int]]) -> None:
    a = CausalToken(gtid_list)
    b = CausalToken(reversed([(d, s, n) for d, (s, n) in a.domains.items()]))
    c = CausalToken.parse(str(a))
    assert seqs(CausalToken(reversed(gtid_list))) == seqs(a)
    assert a == b
    assert hash(a) == hash(b)
    assert a == c
    assert hash(a) == hash(c)
    assert len({a, c}) == 1
    assert {a: "x"}[c] == "x"


def test_equality() -> None:
    token = CausalToken.parse("0-1-5")
    assert token == CausalToken([(0, 1, 5)])
    assert token != CausalToken.parse("0-1-6")
    assert token != CausalToken.parse("0-2-5")
    assert token != "0-1-5"
    assert token != CausalToken()


@given(tokens)
def test_pickle_and_copy(token: CausalToken) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        # Our own bytes, never untrusted input.
        restored = pickle.loads(pickle.dumps(token, protocol))  # noqa: S301
        assert restored == token
        assert str(restored) == str(token)
        assert type(restored) is CausalToken
    assert copy.copy(token) == token
    assert copy.deepcopy(token) == token


def test_public_path() -> None:
    import sqlrouter

    assert CausalToken.__module__ == "sqlrouter"
    assert sqlrouter.CausalToken is CausalToken


def test_merge_is_symmetric_on_ties() -> None:
    a, b = CausalToken.parse("0-1-5"), CausalToken.parse("0-2-5")
    assert a | b == b | a == CausalToken.parse("0-2-5")


def test_parts_must_be_integers() -> None:
    with pytest.raises(ValueError, match="must be integers"):
        CausalToken([(True, 1, 5)])


def test_attributes_cannot_be_deleted() -> None:
    token = CausalToken.parse("0-1-5")
    with pytest.raises(AttributeError) as excinfo:
        del token._text
    assert str(excinfo.value) == "CausalToken is immutable"
    assert str(token) == "0-1-5"


def test_a_token_built_from_a_servers_many_domains_reads_back() -> None:
    """A session merges server positions (no bound) into its token: one with 71
    domains, the longest form in each, must parse back (a cookie, causal_token=)."""
    position = CausalToken.from_gtid_list(
        ",".join(f"{4294967295 - d}-4294967295-18446744073709551615" for d in range(71))
    )
    assert CausalToken.parse(str(position)) == position


def test_parse_takes_up_to_max_text_characters() -> None:
    longest = "0-1-1" + " " * (MAX_TEXT - 5)
    assert len(longest) == MAX_TEXT
    assert CausalToken.parse(longest) == CausalToken([(0, 1, 1)])
    with pytest.raises(ValueError, match="longer than 65536 characters"):
        CausalToken.parse(longest + " ")


def test_errors_quote_text_whole_up_to_80_characters() -> None:
    for length in (79, 80):
        with pytest.raises(ValueError) as excinfo:
            CausalToken.parse("x" * length)
        assert str(excinfo.value).startswith(f"invalid causal token {'x' * length!r}: ")
    with pytest.raises(ValueError) as excinfo:
        CausalToken.parse("x" * 81)
    assert str(excinfo.value).startswith(
        f"invalid causal token {'x' * 40!r}... (81 characters): {'x' * 40!r}... (81 characters)"
        " is not a GTID"
    )


# -- a server's GTID lists ------------------------------------------------------------


def test_parse_gtid_list_keeps_every_gtid_in_order() -> None:
    # @@gtid_binlog_state: one GTID per domain and server, several per domain.
    assert parse_gtid_list("0-2-9, 0-1-5 ,1-1-3") == [(0, 2, 9), (0, 1, 5), (1, 1, 3)]
    assert parse_gtid_list("4294967295-4294967295-18446744073709551615") == [
        (MAX_U32, MAX_U32, MAX_U64)
    ]
    for empty in ("", "  ", None):
        assert parse_gtid_list(empty) == []


@pytest.mark.parametrize(
    ("text", "part"), [("0-1-5,", ""), ("0-1-5, x ", "x"), ("0-1", "0-1"), ("0-1-5,,1-1-1", "")]
)
def test_parse_gtid_list_names_what_is_not_a_gtid(text: str, part: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_gtid_list(text)
    assert str(excinfo.value) == f"{part!r} is not a GTID (domain-server_id-sequence)"


@given(gtid_lists)
def test_format_gtid_list_is_sorted_and_reads_back(gtid_list: list[tuple[int, int, int]]) -> None:
    text = format_gtid_list(gtid_list)
    assert parse_gtid_list(text) == sorted(gtid_list)
