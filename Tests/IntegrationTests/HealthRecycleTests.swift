import Foundation
import Glibc
import SwarmProtocol
import Testing

// Health, the rest of issue 15: exec probes (and their bounds: a hanging probe
// is killed with its group, a flooding one costs bounded output), [ready] mode
// http, recycling start-first under load (max_age, the memory ceiling,
// max_connections) with 0 failed requests, and health state across daemon-reexec.

/// An exec probe: fails (exit 1, printing who it is) while `sick.<worker pid>` exists in $HEALTH_DIR.
private let checkScript = """
    #!/bin/sh
    if [ -e "$HEALTH_DIR/sick.$SWARM_WORKER_PID" ]; then
        echo "starting check of $SWARM_APP"
        echo "sick $SWARM_APP/$SWARM_WORKER pid $SWARM_WORKER_PID port $SWARM_PORT"
        exit 1
    fi
    echo "ok $SWARM_APP/$SWARM_WORKER port $PORT"
    """

/// The example server (drains on SIGTERM), growing its memory by 8 MiB every
/// 100 ms (up to 160 MiB) while `grow.<pid>` exists in $HEALTH_DIR.
private let growingServer = #"""
import os, sys, threading, time
sys.path.insert(0, os.environ["PYTHON_APPS"])
import server
d = os.environ["HEALTH_DIR"]
hoard = []
def grow():
    while True:
        if os.path.exists(f"{d}/grow.{os.getpid()}") and len(hoard) < 20:
            hoard.append(b"x" * (8 << 20))
        time.sleep(0.1)
