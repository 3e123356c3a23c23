import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Issue 13, item 10: correctness bugs users found. One test per sub-bullet.

/// The environment of a live process, as KEY=VALUE strings.
func environmentOf(_ pid: Int32) -> [String] {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return [] }
    return [UInt8](data).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
}

/// Fresh connections one after another; the pid that answered each, in order.
func answerOrder(_ port: UInt16, connections: Int) throws -> [Int32] {
    try (0..<connections).map { i in
        let r = try httpGet(port)
        guard r.status == 200, let pid = r.pid else { throw HarnessError("connection \(i): \(r.status) \(r.body)") }
        return pid
    }
}

/// Every window of `n` consecutive answers hits `n` different workers: round-robin.
func isRoundRobin(_ order: [Int32], over n: Int) -> Bool {
    guard order.count >= n else { return false }
    return (0...(order.count - n)).allSatisfy { Set(order[$0..<$0 + n]).count == n }
}

let quickReady = "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n"

@Suite("Attack 10: correctness bugs found by users", attackTestsSwitch)
struct AttackCorrectnessTests {
    @Test("10: a second app with a running app's listen address is refused, naming the app that owns it")
    func sameListenAddressRefusedInOneDaemon() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let a = try s.write("a.conf", Conf.python("a", port: port))
            let b = try s.write("b.conf", Conf.python("b", port: port))
            try await s.startDaemon([a])
            let pids = try await s.waitReady("a", workers: 1)
            let r = try await s.ctl("start", b)
            #expect(r.code != 0, "a second app on 127.0.0.1:\(port) was accepted: \(r)")
            #expect(r.err.contains("127.0.0.1:\(port)") && r.err.contains("'a'"), "the refusal should name the address and the app 'a': \(r.err)")
            #expect(try s.quickStatus().apps.map(\.name) == ["a"])
            #expect(Set(try answeringPids(port, connections: 8).keys) == Set(pids), "traffic to \(port) should all reach app a")
        }
    }

    @Test("10: a second swarmd of the same user with the same listen address refuses to start, naming who holds the port")
    func sameListenAddressRefusedAcrossDaemons() async throws {
        try await withSwarm { s in
            let owned = OwnedProcesses()
            defer { owned.killAll() }
            let port = try Ports.free()
            let a = try s.write("a.conf", Conf.python("a", port: port))
            let b = try s.write("b.conf", Conf.python("b", port: port))
            let d = try await s.startDaemon([a])
            let pids = try await s.waitReady("a", workers: 1)
            let second = try Child.spawn(Paths.swarmd, ["--socket", s.dir + "/second.sock", "--state-dir", s.dir + "/second-state", b],
                                         dir: s.dir, label: s.label("second-swarmd"))
            owned.add(second)
            let code = try await second.wait(timeout: 10, "the second swarmd to refuse 127.0.0.1:\(port), which the first (pid \(d.pid)) serves")
            #expect(code != 0)
            let holders = [d.pid] + pids
            #expect(second.stderr.contains("127.0.0.1:\(port)") && holders.contains { second.stderr.contains("pid \($0)") },
                    "the refusal should name the address and a pid holding it (\(holders)): \(second.stderr.suffix(1000))")
        }
    }

    @Test("10: start --replace keeps round-robin steering (each run of 4 fresh connections reaches all 4 workers)",
          .enabled(if: getuid() == 0, "needs root: round-robin steering is an eBPF program"))
    func replaceKeepsRoundRobin() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 4, port: port))
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            let first = try await s.waitReady("web", workers: 4)
            let before = try answerOrder(port, connections: 12)
            #expect(isRoundRobin(before, over: 4), "round-robin before --replace: \(before.map { first.firstIndex(of: $0) ?? -1 })")
            try await s.ctlOK("start", "--replace", conf)
            let second = try await s.waitReady("web", workers: 4)
            let after = try answerOrder(port, connections: 12)
            #expect(isRoundRobin(after, over: 4), "slots answering after --replace: \(after.map { second.firstIndex(of: $0) ?? -1 })")
        }
    }

    @Test("10: after a background_start reload the children of a pre-fork server get normal priority back, not only its master",
          .enabled(if: getuid() == 0, "needs root: background_start is root only"))
    func preforkChildrenGetPriorityBack() async throws {
        let marker = uniqueMarker("nice")
        defer { killMarked(marker) }
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", escapeApp("web", mode: "prefork", marker: marker, port: port))
            try await s.startDaemon([conf])
            let old = Set(try await s.waitReady("web", workers: 1))
            let oldProcs = Set(try await waitUntil(timeout: 10, "the first master and its 2 workers") { () -> [ProcessIdentity]? in
                let m = processesMarked(marker)
                return m.count >= 3 ? m : nil
            })
            try await s.ctlOK("reload", "web")
            let master = try #require(try await s.waitReady("web", workers: 1).first)
            #expect(!old.contains(master))
            let own = try #require(niceOf(getpid()), "the test's own nice: swarmd's workers get the priority swarmd was started with")
            try await waitUntil(timeout: 5, "the new master \(master) and its workers to run at the workers' nice \(own): \(processesMarked(marker).filter { !oldProcs.contains($0) }.map { "\($0.pid): nice \(niceOf($0.pid) ?? 99)" })") {
                let fresh = processesMarked(marker).filter { !oldProcs.contains($0) }
                return fresh.count >= 3 && fresh.allSatisfy { niceOf($0.pid) == own }
            }
        }
    }

    @Test("10: reload progress reaches swarmctl in order: each slot's new worker is ready before its old one is retiring")
    func reloadProgressInOrder() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            try await s.waitReady("web", workers: 2)
            for round in 1...3 {
                let r = try await s.ctlOK("reload", "web", "--json")
                let events = r.out.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    .filter { $0["kind"] != nil }
                let kinds = events.map { "\($0["slot"] as? Int ?? -1):\($0["kind"] as? String ?? "?")" }
                for slot in 0..<2 {
                    let ready = events.firstIndex { $0["slot"] as? Int == slot && $0["kind"] as? String == "ready" }
                    let retiring = events.firstIndex { $0["slot"] as? Int == slot && $0["kind"] as? String == "retiring" }
                    #expect(ready != nil && retiring != nil && ready! < retiring!, "reload \(round), slot \(slot): events in the order \(kinds)")
                }
                try await s.waitReady("web", workers: 2)
            }
        }
    }

    @Test("10: a remembered app whose config became invalid or missing is kept, in an error state status shows with the reason",
          arguments: ["invalid", "missing"])
    func rememberedBrokenAppIsKept(_ how: String) async throws {
        try await withSwarm { s in
            let conf = try s.write("web.conf", Conf.app("web", command: ["/bin/sleep", "600"], extra: quickReady))
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            try await s.waitReady("web", workers: 1)
            #expect(try await s.stopDaemon() == 0)
            if how == "invalid" {
                try "name = \"web\"\ncommand = [\"/bin/sleep\", \"600\"]\nworkers = \"lots\"\n".write(toFile: conf, atomically: true, encoding: .utf8)
            } else {
                unlink(conf)
            }
            try await s.startDaemon()
            let st = try rawStatus(s.socket)
            let app = rawApp(st, "web")
            #expect(app != nil, "the remembered app with a\(how == "invalid" ? "n invalid" : " missing") config was dropped: \(rawApps(st).map { $0["name"] ?? "?" })")
            if let app {
                #expect(app["state"] as? String == "error", "state \(app["state"] ?? "nil")")
                let why = app["error"] as? String ?? ""
                #expect(why.contains(conf), "the app's error should name \(conf): '\(why)'")
            }
            let text = try await s.ctl("status")
            #expect(text.out.contains("web") && text.out.contains("error"), "the status table should show web in error: \(text.out)")
            #expect(readText(s.stateDir + "/apps.json").contains(conf), "apps.json forgot the app: \(readText(s.stateDir + "/apps.json"))")
            try await s.ctlOK("delete", "web")
            #expect(!readText(s.stateDir + "/apps.json").contains(conf), "delete should forget it")
        }
    }

    @Test("10: SIGHUP reload where a second file now names the same app: refused for that file, the first app keeps its own config")
    func sighupTwoFilesSameApp() async throws {
        try await withSwarm { s in
            let a = try s.write("a.conf", Conf.app("a", command: ["/bin/sleep", "600"], env: ["APPFILE": "a"], extra: quickReady))
            let b = try s.write("b.conf", Conf.app("b", command: ["/bin/sleep", "600"], env: ["APPFILE": "b"], extra: quickReady))
            let d = try await s.startDaemon([a, b])
            try await s.waitReady("a", workers: 1)
            let bPids = try await s.waitReady("b", workers: 1)
            try Conf.app("a", command: ["/bin/sleep", "600"], env: ["APPFILE": "b-renamed"], extra: quickReady).write(toFile: b, atomically: true, encoding: .utf8)
            d.signal(SIGHUP)
            let refused: Void? = try? await waitUntil(timeout: 10, "swarmd to refuse b.conf, which now names the app 'a'") {
                d.stderr.split(separator: "\n").contains { $0.contains(b) && $0.contains("'a'") }
            }
            #expect(refused != nil, "swarmd should log that \(b) now names the app 'a' and refuse it: \(d.stderr.suffix(1200))")
            try await waitUntil(timeout: 10, "a's reload to finish") {
                let app = try s.quickStatus().apps.first { $0.name == "a" }
                return app?.state == "running" && app?.workersReady == 1
            }
            let aPid = try #require(try s.quickStatus().apps.first { $0.name == "a" }?.workers.first?.pid)
            #expect(environmentOf(aPid).contains("APPFILE=a"), "app a runs with \(environmentOf(aPid).filter { $0.hasPrefix("APPFILE") }): another file's config replaced it")
            #expect(try await s.waitReady("b", workers: 1) == bPids, "app b should be untouched")
        }
    }

    @Test("10: under socket activation swarmd's start-up line names the control socket it really uses")
    func socketActivationLogNamesSocketInUse() async throws {
        try await withSwarm { s in
            let owned = OwnedProcesses()
            defer { owned.killAll() }
            let control = try Sockets.listenUnix(path: s.socket, backlog: 64, mode: 0o600)
            defer { Posix.close(control) }
            let unused = s.dir + "/not-bound.sock"
            let d = try await startSystemdStyleDaemon(s, owned, configs: [], socketPath: unused, fds: [control], fdNames: ["control"])
            let line = d.stderr.split(separator: "\n").first { $0.contains("control socket") }.map(String.init) ?? ""
            #expect(line.contains(s.socket) && !line.contains(unused), "start-up line: \(line)")
            let st = try rawStatus(s.socket)
            #expect((st["daemon"] as? [String: Any])?["socket"] as? String == s.socket, "status daemon.socket: \(st["daemon"] ?? "nil")")
            try await stopSystemdStyleDaemon(d)
        }
    }

    @Test("10: swarmctl start all starts every stopped app")
    func startAll() async throws {
        try await withSwarm { s in
            let a = try s.write("a.conf", Conf.app("a", command: ["/bin/sleep", "600"], extra: quickReady))
            let b = try s.write("b.conf", Conf.app("b", command: ["/bin/sleep", "600"], extra: quickReady))
            try await s.startDaemon([a, b])
            try await s.waitReady("a", workers: 1)
            try await s.waitReady("b", workers: 1)
            try await s.ctlOK("stop", "all")
            let r = try await s.ctl("start", "all")
            #expect(r.code == 0, "\(r)")
            try await s.waitReady("a", workers: 1, timeout: 10)
            try await s.waitReady("b", workers: 1, timeout: 10)
        }
    }

    @Test("10: swarmctl start NAME works when the current directory holds a directory called NAME")
    func startNameBesideDirectory() async throws {
        try await withSwarm { s in
            let conf = try s.write("web.conf", Conf.app("web", command: ["/bin/sleep", "600"], extra: quickReady))
            try await s.startDaemon([conf])
            try await s.waitReady("web", workers: 1)
            try await s.ctlOK("stop", "web")
            try makeDir(s.dir + "/web", mode: 0o755)
            let r = try await s.ctl("start", "web")
            #expect(r.code == 0, "start web with a directory 'web' in the cwd: \(r)")
            try await s.waitReady("web", workers: 1, timeout: 10)
        }
    }

    @Test("10: workers = 0 in a config and scale NAME 0 agree: both are accepted")
    func zeroWorkersAgree() async throws {
        try await withSwarm { s in
            let conf = try s.write("web.conf", Conf.app("web", command: ["/bin/sleep", "600"], workers: 0, extra: quickReady))
            try await s.startDaemon()
            let r = try await s.ctl("start", conf)
            #expect(r.code == 0, "workers = 0 should be accepted like scale 0: \(r)")
            if r.code == 0 {
                let app = try #require(try s.quickStatus().apps.first { $0.name == "web" })
                #expect(app.workersWanted == 0 && app.workers.allSatisfy { $0.pid == nil }, "web with workers = 0: \(app)")
                try await s.ctlOK("scale", "web", "2")
                try await s.waitReady("web", workers: 2)
                try await s.ctlOK("scale", "web", "0")
                try await waitUntil(timeout: 10, "web to have no worker") {
                    try s.quickStatus().apps.first { $0.name == "web" }?.workers.allSatisfy { $0.pid == nil } == true
                }
            }
        }
    }

    @Test("10: status of 32 apps × 4,096 slots (an answer over 8 MiB) is answered whole")
    func largeStatusAnswer() async throws {
        try await withSwarm { s in
            var entries: [String] = []
            for i in 0..<32 {
                let conf = try s.write("big\(i).conf", Conf.app("big\(i)", command: ["/bin/sleep", "600"], workers: 4096, extra: quickReady))
                entries.append(#"{"name":"big\#(i)","config":"\#(conf)","stopped":true}"#)
            }
            try makeDir(s.stateDir, mode: 0o700)
            // Remembered as stopped: 131,072 slots in status and not one process.
            try writeOwned(s.stateDir + "/apps.json", #"{"version":1,"apps":["# + entries.joined(separator: ",") + "]}\n", mode: 0o600)
            let d = try await s.startDaemon()
            // One app's status is small (~300 KiB): it says when the last remembered app is loaded.
            try await waitUntil(timeout: 20, "the 32 remembered apps to be loaded") { rawApp(try rawStatus(s.socket, name: "big31"), "big31") != nil }
            let c = try ControlConnection(path: s.socket, timeout: 30)
            let t0 = Date()
            let r = try c.call(Request(id: 1, verb: .status))
            let slots = r.status?.apps.reduce(0) { $0 + $1.workers.count } ?? 0
            reportFigure("status of 32 × 4096 stopped slots: \(slots) slots in \(String(format: "%.2f", elapsed(since: t0)))s")
            #expect(r.ok == true && slots == 32 * 4096, "status answered \(r.ok.map(String.init) ?? "nil") with \(slots) slots: \(r.error ?? "")")
            let ctl = try await s.ctl("status", "--json")
            #expect(ctl.code == 0 && ctl.out.count > 8 << 20, "swarmctl status --json: exit \(ctl.code), \(ctl.out.count) bytes, \(ctl.err)")
            #expect(!d.stderr.contains("does not read its replies"), "swarmd cut off a client that was reading: \(d.stderr.suffix(800))")
        }
    }

    @Test("10: the in-memory log tail survives daemon-reexec")
    func logTailSurvivesReexec() async throws {
        try await withSwarm { s in
            let script = try s.write("lines.py", """
                import time
                for i in range(200):
                    print(f"tail line {i:03d}", flush=True)
                time.sleep(600)

                """)
            let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, "-S", script], extra: quickReady))
            let d = try await s.startDaemon([conf])
            try await s.waitReady("web", workers: 1)
            try await waitUntil(timeout: 10, "the 200 lines to reach the log tail") {
                occurrences(of: "tail line", in: try await s.ctl("logs", "web", "-n", "1000").out) == 200
            }
            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 15, "swarmd to re-execute") { d.stderr.contains("re-executed as pid") }
            let after = try await s.ctlOK("logs", "web", "-n", "1000")
            let n = occurrences(of: "tail line", in: after.out)
            #expect(n == 200, "the log tail holds \(n) of 200 lines after daemon-reexec")
        }
    }

    @Test("10: a 100 MB config is refused from its size, without being read (swarmd's peak memory stays put)")
    func hugeConfigRefusedWithoutReading() async throws {
        try await withSwarm { s in
            let d = try await s.startDaemon()
            let big = s.dir + "/big.conf"
            let fd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0, ftruncate(fd, 100 << 20) == 0 else { throw HarnessError("ftruncate \(big): \(errnoText())") }
            close(fd)
            defer { unlink(big) }
            let hwm0 = try #require(procStatusKiB(d.pid, "VmHWM"))
            let t0 = Date()
            let r = try await s.ctl("start", big)
            let took = elapsed(since: t0)
            let hwm1 = try #require(procStatusKiB(d.pid, "VmHWM"))
            #expect(r.code != 0 && r.err.contains(big) && r.err.contains("larger than"), "\(r)")
            #expect(hwm1 - hwm0 < 16 << 10, "swarmd's peak RSS grew \(hwm1 - hwm0) KiB: it read the 100 MB file")
            #expect(took < 2, "refusing the file took \(took)s")
        }
    }

    @Test("10: a lone surrogate in an app name gets an error about the name, not about a number")
    func loneSurrogateName() async throws {
        try await withSwarm { s in
            try await s.startDaemon()
            let c = try ControlConnection(path: s.socket)
            try c.send(Array(#"{"v":1,"id":5,"verb":"stop","name":"\ud800"}"#.utf8) + [10])
            let r = try #require(try c.receive())
            let why = r.error ?? ""
            #expect(r.ok == false && why.contains("name") && !why.contains("number"), "error for name \"\\ud800\": \(why)")
            #expect(try c.call(Request(id: 6, verb: .ping)).ok == true)
        }
    }
}
