#!/usr/bin/env python3
"""Does a worker's graceful stop fail keep-alive requests? A reload in miniature, without swarmd.

Two workers take turns on one listening socket (passed as fd 3 with LISTEN_FDS=1,
as swarmd passes it): start the next worker, let it come up, SIGTERM the current
one, SWAPS times, while wrk (-t1 -cCONNS, keep-alive, wrk-report.lua) loads the
socket all along. The socket stays open here, as it stays open in swarmd, so
every failed request is the stopping worker's doing: a keep-alive connection it
closed while the client was sending on it. Prints wrk's summary per server.

    bench/drain.py [--swaps 100] [--conns 16] [--gap 0.4] SERVER...

SERVER: a .py file (run with python3) or an executable (e.g. a Go binary built
from etc/apps/go/server.go). Needs wrk on PATH.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def run(server, swaps, conns, gap):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    port = ls.getsockname()[1]
    fd = ls.fileno()
    argv = ([sys.executable] if server.endswith(".py") else []) + [server]

    def start():
        # A shell sets LISTEN_PID to the worker's own pid ($$ survives exec) and moves the socket to fd 3.
        move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
        cmd = move + 'LISTEN_FDS=1 LISTEN_PID=$$ exec "$@"'
        return subprocess.Popen(["/bin/sh", "-c", cmd, "sh"] + argv, pass_fds=(fd,),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    workers = [start()]
    time.sleep(1)
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{conns}", "-d", "3600s", "-s", os.path.join(BENCH, "wrk-report.lua"),
                            f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    try:
        for _ in range(swaps):
            new = start()
            time.sleep(gap)
            workers[-1].send_signal(signal.SIGTERM)
            workers.append(new)
            time.sleep(gap)
    finally:
        wrk.send_signal(signal.SIGINT)
        out = wrk.communicate(timeout=30)[0]
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
        ls.close()
    line = next((l for l in out.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"no wrk summary for {server}: {out}")
    return json.loads(line[len("WRKJSON "):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swaps", type=int, default=100)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--gap", type=float, default=0.4, help="seconds between a start and the previous worker's SIGTERM, and after it")
    p.add_argument("servers", nargs="+")
    a = p.parse_args()
    print(f"# {a.swaps} hand-overs, wrk -t1 -c{a.conns} keep-alive, load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for server in a.servers:
        r = run(server, a.swaps, a.conns, a.gap)
        print(f"{server}: {r['requests']} requests, {r['errors']} failed (read {r['read']}, write {r['write']}, "
              f"connect {r['connect']}, timeout {r['timeout']}, non-2xx {r['status']}), {r['rps']:.0f} req/s", flush=True)


if __name__ == "__main__":
    main()
