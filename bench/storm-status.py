#!/usr/bin/env python3
"""Storm and reload experiments of issue 18 round 7 (bench/RESULTS.md, 2026-12-03):
A/B comparisons of swarmd builds, one storm or reload at a time, the builds interleaved.

  MODE=storm   N workers (`sleep`, or tiny servers with SUP=swarm-sock); once all are up,
               kill -9 of all of them. Meanwhile, each in a process of its own:
               a raw-socket `status` every 50 ms (at nice SAMPLER_NICE, default -15,
               so that the client's own scheduling is not what is measured), a raw
               `ping` every 20 ms, and a 1 ms sleep loop at nice -10 that records its
               largest gaps (machine-wide stalls); SAMPLER_RT=1: all three under SCHED_RR 1,
               SWARMD_ARGS: extra swarmd arguments (--realtime-priority 1). Prints per run: the storm's time,
               status and ping medians and maxima in the storm, the status maximum
               after its first 0.5 s, and the loop's largest gaps.
  MODE=reload  N workers, then `swarmctl reload many`: its time and swarmd's CPU for it.
  MODE=start   N workers started, nothing else (every mode prints the start's time and
               swarmd's CPU for it, user and system).

Run through bench/storm-status.sh (limits, build); BUILDS="dirA dirB" names folders
holding swarmd and swarmctl, each run once per round, ROUNDS rounds.
"""
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402  (setup, launch, Workers, raw_request, wait_until, cpu_s)

MODE = os.environ.get("MODE", "storm")
N = int(os.environ.get("N", "4096"))
SUP = os.environ.get("SUP", "swarm")
BUILDS = os.environ.get("BUILDS", "").split()
ROUNDS = int(os.environ.get("ROUNDS", "2"))
SAMPLER_NICE = int(os.environ.get("SAMPLER_NICE", "-15"))
# Extra swarmd arguments (e.g. "--realtime-priority 1"); SAMPLER_RT=1 runs the probes
# and the ticker under SCHED_RR 1 instead of SAMPLER_NICE (so that only swarmd is measured).
SWARMD_ARGS = os.environ.get("SWARMD_ARGS", "").split()
SAMPLER_RT = os.environ.get("SAMPLER_RT", "") == "1"


def prioritise(nice):
    if SAMPLER_RT:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    else:
        os.nice(nice)


def sampler(sock, verb, gap, q, stop):
    prioritise(SAMPLER_NICE)
    out = []
    while not stop.is_set():
        t = time.monotonic()
        try:
            out.append((t, scale.raw_request(sock, verb, timeout=60)[0]))
        except OSError:
            out.append((t, None))
        time.sleep(gap)
    q.put(out)


def ticker(q, stop):
    prioritise(-10)
    gaps, last = [], time.monotonic()
    while not stop.is_set():
        time.sleep(0.001)
        now = time.monotonic()
        gaps.append((last, now - last))
        last = now
    q.put(sorted(gaps, key=lambda g: -g[1])[:3])


def start(build, d):
    scale.SWARMD, scale.SWARMCTL = os.path.join(build, "swarmd"), os.path.join(build, "swarmctl")
    if SUP == "swarm-sock":
        scale.TINYSRV = os.path.join(d, "tinysrv")
        scale.build_tinysrv()
    argv, wname, env, sock, _ = scale.setup(SUP, N, d)
    argv[1:1] = SWARMD_ARGS
    t0 = time.monotonic()
    p = scale.launch(argv, os.path.join(d, "daemon.log"), env)
    ws = scale.Workers(p.pid, wname, need_accept=(SUP == "swarm-sock"))
    if not scale.wait_until(lambda: len(ws.scan()) >= N, 120, scale.scan_interval(N)):
        raise SystemExit("%s: only %d of %d workers up after 120 s" % (build, len(ws.known), N))
    took = time.monotonic() - t0
    with open("/proc/%d/stat" % p.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / scale.CLK, int(fields[12]) / scale.CLK
    print("   started all in %.2f s; swarmd CPU %.2f s (user %.2f, system %.2f)" % (took, user + system, user, system), flush=True)
    time.sleep(1)
    return p, ws, sock


def storm(p, ws, sock):
    stop = mp.Event()
    qs, procs = [], []
    for target, args in ((sampler, (sock, "status", 0.05)), (sampler, (sock, "ping", 0.02)), (ticker, ())):
        q = mp.Queue()
        pr = mp.Process(target=target, args=args + (q, stop))
        pr.start()
        qs.append(q)
        procs.append(pr)
    try:
        time.sleep(0.3)
        old = set(ws.scan())
        t0 = time.monotonic()
        scale.kill_all(old)
        ok = scale.wait_until(lambda: len(ws.scan(exclude=old)) >= N, 120, scale.scan_interval(N))
        el = time.monotonic() - t0
        time.sleep(0.2)
    finally:
        stop.set()
        statuses, pings, gaps = (q.get(timeout=60) for q in qs)
        for pr in procs:
            pr.join(30)

    def inside(samples, after=0.0):
        return [lat for t, lat in samples if lat is not None and t0 + after <= t <= t0 + el]
    st, pg, late = inside(statuses), inside(pings), inside(statuses, 0.5)
    ms = lambda xs, f: "%.1f" % (f(xs) * 1000) if xs else "-"  # noqa: E731
    print("   storm replaced %s in %.2f s; status: %d answers, median %s ms, max %s ms, max after +0.5 s %s ms; "
          "ping median %s ms, max %s ms; 1 ms loop's largest gaps %s" % (
              "all" if ok else "NOT all", el, len(st), ms(st, statistics.median), ms(st, max), ms(late, max),
              ms(pg, statistics.median), ms(pg, max),
              ", ".join("%.0f ms at %+.2f s" % (g * 1000, t - t0) for t, g in gaps)), flush=True)


def reload(p, ws, sock):
    cmd = [scale.SWARMCTL, "--socket", sock, "reload", "many"]
    scale.show(cmd)
    c0, t0 = scale.cpu_s(p.pid), time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print("   reload exit %d in %.2f s, swarmd CPU %.2f s%s" % (
        r.returncode, time.monotonic() - t0, scale.cpu_s(p.pid) - c0, "" if r.returncode == 0 else ": " + r.stderr[-300:]), flush=True)


def main():
    if not BUILDS:
        raise SystemExit("storm-status.py: BUILDS names the folders of the builds to compare")
    for rnd in range(1, ROUNDS + 1):
        for build in BUILDS:
            d = os.path.join(scale.TMP, "%s-%d-%s" % (MODE, rnd, os.path.basename(build.rstrip("/"))))
            os.makedirs(d, exist_ok=True)
            print("## %s, %s, N = %d, round %d, build %s (load %s)" % (MODE, SUP, N, rnd, build, open("/proc/loadavg").read().split()[0]), flush=True)
            p, ws, sock = start(build, d)
            try:
                if MODE != "start":
                    (storm if MODE == "storm" else reload)(p, ws, sock)
            finally:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    try:
        main()
    finally:
        scale.cleanup()
