#!/usr/bin/env bash
# Builds swarm and runs the demo: swarmd in the foreground with the Node
# example app (etc/node-web.conf: 2 workers sharing 127.0.0.1:8080).
# In another terminal:
#   curl http://127.0.0.1:8080/            # answered by one of the workers (its pid)
#   .build/release/swarmctl --socket /tmp/swarm-demo/swarmd.sock status
#   .build/release/swarmctl --socket /tmp/swarm-demo/swarmd.sock reload web
# Ctrl-C stops every worker and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
swift build -c release 2>&1 | tail -n 2
mkdir -p /tmp/swarm-demo
echo "demo: swarmctl --socket /tmp/swarm-demo/swarmd.sock status   (in another terminal)"
exec .build/release/swarmd --socket /tmp/swarm-demo/swarmd.sock --state-dir /tmp/swarm-demo/state etc/node-web.conf
