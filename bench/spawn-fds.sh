#!/usr/bin/env bash
# Spawn cost against the caller's fd table (issue 18): swarm_spawn (Sources/CSwarmSpawn/spawn.c)
# of /bin/true, 500 spawns per cell, with 10 and 8,000 fds open, without reserved slots (the
# child copies the whole table, as fork does) and with them (it copies the low 64 slots only).
# Interleaved, RUNS rounds; prints wall and the caller's CPU per spawn.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../Sources/CSwarmSpawn"
out="${TMPDIR:-/tmp}/swarm-spawn-fds"
cc -O2 -I"$src/include" -o "$out" "$here/spawn-fds.c" "$src/spawn.c" "$src/cgroup.c" "$src/intercept.c"
echo "# $(uname -r), $(nproc) CPUs; $(uptime)"
for run in $(seq "${RUNS:-3}"); do
    for pipes in 5 4000; do
        for reserve in 0 1; do "$out" "$reserve" "$pipes" "${SPAWNS:-500}"; done
    done
done
