#!/usr/bin/env python3
"""Test worker: hostile terminal bytes in STATUS= and in log lines.

Sends READY=1 and STATUS= holding ESC sequences (clear screen, colour) and a
carriage return over $NOTIFY_SOCKET, then prints lines with ESC, CR (a forged
second log line), BEL and backspace to stdout and stderr, then sleeps. Every
line carries the word "hostile" so a test finds it.
"""
import os
import socket
import sys
import time


def notify(msg):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(addr)
    s.sendall(msg.encode())
    s.close()


FORGED = "2026-11-26T01:02:03.123456Z web[0] 1 O forged"
print("hostile \x1b[2J\x1b[31mred\x1b[0m clear-screen", flush=True)
print(f"hostile carriage\r{FORGED}", flush=True)
print("hostile bell\x07 backspace\x08\x08 del\x7f", file=sys.stderr, flush=True)
notify("READY=1\nSTATUS=hostile \x1b[2J\x1b[1;31mstatus\r" + FORGED)
while True:
    time.sleep(3600)
