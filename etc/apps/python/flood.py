#!/usr/bin/env python3
"""Test worker: writes numbered lines to stdout as fast as it can (log-flood tests).

With FLOOD_LINES=N it stops after N lines (numbered 0..N-1) and then sleeps
until signalled. Exits 0 quietly if stdout is closed (EPIPE).
"""
import os
import signal
import sys

PAD = "x" * 60


def main():
    limit = os.environ.get("FLOOD_LINES")
    limit = int(limit) if limit else None
    out = sys.stdout.buffer
    pid = os.getpid()
    n = 0
    try:
        while limit is None or n < limit:
            out.write(f"flood {pid} line {n} {PAD}\n".encode())
            n += 1
        out.flush()
    except BrokenPipeError:
        os._exit(0)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
