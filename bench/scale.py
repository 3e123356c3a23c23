#!/usr/bin/env python3
"""Scale bench (issue 18): swarm against supervisord 4.2 and circus at N workers.

Run it through bench/scale.sh, which builds swarm, installs the peers and raises the
limits; running this file by hand needs the same environment (see scale.sh).

For each N in SIZES, RUNS times, the supervisors in turn (interleaved: the order
rotates every run), each with N workers of `sleep 100000` and no sockets (readiness
by delay 0 for swarm, startsecs = 0 for supervisord, warmup_delay = 0 for circus):

  start    daemon launched with its config -> all N workers exec'd (seen in /proc:
           N children of the daemon whose comm is the worker's); daemon CPU
           (utime+stime from /proc/PID/stat) from its exec to that moment
  storm    kill -9 of all N workers at once -> N new workers exec'd; daemon CPU
  status   swarm only: raw-socket `status` (one framed request on the control
           socket, timed to the end of the answer line): idle median, and during a
           second storm (a request every 50 ms, from a separate process under
           SCHED_RR 2: see StatusSampler) median and max. Beside it a
           separate process at the bench's own priority sleeps 1 ms at a time and
           records its largest gaps: when 4,096 workers die at once their exits
           can keep every process of ordinary priority off the CPU for a few
           hundred ms. "status in storm, max outside stalls" leaves out the answers
           whose time overlaps a gap of that process longer than 50 ms.
  ping     swarm only: `swarmctl ping`, median of 50 (hyperfine if installed) and the
           raw-socket ping median (what is left is swarmctl's own start-up)
  reload   swarm, N in RELOAD_SIZES: `swarmctl reload APP`: time and daemon CPU per
           replaced worker
  shutdown SIGTERM to the daemon -> the daemon and all N workers gone

`floor` is the least a supervisor can do (a C loop: posix_spawn, waitpid, respawn; see
build_floor), measured the same way: what this machine allows at that moment.
`floor-fork` is the same loop spawning by fork + execve: the loop goes on while each
child execs, where posix_spawn (like swarm's vfork-style spawn) waits for the exec; the
two side by side show what not waiting for each exec is worth on this machine.

`swarm-noboost` is swarm started with `--priority-boost 0` (swarmd at its workers'
priority), to measure what the boost does side by side; `swarm-nort` and
`swarm-sock-nort` are swarm and swarm-sock started with `--realtime-priority 0`
(swarmd under SCHED_OTHER only), for the same with the real-time policy.

Plus `swarm-sock`: swarm with N workers of a tiny C server (blocking accept on its
reuseport listening socket, fd 3) and listening readiness: the worker counts as up
once /proc shows it blocked in accept (what swarm's own probe looks for).

Every phase has a deadline (TIMEOUT seconds): a phase that misses it is recorded as
"timeout" and the run goes on with the next phase. Everything started is in
STARTED / WORKERS and is stopped on exit, also on failure or a signal; only those
processes are ever signalled (workers are matched by pid and start time).
"""
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

CLK = os.sysconf("SC_CLK_TCK")
SWARMD = os.environ.get("SWARMD", "")
SWARMCTL = os.environ.get("SWARMCTL", "")
SIZES = [int(x) for x in os.environ.get("SIZES", "10 100 1000 4096").split()]
RUNS = int(os.environ.get("RUNS", "3"))
TIMEOUT = float(os.environ.get("TIMEOUT", "240"))
SUPERVISORS = os.environ.get("SUPERVISORS", "floor swarm supervisord circus swarm-sock").split()
RELOAD_SIZES = [int(x) for x in os.environ.get("RELOAD_SIZES", "100 1000").split()]
SETTLE = float(os.environ.get("SETTLE", "2"))
# Extra swarmd arguments for every swarm supervisor (e.g. "--realtime-priority 1"), and
# BENCH_RT=1: the bench itself (its scans and status probes) under SCHED_RR 1, so that
# with a real-time swarmd the probes measure swarmd, not their own wait for a CPU.
SWARMD_ARGS = os.environ.get("SWARMD_ARGS", "").split()
BENCH_RT = os.environ.get("BENCH_RT", "") == "1"
SAMPLER_RT_PRIORITY = int(os.environ.get("SAMPLER_RT_PRIORITY", "2"))
TMP = os.environ.get("BENCH_TMP") or tempfile.mkdtemp(prefix="swarm-scale-")
CIRCUSD = os.environ.get("CIRCUSD", shutil.which("circusd") or "")
SUPERVISORD = os.environ.get("SUPERVISORD", shutil.which("supervisord") or "")
HYPERFINE = shutil.which("hyperfine")
TINYSRV = os.path.join(TMP, "tinysrv")
FLOOR = os.path.join(TMP, "floor")

