"""The TOML file registry: loading, validation messages, reloads, finding the file, writing.

Everything runs on real temporary files; nothing sleeps (mtimes are set with os.utime
and the refresh throttle reads an injected clock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlrouter.errors import NotSupportedError, ProgrammingError
from sqlrouter.registry import (
    ER_REGISTRY,
    FileRegistry,
    Registry,
    RegistryCache,
    RegistryError,
    RegistryNotSupported,
    RegistrySpec,
    StaticRegistry,
    find_registry,
    get_registry,
    load_registry_file,
    parse_registry_spec,
    render_registry,
    resolve_registry_path,
    write_registry_file,
)
from sqlrouter.topology import (
    MAX_LAG_RANGE,
    MONITOR_INTERVAL_RANGE,
    PROBE_TIMEOUT_RANGE,
    WEIGHT_RANGE,
    Credentials,
    DataSource,
    HeartbeatSettings,
    Role,
    Service,
)

MONITOR_PASSWORD = "m0n-S3cret!"
ADMIN_PASSWORD = "adm1n-S3cret@"

EXAMPLE = f"""\
# optional process-wide settings
[control]
socket = "/run/sqlrouter/control.sock"
some_future_key = [1, 2, 3]

[services.sandbox]
max_lag = 1.0
monitor_interval = 0.5
probe_timeout = 1.0

[services.sandbox.heartbeat]
enabled = true
table = "sqlrouter.heartbeat"

[services.sandbox.monitor]
user = "sqlrouter_monitor"
password = "{MONITOR_PASSWORD}"

[services.sandbox.admin]
user = "sqlrouter_admin"
password_file = "secrets/admin.pw"

[[services.sandbox.datasources]]
name = "db1"
host = "127.0.0.1"
port = 23306
role = "master"

[[services.sandbox.datasources]]
name = "db2"
host = "127.0.0.1"
port = 23307
role = "replica"
weight = 1

[[services.sandbox.datasources]]
name = "db3"
host = "127.0.0.1"
port = 23308
weight = 3
"""


def expected_sandbox(path: Path) -> Service:
    return Service(
        name="sandbox",
        datasources=(
            DataSource("db1", "127.0.0.1", 23306, Role.MASTER, 1),
            DataSource("db2", "127.0.0.1", 23307, Role.REPLICA, 1),
            DataSource("db3", "127.0.0.1", 23308, Role.REPLICA, 3),
        ),
        max_lag=1.0,
        monitor_interval=0.5,
        probe_timeout=1.0,
        heartbeat=HeartbeatSettings(enabled=True, table="sqlrouter.heartbeat"),
        monitor_credentials=Credentials("sqlrouter_monitor", MONITOR_PASSWORD),
        admin_credentials=Credentials("sqlrouter_admin", ADMIN_PASSWORD),
        source=str(path),
    )


MINIMAL = """\
[[services.shop.datasources]]
name = "db1"
host = "10.0.0.1"
port = 3306
"""


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> Path:
    path.write_text(text, encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Move the file's mtime forward, as a later edit would, without sleeping."""
    mtime_ns = path.stat().st_mtime_ns + seconds * 1_000_000_000
    os.utime(path, ns=(mtime_ns, mtime_ns))


def message(exc: pytest.ExceptionInfo[RegistryError]) -> str:
    text = exc.value.args[1]
    assert isinstance(text, str)
    return text


