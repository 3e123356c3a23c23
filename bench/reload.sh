#!/usr/bin/env bash
# Reloads under saturating load (wrk -t2 -c50 on GET /, keep-alive and
# "Connection: close"), 2 workers of the Node example app, RELOADS reloads spread over
# a DURATION-second wrk run, for:
#   swarm      swarmctl reload APP                    (rolling, zero-downtime)
#   naive      swarmctl stop APP && swarmctl start APP (stop all, start all)
#   cluster    Node cluster rolling restart on SIGHUP (bench/peers/node-cluster-rolling.js)
#   circus     circusctl reload WATCHER               (skipped if circus won't install/run)
# each with the app as is (start delay 0) and with SERVER_START_DELAY_MS=1000 (the app
# takes 1 s after exec before it accepts). Steady-state runs (no reloads) of the same
# length give the baseline p99. Reported: failed requests (socket errors + non-2xx),
# p99/max latency, and p99 during reloads / steady p99 (target <= 1.5x, and 0 failures).
#
# Knobs: DURATION (s per wrk run, default 15), RELOADS (default 4), SERVERS, LOADS
#        (ka close), DELAYS (0 1000), PORT_BASE (default 18300).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-15}"
RELOADS="${RELOADS:-4}"
SERVERS="${SERVERS:-swarm naive cluster circus}"
LOADS="${LOADS:-ka close}"
DELAYS="${DELAYS:-0 1000}"
PORT_BASE="${PORT_BASE:-18300}"

bench_init
need_swarm
need_wrk
have_circus=1
if [[ " $SERVERS " == *" circus "* ]]; then need_circus || have_circus=0; fi
raise_nofile

servers=()
for s in $SERVERS; do
    [[ "$s" == circus && $have_circus == 0 ]] && continue
    servers+=("$s")
done
has() { [[ " ${servers[*]} " == *" $1 "* ]]; }

# ports: swarm/naive share the swarm app: +1 (delay 0), +2 (delay 1000); cluster +3/+4; circus +5/+6
declare -A PORT CLUSTER_PID CLUSTER_LOG
port_of() { # SERVER DELAY
    local i=0
    [[ "$2" != 0 ]] && i=1
    case "$1" in
    swarm | naive) echo $((PORT_BASE + 1 + i)) ;;
    cluster) echo $((PORT_BASE + 3 + i)) ;;
    circus) echo $((PORT_BASE + 5 + i)) ;;
    esac
}

if has swarm || has naive; then
    confs=()
    for d in $DELAYS; do
        cat >"$BENCH_TMP/web$d.conf" <<EOF
name = "web$d"
command = ["node", "$NODE_APP"]
workers = 2
[env]
SERVER_START_DELAY_MS = "$d"
[[socket]]
name = "http"
listen = "127.0.0.1:$(port_of swarm "$d")"
EOF
        confs+=("$BENCH_TMP/web$d.conf")
    done
    swarm_start swarmd "${confs[@]}"
    for d in $DELAYS; do swarm_wait_ready "web$d" 2; done
fi
if has cluster; then
    for d in $DELAYS; do
        CLUSTER_LOG[$d]="$BENCH_TMP/cluster$d.log"
        bg_start "${CLUSTER_LOG[$d]}" env PORT="$(port_of cluster "$d")" HOST=127.0.0.1 WORKERS=2 SERVER_START_DELAY_MS="$d" \
            node "$BENCH_DIR/peers/node-cluster-rolling.js"
        CLUSTER_PID[$d]=$BG_PID
    done
fi
if has circus; then
    {
        cat <<EOF
[circus]
endpoint = ipc://$BENCH_TMP/circus-ctl.sock
pubsub_endpoint = ipc://$BENCH_TMP/circus-pub.sock
check_delay = 5
EOF
        for d in $DELAYS; do
            cat <<EOF

[watcher:web$d]
cmd = /bin/sh
args = -c 'exec 3<&\$(circus.sockets.web$d); exec node $NODE_APP'
use_sockets = True
numprocesses = 2
copy_env = True
graceful_timeout = 10

[env:web$d]
LISTEN_FDS = 1
SERVER_START_DELAY_MS = $d

[socket:web$d]
host = 127.0.0.1
port = $(port_of circus "$d")
EOF
        done
    } >"$BENCH_TMP/circus.ini"
    bg_start "$BENCH_TMP/circus.log" circusd "$BENCH_TMP/circus.ini"
fi
CIRCUSCTL=(circusctl --endpoint "ipc://$BENCH_TMP/circus-ctl.sock")
for s in "${servers[@]}"; do for d in $DELAYS; do wait_http "$(port_of "$s" "$d")" /health 30; done; done

