#!/usr/bin/env python3
"""Example swarm worker: an HTTP/1.1 server on the socket inherited as fd 3.

Routes:
  GET /        200 "<pid>\\n" (text/plain), header X-Worker: $SWARM_WORKER
  GET /cpu     burns 823543 iterations of atan(i) * tan(i), then "<pid>\\n"
  GET /health  200 "ok"
  GET /sleep?ms=N  sleeps N ms (default 1000, at most 60000), then "<pid>\n": an
               in-flight request for graceful stop/reload tests
  anything else 404 "not found\\n"

Environment:
  LISTEN_FDS/LISTEN_PID  socket activation; fd 3 is served. Unset: bind $PORT (8080)
                         on $HOST (127.0.0.1) ourselves, for manual use.
  SERVER_START_DELAY_MS  sleep this long before serving (a slow-starting app).
  READY_MODE=notify      send "READY=1\\nSTATUS=serving" to $NOTIFY_SOCKET ('@' = abstract);
                         if $WATCHDOG_USEC is set, send "WATCHDOG=1" every half period,
                         stopping after $WATCHDOG_STOP_AFTER_S seconds if that is set.
  READY_MODE=fd          write "\\n" to fd $SWARM_READY_FD, then close it.
  VERBOSE=1              print an access log line per request to stderr.

SIGTERM/SIGINT: a graceful stop that fails no request, keep-alive ones included:
stop accepting; answer the next request on every open connection with
"Connection: close" and close it once that answer is written (the client
reconnects, to another worker); close a connection only after it stayed idle
for IDLE_GRACE_MS (default 1000: a request may be on its way on it right now);
exit 0 once every connection is done, or at DRAIN_TIMEOUT_MS (default 9000,
under swarmd's default [stop] timeout of 10 s) with whatever is still open.
The main thread runs serve_forever(), i.e. sits in poll() on fd 3.
"""
import http.server
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

SD_LISTEN_FDS_START = 3
CPU_ITERATIONS = 823543
IDLE_GRACE_S = float(os.environ.get("IDLE_GRACE_MS", "1000")) / 1000
DRAIN_TIMEOUT_S = float(os.environ.get("DRAIN_TIMEOUT_MS", "9000")) / 1000
FIRST_REQUEST_GRACE_S = 1.0  # during a stop: how long a new connection may take to send its request


def log(msg):
    print(f"{os.path.basename(sys.argv[0])}[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def inherited_socket():
    """Return the socket passed as fd 3 by socket activation, or None."""
    n = os.environ.get("LISTEN_FDS")
    if not n:
        return None
    pid = os.environ.get("LISTEN_PID")
    if pid and int(pid) != os.getpid():
        return None
    if int(n) < 1:
        return None
    # Like sd_listen_fds(1): children we start must not think these are theirs.
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)  # family/type detected from the fd
    sock.set_inheritable(False)
    return sock


def own_socket():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "swarm-example-python"

    def handle(self):
        # Track whether this connection is idle (waiting for a request line) so a
        # graceful stop can close idle keep-alive connections without cutting busy ones.
        # A new connection is served at least once, even during a stop.
        #
        # A connection is never closed the moment it becomes idle, even during a stop:
        # its last answer may have gone out without "Connection: close" (the stop came
        # while it was being written), so the client may be sending the next request
        # right now, and closing would fail it (wrk counts a read error; no client
        # retries a non-idempotent request). The next request is answered, with
        # "Connection: close"; only silence for IDLE_GRACE_MS closes it.
        self.close_connection = True
        self.server.track(self, True)
        try:
            self.handle_one_request()
            while not self.close_connection:
                self.server.set_idle(self, True)
                self.handle_one_request()  # during a stop: times out after IDLE_GRACE_MS
        finally:
            self.server.track(self, False)

    def parse_request(self):
        self.server.set_idle(self, False)
        return super().parse_request()

    def reply(self, status, body, head=False):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Worker", os.environ.get("SWARM_WORKER", ""))
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def route(self, head=False):
        path, _, query = self.path.partition("?")
        if path == "/":
            self.reply(200, f"{os.getpid()}\n", head)
        elif path == "/cpu":
            x = 0.0
            for i in range(CPU_ITERATIONS):
                x += math.atan(i) * math.tan(i)
            self.reply(200, f"{os.getpid()}\n", head)
        elif path == "/health":
            self.reply(200, "ok", head)
        elif path == "/sleep":
            ms = urllib.parse.parse_qs(query).get("ms", ["1000"])[0]
            time.sleep(min(int(ms) if ms.isdigit() else 0, 60000) / 1000)
            self.reply(200, f"{os.getpid()}\n", head)
        else:
            self.reply(404, "not found\n", head)

    def do_GET(self):
        self.route()

    def do_HEAD(self):
        self.route(head=True)

    def address_string(self):
        addr = self.client_address
        return addr[0] if isinstance(addr, tuple) and addr else "unix"

    def log_message(self, format, *args):
        if os.environ.get("VERBOSE") == "1":
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: in-flight requests finish
    block_on_close = True

    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()  # the unbound socket made by the base class
        self.socket = sock
        self.address_family = sock.family
        self.stopping = False
        self._lock = threading.Lock()
        self._conns = {}  # handler -> idle? (None: accepted, first request not read yet)

    def track(self, handler, alive):
        with self._lock:
            if alive:
                self._conns[handler] = None
                if self.stopping:  # accepted during the stop: its first request gets the same grace
                    handler.connection.settimeout(FIRST_REQUEST_GRACE_S)
            else:
                self._conns.pop(handler, None)

    def set_idle(self, handler, idle):
        """Mark a connection idle (waiting for its next request) or busy.

        During a stop, an idle connection's wait for its next request is bounded
        by IDLE_GRACE_MS (a socket timeout: the read fails and the handler closes
        the connection). Connections already waiting when the stop began are in a
        read without a timeout: close_idle_connections() wakes them instead."""
        with self._lock:
            self._conns[handler] = idle
            if self.stopping:
                handler.connection.settimeout(IDLE_GRACE_S if idle else None)

    def close_idle_connections(self):
        """Start the stop: busy connections close after their response, idle ones now.

        A connection accepted whose first request has not arrived yet is not idle:
        its client sent (or is sending) a request and expects an answer, so it gets
        FIRST_REQUEST_GRACE_S to arrive before the connection is closed."""
        with self._lock:
            self.stopping = True
            idle = [h for h, state in self._conns.items() if state is True]
            fresh = [h for h, state in self._conns.items() if state is None]
        # An idle keep-alive connection may have a request on its way right now:
        # closing it at once would fail that request. Give it IDLE_GRACE_S; if a
        # request comes, its response carries "Connection: close".
        if idle:
            timer = threading.Timer(IDLE_GRACE_S, self._close_if_still_idle, args=(idle,))
            timer.daemon = True
            timer.start()
        if fresh:
            timer = threading.Timer(FIRST_REQUEST_GRACE_S, self._close_if_still_fresh, args=(fresh,))
            timer.daemon = True
            timer.start()

    def _close_if_still_idle(self, handlers):
        with self._lock:
            still = [h for h in handlers if self._conns.get(h) is True]
        self._shutdown_read(still)

    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def _close_if_still_fresh(self, handlers):
        with self._lock:
            still = [h for h in handlers if h in self._conns and self._conns[h] is None]
        self._shutdown_read(still)

    @staticmethod
    def _shutdown_read(handlers):
        for h in handlers:
            try:
                h.request.shutdown(socket.SHUT_RD)  # wakes its readline() with EOF
            except OSError:
                pass


