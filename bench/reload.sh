#!/usr/bin/env bash
# Reloads under saturating load (wrk -t2 -c50 on GET /, keep-alive and
# "Connection: close"), 2 workers, RELOADS reloads spread over a DURATION-second wrk
# run, for two apps:
#   node  the Node example app (etc/apps/node/server.js), with start delay 0 and 1 s
#         (SERVER_START_DELAY_MS=1000: the app takes 1 s after exec before it accepts)
#   nio   the SwiftNIO example worker (swarm-example-nio): no JIT to warm up
# and these ways of replacing the workers:
#   swarm      swarmctl reload APP                     (rolling; hand-over on, the default)
#   swarm-rr   the same with [reload] hand_over = false (node only)
#   swarm-warm the same with [reload] min_ready = "1s"  (node only: V8 warms up beside the old worker)
#   swarm-pin  the same with cpu_affinity = "auto"      (nio only; its own steady runs)
#   naive      swarmctl stop APP && swarmctl start APP  (stop all, start all)
#   cluster    Node cluster rolling restart on SIGHUP   (node only; bench/peers/node-cluster-rolling.js)
#   circus     circusctl reload WATCHER                 (skipped if circus won't install/run)
# Steady-state runs (no reload) of each deployment give the baseline p99. Everything is
# repeated RUNS times, interleaved, and summarised by medians: on a shared 2-core box a
# single 15 s run's p99 moves by ±30% on its own.
# Reported: failed requests (socket errors + non-2xx; summed over the runs), median
# p99, and median reload p99 / median steady p99 (target <= 1.5x, and 0 failures).
# Nothing but the reload command runs during a measured run (times come from
# $EPOCHREALTIME, not from a python3 or date process).
#
# Knobs: DURATION (s per wrk run, default 15), RELOADS (default 4), RUNS (default 3),
#        APPS (node nio), SERVERS (all of the above), LOADS (ka close),
#        DELAYS (0 1000; node only), PORT_BASE (default 18300).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-15}"
RELOADS="${RELOADS:-4}"
RUNS="${RUNS:-3}"
APPS="${APPS:-node nio}"
SERVERS="${SERVERS:-swarm swarm-rr swarm-warm swarm-pin naive cluster circus}"
LOADS="${LOADS:-ka close}"
DELAYS="${DELAYS:-0 1000}"
PORT_BASE="${PORT_BASE:-18300}"

bench_init
need_swarm
need_wrk
have_circus=1
if [[ " $SERVERS " == *" circus "* ]]; then need_circus || have_circus=0; fi
raise_nofile
NIO_APP="$SWARM_BIN/swarm-example-nio"
[[ -x "$NIO_APP" ]] || { say "no $NIO_APP"; exit 1; }

wanted() { [[ " $SERVERS " == *" $1 "* ]]; }
# servers APP: the ways of reloading APP this run measures
servers() {
    local s out=()
    for s in swarm swarm-rr swarm-warm swarm-pin naive cluster circus; do
        wanted "$s" || continue
        case "$s:$1" in
        swarm-rr:nio | swarm-warm:nio | swarm-pin:node | cluster:nio) continue ;;
        circus:*) ((have_circus)) || continue ;;
        esac
        out+=("$s")
    done
    echo "${out[@]}"
}
delays() { if [[ "$1" == node ]]; then echo "$DELAYS"; else echo 0; fi; }
# deployment SERVER: which running processes it measures (naive reloads swarm's app)
deployment() { case "$1" in naive) echo swarm ;; *) echo "$1" ;; esac; }
command_of() { # APP: the worker command line, as a TOML array
    case "$1" in
    node) echo "[\"node\", \"$NODE_APP\"]" ;;
    nio) echo "[\"$NIO_APP\"]" ;;
    esac
}

declare -A PORT CLUSTER_PID CLUSTER_LOG
next_port=$((PORT_BASE + 1))
for app in $APPS; do
    for d in $(delays "$app"); do
        for s in $(servers "$app"); do
            dep=$(deployment "$s")
            [[ -n "${PORT[$app/$dep/$d]:-}" ]] && continue
            PORT[$app/$dep/$d]=$next_port
            next_port=$((next_port + 1))
        done
    done
done
port_of() { echo "${PORT[$1/$(deployment "$2")/$3]}"; } # APP SERVER DELAY
swarm_app() { echo "w${2//-/}$1$3"; } # APP SERVER DELAY -> an app name (a-z0-9)

# ---------------------------------------------------------------- start everything
confs=()
for app in $APPS; do
    for d in $(delays "$app"); do
        for s in $(servers "$app"); do
            case "$s" in swarm | swarm-rr | swarm-warm | swarm-pin) ;; *) continue ;; esac
            name=$(swarm_app "$app" "$s" "$d")
            {
                echo "name = \"$name\""
                echo "command = $(command_of "$app")"
                echo "workers = 2"
                [[ "$s" == swarm-pin ]] && echo 'cpu_affinity = "auto"'
                [[ "$s" == swarm-rr ]] && printf '[reload]\nhand_over = false\n'
                [[ "$s" == swarm-warm ]] && printf '[reload]\nmin_ready = "1s"\n'
                printf '[env]\nSERVER_START_DELAY_MS = "%s"\n' "$d"
                printf '[[socket]]\nname = "http"\nlisten = "127.0.0.1:%s"\n' "$(port_of "$app" "$s" "$d")"
            } >"$BENCH_TMP/$name.conf"
            confs+=("$BENCH_TMP/$name.conf")
        done
    done
