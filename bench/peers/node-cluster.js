#!/usr/bin/env node
// Peer for the benchmarks: Node's cluster module, round-robin primary, running the
// same handlers as swarm's example app (etc/apps/node/server.js, which binds
// $HOST:$PORT itself when LISTEN_FDS is unset; in a cluster worker that listen is
// served by the primary, which accepts and hands out connections round-robin).
//   PORT=18080 WORKERS=2 node bench/peers/node-cluster.js
// SIGTERM/SIGINT: stop the workers (they drain), then exit.
'use strict';
const cluster = require('cluster');
const path = require('path');

cluster.schedulingPolicy = cluster.SCHED_RR; // must be set before setupPrimary/fork
const app = process.env.APP || path.join(__dirname, '..', '..', 'etc', 'apps', 'node', 'server.js');
const n = parseInt(process.env.WORKERS || '2', 10);
cluster.setupPrimary({ exec: app });

let stopping = false;
for (let i = 0; i < n; i++) cluster.fork({ SWARM_WORKER: String(i) });
cluster.on('exit', (w, code, sig) => {
  if (stopping) {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
    return;
  }
  console.error(`node-cluster: worker ${w.process.pid} died (${sig || code}), forking another`);
  cluster.fork({ SWARM_WORKER: '' });
});
function stop() {
  if (stopping) return;
  stopping = true;
  const ws = Object.values(cluster.workers);
  if (ws.length === 0) process.exit(0);
  for (const w of ws) w.process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 10000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
