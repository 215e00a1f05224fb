"""Which statements sqlrouter may run a second time, elsewhere, after a lost connection.

sqlrouter never parses SQL on the statement path.  This module is used on the failure
path only: when a RO_RELAXED connection in autocommit mode loses its server under a
statement, the statement is re-sent once on another server only if running it twice
cannot have an effect that running it once would not:

- its first keyword (after blanks, comments and opening parentheses) is one of
  ``SELECT``, ``SHOW``, ``DESCRIBE``, ``DESC``, ``EXPLAIN``, ``HELP`` or ``VALUES``;
- and, for ``SELECT`` and ``VALUES``, its text holds none of the markers of a statement
  that locks or changes something, or that reads state of the session a new session
  does not have: ``FOR UPDATE``, ``LOCK IN SHARE MODE``, ``FOR SHARE``, ``INTO``
  (``INTO OUTFILE``/``DUMPFILE``/``@var``), the lock functions (``GET_LOCK``,
  ``RELEASE_LOCK``, ``RELEASE_ALL_LOCKS``), the sequence functions (``NEXTVAL``,
  ``NEXT VALUE FOR``, ``SETVAL``, ``LASTVAL``, ``PREVIOUS VALUE FOR``), the session's
  own results (``LAST_INSERT_ID``, ``FOUND_ROWS``, ``ROW_COUNT``, ``CONNECTION_ID``) and
  user variables (``@name``; ``@@system`` variables are fine).

Everything else (``CALL``, ``DO``, ``SET``, writes, anything unrecognised, an
executable comment ``/*! ... */`` anywhere, several statements separated by ``;``) is
never re-sent.  The markers are searched as words, case-insensitively, anywhere in the
text once its comments are blanked (``FOR/**/UPDATE`` is ``FOR UPDATE``), string
literals included: a false match only means the statement is not re-sent.  A ``SELECT``
of a stored function that writes has no marker: run such statements in a transaction
(nothing in a transaction is re-sent).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["first_keyword", "may_resend"]

_READ_ONLY: Final = frozenset({"SHOW", "DESCRIBE", "DESC", "EXPLAIN", "HELP"})
_CHECKED: Final = frozenset({"SELECT", "VALUES"})
_EFFECTS: Final = re.compile(
    r"\b(?:FOR\s+UPDATE|LOCK\s+IN\s+SHARE\s+MODE|FOR\s+SHARE|INTO|GET_LOCK|RELEASE_LOCK"
    r"|RELEASE_ALL_LOCKS|NEXTVAL|NEXT\s+VALUE\s+FOR|SETVAL|LASTVAL|PREVIOUS\s+VALUE\s+FOR"
    r"|LAST_INSERT_ID|FOUND_ROWS|ROW_COUNT|CONNECTION_ID)\b"
    r"|(?<!@)@(?!@)",
    re.IGNORECASE,
)
_WORD: Final = re.compile(r"[A-Za-z_]+")


def first_keyword(sql: str | bytes) -> str | None:
    """The statement's first keyword, upper-cased; ``None`` when it does not start with
    one after blanks, ``/* comments */``, ``-- `` and ``#`` comments and ``(``.

    An executable comment (``/*!...*/``, ``/*M!...*/``) counts as no keyword: what it
    runs is unknown.
    """
    text = sql.decode("latin-1") if isinstance(sql, bytes) else sql
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace() or c == "(":
            i += 1
        elif text.startswith("/*", i):
            if text.startswith(("/*!", "/*M!"), i):
                return None
            end = text.find("*/", i + 2)
            if end < 0:
                return None
            i = end + 2
        elif (text.startswith("--", i) and (i + 2 == n or text[i + 2].isspace())) or c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        else:
            match = _WORD.match(text, i)
            return match.group().upper() if match else None
    return None


def _code(text: str) -> str | None:
    """``text`` with each comment replaced by a blank (string literals kept whole, so a
    comment marker inside one is not taken for a comment); ``None`` when it holds an
    executable comment (``/*! ... */``: what it runs is unknown) or more than one
    statement (a ``;`` that is not the last character, blanks aside)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" and c != "`" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            if text.startswith(("/*!", "/*M!"), i):
                return None
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif (text.startswith("--", i) and (i + 2 == n or text[i + 2].isspace())) or c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(" ")
        elif c == ";":
            if text[i + 1 :].strip():
                return None
            i = n
        else:
            out.append(c)
            i += 1
    return "".join(out)


def may_resend(sql: str | bytes) -> bool:
    """Can ``sql``, which may or may not have run on a server that went away, run once
    more on another server without an effect that running it once would not have?"""
    keyword = first_keyword(sql)
    if keyword not in _READ_ONLY and keyword not in _CHECKED:
        return False
    code = _code(sql.decode("latin-1") if isinstance(sql, bytes) else sql)
    if code is None:
        return False
    return keyword in _READ_ONLY or _EFFECTS.search(code) is None
