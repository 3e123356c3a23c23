#!/usr/bin/env python3
"""Reliability scenarios for swarmd, each bounded in time, printing one table row:
scenario, load, duration, faults injected, failed requests, max status latency,
swarmd max RSS and CPU.

  chaos     HTTP load (fresh + keep-alive connections) on 4 workers while a
            random worker is kill -9'ed every 200 ms; the worker count must
            return to 4; every failure must be a connection in flight on a
            killed worker (reset / EOF), never a refused connection or a timeout.
  storm     10 apps x 8 workers whose command exits at once: swarmd's CPU once
            backoff has grown, while status keeps answering.
  flood     a worker writing to stdout as fast as it can next to a served app:
            status latency, swarmd's RSS, and log rotation bounding disk use.
  reexec    swarmctl daemon-reexec every second under HTTP load: same pid,
            same workers, no failed request.

Usage: bench/reliability.py [scenario ...]   (env: DURATION=seconds for chaos, default 60;
       SWARMD/SWARMCTL binaries, default .build-static/release/…; PYTHON)
"""
import json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SWARM_BIN_DIR", os.path.join(ROOT, ".build-static", "release"))
SWARMD = os.environ.get("SWARMD", os.path.join(BIN, "swarmd"))
SWARMCTL = os.environ.get("SWARMCTL", os.path.join(BIN, "swarmctl"))
PY = os.environ.get("PYTHON", sys.executable)
APPS = os.path.join(ROOT, "etc", "apps", "python")


def log(*a):
    print(*a, flush=True)


