"""Instructions per ``connect()`` + ``close()``, counted by valgrind's callgrind.

Wall-clock figures of a connect vary with the machine's load; instruction counts do
not.  This counts the instructions of the main thread for ``N`` connects (and closes)
with TLS disabled, for raw PyMySQL and for ``sqlrouter.connect(RO_RELAXED URL,
autocommit=True, ssl_disabled=True)``, on a sandbox that is already running (it starts
nothing itself: ``sqlrouter sandbox up --dir DIR`` first)::

    python -m benchmarks._callgrind_connect --dir DIR [--n 100] [--side raw|sqlrouter|both]

For each side it runs two processes under ``valgrind --tool=callgrind
--separate-threads=yes``: one with ``N`` connects after the warm-up, one with none, and
reports (instructions of the first - instructions of the second) / N.  Both do the
same warm-up (for sqlrouter: the monitor started, the first snapshot taken, the
routes decided), so the difference is the connects alone.  Raw PyMySQL cycles over the
replicas as sqlrouter spreads its connects over them.  The monitor's thread is not
counted (its own file); the GIL's hand-overs to it are.

Needs valgrind (``apt-get install valgrind``); takes a minute or two.  The password is
read from the sandbox's state file and never printed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql

import sqlrouter
from sqlrouter.sandbox import Sandbox

WARMUP = 30


def _slow_registry(directory: str, tmp: Path) -> Path:
    """A copy of the sandbox's registry whose monitor tolerates valgrind's pace (each
    probe may take 30 s, a lag of an hour qualifies, a round every 2 minutes, so that
    it is idle while the connects are counted): under valgrind
    every thread runs 50 times slower, and the sandbox's 1 s probes time out."""
    text = Sandbox(directory).registry_path.read_text(encoding="utf-8")
    for key, value in (
        ("max_lag", "3600.0"),
        ("monitor_interval", "120.0"),
        ("probe_timeout", "30.0"),
    ):
        text, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
        if not found:
            raise RuntimeError(f"the sandbox's registry has no {key}")
    path = tmp / "sqlrouter.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _work(directory: str, registry: str, side: str, n: int) -> None:
    """In the process under valgrind: warm up, then ``n`` connects and closes."""
    sb = Sandbox(directory)
    st = sb.state
    url = sb.url("RO_RELAXED", registry=registry)
    replicas = itertools.cycle([("127.0.0.1", node.port) for node in sb.replicas])

    def raw() -> None:
        host, port = next(replicas)
        pymysql.connect(
            host=host,
            port=port,
            user=st.app.user,
            password=st.app.password,
            database=st.database,
            autocommit=True,
            ssl_disabled=True,
        ).close()

    def routed() -> None:
        sqlrouter.connect(url, autocommit=True, ssl_disabled=True).close()

    one = raw if side == "raw" else routed
    # Both sides start the monitor, so that its thread exists on both; its first round
    # takes longer than a connect waits for it, under valgrind.
    for _ in range(60):
        try:
            sqlrouter.connect(url, autocommit=True, ssl_disabled=True).close()
            break
        except sqlrouter.Error:
            time.sleep(1.0)
    for _ in range(WARMUP):
        one()
    time.sleep(0.2)

    def counted(_key: int | None, _item: int | None) -> int:
        for _ in range(n):
            one()
        return 0

    # Only what runs inside ctypes's callback (closure_fcn, --toggle-collect) is counted:
    # libc's bsearch() calls ``counted`` once, from a one-element array.
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.bsearch.restype = ctypes.c_void_p
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(counted)
    key, items = ctypes.c_int(0), (ctypes.c_int * 1)(0)
    libc.bsearch(ctypes.byref(key), items, 1, ctypes.sizeof(ctypes.c_int), compare)
    sqlrouter.shutdown()


_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def _main_thread_instructions(out: Path) -> int:
    """The instructions of thread 1 (callgrind writes ``OUT-01`` for it)."""
    files = sorted(out.parent.glob(out.name + "*-01"))
    if not files:
        raise RuntimeError(f"callgrind wrote no file for the main thread in {out.parent}")
    match = _TOTALS.search(files[0].read_bytes())
    if match is None:
        raise RuntimeError(f"no totals in {files[0]}")
    return int(match.group(1))


def _count(directory: str, registry: Path, side: str, n: int, tmp: Path) -> int:
    out = tmp / f"callgrind.{side}.{n}"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        "--collect-atstart=no",
        "--toggle-collect=closure_fcn",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks._callgrind_connect",
        "--dir",
        directory,
        "--registry",
        str(registry),
        "--work",
        side,
        "--n",
        str(n),
    ]
    # Each process watches for itself (no snapshots shared with other processes).
    env = {**os.environ, "SQLROUTER_SHARE": "off"}
    done = subprocess.run(
        command, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if not line.startswith("==")][-15:]
        raise RuntimeError(f"the {side} run failed:\n" + "\n".join(tail))
    return _main_thread_instructions(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._callgrind_connect")
    parser.add_argument("--dir", required=True, help="the running sandbox's directory")
    parser.add_argument("--n", type=int, default=100, help="connects counted (default 100)")
    parser.add_argument("--side", choices=["raw", "sqlrouter", "both"], default="both")
    parser.add_argument("--work", choices=["raw", "sqlrouter"], help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.work:
        _work(args.dir, args.registry, args.work, args.n)
        return 0
    sides = ["raw", "sqlrouter"] if args.side == "both" else [args.side]
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="callgrind-connect-") as name:
        tmp = Path(name)
        registry = _slow_registry(args.dir, tmp)
        for side in sides:
            with_n = _count(args.dir, registry, side, args.n, tmp)
            without = _count(args.dir, registry, side, 0, tmp)
            per[side] = (with_n - without) / args.n
            print(f"{side}: {per[side]:,.0f} instructions per connect + close", flush=True)
    if len(per) == 2:
        print(f"ratio: {per['sqlrouter'] / per['raw']:.3f} (load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
