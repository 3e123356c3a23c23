#!/usr/bin/env bash
# A 3-host fleet reload through SSH against three single-host reloads (issue 17).
#
# Three test hosts are made as the integration tests make them (Tests/IntegrationTests/
# TestHosts.swift): one network namespace per host joined to a bridge by a veth pair,
# each with its own address, its own sshd (Debian's openssh-server, a key generated
# here) and its own swarmd running APP_WORKERS Python workers (etc/apps/python/server.py)
# on HOST:8080. Everything is removed on exit, also on failure or ^C.
#
# Each run, interleaved RUNS times (fleet first on odd runs, singles first on even ones):
#   fleet    swarmctl --host h1,h2,h3 reload web         (one rollout: host by host)
#   singles  swarmctl --host hN reload web, N = 1, 2, 3  (the same work as three commands; times summed)
# The difference is the cost of the rollout itself (one swarmctl per host through ssh,
# the summary) over doing the same three reloads by hand. Reported: medians of each
# and of the ratio fleet / (sum of singles), the range over runs.
# Under load all the while: one wrk per host (-t1 -c4, keep-alive) on HOST:8080 with
# wrk-report.lua, and one fresh-connection client per host (curl in a loop, one
# connection per request); failed requests = socket errors + non-2xx (target 0).
#
# Knobs: RUNS (default 5), APP_WORKERS (default 2), SWARM_BIN (see lib.sh; a debug
# build works: SWARM_BIN=.build/debug). Needs root, ip, sshd, wrk, curl.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUNS="${RUNS:-5}"
APP_WORKERS="${APP_WORKERS:-2}"

[[ "$(id -u)" == 0 ]] || { say "fleet.sh needs root (network namespaces, sshd)"; exit 77; }
for c in ip /usr/sbin/sshd ssh-keygen curl; do command -v "$c" >/dev/null || { say "fleet.sh needs $c"; exit 77; }; done
need_wrk
bench_init
need_swarm
PYTHON="$(command -v python3)"
[[ -x /usr/bin/python3 ]] && PYTHON=/usr/bin/python3

D="$BENCH_TMP/fleet"
mkdir -p "$D"
chmod 755 "$D"
ID="$(printf '%04x' $(($$ & 0xffff)))"
BRIDGE="swfb$ID"
SUBNET="10.$((200 + $$ % 50)).$(($$ / 50 % 250))"
NAMESPACES=()

fleet_cleanup() {
    local ns pid
    for ns in "${NAMESPACES[@]}"; do
        # swarmd, its workers and sshd's children live in the namespace: none outlives it.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    sleep 1
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}
fleet_exit() {
    local rc=$?
    fleet_cleanup
    (exit "$rc")
    bench_cleanup
}
trap fleet_exit EXIT

# Keys and the ssh config, as TestHosts.swift makes them.
run ssh-keygen -q -t ed25519 -N "" -f "$D/id_ed25519" -C swarm-bench
run ssh-keygen -q -t ed25519 -N "" -f "$D/host_ed25519" -C swarm-bench-host
chmod 600 "$D/id_ed25519" "$D/host_ed25519"
cp "$D/id_ed25519.pub" "$D/authorized_keys"
chmod 600 "$D/authorized_keys"
cat >"$D/ssh_config" <<EOF
Host *
  IdentityFile $D/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 3
EOF
chmod 600 "$D/ssh_config"
mkdir -p /run/sshd && chmod 755 /run/sshd

run ip link add "$BRIDGE" type bridge
run ip addr add "$SUBNET.1/24" dev "$BRIDGE"
run ip link set "$BRIDGE" up
HOSTS=()
ADDRS=()
for i in 1 2 3; do
    ns="swfb${ID}h$i"; out="swfb${ID}v$i"; in="swfb${ID}p$i"; addr="$SUBNET.$((10 + i))"
    NAMESPACES+=("$ns")
    run ip netns add "$ns"
    run ip link add "$out" type veth peer name "$in"
    run ip link set "$out" master "$BRIDGE" up
    run ip link set "$in" netns "$ns"
    run ip -n "$ns" addr add "$addr/24" dev "$in"
    run ip -n "$ns" link set "$in" up
    run ip -n "$ns" link set lo up
    cat >"$D/sshd-$i.conf" <<EOF
ListenAddress $addr:22
HostKey $D/host_ed25519
PidFile $D/sshd-$i.pid
AuthorizedKeysFile $D/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
EOF
    bg_start "$D/sshd-$i.log" ip netns exec "$ns" /usr/sbin/sshd -D -e -f "$D/sshd-$i.conf"
    cat >"$D/web-$i.conf" <<EOF
name = "web"
command = ["$PYTHON", "$REPO_DIR/etc/apps/python/server.py"]
workers = $APP_WORKERS
[[socket]]
name = "http"
listen = "$addr:8080"
EOF
    bg_start "$D/swarmd-$i.log" ip netns exec "$ns" "$SWARMD" --socket "$D/h$i.sock" --state-dir "$D/h$i-state" "$D/web-$i.conf"
    HOSTS+=("ssh://root@$addr$D/h$i.sock")
    ADDRS+=("$addr")
