#!/usr/bin/env python3
"""Test server: squats a swarmd control socket and answers every request "ok".

Usage: fake_swarmd.py SOCKET
Binds SOCKET (mode 0777, so any user can connect), prints "listening", and
answers each JSON line with a successful result carrying the request's id
(and "pong" as its message): what a squatter of swarmctl's default socket would
do. Requests it received are printed to stdout, one per line.
"""
import json
import os
import socket
import sys
import threading

path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(16)
print("listening", flush=True)


def serve(conn):
    with conn, conn.makefile("rb") as f:
        for line in f:
            print("request " + line.decode(errors="replace").strip(), flush=True)
            try:
                rid = json.loads(line).get("id", 0)
            except ValueError:
                rid = 0
            reply = {"v": 1, "id": rid, "kind": "result", "ok": True, "message": "pong"}
            conn.sendall(json.dumps(reply).encode() + b"\n")


while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
