#!/usr/bin/env bash
# Runs every benchmark in turn, each one's output also saved to $OUT_DIR/<script>.log
# (default bench/out/, git-ignored). The knobs of each script pass through the
# environment (DURATION, RUNS, ...); note DURATION means different things per script,
# so set per-script ones instead: THROUGHPUT_DURATION, RELOAD_DURATION, SPREAD_DURATION,
# THROUGHPUT_RUNS, RELOAD_RUNS, SPREAD_RUNS, KILLS, N, CALLS.
#   bench/run-all.sh                     # defaults: about 60 minutes on 2 cores (reload: 35)
#   ONLY="memory restart-latency" bench/run-all.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUT_DIR="${OUT_DIR:-$here/out}"
ONLY="${ONLY:-throughput memory restart-latency status-1000 reload spread reliability}"
mkdir -p "$OUT_DIR"
# Build once so every script measures the same binaries (scripts skip their build when
# SWARM_BIN is set).
if [[ -z "${SWARM_BIN:-}" ]]; then
    (cd "$here/.." && printf '+ swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static\n' &&
        swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static)
    export SWARM_BIN="$here/../.build-static/release"
fi
failed=()
for s in $ONLY; do
    env=()
    case "$s" in
    throughput) env=(DURATION="${THROUGHPUT_DURATION:-6}" RUNS="${THROUGHPUT_RUNS:-3}") ;;
    reload) env=(DURATION="${RELOAD_DURATION:-15}" RUNS="${RELOAD_RUNS:-3}") ;;
    spread) env=(DURATION="${SPREAD_DURATION:-10}" RUNS="${SPREAD_RUNS:-10}") ;;
    esac
    echo "=================== $s ($(date -u +%H:%M:%S) UTC) ==================="
    printf '+ %s\n' "env ${env[*]} $here/$s.sh"
    if ! env "${env[@]}" "$here/$s.sh" 2>&1 | tee "$OUT_DIR/$s.log"; then failed+=("$s"); fi
done
echo
if ((${#failed[@]})); then echo "FAILED: ${failed[*]} (logs in $OUT_DIR)"; exit 1; fi
echo "all benchmarks ran; logs in $OUT_DIR"