SWARM_VARIANTS = ("swarm", "swarm-sock", "swarm-noboost", "swarm-nort", "swarm-sock-nort")
STARTED = []   # Popen of every daemon started (each in its own session: pgid == pid)
WORKERS = {}   # pid -> start time (jiffies) of every worker seen


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def show(cmd):
    log("+ " + " ".join(cmd))


# ------------------------------------------------------------------ /proc

def cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


def proc_start(pid):
    """(state, start time) from /proc/PID/stat, or None if the pid is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children(pid):
    out = []
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                    out.extend(int(x) for x in f.read().split())
            except FileNotFoundError:
                pass
    except FileNotFoundError:
        pass
    return out


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def blocked_in_accept(pid):
    # syscall numbers on x86_64 / aarch64: accept 43 / 202, accept4 288 / 242
    try:
        with open("/proc/%d/syscall" % pid) as f:
            nr = f.read().split()[0]
        return nr in ("43", "288", "202", "242")
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False


class Workers:
    """The daemon's children that are exec'd workers (comm == name), cached by pid."""

    def __init__(self, daemon_pid, name, need_accept=False):
        self.pid, self.name, self.need_accept = daemon_pid, name, need_accept
        self.known = set()

    def scan(self, exclude=frozenset()):
        kids = set(children(self.pid))
        self.known &= kids
        for k in kids - self.known:
            if k in exclude or comm(k) != self.name:
                continue
            if self.need_accept and not blocked_in_accept(k):
                continue
            st = proc_start(k)
            if st:
                WORKERS[k] = st[1]
                self.known.add(k)
        return self.known - exclude


def scan_interval(n):
    """How often to look for the daemon's workers: every 5 ms up to 1,000 workers, then
    slower. A scan reads /proc for every child, and at 4,096 workers scanning every 5 ms
    took a fifth of the 2-core machine from the daemon and workers being measured."""
    return max(0.005, n / 200000.0)


def wait_until(pred, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def alive(pid, start):
    st = proc_start(pid)
    return st is not None and st[1] == start and st[0] != "Z"


# ------------------------------------------------------------------ swarm control socket

def raw_request(sock, verb, timeout=60):
    """Sends one framed request ({"v":1,"id":1,"verb":...}\\n) and reads to the end of the
    result line. Returns seconds from connect to the last byte of the answer."""
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(json.dumps({"v": 1, "id": 1, "verb": verb}).encode() + b"\n")
        buf = bytearray()  # appends in place: a 4,096-worker status is ~1 MiB in many chunks
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise OSError("swarmd closed the connection before its answer to %s" % verb)
            buf += chunk
            nl = buf.rfind(b"\n")
            if nl >= 0 and b'"kind":"result"' in buf[buf.rfind(b"\n", 0, nl) + 1:nl]:
                return time.perf_counter() - t0, bytes(buf)
    finally:
        s.close()


STATUS_SAMPLER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[5])
from scale import raw_request
sock, gap, timeout, priority = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
how = "at the bench's priority"
if priority > 0:
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
        how = "under SCHED_RR %d" % priority
    except OSError as e:
        how = "at the bench's priority (SCHED_RR %d: %s)" % (priority, e)
print(json.dumps({"how": how}), flush=True)
samples, errors = [], []
try:
    while True:
        t = time.monotonic()
        try:
            samples.append((t, raw_request(sock, "status", timeout=timeout)[0]))
        except OSError as e:
            errors.append(str(e))
        time.sleep(gap)
except KeyboardInterrupt:
    print(json.dumps({"samples": samples, "errors": errors}), flush=True)
"""


