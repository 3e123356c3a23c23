#!/usr/bin/env node
// Example swarm worker: an HTTP server on the socket inherited as fd 3.
//
// Routes:
//   GET /        200 "<pid>\n" (text/plain), header X-Worker: $SWARM_WORKER
//   GET /cpu     runs 823543 iterations of Math.atan(i) * Math.tan(i), then "<pid>\n"
//   GET /health  200 "ok"
//   GET /sleep?ms=N  waits N ms (default 1000, at most 60000) without blocking, then
//                "<pid>\n": an in-flight request for graceful stop/reload tests
//   anything else 404 "not found\n"
//
// Environment:
//   LISTEN_FDS/LISTEN_PID  socket activation; fd 3 is served. Unset: listen on
//                          $PORT (8080) on $HOST (127.0.0.1) ourselves, for manual use.
//   SERVER_START_DELAY_MS  wait this long before serving (a slow-starting app).
//   READY_MODE=fd          write "\n" to fd $SWARM_READY_FD once serving, then close it.
//   READY_MODE=notify      not supported: Node has no unix datagram sockets without a
//                          native module, and a helper process would send from the
//                          wrong pid. Use the Python worker, or "listening"/"fd" here.
//   VERBOSE=1              log each request to stderr.
//
// SIGTERM/SIGINT: a graceful stop that fails no request, keep-alive ones included:
// stop accepting (net.Server's close); answer every request from then on with
// "Connection: close" (Node closes the connection once that answer is written;
// the client reconnects, to another worker); close keep-alive connections still
// idle after IDLE_GRACE_MS (1000: one closed at once can cross a request the
// client is already sending); exit 0 once every connection is gone, or at
// DRAIN_TIMEOUT_MS (9000, under swarmd's default [stop] timeout of 10 s).
'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');

const SD_LISTEN_FDS_START = 3;
const CPU_ITERATIONS = 823543;
const worker = process.env.SWARM_WORKER ?? '';
const verbose = process.env.VERBOSE === '1';

function log(msg) {
  process.stderr.write(`server.js[${process.pid}]: ${msg}\n`);
}

function reply(res, status, body) {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'X-Worker': worker,
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

let stopping = false;

function handler(req, res) {
  if (verbose) log(`${req.method} ${req.url}`);
  if (stopping) res.shouldKeepAlive = false; // answer, then close the connection
  const [path, query = ''] = req.url.split('?', 2);
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    reply(res, 405, 'method not allowed\n');
  } else if (path === '/') {
    reply(res, 200, `${process.pid}\n`);
  } else if (path === '/cpu') {
    let x = 0;
    for (let i = 0; i < CPU_ITERATIONS; i++) x += Math.atan(i) * Math.tan(i);
    reply(res, 200, `${process.pid}\n`);
  } else if (path === '/health') {
    reply(res, 200, 'ok');
  } else if (path === '/sleep') {
    const ms = Math.min(parseInt(new URLSearchParams(query).get('ms') ?? '1000', 10) || 0, 60000);
    setTimeout(() => {
      if (stopping) res.shouldKeepAlive = false;
      reply(res, 200, `${process.pid}\n`);
    }, ms);
  } else {
    reply(res, 404, 'not found\n');
  }
}

function listenOptions() {
  const n = parseInt(process.env.LISTEN_FDS ?? '', 10);
  const pid = process.env.LISTEN_PID;
  if (n >= 1 && (!pid || parseInt(pid, 10) === process.pid)) {
    // Like sd_listen_fds(1): children we start must not think these are theirs.
    delete process.env.LISTEN_FDS;
    delete process.env.LISTEN_PID;
    delete process.env.LISTEN_FDNAMES;
    return { fd: SD_LISTEN_FDS_START };
  }
  return { host: process.env.HOST || '127.0.0.1', port: parseInt(process.env.PORT || '8080', 10) };
}

function signalReady() {
  const mode = process.env.READY_MODE ?? '';
  if (mode === 'fd') {
    const fd = parseInt(process.env.SWARM_READY_FD, 10);
    fs.writeSync(fd, '\n');
    fs.closeSync(fd);
  } else if (mode === 'notify') {
    log('READY_MODE=notify is not supported by the Node worker, ignoring');
  } else if (mode !== '') {
    log(`unknown READY_MODE=${JSON.stringify(mode)}, ignoring`);
  }
}

const server = http.createServer(handler);
server.on('error', (err) => {
  log(`Failed to listen: ${err.message}`);
  process.exit(1);
});

// Draining: every response from now on carries "Connection: close", so a busy
// keep-alive client is told to reconnect (to another worker) after its current
// request instead of having its connection cut between two requests. Connections
// that stay idle through the grace period are closed then.
const IDLE_GRACE_MS = parseInt(process.env.IDLE_GRACE_MS || '1000', 10);
const DRAIN_TIMEOUT_MS = parseInt(process.env.DRAIN_TIMEOUT_MS || '9000', 10);

function stop() {
  if (stopping) return;
  stopping = true;
  // net.Server's close, not http.Server's: since Node 19 the latter also closes
  // idle keep-alive connections at once, failing requests already on their way.
  net.Server.prototype.close.call(server, () => process.exit(0)); // once every connection is gone
  setTimeout(() => {
    if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
  }, IDLE_GRACE_MS).unref();
  setTimeout(() => {
    log(`drain deadline (${DRAIN_TIMEOUT_MS} ms): exiting with connections still open`);
    process.exit(0);
  }, DRAIN_TIMEOUT_MS).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

const delayMs = parseInt(process.env.SERVER_START_DELAY_MS || '0', 10) || 0;
setTimeout(() => server.listen(listenOptions(), signalReady), delayMs);