threading.Thread(target=grow, daemon=True).start()
server.main()
"""#

/// A worker whose /healthz answers 503 while $HEALTH_DIR/notyet exists (and 200 after), / always 200.
private let lateHealthServer = #"""
import http.server, os, socket
d = os.environ["HEALTH_DIR"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        code = 503 if self.path == "/healthz" and os.path.exists(f"{d}/notyet") else 200
        body = f"{os.getpid()}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H, bind_and_activate=False)
s.socket.close()
s.socket = socket.socket(fileno=3)
s.serve_forever()
"""#

/// Writes an executable script (chmod: the umask may be strict).
private func script(_ s: Swarm, _ name: String, _ text: String) throws -> String {
    let path = try s.write(name, text + "\n")
    guard chmod(path, 0o755) == 0 else { throw HarnessError("chmod \(path): errno \(errno)") }
    return path
}

private func workerLine(_ s: Swarm, _ app: String, slot: Int) throws -> WorkerStatus? {
    try reloadApp(try s.quickStatus(), app).workers.first { $0.slot == slot && $0.state == "ready" }
}

/// utime + stime of a process, in seconds.
private func cpuSeconds(_ pid: Int32) -> Double {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    guard let close = text.lastIndex(of: ")") else { return 0 }
    let f = text[text.index(after: close)...].split(separator: " ")
    guard f.count > 13, let u = Double(f[11]), let s = Double(f[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

@Suite("Health: exec probes, ready by probe, recycling start-first, across re-exec")
struct HealthRecycleIntegrationTests {
    @Test("an exec probe that fails replaces its worker (env: pid, app, slot, port); the sibling is untouched")
    func execProbeReplacesAFailingWorker() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let check = try script(s, "check.sh", checkScript)
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, env: ["HEALTH_DIR": s.dir], extra: """
                [health]
                exec = ["\(check)"]
                interval = "500ms"
                timeout = "500ms"
                failures = 2
                """))
            try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            try await waitUntil(timeout: 15, "both workers probed healthy by exec") {
                (try? reloadApp(try s.quickStatus(), "web").workers.allSatisfy { w in
                    w.health == "healthy" && w.lastProbe == "exec exit 0: ok web/\(w.slot) port \(port)"
                }) == true
            }
            let sick = try #require(try readyPid(s, "web", slot: 0))
            let sibling = try #require(try readyPid(s, "web", slot: 1))
            FileManager.default.createFile(atPath: "\(s.dir)/sick.\(sick)", contents: nil)
            let start = Date()
            _ = try await waitUntil(timeout: 20, "slot 0 served by a new worker") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 0), p != sick else { return nil }
                return p
            }
            let took = elapsed(since: start)
            let w = try #require(try workerLine(s, "web", slot: 0))
            #expect(w.lastExit == "replaced: unhealthy (exec exit 1: sick web/0 pid \(sick) port \(port) ×2)",
                    "last_exit: \(String(describing: w.lastExit))")
            #expect(try readyPid(s, "web", slot: 1) == sibling)
            let other = try #require(try workerLine(s, "web", slot: 1))
            #expect(other.restarts == 0 && other.lastExit == nil, "sibling: \(other)")
            print("exec-probed worker replaced \(String(format: "%.2f", took)) s after its probe began failing (interval 500 ms × 2)")
        }
    }

    @Test("an exec probe that hangs is killed with its whole group at its timeout; one that floods its output costs bounded work")
    func hangingAndFloodingExecProbesAreBounded() async throws {
        try await withSwarm { s in
            let hang = try script(s, "hang.sh", "#!/bin/sh\nsleep 3600 &\necho $! > \"$HEALTH_DIR/child.$$\"\nwait")
            let flood = try script(s, "flood.sh", "#!/bin/sh\nexec /usr/bin/yes flooding-the-pipe")
            let hangConf = try s.write("hang.conf", Conf.python("hang", workers: 1, port: try Ports.free(), env: ["HEALTH_DIR": s.dir], extra: """
                [health]
                exec = ["\(hang)"]
                interval = "300ms"
                timeout = "200ms"
                failures = 100
                """))
            let floodConf = try s.write("flood.conf", Conf.python("flood", workers: 2, port: try Ports.free(), extra: """
                [health]
                exec = ["\(flood)"]
                interval = "300ms"
                timeout = "300ms"
                failures = 100
                """))
            let daemon = try await s.startDaemon([hangConf, floodConf])
            _ = try await s.waitReady("hang", workers: 1)
            _ = try await s.waitReady("flood", workers: 2)
            let cpuBefore = cpuSeconds(daemon.pid)
            let t0 = Date()
            var slowest = 0.0
            while elapsed(since: t0) < 4 {
                let p = Date()
                let r = try s.request(.ping)
                #expect(r.ok == true, "ping: \(r)")
                slowest = max(slowest, elapsed(since: p))
                usleep(100_000)
            }
            let cpu = cpuSeconds(daemon.pid) - cpuBefore
            let wall = elapsed(since: t0)
            #expect(slowest < 0.5, "a ping took \(slowest) s while probes hang and flood")
            // Each flood probe is cut off after 64 KiB: about 7 per second here, a few ms of reading each.
            #expect(cpu < 0.25 * wall, "swarmd used \(cpu) s of CPU in \(wall) s")
            let hangLine = try #require(try reloadApp(try s.quickStatus(), "hang").workers.first)
            #expect(hangLine.lastProbe == "exec timeout (killed after 200ms)", "\(String(describing: hangLine.lastProbe))")
            let floodLine = try #require(try reloadApp(try s.quickStatus(), "flood").workers.first)
            #expect(floodLine.lastProbe?.hasPrefix("exec killed by SIGPIPE") == true || floodLine.lastProbe?.hasPrefix("exec timeout") == true,
                    "\(String(describing: floodLine.lastProbe))")
            // Every hanging probe's background child died with its group.
            let children = try FileManager.default.contentsOfDirectory(atPath: s.dir).filter { $0.hasPrefix("child.") }
            #expect(children.count >= 5, "\(children.count) hanging probes ran")
            try await waitUntil(timeout: 5, "every hanging probe's sleep killed") {
                children.allSatisfy { name in
                    guard let text = try? String(contentsOfFile: "\(s.dir)/\(name)", encoding: .utf8),
                          let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return true }
                    // The newest one may still be within its 200 ms.
                    return ProcessIdentity(pid: pid)?.isAlive != true || name == children.max()
                }
            }
            print("hang+flood probes for \(String(format: "%.1f", wall)) s: slowest ping \(String(format: "%.0f", slowest * 1000)) ms, swarmd CPU \(String(format: "%.2f", cpu)) s")
        }
    }

    @Test("[ready] mode = \"http\": a worker is ready when its probe first passes, also when restarted beside a ready sibling")
    func readyByHttpProbe() async throws {
        guard getuid() == 0 else {
            print("skipped: needs root (eBPF steering aims each probe at one worker)")
            return
        }
        try await withSwarm { s in
            let port = try Ports.free()
            let server = try s.write("late.py", lateHealthServer)
            FileManager.default.createFile(atPath: "\(s.dir)/notyet", contents: nil)
            let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, server], workers: 2, port: port,
                                                         env: ["HEALTH_DIR": s.dir], extra: """
                [ready]
                mode = "http"
                timeout = "20s"
                [health]
                http = "/healthz"
                interval = "1s"
                timeout = "1s"
                failures = 100
                """))
            try await s.startDaemon([conf])
            try await Task.sleep(nanoseconds: 1_500_000_000)
            let starting = try reloadApp(try s.quickStatus(), "web")
            #expect(starting.workersReady == 0, "ready before /healthz passed: \(starting.workers.map(\.state))")
            let opened = Date()
            try FileManager.default.removeItem(atPath: "\(s.dir)/notyet")
            _ = try await s.waitReady("web", workers: 2)
            let took = elapsed(since: opened)
            let pids = [try #require(try readyPid(s, "web", slot: 0)), try #require(try readyPid(s, "web", slot: 1))]
            // Probed every 250 ms; a loaded machine may take a probe or two more.
            #expect(took < 5, "ready \(took) s after /healthz passed")
            // Slot 0 restarts while slot 1 is ready (slot 0 is out of the steering set while it starts).
            FileManager.default.createFile(atPath: "\(s.dir)/notyet", contents: nil)
            kill(pids[0], SIGKILL)
            try await Task.sleep(nanoseconds: 1_500_000_000)
            #expect(try readyPid(s, "web", slot: 0) == nil, "slot 0 ready before its probe passed")
            try FileManager.default.removeItem(atPath: "\(s.dir)/notyet")
            let again = try await waitUntil(timeout: 10, "slot 0 ready again") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 0), p != pids[0] else { return nil }
                return p
            }
            #expect(try readyPid(s, "web", slot: 1) == pids[1])
            // The new worker serves: its slot is steered again.
            let answered = try answeringPids(port, connections: 8)
            #expect(answered.keys.contains(again), "answers from \(answered)")
            print("ready by http probe \(String(format: "%.2f", took)) s after /healthz turned 200")
        }
    }

    @Test("[recycle] max_age recycles every worker under load, one at a time, with 0 failed requests")
    func maxAgeUnderLoad() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, extra: """
                [recycle]
                max_age = "3s"
                jitter = "1s"
                """))
            try await s.startDaemon([conf])
            let first = try await s.waitReady("web", workers: 2)
            let load = Traffic(port: port)
            let (_, report) = try await withTraffic(load) {
                try await waitUntil(timeout: 30, "both slots recycled") {
                    let now = try s.quickStatus()
                    let app = try reloadApp(now, "web")
                    return app.workers.filter { $0.state == "ready" && !first.contains($0.pid ?? 0) }.count == 2
                }
                // One more round with the load still on.
                try await Task.sleep(nanoseconds: 3_000_000_000)
            }
            print("max_age 3s under load: \(report)")
            #expect(report.failed == 0, "\(report)")
            #expect(report.ok > 100, "\(report)")
            let w = try #require(try workerLine(s, "web", slot: 0))
            #expect(w.lastExit?.hasPrefix("replaced: recycled (age ") == true, "\(String(describing: w.lastExit))")
        }
    }

    @Test("a ready worker over [limits] memory is replaced start-first under load with 0 failed requests")
    func memoryCeilingUnderLoad() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let server = try s.write("grow.py", growingServer)
            let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, server], workers: 2, port: port,
                                                         env: ["HEALTH_DIR": s.dir, "PYTHON_APPS": Paths.pythonApps], extra: """
                [limits]
                memory = "100MiB"
                """))
            try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            let pids = [try #require(try readyPid(s, "web", slot: 0)), try #require(try readyPid(s, "web", slot: 1))]
            let load = Traffic(port: port)
            var replacement: Int32 = 0
            let (_, report) = try await withTraffic(load) {
                try await load.waitForProgress()
                FileManager.default.createFile(atPath: "\(s.dir)/grow.\(pids[0])", contents: nil)
                replacement = try await waitUntil(timeout: 30, "slot 0 replaced") { () -> Int32? in
                    guard let p = try? readyPid(s, "web", slot: 0), p != pids[0] else { return nil }
                    return p
                }
                try await load.waitForProgress()
            }
            print("memory ceiling recycle under load: \(report)")
            #expect(report.failed == 0, "\(report)")
            #expect(report.pids[replacement] ?? 0 > 0, "the replacement served: \(report.pids)")
            let w = try #require(try workerLine(s, "web", slot: 0))
            let exit = w.lastExit ?? ""
            #expect(exit.hasPrefix("replaced: recycled (memory ") && exit.hasSuffix(" MiB > 100 MiB)"), "last_exit: \(exit)")
            #expect(try readyPid(s, "web", slot: 1) == pids[1], "the sibling was not touched")
        }
    }

    @Test("[recycle] max_connections counts per slot in the steering program and recycles under load with 0 failed requests")
    func maxConnectionsUnderLoad() async throws {
        guard getuid() == 0 else {
            print("skipped: needs root (the eBPF steering program counts connections)")
            return
        }
        try await withSwarm { s in
            let port = try Ports.free()
            let metricsPort = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, extra: """
                [recycle]
                max_connections = 60
                """))
            try await s.startDaemon([conf], args: ["--metrics", "127.0.0.1:\(metricsPort)"])
            let first = try await s.waitReady("web", workers: 2)
            // Below the limit nothing happens, and the counts show.
            _ = try answeringPids(port, connections: 20)
            try await Task.sleep(nanoseconds: 1_300_000_000)
            let counted = try reloadApp(try s.quickStatus(), "web").workers.map { $0.connections ?? 0 }
            #expect(counted.reduce(0, +) >= 20 && counted.allSatisfy { $0 >= 5 }, "counted \(counted)")
            #expect(Set(try s.quickStatus().apps.first { $0.name == "web" }!.workers.compactMap(\.pid)) == Set(first))
            let load = Traffic(port: port, keepAlive: 0, fresh: 3, pause: 0.01)
            let (_, report) = try await withTraffic(load) {
                try await waitUntil(timeout: 40, "both slots recycled") {
                    try reloadApp(try s.quickStatus(), "web").workers.filter { $0.state == "ready" && !first.contains($0.pid ?? 0) }.count == 2
                }
            }
            print("max_connections 60 under load: \(report)")
            #expect(report.failed == 0, "\(report)")
            let w = try #require(try workerLine(s, "web", slot: 0))
            #expect(w.lastExit?.hasPrefix("replaced: recycled (connections ") == true, "\(String(describing: w.lastExit))")
            let text = try Metrics.scrape(metricsPort)
            let total = metricSum(text, "swarm_slot_connections_total", where: [("app", "web")])
            #expect(total >= Double(report.ok), "swarm_slot_connections_total \(total) < \(report.ok) requests")
            #expect(metricValue(text, "swarm_slot_connections_total", [("app", "web"), ("slot", "1")]) ?? 0 > 0)
        }
    }

    @Test("failure counts and the last probe survive daemon-reexec")
    func healthStateAcrossReexec() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let check = try script(s, "check.sh", checkScript)
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port, env: ["HEALTH_DIR": s.dir], extra: """
                [health]
                exec = ["\(check)"]
                interval = "1s"
                timeout = "800ms"
                failures = 4
                """))
            let daemon = try await s.startDaemon([conf])
            _ = try await s.waitReady("web", workers: 2)
            let pids = [try #require(try readyPid(s, "web", slot: 0)), try #require(try readyPid(s, "web", slot: 1))]
            FileManager.default.createFile(atPath: "\(s.dir)/sick.\(pids[0])", contents: nil)
            try await waitUntil(timeout: 30, "slot 0 failing") { (try? workerLine(s, "web", slot: 0))?.health == "failing" }
            try await s.ctlOK("daemon-reexec")
            #expect(daemon.running, "the same swarmd process")
            let after = try #require(try workerLine(s, "web", slot: 0))
            #expect(after.pid == pids[0])
            #expect(after.health == "failing", "after re-exec: \(String(describing: after.health))")
            #expect(after.lastProbe?.hasPrefix("exec exit 1: sick web/0") == true, "\(String(describing: after.lastProbe))")
            let healthy = try #require(try workerLine(s, "web", slot: 1))
            #expect(healthy.health == "healthy" && healthy.lastProbe?.hasPrefix("exec exit 0") == true, "\(healthy)")
            _ = try await waitUntil(timeout: 20, "slot 0 replaced") { () -> Int32? in
                guard let p = try? readyPid(s, "web", slot: 0), p != pids[0] else { return nil }
                return p
            }
            let w = try #require(try workerLine(s, "web", slot: 0))
            #expect(w.lastExit?.hasSuffix("×4)") == true, "\(String(describing: w.lastExit))")
        }
    }
}