class StatusSampler:
    """A separate process that sends a raw-socket `status` every `gap` seconds and times
    each answer. It runs under SCHED_RR SAMPLER_RT_PRIORITY (default 2, above a swarmd
    under --realtime-priority 1), so that what is timed is swarmd's answer, not the
    sampler's own wait for a CPU behind thousands of dying workers; SAMPLER_RT_PRIORITY=0
    leaves it at the bench's priority."""

    def __init__(self, sock, gap=0.05):
        # The same raw_request, imported in the child (BENCH_TMP: no scratch folder of its own).
        self.p = subprocess.Popen([sys.executable, "-c", STATUS_SAMPLER, sock, str(gap), str(TIMEOUT), str(SAMPLER_RT_PRIORITY),
                                   os.path.dirname(os.path.abspath(__file__))],
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ, BENCH_TMP=TMP))
        STARTED.append(self.p)
        self.how = json.loads(self.p.stdout.readline() or '{"how": "?"}')["how"]
        self.samples, self.starts, self.errors = [], [], []

    def finish(self):
        self.p.send_signal(signal.SIGINT)
        try:
            out, _ = self.p.communicate(timeout=TIMEOUT + 5)
            got = json.loads(out or "{}")
        except (ValueError, subprocess.TimeoutExpired):
            self.p.kill()
            got = {"errors": ["the status sampler did not report"]}
        self.starts = [t for t, _ in got.get("samples", [])]
        self.samples = [x for _, x in got.get("samples", [])]
        self.errors = got.get("errors", [])


STALL_TICKER = r"""
import json, sys, time
gaps, last = [], time.monotonic()
try:
    while True:
        time.sleep(0.001)
        now = time.monotonic()
        if now - last > 0.02:
            gaps.append((last, now))
        last = now
except KeyboardInterrupt:
    print(json.dumps(gaps), flush=True)
"""


