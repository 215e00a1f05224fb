"""The examples of README.md and docs/*.md, run against sandbox clusters.

Each document's ``python``, ``console`` and ``sh`` blocks run in order (python blocks
in one namespace, commands in a shell with ``sqlrouter`` on the PATH), except those
marked ``<!-- not run: reason -->`` (``tests/fixtures/docs.py``).  The examples name
the service ``shop``, database ``shopdb``, user ``app`` and password ``secret`` (or
``pw``): they run against a sandbox whose service is registered as ``shop`` in
``$SQLROUTER_REGISTRY``, with the sandbox's database and password put in their place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import sqlrouter
from sqlrouter import control
from sqlrouter.registry import write_registry_file
from sqlrouter.sandbox import Sandbox
from tests.fixtures.cluster import _require_server
from tests.fixtures.docs import RUN_ELSEWHERE, Block, blocks, commands, documents

pytestmark = pytest.mark.sandbox

#: Documents whose examples change the cluster: they get a cluster of their own.
FRESH = frozenset({"docs/control.md", "docs/operations.md"})
#: Documents whose examples build their own sandbox: no cluster needed.
OWN_SANDBOX = frozenset({"docs/sandbox.md"})
#: The sample path of a control socket in docs/control.md.
SAMPLE_SOCKET = "/run/user/1000/sqlrouter/4242.sock"


@dataclasses.dataclass
class Setting:
    """Where one document's examples run."""

    env: dict[str, str]
    cwd: Path
    #: ``(sample text, real text)`` replacements applied to every example.
    replace: list[tuple[str, str]]
    secrets: list[str]


def _setting(sb: Sandbox | None, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Setting:
    work = tmp / "work"
    work.mkdir()
    replace = [("/tmp/sb", str(tmp / "sb"))]  # noqa: S108 (the sample path of docs/sandbox.md)
    secrets: list[str] = []
    if sb is not None:
        st = sb.state
        registry = write_registry_file(
            tmp / "shop.toml", [dataclasses.replace(sb.service(), name="shop")]
        )
        monkeypatch.setenv("SQLROUTER_REGISTRY", str(registry))
        credentials = f"{quote(st.app.user, safe='')}:{quote(st.app.password, safe='')}@"
        replace += [
            ("app:secret@", credentials),
            ("app:pw@", credentials),
            ('password="secret"', f"password={st.app.password!r}"),
            ("shopdb", st.database),
        ]
        secrets = [st.app.password, st.admin.password, st.repl.password, st.monitor.password]
    control_dir = tmp / "ctl"
    monkeypatch.setenv("SQLROUTER_CONTROL", str(control_dir))
    monkeypatch.chdir(work)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return Setting(env=env, cwd=work, replace=replace, secrets=secrets)


def _apply(text: str, setting: Setting) -> str:
    for sample, real in setting.replace:
        text = text.replace(sample, real)
    return text


def _run_python(block: Block, namespace: dict[str, Any], setting: Setting) -> None:
    code = compile(_apply(block.code, setting), block.where, "exec", dont_inherit=True)
    exec(code, namespace)  # noqa: S102  (our own documentation)


def _run_commands(block: Block, setting: Setting) -> str:
    script = "set -eu\n" + "\n".join(_apply(c, setting) for c in commands(block)) + "\n"
    res = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=setting.env,
        cwd=setting.cwd,
    )
    assert res.returncode == 0, f"{block.where}: exit {res.returncode}\n{res.stdout}{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def orders(cluster: Sandbox) -> Iterator[None]:
    """The ``orders`` table the examples write to."""
    table = f"`{cluster.state.database}`.orders"
    cluster.query(
        "db1",
        f"CREATE TABLE IF NOT EXISTS {table} (id INT AUTO_INCREMENT PRIMARY KEY, "
        "item VARCHAR(64) NOT NULL)",
    )
    yield
    cluster.query("db1", f"DROP TABLE IF EXISTS {table}")


def _check_django_settings(namespace: dict[str, Any]) -> None:
    """docs/django.md's settings: every alias reads as a service URL, and the router
    finds its write and read aliases in them."""
    from sqlrouter.contrib.django._config import service_url
    from sqlrouter.contrib.django.routers import find_aliases

    databases = namespace["DATABASES"]
    urls = {alias: service_url(entry, alias) for alias, entry in databases.items()}
    assert urls["default"].qos is sqlrouter.QoS.RW_STRICT
    assert urls["replica"].qos is sqlrouter.QoS.RO_RELAXED
    assert urls["replica"].service == urls["default"].service == "shop"
    aliases = find_aliases(databases)
    assert (aliases.write, aliases.read) == ("default", "replica")


#: Checks run after a document's examples, on their namespace.
AFTER: dict[str, Callable[[dict[str, Any]], None]] = {
    "docs/django.md": _check_django_settings,
}


def _control_socket(setting: Setting) -> Path:
    """This process's control socket (docs/control.md talks to it), started now."""
    sqlrouter.connect(_apply("sqlrouter://app:secret@shop/shopdb", setting)).close()
    server = control.current()
    assert server is not None and server.socket_path is not None
    return server.socket_path


@pytest.mark.parametrize("doc", [d for d in documents() if d not in RUN_ELSEWHERE])
def test_doc_examples_run(
    doc: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = [b for b in blocks(doc) if b.is_example and b.not_run is None]
    if not examples:
        pytest.skip(f"{doc}: every example says why it is not run")
    sb: Sandbox | None = None
    if doc in FRESH:
        sb = request.getfixturevalue("fresh_cluster")
    elif doc in OWN_SANDBOX:
        _require_server()
    else:
        sb = request.getfixturevalue("cluster")
        request.getfixturevalue("orders")
    setting = _setting(sb, tmp_path, monkeypatch)
    if doc == "docs/control.md":
        setting.replace.append((SAMPLE_SOCKET, str(_control_socket(setting))))
    namespace: dict[str, Any] = {"__name__": "docs_" + re.sub(r"\W", "_", doc)}
    output = []
    try:
        for block in examples:
            if block.language == "python":
                _run_python(block, namespace, setting)
            else:
                output.append(_run_commands(block, setting))
        if doc in AFTER:
            AFTER[doc](namespace)
    finally:
        leftover = setting.cwd / "sb"
        if (leftover / "sandbox.json").exists():  # the README's tour, interrupted
            Sandbox(leftover).destroy()
    printed = capsys.readouterr().out + "".join(output)
    for secret in setting.secrets:
        assert secret not in printed, f"{doc}: a password was printed"
