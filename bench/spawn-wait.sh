#!/usr/bin/env bash
# What a spawn costs the caller's loop with and without waiting for the child's exec
# (issue 18; bench/spawn-wait.c says what is measured): swarm_spawn (Sources/CSwarmSpawn/spawn.c)
# of /bin/true, SPAWNS per cell (default 2,000), with 8,000 fds open (swarmd's two pipes per
# worker at 4,000 workers). The two kinds interleaved, RUNS rounds (default 3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../Sources/CSwarmSpawn"
out="${TMPDIR:-/tmp}/swarm-spawn-wait"
cmd=(cc -O2 -I"$src/include" -o "$out" "$here/spawn-wait.c" "$src/spawn.c" "$src/cgroup.c" "$src/intercept.c")
echo "+ ${cmd[*]}"
"${cmd[@]}"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs; $(uptime)"
for run in $(seq "${RUNS:-3}"); do
    for nowait in 0 1; do
        echo "+ $out $nowait ${PIPES:-4000} ${SPAWNS:-2000}"
        "$out" "$nowait" "${PIPES:-4000}" "${SPAWNS:-2000}"
    done
done
