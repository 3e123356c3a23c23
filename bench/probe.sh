#!/usr/bin/env bash
# The cost of `[ready] mode = "listening"` for workers with many threads: swarmd's CPU
# while 2 workers of THREADS threads each (Python, asleep) are starting, i.e. while
# swarmd probes them. They hold their socket (fd 3) but begin waiting on it only after
# LISTEN_AFTER_S, so the probe runs for the whole measurement (and the readiness
# timeout is longer still). Measured over WINDOW_S after SETTLE_S, ROUNDS rounds, each
# round running BEFORE (a swarmd of main, or any other build) then AFTER (this tree),
# so both see the same machine load. Then, per build: time from listening to ready.
#
# Knobs: BEFORE_BIN (folder with the "before" swarmd and swarmctl: required),
#        SWARM_BIN (the "after" build; default: this tree's static release build, see lib.sh),
#        THREADS (default 2000), WORKERS (default 2), ROUNDS (default 3), WINDOW_S (default 10),
#        SETTLE_S (default 3), PORT_BASE (default 18700).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

THREADS="${THREADS:-2000}"
WORKERS="${WORKERS:-2}"
ROUNDS="${ROUNDS:-3}"
WINDOW_S="${WINDOW_S:-10}"
SETTLE_S="${SETTLE_S:-3}"
PORT_BASE="${PORT_BASE:-18700}"
[[ -n "${BEFORE_BIN:-}" && -x "$BEFORE_BIN/swarmd" ]] || { say "set BEFORE_BIN to a folder with the swarmd to compare against (e.g. main's build)"; exit 2; }

bench_init
need_swarm
AFTER_BIN="$SWARM_BIN"
PYTHON="$(command -v /usr/bin/python3 || command -v python3)"

# The worker: THREADS-1 idle threads, then (after LISTEN_AFTER_S) epoll on fd 3.
cat >"$BENCH_TMP/threads.py" <<'EOF'
import os, select, threading, time
n = int(os.environ["THREADS"])
threading.stack_size(256 * 1024)
stop = threading.Event()
for _ in range(n - 1): threading.Thread(target=stop.wait, daemon=True).start()
time.sleep(float(os.environ["LISTEN_AFTER_S"]))
ep = select.epoll()
ep.register(3, select.EPOLLIN)
while True: ep.poll(1000)
EOF

# run_one LABEL BIN PORT LISTEN_AFTER_S: starts the app (not waiting for it), measures
# swarmd's CPU over WINDOW_S once every worker has its threads; prints the CPU %.
# With LISTEN_AFTER_S short, prints the seconds from listening to ready instead.
run_one() {
    local label="$1" bin="$2" port="$3" after="$4" mode="${5:-cpu}"
    SWARMD="$bin/swarmd" SWARMCTL="$bin/swarmctl"
    cat >"$BENCH_TMP/$label.conf" <<EOF
name = "threads"
command = ["$PYTHON", "$BENCH_TMP/threads.py"]
workers = $WORKERS
[env]
THREADS = "$THREADS"
LISTEN_AFTER_S = "$after"
[[socket]]
name = "http"
listen = "127.0.0.1:$port"
[ready]
mode = "listening"
timeout = "300s"
EOF
    swarm_start "$label"
    local swarmd=$SWARMD_PID
    bg_start "$BENCH_TMP/$label/start.log" "$SWARMCTL" start "$BENCH_TMP/$label.conf"
    local starter=$BG_PID
    # Every worker up with its threads.
    local deadline=$((SECONDS + 120)) pids=() p ok=0
    while ((SECONDS < deadline)); do
        mapfile -t pids < <(swarm_worker_pids threads 2>/dev/null || true)
        ok=0
        if ((${#pids[@]} == WORKERS)); then
            ok=1
            for p in "${pids[@]}"; do
                (($(ls "/proc/$p/task" 2>/dev/null | wc -l) >= THREADS)) || ok=0
            done
        fi
        ((ok)) && break
        sleep 0.1
    done
    ((ok)) || { say "$label: the workers did not start their $THREADS threads"; return 1; }
    local t0
    t0=$(date +%s.%N)
    if [[ "$mode" == cpu ]]; then
        sleep "$SETTLE_S"
        local a b
        a=$(cpu_ticks "$swarmd")
        sleep "$WINDOW_S"
        b=$(cpu_ticks "$swarmd")
        python3 -c "print(f'{($b - $a) / $CLK_TCK / $WINDOW_S * 100:.1f}')"
    else
        # Seconds from the workers' first epoll_ctl (LISTEN_AFTER_S after their threads were up) to "ready".
        swarm_wait_ready threads "$WORKERS" 120
        python3 -c "print(f'{max(0.0, $(date +%s.%N) - $t0 - $after):.2f}')"
    fi
    bg_stop "$starter"
    bg_stop "$swarmd"
}

note "swarmd CPU % while $WORKERS workers x $THREADS threads start in listening mode (window ${WINDOW_S}s after ${SETTLE_S}s)"
note "before: $BEFORE_BIN/swarmd"
note "after:  $AFTER_BIN/swarmd"
before=() after=()
for ((r = 1; r <= ROUNDS; r++)); do
    b=$(run_one "before-$r" "$BEFORE_BIN" $((PORT_BASE + 2 * r)) 1000)
    a=$(run_one "after-$r" "$AFTER_BIN" $((PORT_BASE + 2 * r + 1)) 1000)
    printf 'round %d\tbefore %s%%\tafter %s%%\n' "$r" "$b" "$a"
    before+=("$b") after+=("$a")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
printf 'median\tbefore %s%%\tafter %s%%\n' "$(median "${before[@]}")" "$(median "${after[@]}")"

note "seconds from listening to ready (the workers epoll fd 3 ${SETTLE_S}s after their threads are up)"
b=$(run_one "before-ready" "$BEFORE_BIN" $((PORT_BASE + 90)) "$SETTLE_S" ready)
a=$(run_one "after-ready" "$AFTER_BIN" $((PORT_BASE + 91)) "$SETTLE_S" ready)
printf 'ready latency\tbefore %ss\tafter %ss\n' "$b" "$a"