@pytest.fixture
def example(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin.pw").write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "secrets" / "admin.pw").chmod(0o600)
    return write(tmp_path / "sqlrouter.toml", EXAMPLE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- loading


def test_the_full_example_loads_into_the_expected_services(example: Path) -> None:
    registry = load_registry_file(example)
    assert registry.services() == ["sandbox"]
    assert registry.lookup("sandbox") == expected_sandbox(example)
    assert registry.describe() == f"file {example}"
    assert registry.path == example
    assert registry.last_error is None
    assert registry.generation == 0
    assert isinstance(registry, Registry)


def test_control_is_kept_raw_and_read_only(example: Path) -> None:
    registry = load_registry_file(example)
    assert dict(registry.control) == {
        "socket": "/run/sqlrouter/control.sock",
        "some_future_key": (1, 2, 3),
    }
    with pytest.raises(TypeError):
        registry.control["socket"] = "x"  # type: ignore[index]


def test_optional_keys_take_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", MINIMAL)
    service = load_registry_file(path).lookup("shop")
    assert service == Service(
        name="shop",
        datasources=(DataSource("db1", "10.0.0.1", 3306, Role.REPLICA, 1),),
        source=str(path),
    )
    assert service.max_lag == 1.0
    assert service.monitor_interval == 0.5
    assert service.probe_timeout == 1.0
    assert service.heartbeat == HeartbeatSettings(enabled=True, table="sqlrouter.heartbeat")
    assert service.monitor_credentials is None
    assert service.admin_credentials is None
    assert load_registry_file(path).control == {}


def test_integers_are_accepted_for_seconds_and_become_floats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.toml",
        "[services.shop]\nmax_lag = 0\nmonitor_interval = 2\nprobe_timeout = 3\n" + MINIMAL,
    )
    service = load_registry_file(path).lookup("shop")
    assert (service.max_lag, service.monitor_interval, service.probe_timeout) == (0.0, 2.0, 3.0)
    assert isinstance(service.max_lag, float)


def test_a_service_with_no_declared_master_is_allowed(tmp_path: Path) -> None:
    # Roles are observed by the monitor; the registry need not name the master.
    text = MINIMAL + '[[services.shop.datasources]]\nname = "db2"\nhost = "10.0.0.2"\nport = 3306\n'
    service = load_registry_file(write(tmp_path / "r.toml", text)).lookup("shop")
    assert [ds.role for ds in service.datasources] == [Role.REPLICA, Role.REPLICA]


def test_the_same_server_may_belong_to_two_services(tmp_path: Path) -> None:
    text = MINIMAL + MINIMAL.replace("shop", "reports")
    registry = load_registry_file(write(tmp_path / "r.toml", text))
    assert registry.services() == ["shop", "reports"]


def test_a_file_with_only_control_has_no_services(tmp_path: Path) -> None:
    registry = load_registry_file(write(tmp_path / "r.toml", "[control]\nx = 1\n"))
    assert registry.services() == []
    with pytest.raises(RegistryError) as exc:
        registry.lookup("shop")
    assert message(exc).endswith("no service 'shop' (the registry defines no services)")


def test_a_password_file_is_relative_to_the_registry_file_and_loses_its_newline(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pw").write_bytes(b"p@ss word\r\n")
    (tmp_path / "conf" / "pw").chmod(0o600)
    text = '[services.shop.monitor]\nuser = "mon"\npassword_file = "pw"\n' + MINIMAL
    path = write(tmp_path / "conf" / "r.toml", text)
    service = load_registry_file(path).lookup("shop")
    assert service.monitor_credentials == Credentials("mon", "p@ss word")


MONITOR_FILE = '[services.shop.monitor]\nuser = "mon"\npassword_file = "pw"\n' + MINIMAL


def secret_file(path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "size", "error"),
    [
        (0o620, 10, "has mode 0620: a password file must not be writable by group or others "),
        (0o602, 10, "has mode 0602: a password file must not be writable by group or others "),
        (0o600, 4097, "holds 4097 bytes: a password file holds at most 4096"),
    ],
)
def test_a_password_file_must_be_small_and_not_writable_by_others(
    tmp_path: Path, mode: int, size: int, error: str
) -> None:
    pw = secret_file(tmp_path / "pw", "x" * size, mode)
    path = write(tmp_path / "r.toml", MONITOR_FILE)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == (
        f"registry {path}: service 'shop': monitor.password_file: {pw} {error}"
        + (f"(chmod 600 {pw})" if "mode" in error else "")
    )
    assert "xxx" not in message(exc)


def test_a_password_file_must_be_a_regular_file(tmp_path: Path) -> None:
    """A device (/dev/zero would be read forever) or a FIFO is refused, never opened."""
    for device in ("/dev/null", str(tmp_path)):
        path = write(tmp_path / "r.toml", MONITOR_FILE.replace('"pw"', f'"{device}"'))
        with pytest.raises(RegistryError) as exc:
            load_registry_file(path)
        assert message(exc) == (
            f"registry {path}: service 'shop': monitor.password_file: {device} is not a "
            "regular file: a password file must be one (a FIFO, a device or a directory is "
            "refused)"
        )
    fifo = tmp_path / "pw"
    os.mkfifo(fifo, 0o600)
    path = write(tmp_path / "r.toml", MONITOR_FILE)
    done = threading.Event()

    def release() -> None:
        # Should the load open the FIFO, it would wait for a writer forever: after a
        # deadline, be that writer (the test then fails on its assertion, not by hanging).
        if not done.wait(30):
            with open(fifo, "wb") as writer:
                writer.write(b"read-from-the-fifo")

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        with pytest.raises(RegistryError) as exc:
            load_registry_file(path)
    finally:
        done.set()
        releaser.join(35)
    assert f"{fifo} is not a regular file" in message(exc)


def test_a_password_file_readable_by_others_is_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = secret_file(tmp_path / "pw", "s3cret\n", 0o644)
    path = write(tmp_path / "r.toml", MONITOR_FILE)
    with caplog.at_level(logging.WARNING, logger="sqlrouter.registry"):
        service = load_registry_file(path).lookup("shop")
    assert service.monitor_credentials == Credentials("mon", "s3cret")
    assert [r.getMessage() for r in caplog.records] == [
        f"registry {path}: service 'shop': monitor.password_file: {pw} has mode 0644: other "
        f"users can read this password; chmod 600 {pw}"
    ]
    assert "s3cret" not in caplog.text


def test_a_rotated_password_file_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = secret_file(tmp_path / "pw", "first\n")
    path = write(tmp_path / "r.toml", MONITOR_FILE)
    clock = FakeClock()
    registry = FileRegistry(path, clock=clock)
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "first")
    clock.now += 0.5
    assert registry.refresh() is False  # nothing changed: one stat per file
    # The password is rotated; the registry file is not touched.
    secret_file(pw, "second\n")
    bump_mtime(pw)
    clock.now += 0.5
    assert registry.refresh() is True
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "second")
    # A broken rotation keeps the password read before, and says why, once.
    pw.chmod(0o666)
    clock.now += 0.5
    with caplog.at_level(logging.WARNING, logger="sqlrouter.registry"):
        assert registry.refresh() is False
        clock.now += 0.5
        assert registry.refresh() is False
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "second")
    assert registry.last_error is not None
    assert f"{pw} has mode 0666: a password file must not be writable" in registry.last_error
    assert len(caplog.records) == 1
    # Fixed: read again.
    secret_file(pw, "third\n")
    clock.now += 0.5
    assert registry.refresh() is True
    assert registry.lookup("shop").monitor_credentials == Credentials("mon", "third")
    assert registry.last_error is None
    assert "first" not in caplog.text and "second" not in caplog.text


def test_credentials_without_a_password_have_an_empty_one(tmp_path: Path) -> None:
    text = '[services.shop.admin]\nuser = "root"\n' + MINIMAL
    service = load_registry_file(write(tmp_path / "r.toml", text)).lookup("shop")
    assert service.admin_credentials == Credentials("root", "")


# --------------------------------------------------------------------------- validation

DS = "[[services.shop.datasources]]\n"
DS1 = DS + 'name = "db1"\nhost = "10.0.0.1"\nport = 3306\n'

