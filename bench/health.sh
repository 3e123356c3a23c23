#!/usr/bin/env bash
# Health (issue 15), two figures:
#  1. Hang to served: a worker of 2 is SIGSTOPped while 4 fresh connections
#     are opened at once (round-robin queues 2 of them on the stopped slot);
#     the time from the SIGSTOP to the first answer from the stopped slot's
#     replacement, with [health] stuck_after = STUCK_AFTER. ROUNDS rounds, median.
#  2. Probe cost: swarmd's CPU while WORKERS workers are probed with
#     [health] http every second, against the same app without [health]
#     (hang detection off in both), interleaved A/B for CPU_ROUNDS rounds of
#     WINDOW_S each; the difference is what the probes cost.
#
# Knobs: SWARM_BIN (see lib.sh), ROUNDS (10), STUCK_AFTER ("2s"), WORKERS (100),
#        CPU_ROUNDS (3), WINDOW_S (20), PORT_BASE (18900).
# Needs root (eBPF steering aims the probes; without it they are skipped).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS="${ROUNDS:-10}"
STUCK_AFTER="${STUCK_AFTER:-2s}"
WORKERS="${WORKERS:-100}"
CPU_ROUNDS="${CPU_ROUNDS:-3}"
WINDOW_S="${WINDOW_S:-20}"
PORT_BASE="${PORT_BASE:-18900}"
[[ "$(id -u)" == 0 ]] || { say "needs root: http probes are aimed by the eBPF steering program"; exit 2; }

bench_init
need_swarm
PYTHON="$(command -v /usr/bin/python3 || command -v python3)"
SERVER="$REPO_DIR/etc/apps/python/server.py"

# A tiny HTTP server on fd 3 (a few MiB each, so 100 fit anywhere): one request per connection.
cat >"$BENCH_TMP/tiny.py" <<'EOF'
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    try:
        c.settimeout(2)
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    except OSError:
        pass
    c.close()
EOF

# The clients of one round: 4 fresh connections at once, each answer's time and pid.
cat >"$BENCH_TMP/clients.py" <<'EOF'
import socket, sys, threading, time
port, t0, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
res = []
def one():
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=60)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = c.recv(4096)
            if not b: break
            data += b
        res.append((time.time() - t0, int(data.split(b"\r\n\r\n", 1)[1].strip() or b"0")))
    except Exception as e:
        res.append((time.time() - t0, -1))
ts = [threading.Thread(target=one) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
open(out, "w").write("\n".join(f"{a:.3f} {p}" for a, p in res))
EOF

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# ---- 1. hang to served
port=$PORT_BASE
cat >"$BENCH_TMP/hang.conf" <<EOF
name = "hang"
command = ["$PYTHON", "$SERVER"]
workers = 2
[[socket]]
listen = "127.0.0.1:$port"
[health]
stuck_after = "$STUCK_AFTER"
[stop]
timeout = "2s"
EOF
swarm_start hang "$BENCH_TMP/hang.conf"
hang_swarmd=$SWARMD_PID
swarm_wait_ready hang 2
note "1. SIGSTOP of slot 0 of 2 (python server.py) with 4 fresh connections opened at once; stuck_after = $STUCK_AFTER"
note "   (swarmd command line above; clients: $PYTHON $BENCH_TMP/clients.py PORT T0 OUT)"
times=()
slot0() { "$SWARMCTL" status --json hang | python3 -c '
import json, sys
for w in json.load(sys.stdin)["apps"][0]["workers"]:
    if w["slot"] == 0 and w["state"] == "ready": print(w["pid"])'; }
for ((r = 1; r <= ROUNDS; r++)); do
    stopped=$(slot0)
    t0=$(date +%s.%N)
    kill -STOP "$stopped"
    "$PYTHON" "$BENCH_TMP/clients.py" "$port" "$t0" "$BENCH_TMP/round-$r.txt"
    new=$(slot0 || true)
    # The first answer from neither the stopped worker nor its sibling: the replacement's.
    sibling=$("$SWARMCTL" status --json hang | python3 -c '
import json, sys
print(*[w["pid"] for w in json.load(sys.stdin)["apps"][0]["workers"] if w["slot"] == 1 and w["state"] == "ready"])')
    t=$(awk -v a="$stopped" -v b="$sibling" '$2 != a && $2 != b && $2 > 0 {print $1; exit}' <(sort -n "$BENCH_TMP/round-$r.txt"))
    kill -CONT "$stopped" 2>/dev/null || true
    printf 'round %d\tstopped pid %s\treplacement %s\tserved after %ss\tanswers: %s\n' "$r" "$stopped" "$new" "${t:-none}" "$(tr '\n' ' ' <"$BENCH_TMP/round-$r.txt")"
    [[ -n "$t" ]] && times+=("$t")
    swarm_wait_ready hang 2
    sleep 1
done
printf 'median\thang to served again: %ss over %d rounds (stuck_after %s)\n' "$(median "${times[@]}")" "${#times[@]}" "$STUCK_AFTER"
bg_stop "$hang_swarmd"

# ---- 2. probe cost
# run_cpu LABEL PORT WITH_PROBES: swarmd CPU % over WINDOW_S once every worker is ready.
run_cpu() {
    local label="$1" p="$2" probes="$3"
    cat >"$BENCH_TMP/$label.conf" <<EOF
name = "many"
command = ["$PYTHON", "$BENCH_TMP/tiny.py"]
workers = $WORKERS
[[socket]]
listen = "127.0.0.1:$p"
backlog = 64
[health]
stuck_after = "0s"
EOF
    if ((probes)); then
        printf 'http = "/healthz"\ninterval = "1s"\ntimeout = "500ms"\n' >>"$BENCH_TMP/$label.conf"
    fi
    swarm_start "$label" "$BENCH_TMP/$label.conf"
    local swarmd=$SWARMD_PID
    swarm_wait_ready many "$WORKERS" 120
    sleep 3
    local a b
    a=$(cpu_ticks "$swarmd")
    sleep "$WINDOW_S"
    b=$(cpu_ticks "$swarmd")
    if ((probes)); then
        "$SWARMCTL" status --json many | python3 -c '
import json, sys
ws = json.load(sys.stdin)["apps"][0]["workers"]
h = sum(1 for w in ws if w.get("last_probe") == "http 200")
print(f"# {h} of {len(ws)} workers last probed http 200", file=sys.stderr)'
    fi
    bg_stop "$swarmd"
    python3 -c "print(f'{($b - $a) / $CLK_TCK / $WINDOW_S * 100:.2f}')"
}
note "2. swarmd CPU % with $WORKERS workers (tiny python server): http probe every 1s vs no probe, ${WINDOW_S}s windows"
with=() without=()
for ((r = 1; r <= CPU_ROUNDS; r++)); do
    n=$(run_cpu "noprobe-$r" $((PORT_BASE + 10 + 2 * r)) 0)
    w=$(run_cpu "probe-$r" $((PORT_BASE + 11 + 2 * r)) 1)
    printf 'round %d\tno probes %s%%\thttp probes %s%%\n' "$r" "$n" "$w"
    with+=("$w") without+=("$n")
done
printf 'median\tno probes %s%%\thttp probes %s%% (of one core; %d workers, interval 1s)\n' "$(median "${without[@]}")" "$(median "${with[@]}")" "$WORKERS"
note "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
