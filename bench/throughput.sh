#!/usr/bin/env bash
# Throughput of the Node example app (2 workers) behind:
#   swarm         swarmd, default per-slot SO_REUSEPORT sockets
#   swarm-shared  swarmd, [[socket]] balance = "shared"
#   single        one node process of the same server.js (binds $PORT itself)
#   cluster       Node's cluster module, round-robin primary (bench/peers/node-cluster.js)
#   circus        circusd with a shared socket (skipped if circus won't install/run)
# Scenarios (wrk):
#   hello-ka      GET /     keep-alive            wrk -t2 -c50
#   hello-close   GET /     Connection: close     wrk -t2 -c50 -H "Connection: close"
#   cpu           GET /cpu  keep-alive            wrk -t1 -c20
# Each (scenario, server) is run RUNS times, interleaved; medians and ratios are reported,
# with the CPU used by the supervising process (swarmd, cluster primary, circusd) during
# each run as % of one core.
#
# Knobs: DURATION (s per wrk run, default 6), RUNS (default 3), CONFIGS (default all),
#        SCENARIOS (default all), PORT_BASE (default 18100).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-6}"
RUNS="${RUNS:-3}"
PORT_BASE="${PORT_BASE:-18100}"
CONFIGS="${CONFIGS:-swarm swarm-shared single cluster circus}"
SCENARIOS="${SCENARIOS:-hello-ka hello-close cpu}"

bench_init
need_swarm
need_wrk
have_circus=1
if [[ " $CONFIGS " == *" circus "* ]]; then need_circus || have_circus=0; fi
raise_nofile

declare -A PORT PID
PORT[swarm]=$((PORT_BASE + 1))
PORT[swarm-shared]=$((PORT_BASE + 2))
PORT[single]=$((PORT_BASE + 3))
PORT[cluster]=$((PORT_BASE + 4))
PORT[circus]=$((PORT_BASE + 5))

active=()
for c in $CONFIGS; do
    [[ "$c" == circus && $have_circus == 0 ]] && continue
    active+=("$c")
done

# --- start every server once; they stay up for the whole benchmark.
swarm_confs=()
[[ " ${active[*]} " == *" swarm "* ]] && swarm_confs+=("$(swarm_conf web-rp "${PORT[swarm]}" reuseport)")
[[ " ${active[*]} " == *" swarm-shared "* ]] && swarm_confs+=("$(swarm_conf web-sh "${PORT[swarm-shared]}" shared)")
if ((${#swarm_confs[@]})); then
    swarm_start swarmd "${swarm_confs[@]}"
    for c in "${swarm_confs[@]}"; do swarm_wait_ready "$(basename "$c" .conf)" 2; done
    PID[swarm]=$SWARMD_PID
    PID[swarm-shared]=$SWARMD_PID
fi
for c in "${active[@]}"; do
    case "$c" in
    single)
        bg_start "$BENCH_TMP/single.log" env PORT="${PORT[single]}" HOST=127.0.0.1 node "$NODE_APP"
        PID[single]=$BG_PID ;;
    cluster)
        bg_start "$BENCH_TMP/cluster.log" env PORT="${PORT[cluster]}" HOST=127.0.0.1 WORKERS=2 node "$BENCH_DIR/peers/node-cluster.js"
        PID[cluster]=$BG_PID ;;
    circus)
        cat >"$BENCH_TMP/circus.ini" <<EOF
[circus]
endpoint = ipc://$BENCH_TMP/circus-ctl.sock
pubsub_endpoint = ipc://$BENCH_TMP/circus-pub.sock
check_delay = 5

[watcher:web]
cmd = /bin/sh
args = -c 'exec 3<&\$(circus.sockets.web); exec node $NODE_APP'
use_sockets = True
numprocesses = 2
copy_env = True

[env:web]
LISTEN_FDS = 1

[socket:web]
host = 127.0.0.1
port = ${PORT[circus]}
EOF
        bg_start "$BENCH_TMP/circus.log" circusd "$BENCH_TMP/circus.ini"
        PID[circus]=$BG_PID ;;
    esac
done
for c in "${active[@]}"; do wait_http "${PORT[$c]}"; done

# --- warm up (JIT) each server briefly.
for c in "${active[@]}"; do
    wrk_run "$BENCH_TMP/warm.out" -t1 -c10 -d2s "http://127.0.0.1:${PORT[$c]}/cpu" >/dev/null 2>&1 || true
