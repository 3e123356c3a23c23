#!/usr/bin/env bash
# Load spread on the CPU-bound keep-alive scenario (wrk -t1 -c20 on GET /cpu, 2 workers
# of the Node example app), RUNS runs each, interleaved, for:
#   reuseport  swarmd, [[socket]] balance = "reuseport" (the default)
#   shared     swarmd, [[socket]] balance = "shared"
#   cluster    Node cluster module, round-robin primary (bench/peers/node-cluster.js)
#   single     one node process (the 1x baseline)
# Per run: req/s, req/s / median single, and the largest worker's share of the workers'
# CPU time during the run (from /proc/<worker>/stat utime+stime before/after).
# Target (reuseport): every run >= 1.8x single and largest share <= 0.6.
#
# Knobs: DURATION (s, default 10), RUNS (default 10; fewer for a quick look),
#        MODES (default all), PORT_BASE (default 18400).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-10}"
RUNS="${RUNS:-10}"
MODES="${MODES:-reuseport shared cluster single}"
PORT_BASE="${PORT_BASE:-18400}"

bench_init
need_swarm
need_wrk
raise_nofile

declare -A PORT SUP
PORT[reuseport]=$((PORT_BASE + 1))
PORT[shared]=$((PORT_BASE + 2))
PORT[cluster]=$((PORT_BASE + 3))
PORT[single]=$((PORT_BASE + 4))

confs=()
for m in reuseport shared; do
    [[ " $MODES " == *" $m "* ]] || continue
    confs+=("$(swarm_conf "$m" "${PORT[$m]}" "$m")")
done
if ((${#confs[@]})); then
    swarm_start swarmd "${confs[@]}"
    for c in "${confs[@]}"; do swarm_wait_ready "$(basename "$c" .conf)" 2; done
fi
if [[ " $MODES " == *" cluster "* ]]; then
    bg_start "$BENCH_TMP/cluster.log" env PORT="${PORT[cluster]}" HOST=127.0.0.1 WORKERS=2 node "$BENCH_DIR/peers/node-cluster.js"
    SUP[cluster]=$BG_PID
fi
if [[ " $MODES " == *" single "* ]]; then
    bg_start "$BENCH_TMP/single.log" env PORT="${PORT[single]}" HOST=127.0.0.1 node "$NODE_APP"
    SUP[single]=$BG_PID
fi
for m in $MODES; do wait_http "${PORT[$m]}"; done

workers_of() { # MODE: worker pids
    case "$1" in
    reuseport | shared) swarm_worker_pids "$1" ;;
    cluster) children "${SUP[cluster]}" ;;
    single) echo "${SUP[single]}" ;;
    esac
}

for m in $MODES; do # warm-up
    wrk_run "$BENCH_TMP/warm.out" -t1 -c10 -d2s "http://127.0.0.1:${PORT[$m]}/cpu" >/dev/null 2>&1 || true
done

raw="$BENCH_TMP/raw.tsv"
printf 'run\tmode\treq/s\terrors\tworker_cpu_s\tlargest_share\tshares\n' >"$raw"
for ((r = 1; r <= RUNS; r++)); do
    for m in $MODES; do
        mapfile -t pids < <(workers_of "$m")
        before=()
        for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
        wrk_run "$BENCH_TMP/wrk.out" -t1 -c20 "-d${DURATION}s" "http://127.0.0.1:${PORT[$m]}/cpu"
        deltas=()
        for i in "${!pids[@]}"; do deltas+=("$(($(cpu_ticks "${pids[$i]}") - ${before[$i]}))"); done
        joined=$(IFS=,; echo "${deltas[*]}")
        shares=$(python3 -c "
d=[$joined]; t=sum(d) or 1
print(f'{sum(d)/$CLK_TCK:.1f}\t{max(d)/t:.3f}\t' + '/'.join(f'{x/t:.2f}' for x in d))")
        row="$r	$m	$(wrk_field "$BENCH_TMP/wrk.out" rps)	$(wrk_field "$BENCH_TMP/wrk.out" errors)	$shares"
        printf '%s\n' "$row" >>"$raw"
        say "  $row"
    done
done

echo
echo "## runs: wrk -t1 -c20 -d${DURATION}s /cpu (shares = each worker's part of the workers' CPU time)"
print_table "$raw"
echo
echo "## per mode (target for reuseport: every run >= 1.8x single, largest share <= 0.6)"
python3 - "$raw" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
single = [float(r['req/s']) for r in rows if r['mode'] == 'single']
base = statistics.median(single) if single else None
print(f"{'mode':<10} {'runs':>4} {'min_rps':>8} {'med_rps':>8} {'min_x':>6} {'med_x':>6} {'max_share':>9} {'runs>=1.8x':>10} {'runs_share<=0.6':>15}")
for m in dict.fromkeys(r['mode'] for r in rows):
    rs = [r for r in rows if r['mode'] == m]
    rps = [float(r['req/s']) for r in rs]
    sh = [float(r['largest_share']) for r in rs]
    x = (lambda v: f"{v / base:.2f}") if base else (lambda v: "-")
    ok_x = sum(1 for v in rps if base and v / base >= 1.8)
    ok_s = sum(1 for v in sh if v <= 0.6)
    print(f"{m:<10} {len(rs):>4} {min(rps):>8.1f} {statistics.median(rps):>8.1f} {x(min(rps)):>6} {x(statistics.median(rps)):>6} "
          f"{max(sh):>9.3f} {f'{ok_x}/{len(rs)}' if base else '-':>10} {f'{ok_s}/{len(rs)}':>15}")
EOF
