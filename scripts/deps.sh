#!/usr/bin/env bash
# Installs what building and testing swarm needs on Debian, when missing:
# libsystemd-dev (sd-daemon, sd-event, sd-journal), pkg-config, python3 and
# node for the example workers, systemd for systemd-analyze and
# systemd-socket-activate, util-linux for setpriv, golang-go for the Go
# servers the integration tests build (static, CGO_ENABLED=0), and a venv
# (.build/test-venv) of real Python servers from PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
need=()
dpkg -s libsystemd-dev >/dev/null 2>&1 || need+=(libsystemd-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v python3 >/dev/null || need+=(python3)
command -v node >/dev/null || need+=(nodejs)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || need+=(golang-go)
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "deps.sh: installing ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The servers the readiness tests run unmodified (uvicorn --fd, hypercorn's
# forked worker, gunicorn with workers). Pinned: the versions the tests were written against.
venv="${SWARM_TEST_VENV:-$root/.build/test-venv}"
pypi=(uvicorn==0.54.0 hypercorn==0.18.0 gunicorn==27.0.1)
if ! "$venv/bin/python" -c "import uvicorn, hypercorn, gunicorn" 2>/dev/null; then
    echo "deps.sh: installing ${pypi[*]} into $venv"
    # Its own umask: a strict one (CI's 0177) would leave the packages unreadable to workers run as another user.
    (umask 022 && python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pypi[@]}")
fi
