#!/usr/bin/env bash
# Issue 18 round 7's A/B experiments: a kill -9 storm with status/ping probes and a
# stall ticker, or a rolling reload, for each build in BUILDS, interleaved (what is
# measured: bench/storm-status.py's docstring).
#
# Usage:  BUILDS="/tmp/old /tmp/new" bench/storm-status.sh                  # storm, 4,096 `sleep`s, 2 rounds
#         MODE=reload SUP=swarm-sock N=1000 BUILDS="/tmp/old /tmp/new" bench/storm-status.sh
#         MODE=start ROUNDS=4 BUILDS="/tmp/old /tmp/new" bench/storm-status.sh   # the start alone
#         (a build folder holds swarmd and swarmctl, e.g. a copy of .build-static/release)
# Knobs: MODE=storm|reload|start, SUP=swarm|swarm-sock, N=4096, ROUNDS=2, SAMPLER_NICE=-15,
#        SAMPLER_RT=1 (probes and ticker under SCHED_RR), SWARMD_ARGS="--realtime-priority 1".
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_init
need_apt gcc gcc
ulimit -Hn 65536 2>/dev/null || true
raise_nofile 65536
ulimit -u unlimited 2>/dev/null || true
N="${N:-4096}"
if (($(ulimit -n) < 3 * N + 256)); then
    say "storm-status.sh: ulimit -n is $(ulimit -n), too low for $N workers"
    exit 1
fi
[[ -n "${BUILDS:-}" ]] || { say "storm-status.sh: set BUILDS to the build folders to compare"; exit 1; }
cmd=(env MODE="${MODE:-storm}" SUP="${SUP:-swarm}" N="$N" ROUNDS="${ROUNDS:-2}" BUILDS="$BUILDS"
    SAMPLER_NICE="${SAMPLER_NICE:--15}" SAMPLER_RT="${SAMPLER_RT:-}" SWARMD_ARGS="${SWARMD_ARGS:-}"
    BENCH_TMP="$BENCH_TMP" python3 "$BENCH_DIR/storm-status.py")
rc=0
fg_group "${cmd[@]}" || rc=$?
exit "$rc"