done
if ((${#confs[@]})); then
    swarm_start swarmd "${confs[@]}"
    for c in "${confs[@]}"; do swarm_wait_ready "$(basename "$c" .conf)" 2; done
fi
if [[ " $APPS " == *" node "* ]] && wanted cluster; then
    for d in $(delays node); do
        CLUSTER_LOG[$d]="$BENCH_TMP/cluster$d.log"
        bg_start "${CLUSTER_LOG[$d]}" env PORT="$(port_of node cluster "$d")" HOST=127.0.0.1 WORKERS=2 SERVER_START_DELAY_MS="$d" \
            node "$BENCH_DIR/peers/node-cluster-rolling.js"
        CLUSTER_PID[$d]=$BG_PID
    done
fi
circus_watchers=()
for app in $APPS; do
    [[ " $(servers "$app") " == *" circus "* ]] || continue
    for d in $(delays "$app"); do circus_watchers+=("$app:$d"); done
done
if ((${#circus_watchers[@]})); then
    {
        cat <<EOF
[circus]
endpoint = ipc://$BENCH_TMP/circus-ctl.sock
pubsub_endpoint = ipc://$BENCH_TMP/circus-pub.sock
check_delay = 5
EOF
        for w in "${circus_watchers[@]}"; do
            app=${w%%:*} d=${w##*:}
            exe=$(command_of "$app" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))')
            cat <<EOF

[watcher:$app$d]
cmd = /bin/sh
args = -c 'exec 3<&\$(circus.sockets.$app$d); exec $exe'
use_sockets = True
numprocesses = 2
copy_env = True
graceful_timeout = 10

[env:$app$d]
LISTEN_FDS = 1
SERVER_START_DELAY_MS = $d

[socket:$app$d]
host = 127.0.0.1
port = $(port_of "$app" circus "$d")
EOF
        done
    } >"$BENCH_TMP/circus.ini"
    bg_start "$BENCH_TMP/circus.log" circusd "$BENCH_TMP/circus.ini"
fi
CIRCUSCTL=(circusctl --endpoint "ipc://$BENCH_TMP/circus-ctl.sock")
for app in $APPS; do for d in $(delays "$app"); do for s in $(servers "$app"); do
    wait_http "$(port_of "$app" "$s" "$d")" /health 30
done; done; done

# ---------------------------------------------------------------- runs
# reload_once APP SERVER DELAY: one reload, returns when the server says it is done.
reload_once() {
    local app="$1" s="$2" d="$3"
    case "$s" in
    swarm | swarm-rr | swarm-warm | swarm-pin) "$SWARMCTL" reload "$(swarm_app "$app" "$s" "$d")" >/dev/null ;;
    naive) "$SWARMCTL" stop "$(swarm_app "$app" swarm "$d")" >/dev/null && "$SWARMCTL" start "$(swarm_app "$app" swarm "$d")" >/dev/null ;;
    cluster)
        local before i
        before=$(grep -c '^rolling done' "${CLUSTER_LOG[$d]}" || true)
        kill -HUP "${CLUSTER_PID[$d]}"
        for ((i = 0; i < 600; i++)); do
            (($(grep -c '^rolling done' "${CLUSTER_LOG[$d]}" || true) > before)) && return 0
            sleep 0.05
        done
        say "cluster rolling restart did not finish in 30 s"; return 1 ;;
    circus) "${CIRCUSCTL[@]}" reload "$app$d" >/dev/null ;;
    esac
}
reload_cmd() { # APP SERVER DELAY, for printing
    case "$2" in
    swarm | swarm-rr | swarm-warm | swarm-pin) echo "$SWARMCTL reload $(swarm_app "$1" "$2" "$3")" ;;
    naive) echo "$SWARMCTL stop $(swarm_app "$1" swarm "$3") && $SWARMCTL start $(swarm_app "$1" swarm "$3")" ;;
    cluster) echo "kill -HUP <node-cluster-rolling.js pid>; wait for 'rolling done'" ;;
    circus) echo "${CIRCUSCTL[*]} reload $1$3" ;;
    esac
}
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }

