#!/bin/sh
# Check the unit files in this folder with systemd-analyze verify.
#
# Usage: systemd/verify.sh [SWARMD_BINARY]
#
# verify rejects an ExecStart= binary that doesn't exist, and swarmd.service
# names /usr/local/bin/swarmd, so the units are checked from a copy in a
# temporary folder whose ExecStart= points at SWARMD_BINARY (e.g. a freshly
# built .build/debug/swarmd); without it, at /usr/bin/true as a stand-in.
#
# systemd-analyze verify exits 0 even after "Failed to parse ..., ignoring", so
# any output at all counts as a failure: the output is printed and we exit 1.
# swarmd-notify-reload.service.example (Type=notify-reload) is checked too when
# systemd is 253 or newer, or when VERIFY_NOTIFY_RELOAD=1.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ge 1 ]; then
    bin=$1
elif [ -x /usr/bin/true ]; then
    bin=/usr/bin/true
else
    bin=/bin/true
fi
case $bin in
    /*) ;;
    *) bin=$(pwd)/$bin ;;
esac
if [ ! -x "$bin" ] || [ -d "$bin" ]; then
    echo "verify.sh: $bin is not an executable file" >&2
    exit 2
fi
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check DIR UNIT...: verify the units in DIR, with DIR first on the unit path
# (the trailing ':' keeps the default path for targets such as sockets.target).
check() {
    dir=$1
    shift
    status=0
    out=$(cd "$dir" && SYSTEMD_UNIT_PATH="$dir:" systemd-analyze verify "$@" 2>&1) || status=$?
    if [ "$status" -ne 0 ] || [ -n "$out" ]; then
        echo "verify.sh: systemd-analyze verify $* (exit $status):" >&2
        printf '%s\n' "$out" >&2
        return 1
    fi
    echo "verify.sh: ok: $*"
}

# Quote the path for systemd (\ " % $ are special inside ExecStart=), then
# escape that for the sed replacement (# & \).
esc=$(printf '%s' "$bin" | sed -e 's/[\\"]/\\&/g' -e 's/%/%%/g' -e 's/\$/$$/g' -e 's/^/"/' -e 's/$/"/' -e 's/[#&\\]/\\&/g')
rewrite() {
    sed "s#^ExecStart=/usr/local/bin/swarmd#ExecStart=$esc#" "$1" > "$2"
}

mkdir "$tmp/units"
rewrite "$here/swarmd.service" "$tmp/units/swarmd.service"
cp "$here/swarmd.socket" "$here/swarm-web.socket" "$here/swarmd-metrics.socket" "$tmp/units/"
failed=0
check "$tmp/units" "$tmp/units/swarmd.service" "$tmp/units/swarmd.socket" "$tmp/units/swarm-web.socket" "$tmp/units/swarmd-metrics.socket" || failed=1

version=$(systemd-analyze --version | sed -n 's/^systemd \([0-9][0-9]*\).*/\1/p')
if [ "${VERIFY_NOTIFY_RELOAD:-0}" = 1 ] || [ "${version:-0}" -ge 253 ]; then
    mkdir "$tmp/notify-reload"
    rewrite "$here/swarmd-notify-reload.service.example" "$tmp/notify-reload/swarmd.service"
    cp "$here/swarmd.socket" "$tmp/notify-reload/"
    check "$tmp/notify-reload" "$tmp/notify-reload/swarmd.service" "$tmp/notify-reload/swarmd.socket" || failed=1
else
    echo "verify.sh: skipped swarmd-notify-reload.service.example (systemd $version < 253)"
fi
exit $failed
