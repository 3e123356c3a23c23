import Foundation
import Glibc
import SwarmProtocol
import Testing

/// A worker that writes its pid, argv and environment to $DUMP_DIR, then serves fd 3 like server.py.
let envDumpWorker = """
import json, os, signal, sys
sys.path.insert(0, os.environ["SWARM_PY_APPS"])
out = os.environ.get("DUMP_DIR")
if out:
    path = os.path.join(out, "worker-%d.json" % os.getpid())
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "argv": sys.argv, "env": dict(os.environ)}, f)
    os.rename(path + ".tmp", path)
import server
if os.environ.get("LISTEN_FDS"):
    server.main()
while True:
    signal.pause()

"""

/// "250ms", "1.6s", "2m" → seconds.
func parseDuration(_ s: String) -> Double? {
    let t = s.trimmingCharacters(in: .whitespaces)
    if t.hasSuffix("ms") { return Double(t.dropLast(2)).map { $0 / 1000 } }
    if t.hasSuffix("s") { return Double(t.dropLast()) }
    if t.hasSuffix("m") { return Double(t.dropLast()).map { $0 * 60 } }
    return nil
}

/// "2025-01-02T03:04:05.123456Z" → seconds since the epoch.
func parseLogTime(_ s: String) -> Double? {
    let parts = s.split(separator: "T")
    guard parts.count == 2 else { return nil }
    let d = parts[0].split(separator: "-").compactMap { Int32($0) }
    let t = parts[1].dropLast().split(separator: ":")
    guard d.count == 3, t.count == 3, let h = Int32(t[0]), let m = Int32(t[1]), let sec = Double(t[2]) else { return nil }
    var tmv = tm()
    tmv.tm_year = d[0] - 1900
    tmv.tm_mon = d[1] - 1
    tmv.tm_mday = d[2]
    tmv.tm_hour = h
    tmv.tm_min = m
    return Double(timegm(&tmv)) + sec
}

@Suite("Core: workers, restarts and stops")
struct CoreTests {
    @Test("4 workers share one port and 4 distinct pids answer", arguments: ["python", "node"])
    func workersShareOnePort(runtime: String) async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let command = runtime == "python" ? [Paths.python, Paths.pythonApps + "/server.py"] : [Paths.node, Paths.nodeApps + "/server.js"]
            let conf = try s.write("web.conf", Conf.app("web", command: command, workers: 4, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 4)
            #expect(Set(pids).count == 4)

            var answered: [Int32: Int] = [:]
            var slots = Set<String>()
            for _ in 0..<48 {
                let r = try httpGet(port)
                #expect(r.status == 200)
                if let pid = r.pid { answered[pid, default: 0] += 1 }
                if let w = r.headers["x-worker"] { slots.insert(w) }
            }
            #expect(Set(answered.keys) == Set(pids), "48 fresh connections should reach all 4 workers; got \(answered)")
            #expect(slots == ["0", "1", "2", "3"], "X-Worker headers: \(slots)")

            // Keep-alive: one connection, many requests, one worker.
            let c = try HTTPConnection(port: port)
            let first = try c.get("/")
            for _ in 0..<10 { #expect(try c.get("/").pid == first.pid) }
        }
    }

