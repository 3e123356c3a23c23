#!/usr/bin/env bash
# Scale (issue 18): swarm vs supervisord 4.2 vs circus at 10 … 4,096 workers.
#
# Usage:  bench/scale.sh                          # all sizes, 3 interleaved runs (about 1 h on 2 cores)
#         SIZES="10 100 1000" RUNS=1 bench/scale.sh   # quick
#
# Per N and supervisor (workers of `sleep`, no sockets, readiness by delay 0 or the
# peer's equivalent): time to start all N and the daemon's CPU for it; kill -9 of all
# N at once -> all N replaced, and the daemon's CPU for that storm; SIGTERM shutdown of
# all N. For swarm also: raw-socket `status` latency idle and during a second storm
# (median, max), raw-socket ping, `swarmctl ping` (hyperfine, median of 50), and the
# daemon CPU per replaced worker in `swarmctl reload` at RELOAD_SIZES. `swarm-sock` is
# swarm with N tiny C servers on a reuseport socket with listening readiness; `floor`
# a C loop that only spawns and respawns (this machine's speed at that moment);
# `swarm-noboost` swarm with --priority-boost 0. What is
# measured and how: bench/scale.py (its docstring). Prints every command line and a
# markdown table of medians.
#
# Knobs (env):
#   SIZES="10 100 1000 4096"   worker counts
#   RUNS=3                     runs per size (interleaved: the supervisor order rotates)
#   SUPERVISORS="floor swarm supervisord circus swarm-sock"   (also: swarm-noboost, floor-fork)
#   RELOAD_SIZES="100 1000"    sizes at which swarm's rolling reload is measured
#   TIMEOUT=240                deadline of every phase in seconds (a miss is reported as "timeout")
#   SETTLE=2                   seconds of quiet between phases
#   SWARMD_ARGS="--realtime-priority 1"   extra arguments of every swarm supervisor
#   BENCH_RT=1                 the bench itself (its scans) under SCHED_RR 1
#   SAMPLER_RT_PRIORITY=2      SCHED_RR priority of the process timing `status` in the storm
#                              (0: the bench's own priority, so that its own wait is timed too)
#   SWARM_BIN, BENCH_TMP, KEEP_TMP=1, BENCH_VENV: see lib.sh
#
# Installs what is missing: supervisor and hyperfine (Debian), circus (PyPI, into the
# venv $BENCH_VENV), gcc. Raises ulimit -n (soft and hard, to 65536) and ulimit -u
# (unlimited) for itself and what it starts: 4,096 workers need 2 pipes each in swarmd
# (plus a socket each with swarm-sock), and supervisord refuses to start below minfds.
# Binds only 127.0.0.1. Stops everything it started on exit, also on failure or Ctrl-C,
# and signals nothing else (workers are matched by pid and start time).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_init
need_swarm
SUPERVISORS="${SUPERVISORS:-floor swarm supervisord circus swarm-sock}"
if [[ " $SUPERVISORS " == *" supervisord "* ]]; then need_supervisor; fi
if [[ " $SUPERVISORS " == *" circus "* ]]; then
    need_circus || { say "scale.sh: circus is needed (or leave it out of SUPERVISORS)"; exit 1; }
fi
need_apt hyperfine hyperfine || say "# hyperfine did not install: swarmctl ping is timed by a loop instead"
need_apt gcc gcc

# root may raise the hard limit; others get what the hard limit allows
ulimit -Hn 65536 2>/dev/null || true
raise_nofile 65536
ulimit -u unlimited 2>/dev/null || ulimit -u "$(ulimit -Hu)" 2>/dev/null || true
say "# ulimit -u $(ulimit -u); kernel.pid_max $(cat /proc/sys/kernel/pid_max)"
max_n=0
for n in ${SIZES:-10 100 1000 4096}; do ((n > max_n)) && max_n=$n; done
if (($(ulimit -n) < 3 * max_n + 256)); then
    say "scale.sh: ulimit -n is $(ulimit -n), too low for $max_n workers (need about $((3 * max_n + 256))): raise the hard limit or lower SIZES"
    exit 1
fi
say "# $(supervisord --version 2>/dev/null | sed 's/^/supervisord /') $(circusd --version 2>/dev/null | sed 's/^/circus /')"

cmd=(env SWARMD="$SWARMD" SWARMCTL="$SWARMCTL" BENCH_TMP="$BENCH_TMP" SUPERVISORS="$SUPERVISORS"
    CIRCUSD="$(command -v circusd || true)" SUPERVISORD="$(command -v supervisord || true)"
    python3 "$BENCH_DIR/scale.py")
# own process group, so bench_cleanup's SIGTERM reaches it (scale.py then stops its daemons)
rc=0
fg_group "${cmd[@]}" || rc=$?
exit "$rc"