class Daemon:
    def __init__(self, tag):
        self.dir = tempfile.mkdtemp(prefix="swarm-rel-%s-" % tag)
        self.sock = os.path.join(self.dir, "s.sock")
        cmd = [SWARMD, "--socket", self.sock, "--state-dir", os.path.join(self.dir, "state")]
        log("  $ " + " ".join(cmd))
        self.errlog = open(os.path.join(self.dir, "swarmd.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.errlog, stderr=self.errlog)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                self.request({"verb": "ping"})
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("swarmd did not answer on %s" % self.sock)
        self.cpu0 = self.cpu()

    def request(self, req, timeout=30):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(self.sock)
        req = dict(req, v=1, id=1)
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        try:
            for line in f:
                msg = json.loads(line)
                if msg.get("kind") == "result":
                    return msg
        finally:
            s.close()
        raise OSError("connection closed")

    def ctl(self, *args):
        cmd = [SWARMCTL, "--socket", self.sock] + list(args)
        log("  $ " + " ".join(cmd))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def status(self):
        return self.request({"verb": "status"})["status"]

    def cpu(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write_conf(d, name, text):
    path = os.path.join(d.dir, name + ".conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def app_conf(name, script, workers, port=None, extra=""):
    text = 'name = "%s"\ncommand = ["%s", "%s/%s"]\nworkers = %d\n' % (name, PY, APPS, script, workers)
    if port:
        text += '[[socket]]\nlisten = "127.0.0.1:%d"\n' % port
    return text + extra


class Load:
    """Threads sending GET / : half keep-alive, half a new connection per request."""

    def __init__(self, port, threads=4):
        self.port, self.stop_flag = port, False
        self.ok = 0
        self.errors = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 0,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def record(self, err):
        with self.lock:
            self.errors[err] = self.errors.get(err, 0) + 1

    def run(self, keepalive):
        conn = None
        while not self.stop_flag:
            try:
                if conn is None:
                    try:
                        conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    except socket.timeout:
                        self.record("connect timeout")
                        continue
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"" if keepalive else b"Connection: close\r\n") + b"\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("EOF")
                    data += chunk
                head, body = data.split(b"\r\n\r\n", 1)
                length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
                while len(body) < length:
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise ConnectionResetError("EOF")
                    body += chunk
                if not head.startswith(b"HTTP/1.1 200"):
                    raise OSError("status " + head.split(b"\r\n")[0].decode())
                with self.lock:
                    self.ok += 1
                if not keepalive:
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                self.record("refused")
                conn = None
            except socket.timeout:
                self.record("response timeout (keep-alive)" if keepalive else "response timeout (fresh)")
                conn = None
            except (ConnectionResetError, BrokenPipeError):
                self.record("reset/EOF (in flight)")
                conn = None
            except OSError as e:
                self.record(str(e))
                conn = None

    def finish(self):
        self.stop_flag = True
        for t in self.threads:
            t.join(10)
        return self.ok, sum(self.errors.values()), dict(self.errors)


class StatusProbe:
    """status round trips every 100 ms; the slowest is what a user waits for."""

    def __init__(self, d):
        self.d, self.stop_flag, self.samples, self.failures = d, False, [], 0
        self.t = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.t.start()
        return self

    def run(self):
        while not self.stop_flag:
            t0 = time.monotonic()
            try:
                self.d.request({"verb": "status"}, timeout=5)
                self.samples.append(time.monotonic() - t0)
            except OSError:
                self.failures += 1
            time.sleep(0.1)

    def finish(self):
        self.stop_flag = True
        self.t.join(10)
        return max(self.samples) * 1000 if self.samples else float("nan")


def worker_pids(d, app):
    for a in d.status()["apps"]:
        if a["name"] == app:
            return [w["pid"] for w in a["workers"] if w.get("pid") and w["state"] == "ready"]
    return []


def wait_ready(d, app, n, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(worker_pids(d, app)) == n:
            return True
        time.sleep(0.05)
    return False


ROWS = []


def row(scenario, load, duration, faults, failed, status_ms, d, cpu_s, extra=""):
    ROWS.append((scenario, load, "%.0f s" % duration, faults, failed, "%.1f ms" % status_ms,
                 "%.1f MiB" % d.peak_rss_mib(), "%.1f%%" % (100 * cpu_s / duration), extra))


def chaos():
    duration = float(os.environ.get("DURATION", "60"))
    log("chaos: %ds of load, kill -9 of a random worker every 200 ms" % duration)
    d = Daemon("chaos")
    try:
        port = free_port()
        conf = write_conf(d, "web", app_conf("web", "server.py", 4, port, '[restart]\ninitial_delay = "0s"\nreset_after = "100ms"\n'))
        r = d.ctl("start", conf)
        assert r.returncode == 0, r.stderr
        load, probe = Load(port).start(), StatusProbe(d).start()
        kills, below, t0 = 0, 0, time.time()
        cpu0 = d.cpu()
        rng = random.Random(1)
        while time.time() - t0 < duration:
            pids = worker_pids(d, "web")
            if len(pids) < 4:
                below += 1
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        cpu = d.cpu() - cpu0
        ok, failed, errors = load.finish()
        status_ms = probe.finish()
        back = wait_ready(d, "web", 4)
        bad = {k: v for k, v in errors.items() if k != "reset/EOF (in flight)"}
        log("  requests ok %d, failed %d %s; kills %d; workers back to 4: %s; status failures %d"
            % (ok, failed, errors, kills, back, probe.failures))
        row("chaos", "4 threads HTTP (fresh + keep-alive), 4 workers", duration, "%d kill -9" % kills,
            "%d of %d (all in flight on a killed worker)" % (failed, ok + failed) if not bad else "%d of %d: %s" % (failed, ok + failed, bad),
            status_ms, d, cpu, "count back to 4: %s" % back)
    finally:
        d.stop()


def storm():
    duration = 20.0
    log("storm: 10 apps x 8 workers of crash.py")
    d = Daemon("storm")
    try:
        for i in range(10):
            conf = write_conf(d, "crash%d" % i, app_conf("crash%d" % i, "crash.py", 8, extra='[restart]\nmax_delay = "5s"\n[ready]\nmode = "delay"\ndelay = "1s"\n'))
            d.ctl("start", "--no-autostart", conf)
        time.sleep(8)  # backoff grows to its cap
        probe = StatusProbe(d).start()
        cpu0 = d.cpu()
        time.sleep(duration)
        cpu = d.cpu() - cpu0
        status_ms = probe.finish()
        loops = sum(1 for a in d.status()["apps"] if a["state"] == "crash-loop")
        log("  %d/10 apps in crash-loop; swarmd CPU %.2f%%" % (loops, 100 * cpu / duration))
        row("crash-loop storm", "10 apps x 8 workers exiting at once", duration, "80 crashing workers", "-", status_ms, d, cpu,
            "%d/10 apps shown as crash-loop" % loops)
    finally:
        d.stop()


def flood():
    duration = 20.0
    log("flood: a worker writing stdout as fast as it can, next to a served app")
    d = Daemon("flood")
    try:
        port = free_port()
        web = write_conf(d, "web", app_conf("web", "server.py", 2, port))
        fl = write_conf(d, "flood", app_conf("flood", "flood.py", 1, extra='[logs]\nmax_size = "4MiB"\nkeep = 2\n[ready]\nmode = "delay"\ndelay = "0s"\n'))
        assert d.ctl("start", web).returncode == 0
        cpu0 = d.cpu()
        assert d.ctl("start", fl).returncode == 0
        load, probe = Load(port, threads=2).start(), StatusProbe(d).start()
        time.sleep(duration)
        cpu = d.cpu() - cpu0
        ok, failed, errors = load.finish()
        status_ms = probe.finish()
        throttled = next((a.get("log_throttled_s") or 0 for a in d.status()["apps"] if a["name"] == "flood"), 0)
        logs = os.path.join(d.dir, "state", "logs")
        disk = sum(os.path.getsize(os.path.join(logs, f)) for f in os.listdir(logs) if f.startswith("flood"))
        log("  web requests ok %d failed %d; flood log files %.1f MiB" % (ok, failed, disk / 2**20))
        row("log flood", "1 worker flooding stdout + HTTP on another app", duration, "-",
            "%d of %d" % (failed, ok + failed), status_ms, d, cpu,
            "flood logs on disk %.1f MiB (cap 12); reading paused %.1f s by [logs] rate = 4MiB/s" % (disk / 2**20, throttled))
    finally:
        d.stop()


def reexec():
    duration = 10.0
    log("reexec: swarmctl daemon-reexec every second under load")
    d = Daemon("reexec")
    try:
        port = free_port()
        conf = write_conf(d, "web", app_conf("web", "server.py", 4, port))
        assert d.ctl("start", conf).returncode == 0
        before = sorted(worker_pids(d, "web"))
        load, probe = Load(port).start(), StatusProbe(d).start()
        cpu0, n, t0 = d.cpu(), 0, time.time()
        while time.time() - t0 < duration:
            r = d.ctl("daemon-reexec")
            assert r.returncode == 0, r.stderr
            n += 1
            time.sleep(1)
        cpu = d.cpu() - cpu0
        ok, failed, errors = load.finish()
        status_ms = probe.finish()
        after = sorted(worker_pids(d, "web"))
        log("  %d re-execs; requests ok %d failed %d %s; same workers: %s" % (n, ok, failed, errors, before == after))
        row("daemon-reexec", "4 threads HTTP, 4 workers", duration, "%d re-execs" % n, "%d of %d" % (failed, ok + failed),
            status_ms, d, cpu, "same pid and workers: %s" % (before == after))
    finally:
        d.stop()


def main():
    for b in (SWARMD, SWARMCTL):
        if not os.access(b, os.X_OK):
            raise SystemExit("%s missing: swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static" % b)
    chosen = sys.argv[1:] or ["chaos", "storm", "flood", "reexec"]
    for name in chosen:
        globals()[name]()
    log("")
    log("| scenario | load | duration | faults injected | failed requests | max status latency | swarmd max RSS | swarmd CPU | notes |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in ROWS:
        log("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
