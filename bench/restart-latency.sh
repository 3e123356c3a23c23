#!/usr/bin/env bash
# Restart latency: kill -9 of a healthy worker -> its replacement is exec'd.
# The worker is a tiny C program (compiled here with gcc) whose first act in main()
# is appending "<CLOCK_MONOTONIC ns> <pid>" to a file, then it sleeps. A python
# driver reads the current pid, takes CLOCK_MONOTONIC, sends SIGKILL, waits for the
# next line and records (start of new worker - kill time). Kills are spaced by
# SPACING_MS after each replacement is up (longer than reset_after, so every kill hits
# a healthy worker and the backoff stays at initial_delay = 0).
# Reports median and p90 (target: median < 2 ms).
#
# Knobs: KILLS (default 100), SPACING_MS (default 50).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KILLS="${KILLS:-100}"
SPACING_MS="${SPACING_MS:-50}"

bench_init
need_swarm
need_apt gcc gcc

cat >"$BENCH_TMP/stamp.c" <<'EOF'
/* Appends "<CLOCK_MONOTONIC ns> <pid>\n" to argv[1], then sleeps until killed. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2) return 2;
    char line[64];
    int n = snprintf(line, sizeof line, "%lld %d\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, (int)getpid());
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) return 1;
    close(fd);
    for (;;) pause();
}
EOF
run gcc -O2 -o "$BENCH_TMP/stamp" "$BENCH_TMP/stamp.c"

stamps="$BENCH_TMP/stamps.txt"
: >"$stamps"
cat >"$BENCH_TMP/stamp.conf" <<EOF
name = "stamp"
command = ["$BENCH_TMP/stamp", "$stamps"]
workers = 1
[ready]
mode = "delay"
delay = "0s"
[restart]
policy = "always"
initial_delay = "0s"
reset_after = "10ms"
crash_loop_restarts = 1000
crash_loop_window = "1s"
EOF
cat "$BENCH_TMP/stamp.conf" | sed 's/^/    /' >&2
swarm_start swarmd "$BENCH_TMP/stamp.conf"
swarm_wait_ready stamp 1

show python3 - "$stamps" "$KILLS" "$SPACING_MS"
python3 - "$stamps" "$KILLS" "$SPACING_MS" <<'EOF'
import os, signal, statistics, sys, time
path, kills, spacing = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000

def lines():
    with open(path) as f:
        return [l.split() for l in f.read().splitlines() if l.strip()]

def wait_lines(n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ls = lines()
        if len(ls) >= n:
            return ls
        time.sleep(0.0002)
    raise SystemExit(f"no new worker within {timeout}s (have {len(lines())} starts, want {n})")

ls = wait_lines(1)
lat = []
for i in range(kills):
    time.sleep(spacing)
    pid = int(ls[-1][1])
    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    os.kill(pid, signal.SIGKILL)
    ls = wait_lines(len(ls) + 1)
    lat.append((int(ls[-1][0]) - t) / 1e6)

lat.sort()
def q(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
print()
print(f"## kill -9 -> replacement exec'd, {kills} kills, spaced {spacing*1000:.0f} ms")
print(f"{'kills':>5} {'min_ms':>8} {'median_ms':>9} {'p90_ms':>8} {'p99_ms':>8} {'max_ms':>8}")
print(f"{kills:>5} {lat[0]:>8.3f} {statistics.median(lat):>9.3f} {q(90):>8.3f} {q(99):>8.3f} {lat[-1]:>8.3f}")
m = statistics.median(lat)
print(f"target: median < 2 ms: {'OK' if m < 2 else 'MISS'}")
EOF
echo
run "$SWARMCTL" status stamp
