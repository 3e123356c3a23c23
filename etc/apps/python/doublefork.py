#!/usr/bin/env python3
"""Test worker: serves fd 3 like server.py, but first leaves a daemonized grandchild.

At start it forks; the child calls setsid() and forks the grandchild, writes the
grandchild's pid to $GRANDCHILD_PIDFILE (if set; written atomically, and before
the worker serves) and exits. The grandchild is reparented to the nearest
subreaper (swarmd if it is one, else init), sleeps $GRANDCHILD_SLEEP_S seconds
(default 1) and exits 0.

By default the grandchild behaves like a proper daemon: it closes the inherited
listening sockets and points stdin/stdout/stderr at /dev/null. With
GRANDCHILD_KEEP_FDS=1 it keeps everything it inherited (the listening sockets and
the worker's stdout/stderr pipes), so the log pipes stay open after the worker dies.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server  # noqa: E402


def write_pidfile(path, pid):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.rename(tmp, path)


def grandchild():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.environ.get("GRANDCHILD_KEEP_FDS") != "1":
        nfds = int(os.environ.get("LISTEN_FDS", "0") or 0)
        os.closerange(server.SD_LISTEN_FDS_START, server.SD_LISTEN_FDS_START + nfds)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    time.sleep(float(os.environ.get("GRANDCHILD_SLEEP_S", "1")))
    os._exit(0)


def double_fork():
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            gc = os.fork()
            if gc == 0:
                grandchild()
            pidfile = os.environ.get("GRANDCHILD_PIDFILE")
            if pidfile:
                write_pidfile(pidfile, gc)
            os._exit(0)
        except BaseException as e:
            print(f"doublefork.py: Failed to start grandchild: {e}", file=sys.stderr, flush=True)
            os._exit(1)
    _, status = os.waitpid(child, 0)  # the first child exits at once: reap it
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(1)


if __name__ == "__main__":
    double_fork()
    server.main()