done
export SWARM_SSH="ssh -F $D/ssh_config" SWARM_REMOTE_SWARMCTL="$SWARMCTL"
note "SWARM_SSH='$SWARM_SSH' SWARM_REMOTE_SWARMCTL=$SWARMCTL"

# Every host's sshd and swarmd answer, and its workers serve.
for i in 0 1 2; do
    ok=0
    for ((t = 0; t < 200; t++)); do
        if "$SWARMCTL" --host "${HOSTS[$i]}" status --check >/dev/null 2>&1 && curl -fsS -o /dev/null "http://${ADDRS[$i]}:8080/"; then ok=1; break; fi
        sleep 0.1
    done
    ((ok)) || { say "host $((i + 1)) did not come up: $(tail -5 "$D/swarmd-$((i + 1)).log")"; exit 1; }
done
ALL="$(IFS=,; echo "${HOSTS[*]}")"

# reload_time ARGS...: seconds a swarmctl run takes (it must succeed).
reload_time() {
    local t0 t1
    show "$SWARMCTL" "$@"
    t0=$EPOCHREALTIME
    "$SWARMCTL" "$@" >>"$D/ctl.log" 2>&1 || { say "swarmctl $* failed: $(tail -5 "$D/ctl.log")"; exit 1; }
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# Load for the whole measurement: keep-alive (wrk) and fresh connections (curl) on every host.
WRKS=()
LOADS=()
for i in 0 1 2; do
    bg_start "$D/wrk-$i.log" wrk -t1 -c4 -d 3600s -s "$BENCH_DIR/wrk-report.lua" "http://${ADDRS[$i]}:8080/"
    WRKS+=("$BG_PID")
    bg_start "$D/fresh-$i.log" bash -c 'ok=0; bad=0; trap "echo FRESH ok=\$ok failed=\$bad; exit 0" TERM; while :; do if curl -fsS -m 5 -o /dev/null -H "Connection: close" "$1"; then ok=$((ok+1)); else bad=$((bad+1)); fi; done' fresh "http://${ADDRS[$i]}:8080/"
    LOADS+=("$BG_PID")
done
sleep 2

FLEET=()
SUMS=()
RATIOS=()
for ((r = 1; r <= RUNS; r++)); do
    order="fleet singles"
    ((r % 2 == 0)) && order="singles fleet"
    for what in $order; do
        if [[ "$what" == fleet ]]; then
            f=$(reload_time --host "$ALL" reload web)
        else
            s=0
            for h in "${HOSTS[@]}"; do
                t=$(reload_time --host "$h" reload web)
                s=$(awk -v a="$s" -v b="$t" 'BEGIN { printf "%.3f", a + b }')
            done
        fi
    done
    FLEET+=("$f")
    SUMS+=("$s")
    RATIOS+=("$(awk -v a="$f" -v b="$s" 'BEGIN { printf "%.3f", a / b }')")
    say "# run $r: fleet ${f}s, sum of singles ${s}s, ratio ${RATIOS[-1]}"
done

# wrk prints its summary on SIGINT; the curl loops theirs on SIGTERM.
for g in "${WRKS[@]}"; do kill -INT -- "-$g" 2>/dev/null || true; done
for g in "${LOADS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
sleep 2
failed=0
requests=0
for i in 0 1 2; do
    line=$(grep WRKJSON "$D/wrk-$i.log" | sed 's/^WRKJSON //' || true)
    [[ -n "$line" ]] || { say "no wrk summary for host $((i + 1)): $(tail -3 "$D/wrk-$i.log")"; exit 1; }
    e=$(printf '%s' "$line" | sed 's/.*"errors":\([0-9]*\).*/\1/')
    n=$(printf '%s' "$line" | sed 's/.*"requests":\([0-9]*\).*/\1/')
    fr=$(grep FRESH "$D/fresh-$i.log" || echo "FRESH ok=0 failed=0")
    fo=$(printf '%s' "$fr" | sed 's/.*ok=\([0-9]*\).*/\1/'); ff=$(printf '%s' "$fr" | sed 's/.*failed=\([0-9]*\).*/\1/')
    failed=$((failed + e + ff))
    requests=$((requests + n + fo + ff))
    kinds=$(printf '%s' "$line" | sed 's/.*"connect":\([0-9]*\),"read":\([0-9]*\),"write":\([0-9]*\),"status":\([0-9]*\),"timeout":\([0-9]*\).*/connect \1, read \2, write \3, non-2xx \4, timeout \5/')
    say "# host $((i + 1)): keep-alive $n requests, $e failed ($kinds); fresh connections $((fo + ff)), $ff failed"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }
echo "fleet reload of 3 hosts x $APP_WORKERS workers, $RUNS interleaved runs, $(cut -d' ' -f1-3 /proc/loadavg) load"
echo "  fleet (swarmctl --host h1,h2,h3 reload web): median $(median "${FLEET[@]}") s (range $(range "${FLEET[@]}"))"
echo "  sum of 3 single-host reloads:               median $(median "${SUMS[@]}") s (range $(range "${SUMS[@]}"))"
echo "  ratio fleet / sum:                          median $(median "${RATIOS[@]}") (range $(range "${RATIOS[@]}"))"
echo "  requests under load: $requests, failed: $failed"
uptime
