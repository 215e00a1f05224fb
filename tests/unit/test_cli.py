"""The command line without servers: options, exit codes, and what tables show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sqlrouter import __version__
from sqlrouter._table import clip, plural
from sqlrouter.cli import build_parser, main
from sqlrouter.cli.admin import format_response, format_status
from sqlrouter.registry import RegistryError, find_registry, resolve_registry_path

LONG_ERROR = (
    "(2003, \"Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection "
    'refused)") after 3 attempts within the probe timeout of 1.0s, while the monitor '
    "was measuring lag from the heartbeat table sqlrouter.heartbeat"
)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sqlrouter {__version__}"


def test_python_dash_m_sqlrouter() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sqlrouter", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: sqlrouter ")
    for command in ("sandbox", "route", "demo", "admin"):
        assert command in res.stdout


def test_qos_options_take_any_case() -> None:
    """URLs accept ``qos=ro_relaxed``; so does ``sandbox url --qos``."""
    args = build_parser().parse_args(["sandbox", "url", "--dir", "x", "--qos", "ro_relaxed"])
    assert args.qos == "RO_RELAXED"


def test_new_options_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--dir", "d", "--base-port", "23000"])
    assert (args.dir, args.base_port) == ("d", 23000)
    args = parser.parse_args(["sandbox", "rejoin", "--dir", "d", "db1"])
    assert (args.action, args.node) == ("rejoin", "db1")
    args = parser.parse_args(["sandbox", "status", "--dir", "d", "--json"])
    assert args.json is True


def test_clip_and_plural() -> None:
    assert clip(None) is None
    assert clip("short") == "short"
    assert clip("two\n  lines") == "two lines"
    cut = clip(LONG_ERROR)
    assert cut is not None and len(cut) == 60 and cut.endswith("...")
    assert LONG_ERROR.startswith(cut[:-3])
    assert [plural(n, "process", "processes") for n in (0, 1, 2)] == [
        "0 processes",
        "1 process",
        "2 processes",
    ]
    assert plural(1, "stale socket") == "1 stale socket"


def _status(error: str | None) -> dict[str, object]:
    return {
        "ok": True,
        "process": {"pid": 7, "program": "app", "uid": 1000},
        "control": {"socket": "/run/7.sock"},
        "services": [
            {
                "service": "shop",
                "registry": "file /etc/sqlrouter.toml",
                "max_lag": 1.0,
                "master": "db1",
                "monitor": {"running": True, "rounds": 3},
                "datasources": [{"name": "db2", "address": "10.0.0.2:3306", "error": error}],
            }
        ],
    }


def test_status_tables_cut_long_errors() -> None:
    text = format_status(_status(LONG_ERROR))
    assert LONG_ERROR not in text and str(clip(LONG_ERROR)) in text
    assert "--json shows them in full" in text
    assert max(len(line) for line in text.splitlines()) < 160
    short = format_status(_status("(1045) Access denied"))
    assert "(1045) Access denied" in short and "--json" not in short


def test_status_tables_cut_long_gtid_positions() -> None:
    status = _status(None)
    position = ",".join(f"{d}-1-{d * 1000}" for d in range(71))
    status["services"][0]["datasources"][0]["gtid"] = position  # type: ignore[index]
    text = format_status(status)
    assert position not in text and "0-1-0,1-1-1000,2-1-2000," in text
    assert "--json shows them in full" in text
    assert max(len(line) for line in text.splitlines()) < 160


def test_reload_answers_say_what_happened_once() -> None:
    error = "registry /etc/sqlrouter.toml: invalid TOML: Expected '=' (at line 3, column 2)"
    failed = {
        "ok": False,
        "code": "failed",
        "error": f"{error} (the last good registry content is kept)",
        "registries": [{"registry": "file /etc/sqlrouter.toml", "changed": False, "error": error}],
    }
    text = format_response("reload", failed)
    assert "file /etc/sqlrouter.toml: registry" not in text
    assert text.splitlines()[1] == f"{error} (its last good content stays in use)"
    fixed = {
        "ok": True,
        "registries": [
            {
                "registry": "file /etc/sqlrouter.toml",
                "changed": False,
                "error": None,
                "fixed": error,
            }
        ],
    }
    assert format_response("reload", fixed) == (
        f"file /etc/sqlrouter.toml: valid, no change; fixed since the last error ({error})"
    )
    changed = {"ok": True, "registries": [{"registry": "file x", "changed": True, "error": None}]}
    assert format_response("reload", changed) == "file x: reloaded, services changed"


def test_a_missing_registry_names_the_option_the_user_gives(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        resolve_registry_path(None, environ={}, cwd=tmp_path, given_as="--registry ")
    assert "looked at --registry (not given), $SQLROUTER_REGISTRY (not set)" in str(info.value)
    with pytest.raises(RegistryError) as info:
        find_registry("nope.toml", environ={}, cwd=tmp_path, given_as="--registry ")
    message = str(info.value)
    assert "looked at --registry nope.toml = " in message
    assert "only used when --registry is not given" in message
    with pytest.raises(RegistryError) as info:
        resolve_registry_path(None, environ={}, cwd=tmp_path)
    assert "looked at registry= (not given)" in str(info.value)


@pytest.mark.parametrize(
    ("monitor", "line"),
    [
        ({"shared": None}, "probed by this process (not shared)"),
        (
            {
                "shared": {"role": "publisher", "file": "/d/s.json", "agent": True},
                "heartbeat_writer": True,
            },
            "published by this process (an agent) in /d/s.json; this process writes the heartbeat",
        ),
        (
            {
                "shared": {
                    "role": "follower",
                    "file": "/d/s.json",
                    "publisher_pid": 42,
                    "agent": False,
                }
            },
            "read from pid 42, which publishes them in /d/s.json",
        ),
        (
            {"shared": {"role": "alone", "file": "/d/s.json"}},
            "probed by this process: /d/s.json is unusable",
        ),
        ({"shared": {"role": "follower", "file": "/d/s.json"}}, "no publisher yet (/d/s.json)"),
    ],
)
def test_status_says_who_publishes_the_snapshots(monitor: dict[str, object], line: str) -> None:
    response = {
        "process": {"pid": 7, "program": "app", "uid": 1000},
        "control": {"socket": "/run/7.sock"},
        "services": [
            {
                "service": "shop",
                "registry": "file x",
                "max_lag": 1.0,
                "master": "db1",
                "monitor": {"running": True, "rounds": 3, **monitor},
                "datasources": [],
            }
        ],
    }
    assert f"snapshots: {line}\n" in format_status(response) + "\n"


def test_agent_options() -> None:
    args = build_parser().parse_args(
        ["agent", "--registry", "r.toml", "--service", "a", "--service", "b"]
    )
    assert (args.command, args.registry, args.service, args.log_level) == (
        "agent",
        "r.toml",
        ["a", "b"],
        "INFO",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent"])  # --registry is required


def test_the_cli_starts_without_the_sandbox_or_the_switchover_package() -> None:
    # `sqlrouter --help` (and every command that does not use them) must not pay for
    # importing the sandbox or the switchover package: they load when their command runs.
    code = (
        "import sys\n"
        "from sqlrouter.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('sqlrouter.sandbox', 'sqlrouter.switchover')\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith("LOADED []"), res.stdout[-500:]
