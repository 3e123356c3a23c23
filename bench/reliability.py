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
  memory    (issue 13.8) CHURN_WORKERS workers of `true` restarted at once forever
            (initial_delay 0, reset_after 0: every exit counts as the first
            failure after a healthy run, so the backoff never grows); swarmd's
            RssAnon sampled every 10,000 restarts up to RESTARTS (100,000).
            Target: growth < 1 MiB.
  ctlflood  (issue 13.1) the same churn app; restarts/s over FLOOD_S quiet, then
            over FLOOD_S while 10 clients pipeline `ping` frames in 64 KiB
            batches without pause (each client also drains its replies).
            Target: the flooded figure within 10% of the quiet one.
  livelock  (issue 13.2) `workers = 200` of `sleep 0.1` with initial_delay = "0s"
            (as in the issue), then the sustained variant (also reset_after = 0s,
            ready delay 0s): how long `status` takes to be answered during
            LIVELOCK_S of churn, and SIGTERM -> swarmd exited. Target: < 1-2 s.
  Each scenario has a deadline and ends by itself; a swarmd that does not answer
  within a deadline is reported as such, and killed at the end.

Usage: bench/reliability.py [scenario ...]   default: chaos storm flood reexec memory ctlflood livelock
  env: DURATION=seconds for chaos (60); RESTARTS (100000), CHURN_WORKERS (4),
       MEM_DEADLINE (900 s) for memory; FLOOD_S (20), FLOOD_CLIENTS (10) for ctlflood;
       LIVELOCK_S (15) for livelock; SWARMD/SWARMCTL binaries (default
       .build-static/release/…, or SWARM_BIN_DIR/…); PYTHON
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


DAEMONS = []  # every swarmd started: killed at exit if still running


