#!/usr/bin/env bash
# Control plane with 1,000 workers: `swarmctl status --json` round-trip time (median
# of CALLS calls, each a fresh swarmctl process as a user runs it; `swarmctl ping` is
# timed too, as the floor of process start + connect) and swarmd's VmRSS with 1,000
# `sleep` workers (one app, workers = N). Side by side: supervisord with N `sleep`
# programs, timing `supervisorctl status` and its VmRSS.
# Targets: status --json median < 50 ms, swarmd RSS < 30 MB.
#
# Knobs: N (workers, default 1000), CALLS (default 20).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N="${N:-1000}"
CALLS="${CALLS:-20}"

bench_init
need_swarm
need_supervisor
raise_nofile
ulimit -u unlimited 2>/dev/null || true

# time_calls LABEL CMD...: runs CMD CALLS times, prints "LABEL median p90 max" in ms.
time_calls() {
    local label="$1"; shift
    show "$@"
    python3 - "$label" "$CALLS" "$@" <<'EOF'
import statistics, subprocess, sys, time
label, calls, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ts = []
size = 0
for _ in range(calls):
    t = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ts.append((time.perf_counter() - t) * 1000)
    size = len(out.stdout)
    if out.returncode not in (0, 3):  # supervisorctl status exits 3 when a program isn't RUNNING
        sys.exit(f"{cmd} exited {out.returncode}")
ts.sort()
print(f"{label}\t{statistics.median(ts):.1f}\t{ts[int(0.9 * (len(ts) - 1))]:.1f}\t{ts[-1]:.1f}\t{size}")
EOF
}

res="$BENCH_TMP/times.tsv"
mem="$BENCH_TMP/mem.tsv"
printf 'command\tmedian_ms\tp90_ms\tmax_ms\toutput_bytes\n' >"$res"
printf 'daemon\tworkers\tVmRSS_KiB\tVmRSS_MB\tstart_all_s\n' >"$mem"

# --- swarmd, N sleep workers
conf="$BENCH_TMP/many.conf"
cat >"$conf" <<EOF
name = "many"
command = ["sleep", "100000"]
workers = $N
[ready]
mode = "delay"
delay = "0s"
EOF
t0=$(now_s)
swarm_start swarmd "$conf"
swarm_wait_ready many "$N" 120
t1=$(now_s)
sleep 2
time_calls "swarmctl ping" "$SWARMCTL" ping >>"$res"
time_calls "swarmctl status --json ($N workers)" "$SWARMCTL" status --json >>"$res"
time_calls "swarmctl status ($N workers, table)" "$SWARMCTL" status >>"$res"
kib=$(rss_kib "$SWARMD_PID")
printf 'swarmd\t%s\t%s\t%s\t%s\n' "$N" "$kib" "$(python3 -c "print(f'{$kib*1024/1e6:.1f}')")" "$(python3 -c "print(f'{$t1-$t0:.1f}')")" >>"$mem"
say "  swarmd: $kib KiB"
bg_stop "$SWARMD_PID"

# --- supervisord, N sleep programs
d="$BENCH_TMP/supervisor"
mkdir -p "$d"
supervisor_conf "$d" "$N" 8192 2000
t0=$(now_s)
bg_start "$d/out.log" supervisord -c "$d/supervisord.conf"
spid=$BG_PID
deadline=$((SECONDS + 180))
while ((SECONDS < deadline)); do
    running=$(supervisorctl -c "$d/supervisord.conf" status 2>/dev/null | grep -c RUNNING || true)
    ((running >= N)) && break
    sleep 0.5
done
t1=$(now_s)
say "  supervisord: $running of $N RUNNING"
sleep 2
time_calls "supervisorctl status ($N programs)" supervisorctl -c "$d/supervisord.conf" status >>"$res"
kib=$(rss_kib "$spid")
printf 'supervisord\t%s\t%s\t%s\t%s\n' "$N" "$kib" "$(python3 -c "print(f'{$kib*1024/1e6:.1f}')")" "$(python3 -c "print(f'{$t1-$t0:.1f}')")" >>"$mem"
bg_stop "$spid"

echo
echo "## round trip of $CALLS calls (each a new client process; target: swarmctl status --json median < 50 ms)"
print_table "$res"
echo
echo "## daemon VmRSS with $N sleep workers (target: swarmd < 30 MB); start_all_s = start until all up"
print_table "$mem"
