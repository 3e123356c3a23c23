#!/usr/bin/env bash
# What /metrics costs swarmd (issue 16): scrape latency with 100 apps x 40 workers,
# and swarmd's CPU with a scrape every second at 1,000 workers. See bench/metrics.py.
#
# Knobs: APPS (100), CPU_APPS (25), WORKERS (40), SCRAPES (30), WINDOW (60 s);
# SWARM_BIN as for every bench script (lib.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_init
need_swarm
raise_nofile
ulimit -u unlimited 2>/dev/null || true
export SWARMD
show python3 "$BENCH_DIR/metrics.py" "$@"
python3 "$BENCH_DIR/metrics.py" "$@"