class StallTicker:
    """A separate process (no GIL shared with the bench) at the bench's priority that
    sleeps 1 ms at a time and reports every gap longer than 20 ms as (from, to) on the
    same clock as time.monotonic()."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", STALL_TICKER], stdout=subprocess.PIPE, text=True)
        STARTED.append(self.p)  # stopped by cleanup() if the run fails before finish()

    def finish(self):
        self.p.send_signal(signal.SIGINT)
        try:
            out, _ = self.p.communicate(timeout=30)
            return [tuple(g) for g in json.loads(out or "[]")]
        except (ValueError, subprocess.TimeoutExpired):
            self.p.kill()
            return []


# ------------------------------------------------------------------ daemons

def launch(cmd, logpath, env=None):
    show(cmd)
    lf = open(logpath, "w")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True, env=env)
    STARTED.append(p)
    return p


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def setup(sup, n, d):
    """Writes the config of sup with n workers in d; returns (argv, worker comm, env, socket)."""
    if sup in SWARM_VARIANTS:
        if not sup.startswith("swarm-sock"):
            conf = ('name = "many"\ncommand = ["sleep", "100000"]\nworkers = %d\n'
                    '[ready]\nmode = "delay"\ndelay = "0s"\n' % n)
            wname = "sleep"
        else:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            conf = ('name = "many"\ncommand = ["%s"]\nworkers = %d\n[[socket]]\nlisten = "127.0.0.1:%d"\n'
                    '[ready]\nmode = "listening"\n' % (TINYSRV, n, port))
            wname = "tinysrv"
        conf += '[restart]\ninitial_delay = "0s"\n[stop]\ntimeout = "10s"\n'
        path = write(os.path.join(d, "many.conf"), conf)
        sock = os.path.join(d, "swarmd.sock")
        argv = [SWARMD, "--socket", sock, "--state-dir", os.path.join(d, "state"), "--log-target", "file", path]
        if sup == "swarm-noboost":
            argv[1:1] = ["--priority-boost", "0"]
        if sup.endswith("-nort"):
            argv[1:1] = ["--realtime-priority", "0"]
        argv[1:1] = SWARMD_ARGS
        return argv, wname, None, sock, conf
    if sup == "supervisord":
        # minfds just above what N programs need: every child of supervisord closes fds
        # 3..minfds one by one in Python before exec, so a needlessly high minfds slows
        # each spawn (20,000 made 100 spawns take 18 s instead of about 1 s)
        fds = max(1024, 3 * n + 64)
        conf = ("[unix_http_server]\nfile = {d}/supervisor.sock\n"
                "[supervisord]\nnodaemon = true\nlogfile = {d}/supervisord.log\npidfile = {d}/supervisord.pid\n"
                "childlogdir = {d}\nminfds = {fds}\nminprocs = {procs}\n"
                "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                "[supervisorctl]\nserverurl = unix://{d}/supervisor.sock\n"
                "[program:sleep]\ncommand = sleep 100000\nnumprocs = {n}\nprocess_name = %(program_name)s_%(process_num)04d\n"
                "startsecs = 0\nautorestart = true\nstopsignal = TERM\nstdout_logfile = NONE\nstderr_logfile = NONE\n"
                ).format(d=d, n=n, fds=fds, procs=n + 200)
        path = write(os.path.join(d, "supervisord.conf"), conf)
        return [SUPERVISORD, "-c", path], "sleep", None, None, conf
    if sup == "circus":
        conf = ("[circus]\nendpoint = ipc://{d}/circus-ctl.sock\npubsub_endpoint = ipc://{d}/circus-pub.sock\n"
                "statsd = false\n"
                "[watcher:sleep]\ncmd = sleep\nargs = 100000\nnumprocesses = {n}\nwarmup_delay = 0\nrespawn = true\n"
                "graceful_timeout = 10\n").format(d=d, n=n)
        path = write(os.path.join(d, "circus.ini"), conf)
        return [CIRCUSD, path], "sleep", None, None, conf
    if sup == "floor":
        return [FLOOR, str(n)], "sleep", None, None, "(bench/scale.py build_floor: %d x sleep 100000)" % n
    if sup == "floor-fork":
        return [FLOOR, str(n), "fork"], "sleep", None, None, "(bench/scale.py build_floor, fork + execve: %d x sleep 100000)" % n
    raise SystemExit("unknown supervisor %r (SUPERVISORS may name swarm, swarm-noboost, swarm-nort, swarm-sock-nort, supervisord, circus, swarm-sock, floor, floor-fork)" % sup)


def fmt_s(x):
    return "timeout" if x is None else "%.2f s" % x


def measure(sup, n, run):
    d = os.path.join(TMP, "%s-%d-%d" % (sup, n, run))
    os.makedirs(d, exist_ok=True)
    argv, wname, env, sock, conf = setup(sup, n, d)
    r = {"sup": sup, "n": n, "run": run}
    with open("/proc/loadavg") as f:
        r["loadavg"] = f.read().split()[0]
    log("## %s, N = %d, run %d (load average %s)" % (sup, n, run, r["loadavg"]))
    if run == 1 and n == SIZES[0]:
        log("   config:\n" + "".join("     " + l + "\n" for l in conf.splitlines()))
    t0 = time.monotonic()
    p = launch(argv, os.path.join(d, "daemon.log"), env)
    ws = Workers(p.pid, wname, need_accept=sup.startswith("swarm-sock"))
    try:
        ok = wait_until(lambda: len(ws.scan()) >= n or p.poll() is not None, TIMEOUT, scan_interval(n))
        if p.poll() is not None:
            raise RuntimeError("%s exited with %s while starting; its log: %s" % (sup, p.returncode, os.path.join(d, "daemon.log")))
        r["start_s"] = time.monotonic() - t0 if ok else None
        r["start_cpu_s"] = cpu_s(p.pid)
        log("   start: %s, daemon CPU %.2f s%s" % (fmt_s(r["start_s"]), r["start_cpu_s"], "" if ok else " (%d of %d up)" % (len(ws.known), n)))
        if not ok:
            return r
        time.sleep(SETTLE)

        if sock:
            try:
                idle = []
                for _ in range(20):
                    idle.append(raw_request(sock, "status")[0])
                r["status_idle_ms"] = statistics.median(idle) * 1000
                pings = [raw_request(sock, "ping")[0] for _ in range(50)]
                r["raw_ping_ms"] = statistics.median(pings) * 1000
                log("   raw status idle: median %.1f ms; raw ping %.2f ms" % (r["status_idle_ms"], r["raw_ping_ms"]))
            except OSError as e:
                # a swarmd too busy to answer within 60 s is a result, not a reason to stop
                r["status_idle_ms"] = None
                log("   raw status/ping %.0f s after all workers were up: no answer within 60 s (%s)" % (SETTLE, e))
            if sup in ("swarm", "swarm-nort") and r["status_idle_ms"] is not None:
                r["ctl_ping_ms"] = ctl_ping(sock, d)
                log("   swarmctl ping: median %.1f ms" % r["ctl_ping_ms"])

        storms = [False, True] if sock else [False]
        for probed in storms:
            old = set(ws.scan())
            if len(old) < n:
                log("   only %d of %d workers before the storm" % (len(old), n))
            sampler = StatusSampler(sock) if probed else None
            ticker = StallTicker() if probed else None
            c0 = cpu_s(p.pid)
            if sampler:
                time.sleep(0.2)  # an idle sample or two first
            t0 = time.monotonic()
            kill_all(old)
            ok = wait_until(lambda: len(ws.scan(exclude=old)) >= n, TIMEOUT, scan_interval(n))
            el = time.monotonic() - t0 if ok else None
            cpu = cpu_s(p.pid) - c0
            if sampler:
                time.sleep(0.1)
                sampler.finish()
                gaps = ticker.finish()
                sm = sampler.samples
                stalls = [(a, b) for a, b in gaps if b - a > 0.05]
                calm = [x for t, x in zip(sampler.starts, sm) if not any(a < t + x and t < b for a, b in stalls)]
                worst = max(gaps, key=lambda g: g[1] - g[0], default=None)
                r["storm_probed_s"] = el
                r["status_storm_med_ms"] = statistics.median(sm) * 1000 if sm else None
                r["status_storm_max_ms"] = max(sm) * 1000 if sm else None
                r["status_storm_max_at_s"] = sampler.starts[sm.index(max(sm))] - t0 if sm else None
                r["status_storm_calm_max_ms"] = max(calm) * 1000 if calm else None
                r["stall_max_ms"] = (worst[1] - worst[0]) * 1000 if worst else 0.0
                r["status_storm_samples"] = len(sm)
                log("   storm with status probe (the sampler %s): %s; status during it: %d answers, median %s ms, max %s ms%s%s" % (
                    sampler.how, fmt_s(el), len(sm), "%.1f" % r["status_storm_med_ms"] if sm else "-",
                    "%.1f" % r["status_storm_max_ms"] if sm else "-",
                    " (sent at %+.2f s from the kill)" % r["status_storm_max_at_s"] if sm else "",
                    "; errors: %s" % sampler.errors[:3] if sampler.errors else ""))
                log("   a 1 ms sleep loop at the bench's priority: largest gap %.1f ms%s; status max outside gaps > 50 ms: %s ms (%d of %d answers)" % (
                    r["stall_max_ms"], " at +%.2f s" % (worst[0] - t0) if worst else "",
                    "%.1f" % r["status_storm_calm_max_ms"] if calm else "-", len(calm), len(sm)))
            else:
                r["storm_s"], r["storm_cpu_s"] = el, cpu
                log("   kill -9 of %d -> all replaced: %s, daemon CPU %.2f s%s" % (
                    len(old), fmt_s(el), cpu, "" if ok else " (%d of %d back)" % (len(ws.scan(exclude=old)), n)))
            if not ok:
                break
            time.sleep(SETTLE)

        if sock and n in RELOAD_SIZES and r.get("storm_s") is not None:
            cmd = [SWARMCTL, "--socket", sock, "reload", "many"]
            show(cmd)
            c0, t0 = cpu_s(p.pid), time.monotonic()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
                el = time.monotonic() - t0
                cpu = cpu_s(p.pid) - c0
                if out.returncode != 0:
                    log("   reload failed (exit %d): %s" % (out.returncode, out.stderr.strip()[-300:]))
                else:
                    r["reload_s"], r["reload_cpu_s"] = el, cpu
                    r["reload_cpu_per_worker_ms"] = cpu / n * 1000
                    log("   reload: %.2f s, daemon CPU %.2f s = %.3f ms per replaced worker" % (el, cpu, r["reload_cpu_per_worker_ms"]))
            except subprocess.TimeoutExpired:
                r["reload_s"] = None
                log("   reload: timeout after %.0f s" % TIMEOUT)
            time.sleep(SETTLE)

        last = {w: WORKERS[w] for w in ws.scan()}
        show(["kill", "-TERM", str(p.pid)])
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)

        def gone():
            return p.poll() is not None and not any(alive(w, s) for w, s in last.items())
        ok = wait_until(gone, TIMEOUT, scan_interval(n))
        r["shutdown_s"] = time.monotonic() - t0 if ok else None
        log("   SIGTERM -> daemon and %d workers gone: %s" % (len(last), fmt_s(r["shutdown_s"])))
        return r
    finally:
        stop_daemon(p)


def ctl_ping(sock, d):
    env = dict(os.environ, SWARM_SOCKET=sock)
    if HYPERFINE:
        out = os.path.join(d, "ping.json")
        cmd = [HYPERFINE, "-N", "--warmup", "5", "--runs", "50", "--export-json", out, "%s --socket %s ping" % (SWARMCTL, sock)]
        show(cmd)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["results"][0]["median"] * 1000
    cmd = [SWARMCTL, "--socket", sock, "ping"]
    show(cmd + ["# x50 (no hyperfine)"])
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def kill_all(pids):
    """kill -9 of each of pids (workers of this run), one already gone skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_daemon(p, grace=None):
    grace = TIMEOUT if grace is None else grace
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log("   %d did not exit %.0f s after SIGTERM: SIGKILL to its group" % (p.pid, grace))
            kill_with_children(p)
    kill_leftover_workers()