def notify(message):
    """sd_notify(): send one datagram to $NOTIFY_SOCKET. Returns False if unset."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(message.encode(), path)
    return True


def watchdog_loop(period_s, stop_after_s):
    start = time.monotonic()
    while True:
        if stop_after_s is not None and time.monotonic() - start >= stop_after_s:
            log(f"WATCHDOG_STOP_AFTER_S={stop_after_s}: no more watchdog pings")
            return
        try:
            notify("WATCHDOG=1")
        except OSError as e:
            log(f"Failed to send WATCHDOG=1: {e}, ignoring")
        time.sleep(period_s / 2)


def signal_ready():
    mode = os.environ.get("READY_MODE", "")
    if mode == "notify":
        if not notify("READY=1\nSTATUS=serving"):
            log("READY_MODE=notify but NOTIFY_SOCKET is not set, ignoring")
        usec = os.environ.get("WATCHDOG_USEC")
        wd_pid = os.environ.get("WATCHDOG_PID")
        if usec and (not wd_pid or int(wd_pid) == os.getpid()):
            stop_after = os.environ.get("WATCHDOG_STOP_AFTER_S")
            threading.Thread(
                target=watchdog_loop,
                args=(int(usec) / 1e6, float(stop_after) if stop_after else None),
                daemon=True,
            ).start()
    elif mode == "fd":
        fd = int(os.environ["SWARM_READY_FD"])
        os.write(fd, b"\n")
        os.close(fd)
    elif mode:
        log(f"unknown READY_MODE={mode!r}, ignoring")


def main(handle_term=True):
    server = None

    stop_started = False

    def on_stop(signum, frame):
        nonlocal stop_started
        if server is None:  # still starting up
            sys.exit(0)
        if stop_started:  # a second signal: the stop is already under way
            return
        stop_started = True
        if os.environ.get("READY_MODE") == "notify":
            try:
                notify("STOPPING=1")
            except OSError:
                pass

        def stop():
            server.close_idle_connections()
            server.shutdown()

        def deadline():
            time.sleep(DRAIN_TIMEOUT_S)
            log(f"drain deadline ({DRAIN_TIMEOUT_S:g} s): exiting with {server.open_connections()} connection(s) still open")
            os._exit(0)
        threading.Thread(target=deadline, daemon=True).start()
        # shutdown() waits for serve_forever() to return, so it can't run on the
        # main thread (which is inside serve_forever()).
        threading.Thread(target=stop, daemon=True).start()

    if handle_term:
        signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)

    sock = inherited_socket() or own_socket()
    delay_ms = int(os.environ.get("SERVER_START_DELAY_MS", "0") or 0)
    if delay_ms > 0:
        time.sleep(delay_ms / 1000)
    server = Server(sock)

    signal_ready()
    # poll_interval bounds how long a stop waits for serve_forever() to notice.
    server.serve_forever(poll_interval=0.1)
    # Stop accepting (other workers sharing the socket take new connections),
    # close idle keep-alive connections (again: some may have been accepted
    # since the signal), wait for in-flight requests.
    server.close_idle_connections()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
