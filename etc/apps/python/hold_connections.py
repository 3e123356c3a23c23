#!/usr/bin/env python3
"""Test client: opens COUNT connections to a Unix socket and holds them, never reading.

Usage: hold_connections.py SOCKET COUNT SECONDS
Prints "held N" once N connections are open (fewer if connect fails), then
sleeps SECONDS and exits. Run as another user (setpriv) to play a read-only
client that fills swarmd's connection table.
"""
import resource
import socket
import sys
import time

path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
error = ""
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        error = f" (then connect failed: {e})"
        s.close()
        break
    held.append(s)
print(f"held {len(held)}{error}", flush=True)
time.sleep(seconds)
