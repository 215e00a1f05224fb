# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# On a fresh Debian/Ubuntu machine it installs what is missing: the MariaDB server, etcd, HAProxy,
# Python's venv module, then a virtual environment in .venv with sqlrouter and its
# extras.  Every step is skipped when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
VENV=".venv"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    echo "setup: installing $* with apt-get" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have_mariadbd() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || command -v mysqld >/dev/null 2>&1
}

if ! have_mariadbd; then
    apt_install mariadb-server
fi

# etcd: the coordination store of automatic failover (tests/fixtures/etcd.py starts
# its own members on free loopback ports; the package's own service is not used).
if ! command -v etcd >/dev/null 2>&1; then
    apt_install etcd-server
fi

have_haproxy() {
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]
}

# tests/integration/test_haproxy_health.py and scripts/bench run Debian's haproxy.
if ! have_haproxy; then
    apt_install haproxy
fi

if [ -z "$PYTHON" ]; then
    apt_install python3 python3-venv
    PYTHON="$(command -v python3)"
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: sqlrouter needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi

STAMP="$VENV/.sqlrouter-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "setup: installing sqlrouter and its extras into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev,sqlalchemy,django,aio,etcd]'
    touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"
