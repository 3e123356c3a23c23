#!/usr/bin/env node
// Peer for bench/reload.sh: Node's cluster module (round-robin primary) with a
// rolling restart on SIGHUP, one worker at a time: fork a new worker, wait for its
// 'listening', then disconnect() the old one (it stops accepting, finishes its
// requests and exits; killed after 10 s). Prints "rolling done N" when finished.
//   PORT=18080 WORKERS=2 node bench/peers/node-cluster-rolling.js
'use strict';
const cluster = require('cluster');
const path = require('path');

cluster.schedulingPolicy = cluster.SCHED_RR;
const app = process.env.APP || path.join(__dirname, '..', '..', 'etc', 'apps', 'node', 'server.js');
const n = parseInt(process.env.WORKERS || '2', 10);
cluster.setupPrimary({ exec: app });

let stopping = false;
let rolling = false;
let pending = false;
let rolls = 0;
const retiring = new Set();

function fork(slot) {
  const w = cluster.fork({ SWARM_WORKER: String(slot) });
  w.slot = slot;
  return w;
}
for (let i = 0; i < n; i++) fork(i);

cluster.on('exit', (w, code, sig) => {
  if (stopping) {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
    return;
  }
  if (retiring.delete(w)) return;
  console.error(`node-cluster-rolling: worker ${w.process.pid} died (${sig || code}), forking another`);
  fork(w.slot);
});

function replace(old) {
  return new Promise((resolve) => {
    const fresh = fork(old.slot);
    fresh.once('listening', () => {
      retiring.add(old);
      const timer = setTimeout(() => old.process.kill('SIGKILL'), 10000);
      old.once('exit', () => clearTimeout(timer));
      old.disconnect();
      resolve();
    });
  });
}

async function roll() {
  if (rolling) { pending = true; return; }
  rolling = true;
  for (const old of Object.values(cluster.workers)) {
    if (stopping) break;
    if (retiring.has(old)) continue;
    await replace(old);
  }
  rolls += 1;
  console.log(`rolling done ${rolls}`);
  rolling = false;
  if (pending) { pending = false; roll(); }
}

function stop() {
  if (stopping) return;
  stopping = true;
  const ws = Object.values(cluster.workers);
  if (ws.length === 0) process.exit(0);
  for (const w of ws) w.process.kill('SIGTERM');
  setTimeout(() => process.exit(0), 10000).unref();
}
process.on('SIGHUP', roll);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
