#!/usr/bin/env bash
# Reliability table: chaos under load, crash-loop storm, log flood, daemon-reexec under
# load (issue: hardening), and from issue 13: memory after 100,000 restarts, a control
# flood from 10 clients during churn, the 200-worker churn livelock.
# Usage: bench/reliability.sh [chaos|storm|flood|reexec|memory|ctlflood|livelock ...]
# Knobs and what each scenario measures: bench/reliability.py (its docstring).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
need_swarm
ulimit -n 65536 2>/dev/null || true
printf '+ %s\n' "SWARM_BIN_DIR=$SWARM_BIN DURATION=${DURATION:-60} python3 $here/reliability.py $*"
SWARM_BIN_DIR="$SWARM_BIN" DURATION="${DURATION:-60}" python3 "$here/reliability.py" "$@"