raw="$BENCH_TMP/raw.tsv"
printf 'run\tapp\tserver\tstart_delay_ms\tload\tmode\treloads\treload_s_median\treq/s\tfailed\tsock_err\tnon2xx\tp99_ms\tmax_ms\n' >"$raw"
one_run() { # RUN APP SERVER DELAY LOAD MODE(steady|reload)
    local run="$1" app="$2" s="$3" d="$4" load="$5" mode="$6" port out
    port=$(port_of "$app" "$s" "$d")
    out="$BENCH_TMP/wrk-$run-$app-$s-$d-$load-$mode.out"
    local args=(-t2 -c50 "-d${DURATION}s" --latency -s "$BENCH_DIR/wrk-report.lua")
    [[ "$load" == close ]] && args+=(-H "Connection: close")
    ((run == 1)) && [[ "$mode" == reload ]] && say "  reloads: $(reload_cmd "$app" "$s" "$d")"
    bg_start "$out" wrk "${args[@]}" "http://127.0.0.1:$port/"
    local wpid=$BG_PID t_start times=() k gap at now t0
    t_start=${EPOCHREALTIME/./}
    if [[ "$mode" == reload ]]; then
        gap=$(((DURATION - 4) * 1000000 / RELOADS))
        for ((k = 0; k < RELOADS; k++)); do
            at=$((t_start + 2000000 + k * gap))
            now=${EPOCHREALTIME/./}
            ((at > now)) && sleep "$(us_to_s $((at - now)))"
            t0=${EPOCHREALTIME/./}
            reload_once "$app" "$s" "$d" || say "  reload $k of $s failed"
            times+=($((${EPOCHREALTIME/./} - t0)))
        done
    fi
    bg_wait "$wpid" || { cat "$out" >&2; return 1; }
    local med="-"
    ((${#times[@]})) && med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2) / 1e6}')
    local rps failed st p99 mx
    rps=$(wrk_field "$out" rps); failed=$(wrk_field "$out" errors); st=$(wrk_field "$out" status)
    p99=$(wrk_field "$out" p99_ms); mx=$(wrk_field "$out" max_ms)
    local row="$run	$app	$s	$d	$load	$mode	${#times[@]}	$med	$rps	$failed	$((failed - st))	$st	$p99	$mx"
    printf '%s\n' "$row" >>"$raw"
    say "  $row"
    # every deployment must be back with 2 workers before the next run
    case "$s" in
    swarm | swarm-rr | swarm-warm | swarm-pin) swarm_wait_ready "$(swarm_app "$app" "$s" "$d")" 2 60 ;;
    naive) swarm_wait_ready "$(swarm_app "$app" swarm "$d")" 2 60 ;;
    esac
    wait_http "$port" /health 30
}

for ((run = 1; run <= RUNS; run++)); do
    say "# run $run of $RUNS"
    for app in $APPS; do
        for load in $LOADS; do
            d0=$(delays "$app"); d0=${d0%% *}
            for s in $(servers "$app"); do
                case "$s" in naive | swarm-rr | swarm-warm) continue ;; esac # same processes as swarm's
                one_run "$run" "$app" "$s" "$d0" "$load" steady
            done
            for d in $(delays "$app"); do
                for s in $(servers "$app"); do one_run "$run" "$app" "$s" "$d" "$load" reload; done
            done
        done
    done
done

echo
echo "## every run: ${DURATION}s, wrk -t2 -c50 (failed = socket errors + non-2xx)"
print_table "$raw"
echo
echo "## reload vs steady state, medians of $RUNS runs (target: 0 failed, p99 <= 1.5x steady)"
python3 - "$raw" <<'EOF'
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
dep = lambda s: {'naive': 'swarm', 'swarm-rr': 'swarm', 'swarm-warm': 'swarm'}.get(s, s)
steady = defaultdict(list)
for r in rows:
    if r['mode'] == 'steady':
        steady[(r['app'], r['server'], r['load'])].append(float(r['p99_ms']))
groups = defaultdict(list)
for r in rows:
    if r['mode'] == 'reload':
        groups[(r['app'], r['server'], r['start_delay_ms'], r['load'])].append(r)
print(f"{'app':<5} {'server':<10} {'delay_ms':>8} {'load':<6} {'runs':>4} {'failed':>7} {'p99_ms':>8} {'steady':>7} {'ratio':>6} {'per-run ratios':<20} {'max_ms':>8} {'reload_s':>8}  verdict")
for (app, s, d, load), rs in groups.items():
    base = steady.get((app, dep(s), load), [])
    p99s = [float(r['p99_ms']) for r in rs]
    med = statistics.median(p99s)
    bmed = statistics.median(base) if base else float('nan')
    ratio = med / bmed if base else float('nan')
    per = [float(r['p99_ms']) / b for r, b in zip(sorted(rs, key=lambda r: r['run']), base)]
    failed = sum(int(r['failed']) for r in rs)
    mx = max(float(r['max_ms']) for r in rs)
    rel = statistics.median(float(r['reload_s_median']) for r in rs if r['reload_s_median'] != '-')
    ok = failed == 0 and ratio <= 1.5
    print(f"{app:<5} {s:<10} {d:>8} {load:<6} {len(rs):>4} {failed:>7} {med:>8.2f} {bmed:>7.2f} {ratio:>5.2f}x "
          f"{' '.join(f'{x:.2f}' for x in per):<20} {mx:>8.1f} {rel:>8.2f}  {'OK' if ok else 'MISS'}")
EOF
