#!/usr/bin/env bash
# The cost of bind interception (README "Servers that bind their own port"):
#   intercepted  bench/intercept-app.js calling listen(process.env.PORT): its bind() and
#                listen() stop at swarm's seccomp filter and get the slot's socket
#   fd3          the same file with USE_FD3=1: listen({ fd: 3 }), no bind at all,
#                and `intercept = false` (no filter)
# 1. bind-to-ready: ROUNDS (default 50) `swarmctl restart` of each app's one worker,
#    interleaved (the order alternates each round); each new worker prints the time
#    from its listen() call to the 'listening' event, and from its process start to it.
#    Medians, p90 and max over the ROUNDS workers of each app.
# 2. steady req/s: both apps scaled to 2 workers; `wrk -t2 -c50 -d${DURATION}s`
#    keep-alive and with "Connection: close", RUNS (default 3) interleaved runs each;
#    medians, and swarmd's CPU during the runs.
# Knobs: ROUNDS, RUNS, DURATION (s, default 6), PORT_BASE (default 18300), SWARM_BIN.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-50}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-6}"
PORT_BASE="${PORT_BASE:-18300}"
APP="$BENCH_DIR/intercept-app.js"

bench_init
need_swarm
need_wrk
raise_nofile
NODE="$(command -v node)"
say "# $("$NODE" --version), kernel $(uname -r)"

declare -A PORT=([intercepted]=$((PORT_BASE + 1)) [fd3]=$((PORT_BASE + 2)))
conf() { # conf NAME PORT INTERCEPT EXTRA_ENV
    local f="$BENCH_TMP/$1.conf"
    cat >"$f" <<CONF
name = "$1"
command = ["$NODE", "$APP"]
workers = 1
[env]
$4
[[socket]]
name = "http"
listen = "127.0.0.1:$2"
intercept = $3
[ready]
mode = "delay"
delay = "50ms"
[restart]
initial_delay = "0s"
CONF
    echo "$f"
}
c1=$(conf intercepted "${PORT[intercepted]}" true 'USE_FD3 = "0"')
c2=$(conf fd3 "${PORT[fd3]}" false 'USE_FD3 = "1"')
note "configs:"; cat "$c1" "$c2" | sed 's/^/#   /'
swarm_start swarmd "$c1" "$c2"
for a in intercepted fd3; do swarm_wait_ready "$a" 1; wait_http "${PORT[$a]}" /; done
grep -q "bind interception unavailable" "$BENCH_TMP/swarmd/swarmd.log" && { say "bind interception is unavailable here:"; grep "bind interception" "$BENCH_TMP/swarmd/swarmd.log" >&2; exit 1; }

# --- 1. bind-to-ready
show "$SWARMCTL" restart intercepted
show "$SWARMCTL" restart fd3
say "# $ROUNDS rounds of the two restarts above, interleaved"
for ((i = 0; i < ROUNDS; i++)); do
    if ((i % 2 == 0)); then order="intercepted fd3"; else order="fd3 intercepted"; fi
    for a in $order; do "$SWARMCTL" restart "$a" >/dev/null; done
done
for a in intercepted fd3; do swarm_wait_ready "$a" 1; wait_http "${PORT[$a]}" /; done
# Each log holds one LISTENED line per worker: the first start, then ROUNDS restarts.
for a in intercepted fd3; do
    log="$BENCH_TMP/swarmd/state/logs/$a.log"
    for ((i = 0; i < 100; i++)); do
        (($(grep -c LISTENED "$log" 2>/dev/null || echo 0) >= ROUNDS + 1)) && break
        sleep 0.1
    done
    grep LISTENED "$log" | tail -n "$ROUNDS" >"$BENCH_TMP/$a.listened"
done
python3 - "$BENCH_TMP" "$ROUNDS" <<'PY' | tee "$BENCH_TMP/latency.tsv"
import re, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
def q(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
print("app\tworkers\tlisten() → listening: median µs\tp90\tmax\tstart → listening: median ms\tp90\tmax")
for a in ["intercepted", "fd3"]:
    lines = open(f"{tmp}/{a}.listened").read().splitlines()
    us = [int(re.search(r"listen_us=(\d+)", l).group(1)) for l in lines]
    ms = [float(re.search(r"start_to_listening_ms=([\d.]+)", l).group(1)) for l in lines]
    print(f"{a}\t{len(us)}\t{statistics.median(us):.0f}\t{q(us, .9)}\t{max(us)}\t{statistics.median(ms):.2f}\t{q(ms, .9):.2f}\t{max(ms):.2f}")
PY

# --- 2. steady req/s, 2 workers each
for a in intercepted fd3; do run "$SWARMCTL" scale "$a" 2 >/dev/null; swarm_wait_ready "$a" 2; done
printf 'run\tapp\tscenario\treq/s\tp99 ms\terrors\tswarmd CPU %%\n' >"$BENCH_TMP/rps.tsv"
for ((r = 1; r <= RUNS; r++)); do
    for scenario in keep-alive close; do
        if ((r % 2 == 1)); then order="intercepted fd3"; else order="fd3 intercepted"; fi
        for a in $order; do
            extra=()
            [[ $scenario == close ]] && extra=(-H "Connection: close")
            out="$BENCH_TMP/wrk-$a-$scenario-$r.txt"
            t0=$(cpu_ticks "$SWARMD_PID")
            wrk_run "$out" -t2 -c50 -d"${DURATION}s" "${extra[@]}" "http://127.0.0.1:${PORT[$a]}/"
            t1=$(cpu_ticks "$SWARMD_PID")
            errs=$(($(wrk_field "$out" connect) + $(wrk_field "$out" read) + $(wrk_field "$out" write) + $(wrk_field "$out" status) + $(wrk_field "$out" timeout)))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$a" "$scenario" "$(wrk_field "$out" rps)" "$(wrk_field "$out" p99_ms)" \
                "$errs" "$(pct $((t1 - t0)) "$DURATION")" >>"$BENCH_TMP/rps.tsv"
        done
    done
done
print_table "$BENCH_TMP/rps.tsv"
python3 - "$BENCH_TMP/rps.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("\nmedians:")
for scenario in ["keep-alive", "close"]:
    med = {a: statistics.median(float(r["req/s"]) for r in rows if r["app"] == a and r["scenario"] == scenario) for a in ["intercepted", "fd3"]}
    print(f"  {scenario}: intercepted {med['intercepted']:.0f} req/s, fd3 {med['fd3']:.0f} req/s, ratio {med['intercepted'] / med['fd3']:.3f}")
PY
echo
say "# done $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