# reload_once SERVER DELAY K: one reload, returns when the server says it is done.
reload_once() {
    local s="$1" d="$2" k="$3"
    case "$s" in
    swarm) "$SWARMCTL" reload "web$d" >/dev/null ;;
    naive) "$SWARMCTL" stop "web$d" >/dev/null && "$SWARMCTL" start "web$d" >/dev/null ;;
    cluster)
        local before
        before=$(grep -c '^rolling done' "${CLUSTER_LOG[$d]}" || true)
        kill -HUP "${CLUSTER_PID[$d]}"
        local i
        for ((i = 0; i < 600; i++)); do
            (($(grep -c '^rolling done' "${CLUSTER_LOG[$d]}" || true) > before)) && return 0
            sleep 0.05
        done
        say "cluster rolling restart did not finish in 30 s"; return 1 ;;
    circus) "${CIRCUSCTL[@]}" reload "web$d" >/dev/null ;;
    esac
}
reload_cmd() { # for printing
    case "$1" in
    swarm) echo "$SWARMCTL reload web$2" ;;
    naive) echo "$SWARMCTL stop web$2 && $SWARMCTL start web$2" ;;
    cluster) echo "kill -HUP <node-cluster-rolling.js pid>; wait for 'rolling done'" ;;
    circus) echo "${CIRCUSCTL[*]} reload web$2" ;;
    esac
}

# one_run SERVER DELAY LOAD MODE(steady|reload): appends a row to $raw
raw="$BENCH_TMP/raw.tsv"
printf 'server\tstart_delay_ms\tload\tmode\treloads\treload_s_median\treq/s\tfailed\tsock_err\tnon2xx\tp99_ms\tmax_ms\n' >"$raw"
one_run() {
    local s="$1" d="$2" load="$3" mode="$4" port out
    port=$(port_of "$s" "$d")
    out="$BENCH_TMP/wrk-$s-$d-$load-$mode.out"
    local args=(-t2 -c50 "-d${DURATION}s" --latency -s "$BENCH_DIR/wrk-report.lua")
    [[ "$load" == close ]] && args+=(-H "Connection: close")
    bg_start "$out" wrk "${args[@]}" "http://127.0.0.1:$port/"
    local wpid=$BG_PID t_start
    t_start=$(now_s)
    local times=() n=0
    if [[ "$mode" == reload ]]; then
        say "  reloads: $(reload_cmd "$s" "$d")"
        local k gap at now t0 t1
        gap=$(python3 -c "print(($DURATION - 4) / $RELOADS)")
        for ((k = 0; k < RELOADS; k++)); do
            at=$(python3 -c "print($t_start + 2 + $k * $gap)")
            now=$(now_s)
            python3 -c "import time; time.sleep(max(0, $at - $now))"
            t0=$(now_s)
            reload_once "$s" "$d" "$k" || say "  reload $k of $s failed"
            t1=$(now_s)
            times+=("$(python3 -c "print($t1 - $t0)")")
            n=$((n + 1))
        done
    fi
    bg_wait "$wpid" || { cat "$out" >&2; return 1; }
    local med="-"
    local joined
    joined=$(IFS=,; echo "${times[*]:-}")
    ((n)) && med=$(python3 -c "import statistics; print(f'{statistics.median([$joined]):.2f}')")
    local rps failed st p99 mx
    rps=$(wrk_field "$out" rps); failed=$(wrk_field "$out" errors); st=$(wrk_field "$out" status)
    p99=$(wrk_field "$out" p99_ms); mx=$(wrk_field "$out" max_ms)
    local row="$s	$d	$load	$mode	$n	$med	$rps	$failed	$((failed - st))	$st	$p99	$mx"
    printf '%s\n' "$row" >>"$raw"
    say "  $row"
    # every app must be back with 2 workers before the next run
    [[ "$s" == swarm || "$s" == naive ]] && swarm_wait_ready "web$d" 2 30
    wait_http "$port" /health 30
}

for load in $LOADS; do
    # steady state: swarm (also naive's server), cluster, circus; start delay does not matter
    d0=${DELAYS%% *}
    for s in "${servers[@]}"; do
        [[ "$s" == naive ]] && has swarm && continue
        one_run "$s" "$d0" "$load" steady
    done
    for d in $DELAYS; do
        for s in "${servers[@]}"; do one_run "$s" "$d" "$load" reload; done
    done
done

echo
echo "## runs of ${DURATION}s, wrk -t2 -c50 (failed = socket errors + non-2xx)"
print_table "$raw"
echo
echo "## reload vs steady state (target: 0 failed, p99 <= 1.5x steady)"
python3 - "$raw" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
steady = {}
for r in rows:
    if r['mode'] == 'steady':
        steady[(r['server'], r['load'])] = float(r['p99_ms'])
        if r['server'] == 'swarm':
            steady[('naive', r['load'])] = float(r['p99_ms'])
print(f"{'server':<8} {'delay_ms':>8} {'load':<6} {'failed':>7} {'p99_ms':>9} {'steady_p99':>10} {'ratio':>7} {'max_ms':>9}  verdict")
for r in rows:
    if r['mode'] != 'reload': continue
    base = steady.get((r['server'], r['load']))
    ratio = float(r['p99_ms']) / base if base else float('nan')
    ok = int(r['failed']) == 0 and ratio <= 1.5
    print(f"{r['server']:<8} {r['start_delay_ms']:>8} {r['load']:<6} {r['failed']:>7} {float(r['p99_ms']):>9.2f} "
          f"{base if base else float('nan'):>10.2f} {ratio:>6.2f}x {float(r['max_ms']):>9.1f}  {'OK' if ok else 'MISS'}")
EOF