# (file text, the message after "registry PATH: ")
INVALID: list[tuple[str, str]] = [
    (
        "[service.shop]\n",
        "unknown key 'service' (did you mean 'services'? known keys: control, services)",
    ),
    (
        "[services.shop]\nmax_lagg = 2\n" + DS1,
        "service 'shop': unknown key 'max_lagg' (did you mean 'max_lag'? known keys: "
        "max_lag, monitor_interval, probe_timeout, heartbeat, monitor, admin, replication, "
        "datasources, autofailover)",
    ),
    (
        DS1 + "prot = 3307\n",
        "service 'shop': datasources[0]: unknown key 'prot' (did you mean 'port'? "
        "known keys: name, host, port, role, weight)",
    ),
    (
        "[services.shop.heartbeat]\nenable = false\n" + DS1,
        "service 'shop': heartbeat: unknown key 'enable' (did you mean 'enabled'? "
        "known keys: enabled, table)",
    ),
    (
        '[services.shop.monitor]\nuser = "m"\nxyz = 1\n' + DS1,
        "service 'shop': monitor: unknown key 'xyz' (known keys: user, password, password_file)",
    ),
    ("services = 1\n", "services: expected a table ([services.NAME]), got 1"),
    ("control = 'x'\n", "control: expected a table ([control]), got 'x'"),
    ("[services]\nshop = 3\n", "service 'shop': expected a table ([services.shop]), got 3"),
    (
        DS1.replace("shop", "Shop"),
        "service 'Shop': invalid service name: use 1-63 lowercase letters, digits, '-' and "
        "'_', starting with a letter or digit (it is the host of a sqlrouter:// URL, which "
        "is case-insensitive)",
    ),
    (
        "[services.shop]\nmax_lag = 1\n",
        "service 'shop': datasources: a service needs at least one datasource "
        "([[services.shop.datasources]])",
    ),
    (
        "[services.shop]\ndatasources = []\n",
        "service 'shop': datasources: a service needs at least one datasource "
        "([[services.shop.datasources]])",
    ),
    (
        '[services.shop.datasources]\nname = "db1"\n',
        "service 'shop': datasources: expected an array of tables "
        "([[services.shop.datasources]]), got a table",
    ),
    (
        "[services.shop]\ndatasources = [1]\n",
        "service 'shop': datasources[0]: expected a table ([[services.shop.datasources]]), got 1",
    ),
    (
        DS + 'host = "h"\nport = 1\n',
        "service 'shop': datasources[0].name: missing (every datasource needs name, host and port)",
    ),
    (
        DS + 'name = "db1"\nport = 1\n',
        "service 'shop': datasources[0].host: missing (every datasource needs name, host and port)",
    ),
    (
        DS + 'name = "db1"\nhost = "h"\n',
        "service 'shop': datasources[0].port: missing (every datasource needs name, host and port)",
    ),
    (
        DS1 + DS + 'name = "db2"\nhost = "h"\nport = "abc"\n',
        "service 'shop': datasources[1].port: expected an integer 1-65535, got 'abc'",
    ),
    (
        DS + 'name = "db1"\nhost = "h"\nport = 0\n',
        "service 'shop': datasources[0].port: expected an integer 1-65535, got 0",
    ),
    (
        DS + 'name = "db1"\nhost = "h"\nport = 65536\n',
        "service 'shop': datasources[0].port: expected an integer 1-65535, got 65536",
    ),
    (
        DS + 'name = "db1"\nhost = "h"\nport = true\n',
        "service 'shop': datasources[0].port: expected an integer 1-65535, got true",
    ),
    (
        DS + 'name = "db1"\nhost = "h"\nport = 3306.0\n',
        "service 'shop': datasources[0].port: expected an integer 1-65535, got 3306.0",
    ),
    (
        DS + 'name = 7\nhost = "h"\nport = 1\n',
        "service 'shop': datasources[0].name: expected a string, got 7",
    ),
    (
        DS + 'name = "db 1"\nhost = "h"\nport = 1\n',
        "service 'shop': datasources[0].name: expected 1-64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit, got 'db 1'",
    ),
    (
        DS + 'name = "db1"\nhost = ""\nport = 1\n',
        "service 'shop': datasources[0].host: expected a host name or IP address, got ''",
    ),
    (
        DS + 'name = "db1"\nhost = ["h"]\nport = 1\n',
        "service 'shop': datasources[0].host: expected a string, got an array",
    ),
    (
        DS1 + 'role = "primary"\n',
        "service 'shop': datasources[0].role: expected 'master' or 'replica', got 'primary'",
    ),
    (
        DS1 + "weight = 0\n",
        "service 'shop': datasources[0].weight: expected an integer 1-65535, got 0",
    ),
    (
        DS1 + "weight = 1.5\n",
        "service 'shop': datasources[0].weight: expected an integer 1-65535, got 1.5",
    ),
    (
        DS1 + "weight = 65536\n",
        "service 'shop': datasources[0].weight: expected an integer 1-65535, got 65536",
    ),
    (
        DS1 + "weight = " + "9" * 320 + "\n",
        "service 'shop': datasources[0].weight: expected an integer 1-65535, got an integer "
        "of 320 digits",
    ),
    (
        DS1 + "weight = " + "9" * 5000 + "\n",
        "invalid TOML: an integer of over 4300 digits",
    ),
    (
        DS1 + DS + 'name = "db1"\nhost = "10.0.0.2"\nport = 3306\n',
        "service 'shop': datasources[1].name: duplicate name 'db1' (also datasources[0])",
    ),
    (
        DS1.replace("10.0.0.1", "DB.example") + DS + 'name = "db2"\nhost = "db.EXAMPLE"\n'
        "port = 3306\n",
        "service 'shop': datasources[1]: duplicate address db.EXAMPLE:3306 "
        "(also datasources[0] 'db1')",
    ),
    (
        DS1
        + 'role = "master"\n'
        + DS
        + 'name = "db2"\nhost = "h2"\nport = 1\n'
        + DS
        + 'name = "db3"\nhost = "h3"\nport = 1\nrole = "master"\n',
        "service 'shop': datasources: more than one declared master (db1, db3): declare at "
        "most one; the monitor observes which server really is the master",
    ),
    (
        "[services.shop]\nmonitor_interval = 0\n" + DS1,
        "service 'shop': monitor_interval: expected a number of seconds 0.05-3600, got 0",
    ),
    (
        "[services.shop]\nmonitor_interval = -1.5\n" + DS1,
        "service 'shop': monitor_interval: expected a number of seconds 0.05-3600, got -1.5",
    ),
    (
        "[services.shop]\nmonitor_interval = 1e-300\n" + DS1,
        "service 'shop': monitor_interval: expected a number of seconds 0.05-3600, got 1e-300",
    ),
    (
        "[services.shop]\nmonitor_interval = 3601\n" + DS1,
        "service 'shop': monitor_interval: expected a number of seconds 0.05-3600, got 3601",
    ),
    (
        "[services.shop]\nprobe_timeout = 1e300\n" + DS1,
        "service 'shop': probe_timeout: expected a number of seconds 0.05-60, got 1e+300",
    ),
    (
        "[services.shop]\nmax_lag = " + "9" * 400 + "\n" + DS1,
        "service 'shop': max_lag: expected a number of seconds 0-31536000, got an integer of "
        "400 digits",
    ),
    (
        "[services.shop]\nprobe_timeout = 0.0\n" + DS1,
        "service 'shop': probe_timeout: expected a number of seconds 0.05-60, got 0.0",
    ),
    (
        "[services.shop]\nprobe_timeout = inf\n" + DS1,
        "service 'shop': probe_timeout: expected a number of seconds 0.05-60, got inf",
    ),
    (
        "[services.shop]\nmax_lag = -0.1\n" + DS1,
        "service 'shop': max_lag: expected a number of seconds 0-31536000, got -0.1",
    ),
    (
        "[services.shop]\nmax_lag = nan\n" + DS1,
        "service 'shop': max_lag: expected a number of seconds 0-31536000, got nan",
    ),
    (
        '[services.shop]\nmax_lag = "1"\n' + DS1,
        "service 'shop': max_lag: expected a number of seconds 0-31536000, got '1'",
    ),
    (
        "[services.shop]\nmax_lag = false\n" + DS1,
        "service 'shop': max_lag: expected a number of seconds 0-31536000, got false",
    ),
    (
        "[services.shop]\nheartbeat = 1\n" + DS1,
        "service 'shop': heartbeat: expected a table ([services.shop.heartbeat]), got 1",
    ),
    (
        '[services.shop.heartbeat]\nenabled = "yes"\n' + DS1,
        "service 'shop': heartbeat.enabled: expected true or false, got 'yes'",
    ),
    *[
        (
            f'[services.shop.heartbeat]\ntable = "{table}"\n' + DS1,
            "service 'shop': heartbeat.table: expected 'schema.table' (each of 1-64 letters, "
            f"digits, '_' or '$'), got '{table}'",
        )
        for table in ("heartbeat", "a.b.c", "my-db.hb", ".hb", "db.", "a.`b`")
    ],
    (
        "[services.shop.monitor]\npassword = 'x'\n" + DS1,
        "service 'shop': monitor.user: missing (a credentials table needs a user)",
    ),
    (
        "[services.shop.admin]\nuser = ''\n" + DS1,
        "service 'shop': admin.user: expected a non-empty string, got ''",
    ),
    (
        "[services.shop]\nmonitor = 'sqlrouter_monitor'\n" + DS1,
        "service 'shop': monitor: expected a table ([services.shop.monitor]), "
        "got 'sqlrouter_monitor'",
    ),
    (
        "[services.shop.admin]\nuser = 'a'\npassword = 'p'\npassword_file = 'f'\n" + DS1,
        "service 'shop': admin: give either password or password_file, not both",
    ),
    (
        "[services.shop.admin]\nuser = 'a'\npassword_file = ''\n" + DS1,
        "service 'shop': admin.password_file: expected a file path, got ''",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_validation_errors_name_the_file_the_service_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "sqlrouter.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == f"registry {path}: {expected}"
    assert exc.value.args[0] == ER_REGISTRY
    assert exc.value.path == str(path)
    assert isinstance(exc.value, ProgrammingError)


def test_the_error_attributes_say_which_service_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", DS1 + DS + 'name = "db2"\nhost = "h"\nport = "abc"\n')
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert (exc.value.service, exc.value.field) == ("shop", "datasources[1].port")


def test_registry_error_is_public_in_the_sqlrouter_namespace() -> None:
    assert RegistryError.__module__ == "sqlrouter"
    assert issubclass(RegistryError, ProgrammingError)


@pytest.mark.parametrize(
    "text",
    [
        f"[services.shop.monitor]\nuser = 'm'\npassword = 12345\n{DS1}",
        f"[services.shop.monitor]\nuser = 'm'\npassword = ['{MONITOR_PASSWORD}']\n{DS1}",
        f"[services.shop.monitor]\nuser = 'm'\npassword = {{ x = '{MONITOR_PASSWORD}' }}\n{DS1}",
    ],
)
def test_a_wrong_typed_password_is_not_echoed(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == f"registry {path}: service 'shop': monitor.password: expected a string"
    assert "12345" not in str(exc.value)
    assert MONITOR_PASSWORD not in str(exc.value)


def test_a_misspelt_password_key_names_the_key_but_not_the_value(tmp_path: Path) -> None:
    text = f"[services.shop.admin]\nuser = 'a'\npasswd = '{ADMIN_PASSWORD}'\n{DS1}"
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == (
        f"registry {path}: service 'shop': admin: unknown key 'passwd' "
        "(did you mean 'password'? known keys: user, password, password_file)"
    )
    assert ADMIN_PASSWORD not in str(exc.value)


def test_a_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    text = f'[services.shop.monitor]\nuser = "m"\npassword = "{MONITOR_PASSWORD}\n'
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == (
        f"registry {path}: invalid TOML: Illegal character '\\n' (at line 3, column 24)"
    )
    assert MONITOR_PASSWORD not in message(exc)


def test_a_toml_error_at_the_end_of_the_file_says_where_the_end_is(tmp_path: Path) -> None:
    text = f"[services.shop.monitor]\nuser = 'm'\npassword = '{MONITOR_PASSWORD}\n"
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == (
        f'registry {path}: invalid TOML: Expected "\'" (at end of document: line 4, column 1)'
    )
    assert MONITOR_PASSWORD not in message(exc)


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == f"registry {path}: not UTF-8 text (byte 5)"


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        load_registry_file(tmp_path / "nope.toml")
    assert message(exc) == (
        f"registry {tmp_path / 'nope.toml'}: cannot read the file: No such file or directory"
    )


def test_a_relative_path_is_reported_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError) as exc:
        load_registry_file("missing.toml")
    assert message(exc).startswith(f"registry {tmp_path / 'missing.toml'}: ")


def test_a_missing_password_file_names_its_path(tmp_path: Path) -> None:
    text = "[services.shop.monitor]\nuser = 'm'\npassword_file = 'secret/pw'\n" + DS1
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    assert message(exc) == (
        f"registry {path}: service 'shop': monitor.password_file: cannot read "
        f"{tmp_path / 'secret' / 'pw'}: No such file or directory"
    )


# --------------------------------------------------------------------------- lookup


def test_lookup_of_an_unknown_service_lists_the_known_ones_closest_first(
    tmp_path: Path,
) -> None:
    text = "".join(MINIMAL.replace("shop", name) for name in ("reports", "shop", "shops"))
    path = write(tmp_path / "r.toml", text)
    registry = load_registry_file(path)
    with pytest.raises(RegistryError) as exc:
        registry.lookup("shpo")
    assert message(exc) == (
        f"registry file {path}: no service 'shpo' "
        "(did you mean 'shop'? known services: shop, shops, reports)"
    )
    assert exc.value.service == "shpo"
    with pytest.raises(RegistryError) as exc:
        registry.lookup("zzz")
    assert "(known services: " in message(exc)
    assert "did you mean" not in message(exc)


def test_static_registry_serves_services_from_code() -> None:
    service = Service("shop", (DataSource("db1", "h"),))
    registry = StaticRegistry([service], control={"a": {"b": [1]}})
    assert registry.lookup("shop") is service
    assert registry.services() == ["shop"]
    assert registry.describe() == "<code>"
    assert registry.refresh() is False
    assert registry.last_error is None
    assert registry.control == {"a": {"b": (1,)}}
    assert repr(registry) == "<StaticRegistry <code> [services: shop]>"
    with pytest.raises(RegistryError, match="no service 'shp'"):
        registry.lookup("shp")
    with pytest.raises(ValueError, match="given twice"):
        StaticRegistry([service, service])


# --------------------------------------------------------------------------- repr and secrets


def test_no_repr_or_str_shows_a_password(example: Path) -> None:
    registry = load_registry_file(example)
    service = registry.lookup("sandbox")
    texts = [
        repr(registry),
        str(registry),
        repr(service),
        str(service),
        repr(service.monitor_credentials),
        str(service.admin_credentials),
        registry.describe(),
    ]
    for text in texts:
        assert MONITOR_PASSWORD not in text
        assert ADMIN_PASSWORD not in text
    assert repr(registry) == f"<FileRegistry {example} [services: sandbox | ok]>"


# --------------------------------------------------------------------------- reloading


def test_refresh_reloads_a_changed_file(example: Path) -> None:
    registry = load_registry_file(example)
    write(example, EXAMPLE.replace("port = 23308", "port = 23309"))
    bump_mtime(example)
    assert registry.refresh(force=True) is True
    assert registry.lookup("sandbox").datasource("db3").port == 23309
    assert registry.generation == 1
    assert registry.refresh(force=True) is False


def test_refresh_returns_false_when_only_the_mtime_changed(example: Path) -> None:
    registry = load_registry_file(example)
    before = registry.lookup("sandbox")
    bump_mtime(example)
    assert registry.refresh(force=True) is False
    assert registry.lookup("sandbox") is before
    assert registry.generation == 0


def test_refresh_only_stats_an_unchanged_file(example: Path) -> None:
    # Same size, same inode, mtime put back: the file is not read again, which is
    # what keeps refresh() cheap.  (The broken content would otherwise be noticed.)
    registry = load_registry_file(example)
    mtime_ns = example.stat().st_mtime_ns
    broken = "#" * len(EXAMPLE.encode())
    write(example, broken, mtime_ns=mtime_ns)
    assert example.stat().st_size == len(EXAMPLE.encode())
    assert registry.refresh(force=True) is False
    assert registry.last_error is None


def test_refresh_sees_services_added_and_removed(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", MINIMAL)
    registry = load_registry_file(path)
    write(path, MINIMAL.replace("shop", "reports"))
    bump_mtime(path)
    assert registry.refresh(force=True) is True
    assert registry.services() == ["reports"]
    with pytest.raises(RegistryError, match="no service 'shop'"):
        registry.lookup("shop")


def test_a_control_change_counts_as_a_change(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", MINIMAL)
    registry = load_registry_file(path)
    write(path, "[control]\nx = 1\n" + MINIMAL)
    bump_mtime(path)
    assert registry.refresh(force=True) is True
    assert registry.control == {"x": 1}


def test_a_broken_reload_keeps_the_last_good_content(
    example: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = load_registry_file(example)
    good = registry.lookup("sandbox")
    write(example, EXAMPLE.replace("port = 23307", "port = 0"))
    bump_mtime(example)
    with caplog.at_level(logging.WARNING, logger="sqlrouter.registry"):
        assert registry.refresh(force=True) is False
    assert registry.lookup("sandbox") is good
    error = (
        f"registry {example}: service 'sandbox': datasources[1].port: "
        "expected an integer 1-65535, got 0"
    )
    assert registry.last_error == error
    assert [r.getMessage() for r in caplog.records] == [
        f"{error}; keeping the services loaded before"
    ]
    assert repr(registry) == f"<FileRegistry {example} [services: sandbox | stale: {error}]>"

    # The same broken file is neither re-read nor re-logged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sqlrouter.registry"):
        assert registry.refresh(force=True) is False
    assert caplog.records == []

    # Fixed: the new content is served and the error is gone.
    write(example, EXAMPLE.replace("port = 23307", "port = 23317"))
    bump_mtime(example, 20)
    assert registry.refresh(force=True) is True
    assert registry.last_error is None
    assert registry.lookup("sandbox").datasource("db2").port == 23317


def test_a_broken_reload_never_logs_a_password(
    example: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = load_registry_file(example)
    write(example, EXAMPLE.replace(f'password = "{MONITOR_PASSWORD}"', "password = 1"))
    bump_mtime(example)
    with caplog.at_level(logging.DEBUG, logger="sqlrouter.registry"):
        registry.refresh(force=True)
    assert registry.last_error is not None
    assert "expected a string" in registry.last_error
    assert MONITOR_PASSWORD not in caplog.text


def test_a_deleted_file_keeps_the_last_good_content_until_it_returns(example: Path) -> None:
    registry = load_registry_file(example)
    good = registry.lookup("sandbox")
    example.rename(example.with_suffix(".bak"))
    assert registry.refresh(force=True) is False
    assert registry.lookup("sandbox") is good
    assert registry.last_error == (
        f"registry {example}: cannot read the file: No such file or directory"
    )
    example.with_suffix(".bak").rename(example)
    assert registry.refresh(force=True) is False  # same content as before
    assert registry.last_error is None


def test_refresh_is_throttled_by_the_clock(example: Path) -> None:
    clock = FakeClock()
    registry = load_registry_file(example, clock=clock)
    write(example, EXAMPLE.replace("port = 23308", "port = 23309"))
    bump_mtime(example)
    clock.now += 0.49
    assert registry.refresh() is False  # too soon: not even a stat
    assert registry.lookup("sandbox").datasource("db3").port == 23308
    clock.now += 0.01
    assert registry.refresh() is True
    assert registry.lookup("sandbox").datasource("db3").port == 23309


def test_an_atomic_replace_is_noticed_even_with_the_same_mtime(example: Path) -> None:
    registry = load_registry_file(example)
    old = example.stat()
    service = dataclasses.replace(registry.lookup("sandbox"), max_lag=7.0)
    write_registry_file(example, [service])
    os.utime(example, ns=(old.st_mtime_ns, old.st_mtime_ns))
    assert registry.refresh(force=True) is True
    assert registry.lookup("sandbox").max_lag == 7.0


def test_readers_see_whole_versions_while_the_file_changes(tmp_path: Path) -> None:
    def version(n: int) -> str:
        return "".join(
            DS + f'name = "db{i}"\nhost = "h"\nport = {n}{i}\n' for i in range(1, n % 4 + 2)
        )

    path = write(tmp_path / "r.toml", version(10))
    registry = load_registry_file(path)
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            service = registry.lookup("shop")
            ports = {str(ds.port)[:-1] for ds in service.datasources}
            if len(ports) != 1 or len(service.datasources) != int(ports.pop()) % 4 + 1:
                problems.append(repr(service))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for n in range(11, 31):
            write(path, version(n))
            bump_mtime(path, n)
            assert registry.refresh(force=True) is True
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert problems == []
    assert registry.generation == 20


# --------------------------------------------------------------------------- the cache


def test_the_cache_shares_one_registry_per_absolute_path(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example.parent)
    cache = RegistryCache()
    first = cache.get(example)
    assert cache.get("sqlrouter.toml") is first
    assert cache.get(f"./{example.name}") is first
    assert len(cache) == 1
    other = write(example.parent / "other.toml", MINIMAL)
    assert cache.get(other) is not first
    assert len(cache) == 2
    cache.clear()
    assert cache.get(example) is not first


def test_the_cache_is_bounded_and_never_loads_a_registry_in_use_twice(tmp_path: Path) -> None:
    cache = RegistryCache(max_kept=2)
    paths = [write(tmp_path / f"r{i}.toml", MINIMAL) for i in range(6)]
    in_use = cache.get(paths[0])  # held, as a service's monitor holds its registry
    for path in paths[1:]:
        cache.get(path)
    gc.collect()
    # The two used last, and the one still held elsewhere; the others are freed.
    assert repr(cache) == f"<RegistryCache [{', '.join(str(paths[i]) for i in (0, 4, 5))}]>"
    assert cache.get(paths[0]) is in_use


def test_the_cache_refreshes_throttled_on_each_get(example: Path) -> None:
    clock = FakeClock()
    cache = RegistryCache(clock=clock)
    registry = cache.get(example)
    write(example, EXAMPLE.replace("port = 23308", "port = 23309"))
    bump_mtime(example)
    assert cache.get(example).lookup("sandbox").datasource("db3").port == 23308
    clock.now += 0.5
    assert cache.get(example) is registry
    assert registry.lookup("sandbox").datasource("db3").port == 23309


def test_the_cache_does_not_keep_a_file_that_failed_to_load(tmp_path: Path) -> None:
    cache = RegistryCache()
    path = write(tmp_path / "r.toml", "[services.shop]\n")
    with pytest.raises(RegistryError):
        cache.get(path)
    assert len(cache) == 0
    write(path, MINIMAL)
    assert cache.get(path).services() == ["shop"]


def test_concurrent_first_gets_share_one_parse(example: Path) -> None:
    cache = RegistryCache()
    barrier = threading.Barrier(8)
    found: list[FileRegistry] = []

    def get() -> None:
        barrier.wait()
        found.append(cache.get(example))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert all(registry is found[0] for registry in found)


def test_get_registry_is_process_wide(example: Path) -> None:
    assert get_registry(example) is get_registry(str(example))


# --------------------------------------------------------------------------- finding the file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc" / "explicit.toml", MINIMAL)
    write(tmp_path / "etc" / "env.toml", MINIMAL)
    write(tmp_path / "sqlrouter.toml", MINIMAL)
    return tmp_path


def test_resolve_prefers_the_explicit_registry(tree: Path) -> None:
    env = {"SQLROUTER_REGISTRY": str(tree / "etc" / "env.toml")}
    explicit = tree / "etc" / "explicit.toml"
    assert resolve_registry_path(str(explicit), environ=env, cwd=tree) == explicit
    assert resolve_registry_path("etc/explicit.toml", environ=env, cwd=tree) == explicit
    assert resolve_registry_path("file:etc/explicit.toml", environ=env, cwd=tree) == explicit
    assert resolve_registry_path(f"file:{explicit}", environ=env, cwd=tree) == explicit
    assert resolve_registry_path(f"file://{explicit}", environ=env, cwd=tree) == explicit


def test_resolve_then_uses_the_environment(tree: Path) -> None:
    env = {"SQLROUTER_REGISTRY": "etc/env.toml"}
    assert resolve_registry_path(None, environ=env, cwd=tree) == tree / "etc" / "env.toml"
    env = {"SQLROUTER_REGISTRY": f"file:{tree}/etc/env.toml"}
    assert resolve_registry_path(None, environ=env, cwd=tree) == tree / "etc" / "env.toml"


def test_resolve_then_uses_the_current_directory(tree: Path) -> None:
    assert resolve_registry_path(None, environ={}, cwd=tree) == tree / "sqlrouter.toml"
    empty = {"SQLROUTER_REGISTRY": ""}
    assert resolve_registry_path(None, environ=empty, cwd=tree) == tree / "sqlrouter.toml"


def test_resolve_defaults_to_the_real_environment_and_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)
    monkeypatch.delenv("SQLROUTER_REGISTRY", raising=False)
    assert resolve_registry_path(None) == tree / "sqlrouter.toml"
    monkeypatch.setenv("SQLROUTER_REGISTRY", "etc/env.toml")
    assert resolve_registry_path(None) == tree / "etc" / "env.toml"


def test_resolve_expands_the_home_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree))
    assert resolve_registry_path("~/etc/explicit.toml", environ={}) == (
        tree / "etc" / "explicit.toml"
    )


def test_resolve_says_every_place_it_looked(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path(None, environ={}, cwd=tmp_path)
    assert message(exc) == (
        "no registry file: looked at registry= (not given), $SQLROUTER_REGISTRY (not set), "
        f"./sqlrouter.toml = {tmp_path / 'sqlrouter.toml'} (not found)"
    )
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path(None, environ={"SQLROUTER_REGISTRY": " "}, cwd=tmp_path)
    assert "$SQLROUTER_REGISTRY (empty), " in message(exc)


def test_resolve_does_not_fall_back_when_the_environment_names_a_missing_file(
    tree: Path,
) -> None:
    env = {"SQLROUTER_REGISTRY": "nope.toml"}
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path(None, environ=env, cwd=tree)
    assert message(exc) == (
        "no registry file: looked at registry= (not given), "
        f"$SQLROUTER_REGISTRY=nope.toml = {tree / 'nope.toml'} (not found); "
        "./sqlrouter.toml is only used when $SQLROUTER_REGISTRY is not set"
    )


def test_resolve_does_not_fall_back_when_the_explicit_file_is_missing(tree: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path("etc", environ={}, cwd=tree)
    assert message(exc) == (
        f"no registry file: looked at registry=etc = {tree / 'etc'} (not a regular file); "
        "$SQLROUTER_REGISTRY and ./sqlrouter.toml are only used when registry= is not given"
    )


def test_resolve_refuses_dns_registries(tree: Path) -> None:
    for spec in ("dns:example.com", "file:etc/explicit.toml,dns:example.com"):
        with pytest.raises(RegistryNotSupported) as exc:
            resolve_registry_path(spec, environ={}, cwd=tree)
        assert message(exc) == (
            f"registry={spec}: dns:example.com is a DNS registry, which has no file path; "
            "find_registry() reads DNS registries and lists of registries"
        )
        assert isinstance(exc.value, ProgrammingError)
        assert isinstance(exc.value, NotSupportedError)
    with pytest.raises(RegistryNotSupported, match=r"^\(3910, '\$SQLROUTER_REGISTRY=dns:x"):
        resolve_registry_path(None, environ={"SQLROUTER_REGISTRY": "dns:x"}, cwd=tree)


def test_resolve_refuses_two_files_and_unknown_kinds(tree: Path) -> None:
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path("file:a.toml,file:b.toml", environ={}, cwd=tree)
    assert message(exc) == (
        "registry=file:a.toml,file:b.toml: more than one registry file; only one is supported"
    )
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path("http://x/r.toml", environ={}, cwd=tree)
    assert message(exc) == (
        "registry=http://x/r.toml: unknown registry kind 'http': "
        "expected a path, file:PATH or dns:DOMAIN"
    )
    with pytest.raises(RegistryError) as exc:
        resolve_registry_path("", environ={}, cwd=tree)
    assert message(exc) == "registry= is empty: give a registry file path"


@pytest.mark.parametrize(
    ("spec", "entries"),
    [
        ("/etc/r.toml", [("file", "/etc/r.toml")]),
        ("r.toml", [("file", "r.toml")]),
        ("file:/etc/r.toml", [("file", "/etc/r.toml")]),
        ("FILE:/etc/r.toml", [("file", "/etc/r.toml")]),
        ("file:///etc/r.toml", [("file", "/etc/r.toml")]),
        ("dns:example.com", [("dns", "example.com")]),
        (
            "file:/etc/r.toml, dns:example.com",
            [("file", "/etc/r.toml"), ("dns", "example.com")],
        ),
        ("/etc/a,b.toml", [("file", "/etc/a,b.toml")]),
        ("/etc/a,b.toml,dns:x", [("file", "/etc/a,b.toml"), ("dns", "x")]),
    ],
)
def test_parse_registry_spec(spec: str, entries: list[tuple[str, str]]) -> None:
    parsed = parse_registry_spec(spec)
    assert [(entry.kind, entry.value) for entry in parsed] == entries
    assert all(isinstance(entry, RegistrySpec) for entry in parsed)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("file:", "registry=file:: 'file:' has no path"),
        ("dns:", "registry=dns:: 'dns:' has no domain"),
        (
            "file://host/r.toml",
            "registry=file://host/r.toml: 'file://host/r.toml': a file: URL with a host is "
            "not supported; write file:/absolute/path or file:relative/path",
        ),
    ],
)
def test_parse_registry_spec_errors(spec: str, expected: str) -> None:
    with pytest.raises(RegistryError) as exc:
        parse_registry_spec(spec)
    assert message(exc) == expected


def test_find_registry_resolves_and_shares(tree: Path) -> None:
    registry = find_registry("etc/explicit.toml", environ={}, cwd=tree)
    assert registry is get_registry(tree / "etc" / "explicit.toml")
    assert registry.services() == ["shop"]


# --------------------------------------------------------------------------- writing


def test_write_then_load_gives_equal_services(example: Path, tmp_path: Path) -> None:
    loaded = load_registry_file(example)
    target = tmp_path / "out" / "sqlrouter.toml"
    target.parent.mkdir()
    written = write_registry_file(target, [loaded.lookup("sandbox")], control=loaded.control)
    assert written == target
    reloaded = load_registry_file(target)
    assert reloaded.lookup("sandbox") == dataclasses.replace(
        loaded.lookup("sandbox"), source=str(target)
    )
    assert reloaded.control == loaded.control


def test_the_written_file_is_private(tmp_path: Path) -> None:
    target = tmp_path / "r.toml"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o644)
    write_registry_file(target, [Service("shop", (DataSource("db1", "h"),))])
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["r.toml"]  # no temporary file left


def test_write_renders_the_documented_shape(tmp_path: Path) -> None:
    service = Service(
        "sandbox",
        (
            DataSource("db1", "127.0.0.1", 23306, Role.MASTER),
            DataSource("db2", "127.0.0.1", 23307),
        ),
        monitor_credentials=Credentials("sqlrouter_monitor", 'p"w\\'),
    )
    assert render_registry([service]) == (
        "# sqlrouter registry: the services this process may connect to.\n"
        "# The format is described in sqlrouter's docs/registry.md.\n"
        "\n"
        "[services.sandbox]\n"
        "max_lag = 1.0\n"
        "monitor_interval = 0.5\n"
        "probe_timeout = 1.0\n"
        "\n"
        "[services.sandbox.heartbeat]\n"
        "enabled = true\n"
        'table = "sqlrouter.heartbeat"\n'
        "\n"
        "[services.sandbox.monitor]\n"
        'user = "sqlrouter_monitor"\n'
        'password = "p\\"w\\\\"\n'
        "\n"
        "[[services.sandbox.datasources]]\n"
        'name = "db1"\n'
        'host = "127.0.0.1"\n'
        "port = 23306\n"
        'role = "master"\n'
        "weight = 1\n"
        "\n"
        "[[services.sandbox.datasources]]\n"
        'name = "db2"\n'
        'host = "127.0.0.1"\n'
        "port = 23307\n"
        'role = "replica"\n'
        "weight = 1\n"
    )


@pytest.mark.parametrize(
    "password",
    ['"', "\\", "a\nb\r\tc", "\x00\x01\x1f\x7f", "é😀 ünïcode", "'''", '"""', "@:/%#[]="],
)
def test_passwords_of_any_characters_survive_a_round_trip(tmp_path: Path, password: str) -> None:
    service = Service(
        "shop", (DataSource("db1", "h"),), admin_credentials=Credentials("admin", password)
    )
    path = write_registry_file(tmp_path / "r.toml", [service])
    assert load_registry_file(path).lookup("shop").admin_credentials == Credentials(
        "admin", password
    )


def test_control_values_survive_a_round_trip(tmp_path: Path) -> None:
    control: dict[str, Any] = {
        "socket": "/run/x.sock",
        "odd key": True,
        "n": -3,
        "f": 2.5e-10,
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 6),
        "list": [1, "two", [3.0], {"four": 4}],
        "nested": {"deeper": {"x": "y"}, "z": 1},
        "empty": {},
    }
    path = write_registry_file(
        tmp_path / "r.toml", [Service("shop", (DataSource("db1", "h"),))], control=control
    )
    assert thaw(load_registry_file(path).control) == thaw(control)


def test_write_refuses_invalid_services_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "r.toml"
    bad = Service("shop", (DataSource("db1", "h", port=0),))
    with pytest.raises(RegistryError) as exc:
        write_registry_file(target, [bad])
    assert message(exc) == (
        f"registry {target}: service 'shop': datasources[0].port: "
        "expected an integer 1-65535, got 0"
    )
    assert not target.exists()
    with pytest.raises(RegistryError, match="at least one datasource"):
        write_registry_file(target, [Service("shop", ())])
    with pytest.raises(ValueError, match="given twice"):
        render_registry([Service("shop", ())] * 2)
    with pytest.raises(TypeError, match="cannot write a object"):
        render_registry([], control={"x": object()})
    assert list(tmp_path.iterdir()) == []


def thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


# --------------------------------------------------------------------------- property

_text = st.text(st.characters(codec="utf-8"), max_size=20)
_max_lag = st.floats(*MAX_LAG_RANGE)
_interval = st.floats(*MONITOR_INTERVAL_RANGE)
_probe_timeout = st.floats(*PROBE_TIMEOUT_RANGE)
_credentials = st.none() | st.builds(Credentials, _text.filter(bool), _text)


@st.composite
def _datasources(draw: st.DrawFn) -> tuple[DataSource, ...]:
    names = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    addresses = draw(
        st.lists(
            st.tuples(
                st.from_regex(r"[a-z0-9][a-z0-9.-]{0,15}|[0-9a-f:]{2,12}", fullmatch=True),
                st.integers(1, 65535),
            ),
            min_size=len(names),
            max_size=len(names),
            unique_by=lambda a: (a[0].lower(), a[1]),
        )
    )
    master = draw(st.none() | st.integers(0, len(names) - 1))
    weights = draw(
        st.lists(st.integers(1, WEIGHT_RANGE[1]), min_size=len(names), max_size=len(names))
    )
    return tuple(
        DataSource(name, host, port, Role.MASTER if i == master else Role.REPLICA, weight)
        for i, (name, (host, port), weight) in enumerate(
            zip(names, addresses, weights, strict=True)
        )
    )


@st.composite
def _service(draw: st.DrawFn, name: str) -> Service:
    return Service(
        name=name,
        datasources=draw(_datasources()),
        max_lag=draw(_max_lag),
        monitor_interval=draw(_interval),
        probe_timeout=draw(_probe_timeout),
        heartbeat=HeartbeatSettings(
            enabled=draw(st.booleans()),
            table=draw(st.from_regex(r"[A-Za-z0-9_$]{1,64}\.[A-Za-z0-9_$]{1,64}", fullmatch=True)),
        ),
        monitor_credentials=draw(_credentials),
        admin_credentials=draw(_credentials),
    )


@st.composite
def _services(draw: st.DrawFn) -> list[Service]:
    names = draw(
        st.lists(
            st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
            max_size=3,
            unique=True,
        )
    )
    return [draw(_service(name)) for name in names]


_scalars = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _text
_control = st.dictionaries(
    _text,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    # Hypothesis runs many examples per test: one fresh directory each, not tmp_path.
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


@settings(deadline=None)
@given(services=_services(), control=st.none() | _control)
def test_write_then_load_is_the_identity(
    services: list[Service], control: dict[str, Any] | None
) -> None:
    with _scratch() as directory:
        path = write_registry_file(directory / "sqlrouter.toml", services, control=control)
        registry = load_registry_file(path)
        assert registry.services() == [service.name for service in services]
        for service in services:
            assert registry.lookup(service.name) == dataclasses.replace(service, source=str(path))
        assert thaw(registry.control) == thaw(control or {})


def test_the_example_in_the_documentation_loads(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "registry.md"
    text = doc.read_text(encoding="utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "monitor.password").write_text("pw\n", encoding="utf-8")
    (tmp_path / "secrets" / "monitor.password").chmod(0o600)
    registry = load_registry_file(write(tmp_path / "sqlrouter.toml", example))
    assert registry.services() == ["shop", "reports"]
    shop = registry.lookup("shop")
    assert [ds.name for ds in shop.datasources] == ["db1", "db2", "db3"]
    assert shop.monitor_credentials == Credentials("sqlrouter_monitor", "pw")
