#!/usr/bin/env bash
# Installs what building and testing swarm needs on Debian, when missing:
# libsystemd-dev (sd-daemon, sd-event, sd-journal), pkg-config, python3 and
# node for the example workers, systemd for systemd-analyze and
# systemd-socket-activate, util-linux for setpriv, golang-go for the static
# Go server of the bind-interception tests, prometheus for promtool and the
# server the metrics tests scrape swarmd with, openssh-server, iproute2 and
# haproxy for the test hosts; tmux, logrotate, groff, man and col for the
# operator commands' tests (top, logs --reopen, the man pages); rustc and a
# Python venv with the PyPI servers the recipe tests run (gunicorn, uvicorn,
# hypercorn, waitress) in SWARM_TEST_VENV (default /var/tmp/swarm-venv).
set -euo pipefail
need=()
dpkg -s libsystemd-dev >/dev/null 2>&1 || need+=(libsystemd-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v python3 >/dev/null || need+=(python3)
command -v node >/dev/null || need+=(nodejs)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v setpriv >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || need+=(golang-go)
# promtool and a Prometheus server for the metrics tests.
command -v promtool >/dev/null || need+=(prometheus)
command -v rustc >/dev/null || [ -x "$HOME/.cargo/bin/rustc" ] || need+=(rustc)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# Test hosts for --host ssh://… (RemoteTests): network namespaces and their sshds.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
# swarmctl top runs under tmux in its tests; logrotate, groff and man for logs --reopen and the man pages.
command -v tmux >/dev/null || need+=(tmux)
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
command -v groff >/dev/null || need+=(groff-base)
command -v man >/dev/null || need+=(man-db)
command -v col >/dev/null || need+=(bsdextrautils)
if [ ${#need[@]} -gt 0 ]; then
    echo "deps.sh: installing ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
venv="${SWARM_TEST_VENV:-/var/tmp/swarm-venv}"
pypi=(gunicorn uvicorn hypercorn waitress)
if ! "$venv/bin/python3" -c 'import gunicorn, uvicorn, hypercorn, waitress' 2>/dev/null; then
    echo "deps.sh: installing ${pypi[*]} into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "${pypi[@]}"
fi
