#!/usr/bin/env python3
"""Test worker: leaves processes that escape the worker's process group.

ESCAPE_MODE (default "setpgid"):
  setpgid     fork a child that calls setpgid(0, 0) (a process group of its own) and sleeps
  doublefork  fork; the child calls setsid() and forks a grandchild that sleeps (a daemon)
  prefork     nginx-style: the worker (the master) forks PREFORK_WORKERS (default 2) children
              that serve HTTP on the inherited fd 3 (each answers with its own pid); the
              master only waits. The children stay in the master's process group.
Every process it leaves sleeps ESCAPE_SLEEP_S (default 600) seconds, keeps the
worker's environment (so a test finds them by a marker variable) and closes its
stdio. The worker itself then sleeps until it is stopped (SIGTERM: exit 0 at once,
leaving the others behind, as a careless master would). Once every process is up
it prints "started N" and sends READY=1 to $NOTIFY_SOCKET (if set).
"""
import os
import signal
import socket
import sys
import time

SLEEP = float(os.environ.get("ESCAPE_SLEEP_S", "600"))


def detach_stdio():
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def sleeper():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    detach_stdio()
    time.sleep(SLEEP)
    os._exit(0)


def serve_forever():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    detach_stdio()
    lsock = socket.socket(fileno=3)
    lsock.setblocking(True)
    deadline = time.monotonic() + SLEEP
    while time.monotonic() < deadline:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                body = f"{os.getpid()}\n".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n" + body)
            except OSError:
                pass
    os._exit(0)


def notify_ready():
    """READY=1 over $NOTIFY_SOCKET (if set): sent once every process is up."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(addr)
    s.sendall(b"READY=1")
    s.close()


def main():
    mode = os.environ.get("ESCAPE_MODE", "setpgid")
    sys.stdout.flush()
    started = 0
    if mode == "setpgid":
        if os.fork() == 0:
            os.setpgid(0, 0)
            sleeper()
        started = 1
    elif mode == "doublefork":
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                os.close(w)
                sleeper()
            os.write(w, b"x")
            os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.waitpid(child, 0)
        started = 1
    elif mode == "prefork":
        for _ in range(int(os.environ.get("PREFORK_WORKERS", "2"))):
            if os.fork() == 0:
                serve_forever()
            started += 1
    else:
        print(f"escape.py: unknown ESCAPE_MODE {mode!r}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"started {started}", flush=True)
    notify_ready()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