done

wrk_args() { # SCENARIO PORT
    case "$1" in
    hello-ka) echo "-t2 -c50 -d${DURATION}s http://127.0.0.1:$2/" ;;
    hello-close) echo "-t2 -c50 -d${DURATION}s -H Connection:close http://127.0.0.1:$2/" ;;
    cpu) echo "-t1 -c20 -d${DURATION}s http://127.0.0.1:$2/cpu" ;;
    esac
}

raw="$BENCH_TMP/raw.tsv"
printf 'run\tscenario\tserver\treq/s\tp99_ms\terrors\tsupervisor_cpu_%%\n' >"$raw"
for ((r = 1; r <= RUNS; r++)); do
    for s in $SCENARIOS; do
        for c in "${active[@]}"; do
            # shellcheck disable=SC2046
            set -- $(wrk_args "$s" "${PORT[$c]}")
            if [[ "$s" == hello-close ]]; then set -- "${@/Connection:close/Connection: close}"; fi
            sup=""
            [[ "$c" != single ]] && sup="${PID[$c]}"
            t0=$( [[ -n "$sup" ]] && cpu_ticks "$sup" || echo 0); w0=$(now_s)
            wrk_run "$BENCH_TMP/wrk.out" "$@"
            t1=$( [[ -n "$sup" ]] && cpu_ticks "$sup" || echo 0); w1=$(now_s)
            cpu="-"
            [[ -n "$sup" ]] && cpu=$(pct "$((t1 - t0))" "$(python3 -c "print($w1 - $w0)")")
            row="$r	$s	$c	$(wrk_field "$BENCH_TMP/wrk.out" rps)	$(wrk_field "$BENCH_TMP/wrk.out" p99_ms)	$(wrk_field "$BENCH_TMP/wrk.out" errors)	$cpu"
            printf '%s\n' "$row" >>"$raw"
            say "  $row"
        done
    done
done

echo
echo "## raw runs (supervisor = swarmd / cluster primary / circusd; '-' for single)"
print_table "$raw"
echo
echo "## medians over $RUNS runs of ${DURATION}s"
python3 - "$raw" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
med = {}
for key in {(r['scenario'], r['server']) for r in rows}:
    rs = [r for r in rows if (r['scenario'], r['server']) == key]
    cpu = [float(r['supervisor_cpu_%']) for r in rs if r['supervisor_cpu_%'] != '-']
    med[key] = dict(rps=statistics.median(float(r['req/s']) for r in rs),
                    p99=statistics.median(float(r['p99_ms']) for r in rs),
                    err=sum(int(r['errors']) for r in rs),
                    cpu=statistics.median(cpu) if cpu else None)
scen = list(dict.fromkeys(r['scenario'] for r in rows))
servers = list(dict.fromkeys(r['server'] for r in rows))
print(f"{'scenario':<12} {'server':<13} {'req/s':>9} {'p99 ms':>8} {'errors':>7} {'sup CPU %':>9}")
for s in scen:
    for c in servers:
        m = med.get((s, c))
        if not m: continue
        cpu = '-' if m['cpu'] is None else f"{m['cpu']:.2f}"
        print(f"{s:<12} {c:<13} {m['rps']:>9.0f} {m['p99']:>8.2f} {m['err']:>7} {cpu:>9}")
print()
print("## ratios of medians (target)")
def ratio(s, a, b, target):
    if (s, a) in med and (s, b) in med and med[(s, b)]['rps'] > 0:
        v = med[(s, a)]['rps'] / med[(s, b)]['rps']
        print(f"{s:<12} {a+'/'+b:<22} {v:>6.2f}x  (target >= {target}x) {'OK' if v >= target else 'MISS'}")
for a in ('swarm', 'swarm-shared'):
    ratio('hello-close', a, 'cluster', 1.5)
    ratio('hello-ka', a, 'cluster', 1.0)
    ratio('cpu', a, 'single', 1.9)
    ratio('cpu', a, 'cluster', 1.0)
for s in scen:
    for c in ('swarm', 'swarm-shared'):
        m = med.get((s, c))
        if m and m['cpu'] is not None:
            print(f"{s:<12} swarmd CPU during {c:<13} {m['cpu']:>6.2f}% of a core (target < 1%) {'OK' if m['cpu'] < 1 else 'MISS'}")
EOF