class Daemon:
    def __init__(self, tag, configs=()):
        """configs: (name, text) pairs written to the scratch dir and passed to swarmd's command line."""
        self.dir = tempfile.mkdtemp(prefix="swarm-rel-%s-" % tag)
        self.sock = os.path.join(self.dir, "s.sock")
        paths = []
        for name, text in configs:
            paths.append(os.path.join(self.dir, name + ".conf"))
            with open(paths[-1], "w") as f:
                f.write(text)
        cmd = [SWARMD, "--socket", self.sock, "--state-dir", os.path.join(self.dir, "state")] + paths
        log("  $ " + " ".join(cmd))
        self.errlog = open(os.path.join(self.dir, "swarmd.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.errlog, stderr=self.errlog)
        DAEMONS.append(self)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                self.request({"verb": "ping"}, timeout=max(0.1, deadline - time.time()))
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.proc.kill()
            self.proc.wait(10)
            raise SystemExit("swarmd did not answer a ping on %s within 15 s of its start (its log: %s)"
                             % (self.sock, os.path.join(self.dir, "swarmd.log")))
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

    def rss_anon_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def restarts(self, app, timeout=30):
        """(sum of the app's slots' restart counts, seconds the status took)."""
        t0 = time.monotonic()
        st = self.request({"verb": "status"}, timeout=timeout)["status"]
        el = time.monotonic() - t0
        for a in st["apps"]:
            if a["name"] == app:
                return sum(w["restarts"] for w in a["workers"]), el
        raise OSError("no app %s in status" % app)

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after timeout; returns seconds to exit, or None if it had to be killed."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        took = None
        try:
            self.proc.wait(timeout)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            log("  swarmd %d still running %.0f s after SIGTERM: SIGKILL" % (self.proc.pid, timeout))
            self.proc.kill()
            self.proc.wait(10)
        if os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("  kept %s" % self.dir)
        return took


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


def churn_conf(name, workers):
    # Legal and as fast as it goes: reset_after = 0 makes every exit count as the first
    # failure after a healthy run (delay = initial_delay = 0); the crash-loop window is
    # short enough that a slot's restart rate never fills crash_loop_restarts in it.
    return ('name = "%s"\ncommand = ["true"]\nworkers = %d\n[ready]\nmode = "delay"\ndelay = "0s"\n'
            '[restart]\npolicy = "always"\ninitial_delay = "0s"\nreset_after = "0s"\n'
            'crash_loop_restarts = 1000\ncrash_loop_window = "100ms"\n' % (name, workers))


def memory():
    target = int(os.environ.get("RESTARTS", "100000"))
    workers = int(os.environ.get("CHURN_WORKERS", "4"))
    deadline_s = float(os.environ.get("MEM_DEADLINE", "900"))
    step = 10000
    log("memory: %d workers of `true` restarted at once, RssAnon every %d restarts up to %d (deadline %.0f s)"
        % (workers, step, target, deadline_s))
    conf = churn_conf("churn", workers)
    log("  config: " + conf.replace("\n", "; "))
    d = Daemon("memory", [("churn", conf)])
    try:
        t0 = time.time()
        cpu0 = d.cpu()
        samples = []  # (restarts, RssAnon KiB, seconds since start)
        worst = 0.0
        nxt = 0
        while True:
            try:
                n, el = d.restarts("churn")
            except OSError as e:
                log("  status failed: %s" % e)
                n, el = None, 30.0
            worst = max(worst, el)
            if n is not None and n >= nxt:
                samples.append((n, d.rss_anon_kib(), time.time() - t0))
                log("  %7d restarts  RssAnon %6d KiB  (%.0f s, status %.0f ms)" % (n, samples[-1][1], samples[-1][2], el * 1000))
                nxt = (n // step + 1) * step
            if n is not None and n >= target:
                if samples[-1][0] != n:
                    samples.append((n, d.rss_anon_kib(), time.time() - t0))
                break
            if time.time() - t0 > deadline_s:
                log("  deadline: stopped at %s restarts" % n)
                if n is not None and samples[-1][0] != n:
                    samples.append((n, d.rss_anon_kib(), time.time() - t0))
                break
            time.sleep(0.2)
        dur = time.time() - t0
        cpu = d.cpu() - cpu0
        first, last = samples[0], samples[-1]
        after10k = next((x for x in samples if x[0] >= step), first)
        growth = (last[1] - first[1]) / 1024
        growth10 = (last[1] - after10k[1]) / 1024
        rate = last[0] / last[2] if last[2] else 0
        log("  RssAnon %d -> %d KiB over %d restarts (%.0f restarts/s): growth %.2f MiB (%.2f MiB from %d restarts on); target < 1 MiB"
            % (first[1], last[1], last[0], rate, growth, growth10, after10k[0]))
        row("memory under churn", "%d workers of `true`, restart delay 0" % workers, dur, "%d restarts" % last[0], "-",
            worst * 1000, d, cpu, "RssAnon %.1f -> %.1f MiB (+%.2f MiB; +%.2f from %dk restarts on), %.0f restarts/s; samples: %s"
            % (first[1] / 1024, last[1] / 1024, growth, growth10, after10k[0] // 1000, rate,
               " ".join("%dk:%.1f" % (x[0] // 1000, x[1] / 1024) for x in samples)))
    finally:
        d.stop()


class PingFlood:
    """Clients pipelining `ping` frames in 64 KiB batches without pause; each also reads its replies."""

    def __init__(self, sock, clients):
        frame = b'{"v":1,"id":7,"verb":"ping"}\n'
        self.batch = frame * (65536 // len(frame))
        self.sock, self.stop_flag = sock, False
        self.sent = [0] * clients
        self.answered = [0] * clients
        self.errors = []
        self.conns = []
        for _ in range(clients):
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(5)
            c.connect(sock)
            self.conns.append(c)
        self.threads = []
        for i in range(clients):
            self.threads.append(threading.Thread(target=self.send, args=(i,), daemon=True))
            self.threads.append(threading.Thread(target=self.read, args=(i,), daemon=True))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def send(self, i):
        per = self.batch.count(b"\n")
        while not self.stop_flag:
            try:
                self.conns[i].sendall(self.batch)
                self.sent[i] += per
            except socket.timeout:
                continue
            except OSError as e:
                if not self.stop_flag:
                    self.errors.append("client %d send: %s" % (i, e))
                return

    def read(self, i):
        while not self.stop_flag:
            try:
                b = self.conns[i].recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                if not self.stop_flag:
                    self.errors.append("client %d recv: %s" % (i, e))
                return
            if not b:
                if not self.stop_flag:
                    self.errors.append("client %d: swarmd closed the connection" % i)
                return
            self.answered[i] += b.count(b"\n")

    def finish(self):
        self.stop_flag = True
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self.threads:
            t.join(10)
        return sum(self.sent), sum(self.answered)


def ctlflood():
    window = float(os.environ.get("FLOOD_S", "20"))
    clients = int(os.environ.get("FLOOD_CLIENTS", "10"))
    workers = int(os.environ.get("CHURN_WORKERS", "4"))
    log("ctlflood: restarts/s of a churning app, %.0f s quiet, then %.0f s under a ping flood from %d clients" % (window, window, clients))
    conf = churn_conf("churn", workers)
    log("  config: " + conf.replace("\n", "; "))
    d = Daemon("ctlflood", [("churn", conf)])
    try:
        time.sleep(2)
        cpu0 = d.cpu()
        n0, _ = d.restarts("churn")
        t0 = time.monotonic()
        time.sleep(window)
        n1, _ = d.restarts("churn")
        t1 = time.monotonic()
        quiet = (n1 - n0) / (t1 - t0)
        log("  quiet: %d restarts in %.1f s = %.0f/s" % (n1 - n0, t1 - t0, quiet))
        flood = PingFlood(d.sock, clients).start()
        f0 = time.monotonic()
        n2, _ = d.restarts("churn", timeout=120)
        t2 = time.monotonic()
        time.sleep(max(0.0, window - (t2 - f0)))
        # asked while the flood still runs: how long status waits is part of the result
        q0 = time.monotonic()
        try:
            n3, status_s = d.restarts("churn", timeout=120)
            t3 = time.monotonic()
        except OSError as e:
            n3, status_s, t3 = None, time.monotonic() - q0, time.monotonic()
            log("  status during the flood failed after %.1f s: %s" % (status_s, e))
        sent, answered = flood.finish()
        fl = time.monotonic() - f0
        cpu = d.cpu() - cpu0
        flooded = (n3 - n2) / (t3 - t2) if n3 is not None and t3 > t2 else float("nan")
        ratio = flooded / quiet if quiet else float("nan")
        log("  flood: %d pings sent, %d answered (%.0f/s); %s restarts in %.1f s = %.0f/s (%.0f%% of quiet); "
            "status under flood %.0f ms; client errors: %s"
            % (sent, answered, answered / fl, "-" if n3 is None else n3 - n2, t3 - t2, flooded, 100 * ratio,
               status_s * 1000, flood.errors[:3] or "none"))
        time.sleep(2)
        n4, _ = d.restarts("churn", timeout=120)
        t4 = time.monotonic()
        time.sleep(5)
        n5, _ = d.restarts("churn", timeout=120)
        after = (n5 - n4) / (time.monotonic() - t4)
        log("  after the flood: %.0f restarts/s" % after)
        row("control flood", "%d clients pipelining ping + %d churning workers" % (clients, workers), window * 2,
            "%d pings answered" % answered, "-", status_s * 1000, d, cpu,
            "restarts/s quiet %.0f, flooded %.0f (%.0f%%; target >= 90%%), after %.0f; %.0f pings/s answered"
            % (quiet, flooded, 100 * ratio, after, answered / fl))
    finally:
        d.stop()


def livelock():
    window = float(os.environ.get("LIVELOCK_S", "15"))
    variants = [
        ("as in the issue", 'name = "churn200"\ncommand = ["sleep", "0.1"]\nworkers = 200\n[restart]\ninitial_delay = "0s"\n'),
        ("sustained", 'name = "churn200"\ncommand = ["sleep", "0.1"]\nworkers = 200\n[ready]\nmode = "delay"\ndelay = "0s"\n'
                      '[restart]\ninitial_delay = "0s"\nreset_after = "0s"\ncrash_loop_restarts = 1000\ncrash_loop_window = "100ms"\n'),
    ]
    for label, conf in variants:
        log("livelock (%s): 200 workers of `sleep 0.1`; status every 0.5 s for %.0f s, then SIGTERM" % (label, window))
        log("  config: " + conf.replace("\n", "; "))
        d = Daemon("livelock", [("churn200", conf)])
        took = None
        try:
            cpu0 = d.cpu()
            t0 = time.monotonic()
            lat, fails, restarts = [], 0, None
            while time.monotonic() - t0 < window:
                q = time.monotonic()
                try:
                    restarts, _ = d.restarts("churn200", timeout=30)
                    lat.append(time.monotonic() - q)
                except (OSError, socket.timeout) as e:
                    fails += 1
                    lat.append(time.monotonic() - q)
                    log("  status not answered after %.1f s: %s" % (lat[-1], e))
                time.sleep(0.5)
            dur = time.monotonic() - t0
            cpu = d.cpu() - cpu0
            lat.sort()
            med = lat[len(lat) // 2] if lat else float("nan")
            mx = lat[-1] if lat else float("nan")
            log("  status: %d asked, median %.0f ms, max %.0f ms, %d unanswered; %s restarts" % (len(lat), med * 1000, mx * 1000, fails, restarts))
            rss = d.peak_rss_mib()
        finally:
            took = d.stop(timeout=30)
        log("  SIGTERM -> swarmd exited: %s" % ("%.2f s" % took if took is not None else "not within 30 s (SIGKILLed)"))
        ROWS.append(("churn livelock (%s)" % label, "200 workers of `sleep 0.1`, initial_delay 0s", "%.0f s" % dur,
                     "%s restarts" % restarts, "-", "%.0f ms" % (mx * 1000), "%.1f MiB" % rss, "%.1f%%" % (100 * cpu / dur),
                     "status median %.0f ms, %d of %d unanswered; SIGTERM -> exit %s (target < 1-2 s)"
                     % (med * 1000, fails, len(lat), "%.2f s" % took if took is not None else "> 30 s")))


def main():
    for b in (SWARMD, SWARMCTL):
        if not os.access(b, os.X_OK):
            raise SystemExit("%s missing: swift build -c release --static-swift-stdlib -Xlinker -no-pie --scratch-path .build-static" % b)
    chosen = sys.argv[1:] or ["chaos", "storm", "flood", "reexec", "memory", "ctlflood", "livelock"]
    unknown = [c for c in chosen if c not in SCENARIOS]
    if unknown:
        raise SystemExit("unknown scenario %s; choose from: %s" % (", ".join(unknown), " ".join(SCENARIOS)))
    for name in chosen:
        with open("/proc/loadavg") as f:
            log("[%s] %s, load average %s" % (time.strftime("%H:%M:%S", time.gmtime()), name, " ".join(f.read().split()[:3])))
        SCENARIOS[name]()
    log("")
    log("| scenario | load | duration | faults injected | failed requests | max status latency | swarmd max RSS | swarmd CPU | notes |")
    log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in ROWS:
        log("| " + " | ".join(r) + " |")


SCENARIOS = {f.__name__: f for f in (chaos, storm, flood, reexec, memory, ctlflood, livelock)}

def kill_left():
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()  # PDEATHSIG takes its workers with it
            d.proc.wait(10)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda sig, _: sys.exit(128 + sig))
    try:
        main()
    finally:
        kill_left()