def kill_with_children(p):
    """SIGKILL of a daemon and of every child it has, also those not yet seen as
    workers (a peer still starting): stopped first, so none is forked after the list."""
    try:
        os.killpg(p.pid, signal.SIGSTOP)
    except ProcessLookupError:
        pass
    kids = [(k, st[1]) for k in children(p.pid) for st in [proc_start(k)] if st]
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for k, start in kids:
        if alive(k, start):
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        pass


def kill_leftover_workers():
    left = [w for w, s in list(WORKERS.items()) if alive(w, s)]
    for w in left:
        try:
            os.kill(w, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        log("   killed %d leftover workers" % len(left))
    # drop the dead ones (pids are reused): keep only those still there
    for w in list(WORKERS):
        if not alive(w, WORKERS[w]):
            del WORKERS[w]


def cleanup():
    for p in STARTED:
        if p.poll() is None:
            kill_with_children(p)
    kill_leftover_workers()


def build_floor():
    """The least a supervisor can do, as a yardstick for this machine at this moment (a
    shared 2-core VM whose speed varies several-fold from day to day): posix_spawn N
    children, respawn each one the moment waitpid reports it, SIGTERM all on SIGTERM.
    No readiness, no logs, no cgroups, no control socket."""
    src = write(os.path.join(TMP, "floor.c"), r"""
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
static volatile sig_atomic_t stopping;
static void on_term(int sig) { (void)sig; stopping = 1; }
static char *av[] = {"sleep", "100000", 0};
static int by_fork;  /* argv[2] "fork": fork + execve, no wait for the exec */
static pid_t start(void) {
    pid_t p;
    if (by_fork) {
        p = fork();
        if (p == 0) { execve("/bin/sleep", av, environ); _exit(127); }
        return p;
    }
    return posix_spawn(&p, "/bin/sleep", 0, 0, av, environ) == 0 ? p : -1;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    by_fork = argc > 2 && strcmp(argv[2], "fork") == 0;
    pid_t *kids = calloc(n, sizeof *kids);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;  /* no SA_RESTART: waitpid returns EINTR */
    sigaction(SIGTERM, &sa, 0);
    for (int i = 0; i < n && !stopping; i++) kids[i] = start();
    while (!stopping) {
        pid_t p = waitpid(-1, 0, 0);
        if (p < 0) { if (errno == ECHILD) break; continue; }
        for (int i = 0; i < n; i++)
            if (kids[i] == p) { kids[i] = stopping ? -1 : start(); break; }
    }
    for (int i = 0; i < n; i++) if (kids[i] > 0) kill(kids[i], SIGTERM);
    while (waitpid(-1, 0, 0) > 0 || errno == EINTR) {}
    return 0;
}
""")
    cmd = ["gcc", "-O2", "-o", FLOOR, src]
    show(cmd)
    subprocess.run(cmd, check=True)


def build_tinysrv():
    src = write(os.path.join(TMP, "tinysrv.c"), r"""
/* A minimal server for the scale bench: blocking accept() on the inherited listening
   socket fd 3, answers "ok\n" and closes. Blocked in accept = ready for swarm's probe. */
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    for (;;) {
        int c = accept(3, 0, 0);
        if (c < 0) continue;
        (void)!write(c, "ok\n", 3);
        close(c);
    }
}
""")
    cmd = ["gcc", "-O2", "-o", TINYSRV, src]
    show(cmd)
    subprocess.run(cmd, check=True)


def median_of(rs, key):
    vals = [r.get(key, "absent") for r in rs]
    vals = [v for v in vals if v != "absent"]
    if not vals:
        return "-"
    if any(v is None for v in vals):
        good = sorted(v for v in vals if v is not None)
        return "timeout" if not good else "%s (%d timeout)" % (fmtv(statistics.median(good), key), vals.count(None))
    return fmtv(statistics.median(vals), key)


def fmtv(v, key):
    if key.endswith("_ms"):
        return "%.1f ms" % v if v >= 10 else "%.2f ms" % v
    if key.endswith("samples"):
        return "%d" % v
    return "%.2f s" % v


def main():
    if BENCH_RT:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        log("# the bench runs under SCHED_RR 1 (BENCH_RT=1); swarmd arguments: %s" % " ".join(SWARMD_ARGS))
    for what, path in (("swarmd", SWARMD), ("swarmctl", SWARMCTL)):
        if "swarm" in " ".join(SUPERVISORS) and not (path and os.access(path, os.X_OK)):
            raise SystemExit("scale.py: %s not executable at %r (set SWARMD/SWARMCTL, or run bench/scale.sh)" % (what, path))
    if "supervisord" in SUPERVISORS and not SUPERVISORD:
        raise SystemExit("scale.py: supervisord not found (apt-get install supervisor), or drop it from SUPERVISORS")
    if "circus" in SUPERVISORS and not CIRCUSD:
        raise SystemExit("scale.py: circusd not found (pip install circus into a venv and set CIRCUSD), or drop it from SUPERVISORS")
    if any(s.startswith("swarm-sock") for s in SUPERVISORS):
        build_tinysrv()
    if "floor" in SUPERVISORS or "floor-fork" in SUPERVISORS:
        build_floor()
    log("# sizes %s, %d run(s), supervisors %s, phase timeout %.0f s, scratch %s" % (SIZES, RUNS, SUPERVISORS, TIMEOUT, TMP))
    results = []
    for n in SIZES:
        for run in range(1, RUNS + 1):
            k = (run - 1) % len(SUPERVISORS)
            order = SUPERVISORS[k:] + SUPERVISORS[:k]
            for sup in order:
                try:
                    results.append(measure(sup, n, run))
                except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                    log("   %s N=%d run %d failed: %s" % (sup, n, run, e))
                    results.append({"sup": sup, "n": n, "run": run, "error": str(e)})
    with open(os.path.join(TMP, "scale.json"), "w") as f:
        json.dump(results, f, indent=1)
    cols = [("start all", "start_s"), ("daemon CPU, start", "start_cpu_s"), ("kill -9 all -> replaced", "storm_s"),
            ("daemon CPU, storm", "storm_cpu_s"), ("SIGTERM shutdown", "shutdown_s"), ("status idle", "status_idle_ms"),
            ("status in storm, median", "status_storm_med_ms"), ("status in storm, max", "status_storm_max_ms"),
            ("largest stall of a process at the bench's priority in that storm", "stall_max_ms"),
            ("status in storm, max outside stalls", "status_storm_calm_max_ms"),
            ("storm with status probe", "storm_probed_s"), ("raw ping", "raw_ping_ms"), ("swarmctl ping", "ctl_ping_ms"),
            ("reload CPU per worker", "reload_cpu_per_worker_ms"), ("reload time", "reload_s")]
    loads = sorted(float(r["loadavg"]) for r in results if "loadavg" in r)
    print("\nMedians of %d run(s) per cell; 1-minute load average at the runs' starts %s-%s; raw figures in %s/scale.json (kept with KEEP_TMP=1)\n"
          % (RUNS, loads[0] if loads else "?", loads[-1] if loads else "?", TMP))
    print("| N | supervisor | " + " | ".join(c for c, _ in cols) + " |")
    print("|" + " --- |" * (len(cols) + 2))
    for n in SIZES:
        for sup in SUPERVISORS:
            rs = [r for r in results if r["sup"] == sup and r["n"] == n]
            errs = [r["error"] for r in rs if "error" in r]
            cells = [median_of([r for r in rs if "error" not in r], key) for _, key in cols]
            print("| %d | %s | %s |%s" % (n, sup, " | ".join(cells), " errors: %s" % errs if errs else ""))
    print("\nPer-restart daemon CPU in the storm (storm CPU / N):")
    for sup in SUPERVISORS:
        parts = []
        for n in SIZES:
            v = [r["storm_cpu_s"] / n * 1000 for r in results if r["sup"] == sup and r["n"] == n and r.get("storm_s") is not None]
            if v:
                parts.append("N=%d %.3f ms" % (n, statistics.median(v)))
        print("  %s: %s" % (sup, ", ".join(parts) or "-"))


if __name__ == "__main__":
    def on_signal(sig, _):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        main()
    finally:
        cleanup()
