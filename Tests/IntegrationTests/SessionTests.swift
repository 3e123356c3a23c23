import Foundation
import Glibc
import SwarmProtocol
import Testing

/// Continuous HTTP load: threads making fresh connections, and threads reusing keep-alive ones.
final class LoadGenerator: @unchecked Sendable {
    struct Failure: CustomStringConvertible {
        var keepAlive: Bool
        /// The worker the keep-alive connection had been talking to.
        var pid: Int32?
        var error: String
        var description: String { "\(keepAlive ? "keep-alive to \(pid.map(String.init) ?? "?")" : "fresh connection"): \(error)" }
    }

    let port: UInt16
    private let lock = NSLock()
    private var stopped = false
    private var answers: [(at: Date, pid: Int32)] = []
    private var failures: [Failure] = []
    private let group = DispatchGroup()

    init(port: UInt16) { self.port = port }

    func start(freshThreads: Int = 2, keepAliveThreads: Int = 2) {
        for _ in 0..<freshThreads { spawn { self.freshLoop() } }
        for _ in 0..<keepAliveThreads { spawn { self.keepAliveLoop() } }
    }

    private func spawn(_ body: @escaping () -> Void) {
        group.enter()
        let t = Thread { body(); self.group.leave() }
        t.stackSize = 1 << 18
        t.start()
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func record(_ pid: Int32) { lock.withLock { answers.append((Date(), pid)) } }
    private func record(_ f: Failure) { lock.withLock { failures.append(f) } }

    private func freshLoop() {
        while !isStopped {
            do {
                let r = try httpGet(port)
                if r.status == 200, let pid = r.pid { record(pid) } else { record(Failure(keepAlive: false, error: "HTTP \(r.status) \(r.body)")) }
            } catch {
                record(Failure(keepAlive: false, error: "\(error)"))
            }
            usleep(3000)
        }
    }

    private func keepAliveLoop() {
        var conn: HTTPConnection?
        var pid: Int32?
        while !isStopped {
            do {
                if conn == nil { conn = try HTTPConnection(port: port); pid = nil }
                let r = try conn!.get("/")
                if r.status == 200, let p = r.pid {
                    record(p)
                    pid = p
                } else {
                    record(Failure(keepAlive: true, pid: pid, error: "HTTP \(r.status) \(r.body)"))
                }
                if r.headers["connection"]?.lowercased() == "close" { conn = nil }
            } catch {
                record(Failure(keepAlive: true, pid: pid, error: "\(error)"))
                conn = nil
            }
            usleep(3000)
        }
    }

    func stop() async throws {
        lock.withLock { stopped = true }
        try await waitUntil(timeout: 30, "the load threads to finish") { group.wait(timeout: .now()) == .success }
    }

    var snapshot: (answers: [(at: Date, pid: Int32)], failures: [Failure]) { lock.withLock { (answers, failures) } }

    func pids(since: Date) -> Set<Int32> { Set(snapshot.answers.filter { $0.at >= since }.map(\.pid)) }
}

@Suite("Sessions: scaling under load, logs, status schema, remembered apps")
struct SessionTests {
    @Test("scale up and down under continuous HTTP load: no failed request on the remaining workers")
    func scaleUnderLoad() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            let first = try await s.waitReady("web", workers: 2)