    @Test("kill -9 of a worker: a replacement answers within the restart delay plus start time")
    func killedWorkerIsReplaced() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 2)

            let killedAt = Date()
            kill(pids[0], SIGKILL)
            let newPid = try await waitUntil(timeout: 10, "slot 0 to have a ready replacement for pid \(pids[0])") { () -> Int32? in
                let w = try s.quickStatus().apps.first?.workers.first { $0.slot == 0 }
                guard let w, let pid = w.pid, pid != pids[0], w.state == "ready" else { return nil }
                return pid
            }
            let took = elapsed(since: killedAt)
            // 100ms default restart delay + a python start (generous: the machine is shared with other tests).
            #expect(took < 0.1 + 4.0, "replacement ready after \(took)s")

            try await waitUntil(timeout: 5, "the replacement pid \(newPid) to answer HTTP") {
                try answeringPids(port, connections: 8).keys.contains(newPid)
            }
            let st = try await s.status("web")
            let w = st.apps[0].workers.sorted { $0.slot < $1.slot }
            #expect(w[0].pid == newPid)
            #expect(w[0].restarts == 1)
            #expect(w[0].lastExit?.contains("SIGKILL") == true, "last_exit: \(w[0].lastExit ?? "nil")")
            #expect(w[1].pid == pids[1], "the other worker is untouched")
        }
    }

    @Test("a worker that exits at once restarts at growing intervals, then shows crash-loop")
    func crashLoop() async throws {
        try await withSwarm { s in
            let conf = try s.write("crashy.conf", Conf.python("crashy", script: "crash.py", workers: 1, extra: """
                [restart]
                initial_delay = "200ms"
                max_delay = "5s"
                crash_loop_restarts = 5
                crash_loop_window = "60s"
                """))
            try await s.startDaemon([conf])
            try await waitUntil(timeout: 25, "crashy to be in crash-loop") {
                try s.quickStatus().apps.first?.state == "crash-loop"
            }
            let table = try await s.ctlOK("status")
            #expect(table.out.contains("crash-loop"), "status table:\n\(table.out)")
            let st = try await s.status()
            let w = try #require(st.apps.first?.workers.first)
            #expect(w.state == "crash-loop")
            #expect(w.restarts >= 4)
            #expect(w.lastExit == "exited with status 1")

            let logs = try await s.ctlOK("logs", "-n", "100", "--json", "crashy")
            let times: [Double] = logs.out.split(separator: "\n").compactMap { line in
                guard let l = try? JSONDecoder().decode(LogLine.self, from: Data(line.utf8)),
                      l.text.contains("crashing on purpose") else { return nil }
                return parseLogTime(l.time)
            }
            #expect(times.count >= 5, "crash lines in the log: \(logs.out)")
            let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
            // The delays swarmd chose, from its log: doubling from 200ms, then max_delay once in a crash loop.
            let delays: [Double] = s.daemonLog.split(separator: "\n").compactMap { line in
                guard line.contains("crashy[0]"), let r = line.range(of: "restarting in ") else { return nil }
                return parseDuration(String(line[r.upperBound...]))
            }
            #expect(Array(delays.prefix(5)) == [0.2, 0.4, 0.8, 1.6, 5], "restart delays in the log: \(delays)")
            // Each measured interval (exit to next exit) is at least the delay; python's start time comes on top.
            for (gap, delay) in zip(gaps, delays) { #expect(gap >= delay - 0.02, "intervals \(gaps) vs delays \(delays)") }
            if gaps.count >= 4 { #expect(gaps[3] > gaps[0], "intervals should grow: \(gaps)") }
        }
    }

    @Test("swarmd given a config naming a missing binary exits non-zero with file:line and starts nothing")
    func missingBinaryAbortsStartup() async throws {
        try await withSwarm { s in
            try s.write("envdump.py", envDumpWorker)
            let dump = s.dir + "/dump"
            try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
            let port = try Ports.free()
            let good = try s.write("good.conf", Conf.app("good", command: [Paths.python, s.dir + "/envdump.py"], port: port,
                                                         env: ["DUMP_DIR": dump, "SWARM_PY_APPS": Paths.pythonApps]))
            let bad = try s.write("bad.conf", "name = \"bad\"\ncommand = [\"./no-such-binary\", \"--serve\"]\nworkers = 2\n")
            let d = try Child.spawn(Paths.swarmd, ["--socket", s.socket, "--state-dir", s.stateDir, good, bad], dir: s.dir, label: "swarmd-bad")
            let code = try await d.wait(timeout: 15)
            #expect(code != 0)
            #expect(d.stderr.contains("\(bad):2"), "stderr should name bad.conf:2: \(d.stderr)")
            #expect(d.stderr.contains("no-such-binary"), "stderr: \(d.stderr)")
            #expect(!FileManager.default.fileExists(atPath: s.socket), "no control socket should be left")
            #expect(try FileManager.default.contentsOfDirectory(atPath: dump).isEmpty, "the good app must not have started")
            #expect(Ports.isBindable(port), "nothing should listen on the good app's port")
        }
    }

    @Test("SIGTERM to swarmd: every worker gone within the stop timeout, exit 0")
    func sigtermStopsEverything() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 4, port: port, extra: "[stop]\ntimeout = \"5s\""))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 4)
            let ids = pids.compactMap { ProcessIdentity(pid: $0) }
            #expect(ids.count == 4)
            let t0 = Date()
            let code = try await s.stopDaemon(timeout: 10)
            #expect(code == 0)
            #expect(elapsed(since: t0) < 5, "stop took \(elapsed(since: t0))s")
            #expect(ids.allSatisfy { !$0.isAlive }, "left: \(ids.filter(\.isAlive))")
            #expect(!FileManager.default.fileExists(atPath: s.socket), "swarmd should remove its socket")
            #expect(s.daemonLog.contains("every worker has stopped"), "log: \(s.daemonLog)")
        }
    }

    @Test("a worker ignoring SIGTERM is SIGKILLed after [stop] timeout")
    func ignoredSigtermGetsSigkill() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("stubborn.conf", Conf.python("stubborn", script: "ignore_term.py", workers: 1, port: port,
                                                                extra: "[stop]\ntimeout = \"1s\""))
            try await s.startDaemon([conf])
            let pid = try await s.waitReady("stubborn", workers: 1)[0]
            let id = try #require(ProcessIdentity(pid: pid))
            let t0 = Date()
            try await s.ctlOK("stop", "stubborn")
            let took = elapsed(since: t0)
            #expect(took >= 0.9, "stop returned after \(took)s: before the 1s timeout")
            #expect(took < 5, "stop took \(took)s")
            #expect(!id.isAlive)
            let w = try #require(try await s.status().apps.first?.workers.first)
            #expect(w.state == "stopped")
            #expect(s.daemonLog.contains("sending SIGKILL"))
        }
    }

    @Test("a double-forked grandchild is reaped by swarmd, not left a zombie")
    func doubleForkGrandchildIsReaped() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let pidfile = s.dir + "/grandchild.pid"
            let conf = try s.write("forker.conf", Conf.python("forker", script: "doublefork.py", workers: 1, port: port,
                                                              env: ["GRANDCHILD_PIDFILE": pidfile, "GRANDCHILD_SLEEP_S": "2"]))
            let d = try await s.startDaemon([conf])
            let worker = try await s.waitReady("forker", workers: 1)[0]
            let gc = try await waitUntil(timeout: 10, "the grandchild's pid in \(pidfile)") {
                Int32(readText(pidfile).trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if let st = ProcState.read(gc), st.state != "Z" {
                #expect(st.ppid == d.pid, "the orphaned grandchild should be reparented to swarmd (a subreaper), not \(st.ppid)")
            }
            try await waitUntil(timeout: 10, "grandchild \(gc) to be reaped (gone from /proc, not a zombie)") {
                !ProcState.exists(gc)
            }
            // The worker itself is unaffected.
            #expect(try await s.waitReady("forker", workers: 1) == [worker])
            #expect(try httpGet(port).pid == worker)
        }
    }

    @Test("every config error names file:line, and nothing starts")
    func configErrorsCarryFileAndLine() async throws {
        try await withSwarm { s in
            try await s.startDaemon()
            let py = Conf.q(Paths.python)
            let server = Conf.q(Paths.pythonApps + "/server.py")
            let cases: [(String, String, Int)] = [
                ("unknown-key", "name = \"a\"\ncommand = [\(py), \(server)]\nwrokers = 2\n", 3),
                ("missing-binary", "name = \"b\"\ncommand = [\"/nonexistent/bin/app\"]\n", 2),
                ("bad-duration", "name = \"c\"\ncommand = [\(py), \(server)]\n[stop]\ntimeout = \"soon\"\n", 4),
                ("bad-signal", "name = \"d\"\ncommand = [\(py), \(server)]\n\n[stop]\nsignal = \"SIGFOO\"\n", 5),
                ("bad-listen", "name = \"e\"\ncommand = [\(py), \(server)]\n[[socket]]\nname = \"http\"\nlisten = \"localhost\"\n", 5),
                ("workers-range", "name = \"f\"\ncommand = [\(py), \(server)]\nworkers = -1\n", 3),
                ("bad-name", "\nname = \"Not Valid\"\ncommand = [\(py), \(server)]\n", 2),
                ("syntax", "name = \"g\"\ncommand = [\(py), \(server)]\nworkers = = 2\n", 3),
            ]
            for (file, text, line) in cases {
                let path = try s.write("\(file).conf", text)
                let r = try await s.ctl("start", path)
                #expect(r.code != 0, "\(file): \(r)")
                #expect(r.err.contains("\(path):\(line)"), "\(file): the error should name \(path):\(line): \(r.err)")
            }
            // Several files where one is bad: none starts.
            let port = try Ports.free()
            let good = try s.write("good.conf", Conf.python("good", workers: 1, port: port))
            let bad = s.dir + "/unknown-key.conf"
            let r = try await s.ctl("start", good, bad)
            #expect(r.code != 0)
            #expect(r.err.contains("\(bad):3"), "\(r.err)")
            let st = try await s.status()
            #expect(st.apps.isEmpty, "nothing should have started: \(st.apps.map(\.name))")
            #expect(Ports.isBindable(port), "the good app's port should not be bound")
            // The daemon is fine: a good file still starts.
            try await s.ctlOK("start", good)
            try await s.waitReady("good", workers: 1)
        }
    }

    @Test("worker environment: LISTEN_PID/FDS/FDNAMES, SWARM_APP/WORKER, PORT, {port:}/{fd:} placeholders")
    func workerEnvironment() async throws {
        try await withSwarm { s in
            try s.write("envdump.py", envDumpWorker)
            let dump = s.dir + "/dump"
            try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
            let port = try Ports.free()
            let admin = try Ports.free()
            let conf = try s.write("envy.conf", """
                name = "envy"
                command = [\(Conf.q(Paths.python)), "envdump.py", "--port={port:http}", "--fd={fd:http}", "--admin={fd:admin}:{port:admin}"]
                workers = 2
                [env]
                DUMP_DIR = \(Conf.q(dump))
                SWARM_PY_APPS = \(Conf.q(Paths.pythonApps))
                GREETING = "hello"
                [[socket]]
                name = "http"
                listen = "127.0.0.1:\(port)"
                [[socket]]
                name = "admin"
                listen = "127.0.0.1:\(admin)"

                """)
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("envy", workers: 2)
            for (slot, pid) in pids.enumerated() {
                let path = "\(dump)/worker-\(pid).json"
                let data = try #require(FileManager.default.contents(atPath: path), "worker \(pid) wrote no \(path)")
                let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
                let env = try #require(obj["env"] as? [String: String])
                let argv = try #require(obj["argv"] as? [String])
                #expect(env["LISTEN_PID"] == String(pid))
                #expect(env["LISTEN_FDS"] == "2")
                #expect(env["LISTEN_FDNAMES"] == "http:admin")
                #expect(env["SWARM_APP"] == "envy")
                #expect(env["SWARM_WORKER"] == String(slot))
                #expect(env["PORT"] == String(port))
                #expect(env["GREETING"] == "hello")
                #expect(env["NOTIFY_SOCKET"] != nil)
                #expect(env["SWARM_SOCKET"] == nil)
                #expect(Array(argv.dropFirst()) == ["--port=\(port)", "--fd=3", "--admin=4:\(admin)"], "argv: \(argv)")
            }
            #expect(Set(try answeringPids(port, connections: 16).keys) == Set(pids))
        }
    }
}
