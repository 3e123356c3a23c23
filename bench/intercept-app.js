// The benchmark's Node server, written as an app that knows nothing of swarm:
// listen(process.env.PORT). With USE_FD3=1 the same code serves the inherited
// fd 3 instead (the socket-activation way), for the comparison.
// Prints, once listening: the time from the listen() call to the 'listening'
// event (bind + listen: where interception adds its round trips), and the time
// from the process's start (performance.timeOrigin) to that event.
'use strict';
const http = require('http');
const { performance } = require('perf_hooks');

const server = http.createServer((req, res) => res.end(process.pid + '\n'));
const target = process.env.USE_FD3 === '1' ? { fd: 3 } : Number(process.env.PORT);
const t0 = performance.now();
server.listen(target, () => {
  const t1 = performance.now();
  console.log(`LISTENED pid=${process.pid} listen_us=${Math.round((t1 - t0) * 1000)} start_to_listening_ms=${t1.toFixed(2)}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