            let load = LoadGenerator(port: port)
            load.start()
            do {
                try await waitUntil(timeout: 10, "the load to reach both workers") { load.pids(since: .distantPast) == Set(first) }
                try await s.ctlOK("scale", "web", "4")
                let four = try await s.waitReady("web", workers: 4)
                #expect(Array(four.prefix(2)) == first, "scaling up keeps the running workers")
                let upAt = Date()
                try await waitUntil(timeout: 10, "the load to reach all 4 workers") { load.pids(since: upAt) == Set(four) }
                try await waitUntil(timeout: 10, "more answers at 4 workers") { load.snapshot.answers.filter { $0.at > upAt }.count >= 50 }

                try await s.ctlOK("scale", "web", "2")
                let two = try await s.waitReady("web", workers: 2)
                #expect(two == first, "scaling down removes the highest slots")
                let downAt = Date()
                try await waitUntil(timeout: 10, "more answers after scaling down") { load.snapshot.answers.filter { $0.at > downAt }.count >= 50 }
                #expect(load.pids(since: downAt).isSubset(of: Set(two)), "after scale down only the remaining workers answer")
            } catch {
                try? await load.stop()
                throw error
            }
            try await load.stop()
            let snap = load.snapshot
            let removed = Set(snap.answers.map(\.pid)).subtracting(first)
            // A keep-alive connection to a removed worker may be closed by it; nothing else may fail.
            let bad = snap.failures.filter { !($0.keepAlive && $0.pid.map(removed.contains) == true) }
            #expect(bad.isEmpty, "\(bad.count) failed requests (of \(snap.answers.count)): \(bad.prefix(10))")
            #expect(snap.answers.count >= 100, "only \(snap.answers.count) requests were answered")
        }
    }

    @Test("logs -n and logs -f follow a worker's output across log rotations")
    func logsFollowRotation() async throws {
        try await withSwarm { s in
            let conf = try s.write("flood.conf", Conf.python("flood", script: "flood.py", workers: 1, env: ["FLOOD_LINES": "300"], extra: """
                [ready]
                mode = "delay"
                delay = "200ms"
                [logs]
                max_size = "4KiB"
                keep = 2
                target = "file"
                """))
            try await s.startDaemon([conf])
            let pid1 = try await s.waitReady("flood", workers: 1)[0]
            let tail = try await waitUntil(timeout: 10, "logs -n 5 to show the last of 300 lines") { () -> [String]? in
                let r = try await s.ctlOK("logs", "-n", "5", "flood")
                let lines = r.out.split(separator: "\n").map(String.init)
                return lines.last?.contains("flood \(pid1) line 299 ") == true ? lines : nil
            }
            #expect(tail.count == 5)
            for (i, line) in tail.enumerated() {
                #expect(line.contains("flood[0] \(pid1) O flood \(pid1) line \(295 + i) "), "logs -n line: \(line)")
            }

            let follower = try Child.spawn(Paths.swarmctl, ["logs", "-f", "-n", "1", "flood", "--socket", s.socket], dir: s.dir, label: "follow")
            defer { if follower.running { follower.signal(SIGKILL); _ = follower.poll() } }
            try await waitUntil(timeout: 10, "logs -f to print the last line so far") { follower.stdout.contains("line 299 ") }
            try await s.ctlOK("restart", "flood")
            let pid2 = try await s.waitReady("flood", workers: 1)[0]
            #expect(pid2 != pid1)
            try await waitUntil(timeout: 10, "logs -f to print the new worker's line 299") { follower.stdout.contains("flood \(pid2) line 299 ") }
            let numbers = follower.stdout.split(separator: "\n").compactMap { line -> Int? in
                guard let r = line.range(of: "flood \(pid2) line ") else { return nil }
                return Int(line[r.upperBound...].prefix { $0.isNumber })
            }
            #expect(numbers == Array(0..<300), "logs -f should print every line of the new worker in order; got \(numbers.count) lines")
            #expect(follower.running, "logs -f keeps following")
            follower.signal(SIGTERM)
            _ = try await follower.wait(timeout: 5)

            let logDir = s.stateDir + "/logs"
            let files = try FileManager.default.contentsOfDirectory(atPath: logDir).sorted()
            #expect(files == ["flood.log", "flood.log.1", "flood.log.2"], "keep = 2: \(files)")
            for f in files {
                let size = (try FileManager.default.attributesOfItem(atPath: "\(logDir)/\(f)")[.size] as? Int) ?? 0
                #expect(size <= 4096 + 512, "\(f) is \(size) bytes; max_size is 4KiB")
            }
            // Oldest to newest, the kept files end with the newest line (the current file may be empty after a rotation).
            let kept = ["flood.log.2", "flood.log.1", "flood.log"].map { readText("\(logDir)/\($0)") }.joined().split(separator: "\n")
            #expect(kept.last?.contains("flood \(pid2) line 299 ") == true, "the log files end with the newest line: \(kept.suffix(2))")
            let keptNumbers = kept.compactMap { line -> Int? in
                guard let r = line.range(of: "flood \(pid2) line ") else { return nil }
                return Int(line[r.upperBound...].prefix { $0.isNumber })
            }
            #expect(keptNumbers == Array((300 - keptNumbers.count)..<300), "the kept files hold a gapless tail")
            let after = try await s.ctlOK("logs", "-n", "2", "flood").out.split(separator: "\n")
            #expect(after.count == 2 && after[1].contains("flood \(pid2) line 299 "), "\(after)")
        }
    }

    @Test("status --json carries the documented fields")
    func statusJSONSchema() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 2)
            let r = try await s.ctlOK("status", "--json")
            let root = try #require(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
            let daemon = try #require(root["daemon"] as? [String: Any])
            #expect((daemon["pid"] as? Int) == Int(s.daemon!.pid))
            #expect(daemon["version"] is String)
            #expect(daemon["uptime_s"] is Double || daemon["uptime_s"] is Int)
            #expect((daemon["socket"] as? String) == s.socket)
            #expect((daemon["state_dir"] as? String) == s.stateDir)
            let apps = try #require(root["apps"] as? [[String: Any]])
            #expect(apps.count == 1)
            let app = apps[0]
            #expect((app["name"] as? String) == "web")
            #expect((app["state"] as? String) == "running")
            #expect((app["config"] as? String) == conf)
            #expect((app["generation"] as? Int) == 1)
            #expect((app["workers_wanted"] as? Int) == 2)
            #expect((app["workers_ready"] as? Int) == 2)
            let sockets = try #require(app["sockets"] as? [[String: Any]])
            #expect((sockets.first?["listen"] as? String) == "127.0.0.1:\(port)")
            #expect((sockets.first?["name"] as? String) == "http")
            let workers = try #require(app["workers"] as? [[String: Any]])
            #expect(workers.count == 2)
            for (i, w) in workers.enumerated() {
                #expect((w["slot"] as? Int) == i)
                #expect((w["pid"] as? Int) == Int(pids[i]))
                #expect((w["state"] as? String) == "ready")
                #expect((w["restarts"] as? Int) == 0)
                #expect((w["generation"] as? Int) == 1)
                let up = try #require((w["uptime_s"] as? NSNumber)?.doubleValue, "uptime_s: \(String(describing: w["uptime_s"]))")
                #expect(up >= 0 && up < 120)
            }

            // A stopped app: workers without a pid.
            try await s.ctlOK("stop", "web")
            let r2 = try await s.ctlOK("status", "--json", "web")
            let root2 = try #require(try JSONSerialization.jsonObject(with: Data(r2.out.utf8)) as? [String: Any])
            let app2 = try #require((root2["apps"] as? [[String: Any]])?.first)
            #expect((app2["state"] as? String) == "stopped")
            for w in (app2["workers"] as? [[String: Any]]) ?? [] {
                #expect(w["pid"] == nil || w["pid"] is NSNull)
                #expect((w["state"] as? String) == "stopped")
            }
        }
    }

    @Test("remembered apps: after SIGKILL of swarmd (workers die with it) a new swarmd brings the app back; a stopped app stays stopped")
    func rememberedApps() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let d1 = try await s.startDaemon()
            try await s.ctlOK("start", conf)
            try await s.waitReady("web", workers: 2)
            try await s.ctlOK("scale", "web", "3")
            let gen1 = try await s.waitReady("web", workers: 3)
            let ids = gen1.compactMap { ProcessIdentity(pid: $0) }
            #expect(ids.count == 3)

            d1.signal(SIGKILL)
            _ = try await d1.wait(timeout: 5)
            try await waitUntil(timeout: 5, "the workers to die with swarmd (PR_SET_PDEATHSIG); alive: \(ids.filter(\.isAlive))") {
                ids.allSatisfy { !$0.isAlive }
            }

            try await s.startDaemon()
            let gen2 = try await s.waitReady("web", workers: 3)
            #expect(Set(gen2).isDisjoint(with: gen1))
            #expect(Set(try answeringPids(port, connections: 24).keys) == Set(gen2))

            try await s.ctlOK("stop", "web")
            #expect(try await s.stopDaemon() == 0)

            let d3 = try await s.startDaemon()
            let st = try await s.status()
            let app = try #require(st.apps.first { $0.name == "web" }, "the stopped app is still known")
            #expect(app.state == "stopped")
            #expect(app.workers.allSatisfy { $0.pid == nil })
            #expect(app.workersWanted == 3, "the scale is remembered too")
            #expect(!d3.stderr.contains("started (generation"), "a stopped app's workers should not run at all:\n\(d3.stderr)")
            try await s.ctlOK("start", "web")
            try await s.waitReady("web", workers: 3)
        }
    }
}
