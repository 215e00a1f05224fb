"""The documentation against the code, without servers.

docs/connect.md is the reference of every parameter ``connect()`` accepts: its tables
must list exactly what ``sqlrouter/url.py`` accepts, with the same defaults.  Every
other page links to it.  Every example is run by a test or says why not
(``tests/fixtures/docs.py``; the examples run in ``tests/integration/test_docs.py``).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from sqlrouter import ServiceURL
from sqlrouter._urlparams import (
    _BOOL_ARGS,
    _BYTES_ARGS,
    _INT_ARGS,
    _OBJECT_ARGS,
    _REGISTRY_OPTIONS,
    _REJECTED,
    _ROUTING_PARAMETERS,
    _STR_ARGS,
    URL_PARAMETERS,
)
from sqlrouter.url import _render_value
from tests.fixtures.docs import ROOT, RUN_ELSEWHERE, blocks, documents

CONNECT = "docs/connect.md"


def section(doc: str, title: str) -> str:
    text = (ROOT / doc).read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        if heading.strip() == title:
            return body
    raise AssertionError(f"{doc} has no section {title!r}")


def table(doc: str, title: str) -> dict[str, list[str]]:
    """The first table of a section: ``{first cell without backticks: other cells}``."""
    rows: dict[str, list[str]] = {}
    for line in section(doc, title).splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = cells[0].strip("`")
        assert name not in rows, f"{doc}: {name} listed twice"
        rows[name] = cells[1:]
    return rows


def test_connect_md_lists_every_routing_parameter_with_its_default() -> None:
    rows = table(CONNECT, "Routing parameters")
    assert list(rows) == list(_ROUTING_PARAMETERS)
    defaults = {f.name: f.default for f in dataclasses.fields(ServiceURL)}
    for name, (default, _accepted, _meaning) in rows.items():
        value = defaults[name]
        if value is None:
            assert not re.fullmatch(r"`[^`]*`", default), (name, default)
        else:
            assert f"`{_render_value(value)}`" in default, (name, default, value)


def test_connect_md_lists_every_pymysql_option_with_its_type() -> None:
    rows = table(CONNECT, "PyMySQL options")
    types = {
        **dict.fromkeys(_BOOL_ARGS, "bool"),
        **dict.fromkeys(_INT_ARGS, "integer"),
        **dict.fromkeys(_STR_ARGS, "text"),
        **dict.fromkeys(_BYTES_ARGS, "text"),
    }
    assert set(rows) == set(types)
    for name, (kind,) in rows.items():
        assert kind.startswith(types[name]), (name, kind)
    assert set(rows) | set(_ROUTING_PARAMETERS) == URL_PARAMETERS


def test_connect_md_lists_keywords_refusals_and_registry_options() -> None:
    assert set(table(CONNECT, "Keywords only")) == _OBJECT_ARGS
    assert set(table(CONNECT, "Refused")) == set(_REJECTED)
    listed = section(CONNECT, "DNS registry options in a URL").split("The options:")[1]
    named = set(re.findall(r"`(\w+)`", listed.split("(`max_lag`")[0]))
    assert named == _REGISTRY_OPTIONS


@pytest.mark.parametrize("doc", [d for d in documents() if d != CONNECT])
def test_every_page_links_to_the_parameter_reference(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert "connect.md" in text, f"{doc} does not link to docs/connect.md"


def test_every_example_runs_or_says_why_not() -> None:
    examples = [b for doc in documents() for b in blocks(doc) if b.is_example]
    assert len(examples) > 30
    for block in examples:
        if block.not_run is not None:
            assert len(block.not_run) > 10, f"{block.where}: give the reason"
        elif block.doc in RUN_ELSEWHERE:
            # That test runs the python blocks only.
            assert block.language == "python", f"{block.where}: not run by {RUN_ELSEWHERE}"
    # A marker on a block that is not an example means nothing: none should exist.
    for doc in documents():
        for block in blocks(doc):
            if not block.is_example:
                assert block.not_run is None, f"{block.where}: not an example"
