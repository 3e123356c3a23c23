#!/usr/bin/env python3
"""Metrics bench (issue 16): what `/metrics` costs swarmd.

Run it through bench/metrics.sh (it builds a release swarmd and raises the limits).

1. latency  APPS x WORKERS `sleep` workers (default 100 x 40 = 4,000; readiness by
            delay 0): SCRAPES scrapes of /metrics one after another, each timed from
            connect to the last byte; median, p90, max; bytes per scrape; swarmd CPU
            per scrape (utime+stime of /proc/PID/stat around the scrapes). During
            the scrapes a raw control `ping` is timed every 20 ms: how long the loop
            makes others wait while it collects (the /proc reads are spread over
            loop turns, 256 workers per turn).
2. cpu      CPU_APPS x WORKERS (default 25 x 40 = 1,000): swarmd's CPU over WINDOW
            seconds idle, then over WINDOW seconds scraped once a second (as a
            Prometheus with scrape_interval 1s would), and the scrape latencies.

Everything started is stopped at the end, also on failure: swarmd by SIGTERM (its
workers go with it), then SIGKILL of swarmd's pid if it is still there.
"""
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time

CLK = os.sysconf("SC_CLK_TCK")
SWARMD = os.environ.get("SWARMD", "")
APPS = int(os.environ.get("APPS", "100"))
CPU_APPS = int(os.environ.get("CPU_APPS", "25"))
WORKERS = int(os.environ.get("WORKERS", "40"))
SCRAPES = int(os.environ.get("SCRAPES", "30"))
WINDOW = float(os.environ.get("WINDOW", "60"))
STARTED = []


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def scrape(port, path="/metrics"):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
    s.close()
    dt = time.perf_counter() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {head[:200]!r}")
    return dt, len(body)


def ping(sock_path):
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sock_path)
    s.sendall(json.dumps({"id": 1, "verb": "ping"}).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return time.perf_counter() - t0


def start(dir_, apps, port):
    confs = []
    for i in range(apps):
        path = os.path.join(dir_, f"a{i}.conf")
        with open(path, "w") as f:
            f.write(f'name = "a{i}"\ncommand = ["/bin/sleep", "100000"]\nworkers = {WORKERS}\n'
                    '[ready]\nmode = "delay"\ndelay = "0s"\n')
        confs.append(path)
    sock = os.path.join(dir_, "s.sock")
    cmd = [SWARMD, "--socket", sock, "--state-dir", os.path.join(dir_, "state"), "--log-target", "file",
           "--metrics", f"127.0.0.1:{port}"] + confs
    print("+", " ".join(cmd[:8]), f"... ({apps} configs)", flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir_, "swarmd.err"), "w"))
    STARTED.append(p)
    want = apps * WORKERS
    deadline = time.time() + 300
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"swarmd exited {p.returncode}")
        try:
            _, n = scrape(port, "/readyz")
            break
        except Exception:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"{want} workers not ready within 300 s")
    return p, sock


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def latency():
    with tempfile.TemporaryDirectory(prefix="swarm-metrics-bench-") as d:
        port = free_port()
        p, sock = start(d, APPS, port)
        try:
            scrape(port)  # warm-up (code paths paged in)
            pings = []
            times = []
            size = 0
            c0 = cpu_seconds(p.pid)
            import threading
            stop_flag = threading.Event()

            def pinger():
                while not stop_flag.is_set():
                    pings.append(ping(sock))
                    time.sleep(0.02)

            t = threading.Thread(target=pinger)
            t.start()
            for _ in range(SCRAPES):
                dt, size = scrape(port)
                times.append(dt)
            stop_flag.set()
            t.join()
            c1 = cpu_seconds(p.pid)
            idle_pings = [ping(sock) for _ in range(30)]
            print(f"latency: {APPS} apps x {WORKERS} workers = {APPS * WORKERS}: /metrics {size} bytes; "
                  f"scrape median {statistics.median(times) * 1000:.1f} ms, p90 {pct(times, 0.9) * 1000:.1f}, "
                  f"max {max(times) * 1000:.1f}; swarmd CPU {(c1 - c0) / SCRAPES * 1000:.1f} ms per scrape; "
                  f"control ping during scrapes median {statistics.median(pings) * 1000:.2f} ms, max {max(pings) * 1000:.1f} "
                  f"(idle median {statistics.median(idle_pings) * 1000:.2f} ms)", flush=True)
        finally:
            stop(p)


def cpu():
    with tempfile.TemporaryDirectory(prefix="swarm-metrics-bench-") as d:
        port = free_port()
        p, sock = start(d, CPU_APPS, port)
        try:
            time.sleep(5)  # start-up settled, code paged out
            c0 = cpu_seconds(p.pid)
            time.sleep(WINDOW)
            c1 = cpu_seconds(p.pid)
            times = []
            t_end = time.time() + WINDOW
            next_at = time.time()
            while time.time() < t_end:
                dt, size = scrape(port)
                times.append(dt)
                next_at += 1.0
                time.sleep(max(0, next_at - time.time()))
            c2 = cpu_seconds(p.pid)
            print(f"cpu: {CPU_APPS} apps x {WORKERS} workers = {CPU_APPS * WORKERS}: swarmd CPU idle "
                  f"{(c1 - c0) / WINDOW * 100:.2f}% of a core; scraped every 1 s: {(c2 - c1) / WINDOW * 100:.2f}% "
                  f"({len(times)} scrapes of {size} bytes, median {statistics.median(times) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms)", flush=True)
        finally:
            stop(p)


if __name__ == "__main__":
    if not SWARMD:
        sys.exit("set SWARMD (bench/metrics.sh does)")
    which = sys.argv[1:] or ["latency", "cpu"]
    try:
        for w in which:
            {"latency": latency, "cpu": cpu}[w]()
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.kill()
