#!/usr/bin/env bash
# Reliability table (issue: hardening): chaos under load, crash-loop storm,
# log flood, daemon-reexec under load. See bench/reliability.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
need_swarm
printf '+ %s\n' "SWARM_BIN_DIR=$SWARM_BIN DURATION=${DURATION:-60} python3 $here/reliability.py $*"
SWARM_BIN_DIR="$SWARM_BIN" DURATION="${DURATION:-60}" python3 "$here/reliability.py" "$@"
