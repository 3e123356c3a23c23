import Foundation
import Glibc
import SwarmProtocol
import Testing

// Balancing (issue 7): per-slot SO_REUSEPORT sockets with steering spread a
// burst of keep-alive connections over every worker; "shared" still works;
// queued connections survive reloads and crash restarts; scale-down fails no
// request; status reports each worker's cpu_share.

/// Opens `count` connections first (the kernel picks each one's socket at
/// connect time), then asks each which pid serves it.
func keepAliveBurst(_ port: UInt16, connections count: Int) throws -> [Int32: Int] {
    let conns = try (0..<count).map { _ in try HTTPConnection(port: port) }
    var seen: [Int32: Int] = [:]
    for (i, c) in conns.enumerated() {
        let r = try c.get("/")
        guard r.status == 200, let pid = r.pid else { throw HarnessError("connection \(i): GET / answered \(r.status) \(r.body)") }
        // A second request on the same connection: keep-alive really holds the worker.
        guard try c.get("/").pid == pid else { throw HarnessError("connection \(i) changed worker between two requests") }
        seen[pid, default: 0] += 1
    }
    return seen
}

/// The worker pid currently in `slot`, if it is ready.
func readyPid(_ s: Swarm, _ app: String, slot: Int) throws -> Int32? {
    guard let w = try reloadApp(try s.quickStatus(), app).workers.first(where: { $0.slot == slot && $0.state == "ready" }) else { return nil }
    return w.pid
}

@Suite("Balance: reuseport spread, shared sockets, queued connections, cpu_share")
struct BalanceTests {
    @Test("20 keep-alive connections opened at once reach every worker, in each of 10 trials", arguments: [2, 4])
    func keepAliveBurstSpreads(workers: Int) async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: workers, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: workers)
            let a = try reloadApp(try await s.status(), "web")
            #expect(a.sockets.map(\.balance) == ["reuseport"], "sockets: \(a.sockets)")
            var spreads: [[Int]] = []
            for trial in 1...10 {
                let seen = try keepAliveBurst(port, connections: 20)
                spreads.append(pids.map { seen[$0] ?? 0 })
                #expect(Set(seen.keys) == Set(pids), "trial \(trial): 20 connections over \(workers) workers \(pids) gave \(seen)")
            }
            print("balance \(workers) workers, connections per worker in 10 trials: \(spreads)")
        }
    }

    @Test("balance = \"shared\": one socket for all workers still serves, and status says so")
    func sharedBalanceServes() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 4, port: port, extra: "balance = \"shared\""))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 4)
            for _ in 1...3 {
                let seen = try keepAliveBurst(port, connections: 20)
                #expect(Set(seen.keys).isSubset(of: Set(pids)), "answers from \(seen), workers \(pids)")
                #expect(seen.values.reduce(0, +) == 20)
            }
            let raw = try await s.ctlOK("status", "--json")
            #expect(raw.out.filter { !$0.isWhitespace }.contains(#""balance":"shared""#), "status --json: \(raw.out)")
            #expect(try reloadApp(try await s.status(), "web").sockets.map(\.balance) == ["shared"])
        }
    }

    @Test("connections queued while a slot's worker is replaced (reload, kill -9) are answered, never reset")
    func queuedConnectionsSurviveReplacement() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            try await s.startDaemon([conf])
            var pids = try await s.waitReady("web", workers: 2)
            // Fresh connections in a tight loop: every connection is queued, then accepted.
            let load = Traffic(port: port, keepAlive: 0, fresh: 3, pause: 0)
            let (_, report) = try await withTraffic(load) {
                for g in 2...4 {
                    try await s.ctlOK("reload", "web")
                    pids = try await expectReplaced(s, "web", workers: 2, before: pids, generation: g)
                    try await load.waitForProgress()
                }
                // kill -9 of slot 0's worker with connections queued in its socket's backlog.
                // A request the worker had already accepted dies with it (nobody can save that
                // one), so the clients pause between two requests; the worker is frozen
                // (SIGSTOP: still "ready" for swarmd, so steering still sends it connections,
                // but it accepts none), 8 connections are opened, then it is killed.
                let victim = try #require(ProcessIdentity(pid: pids[0]))
                try await load.pauseAll()
                kill(victim.pid, SIGSTOP)
                try await waitUntil(timeout: 5, "worker \(victim) to be stopped") { ProcState.read(victim.pid)?.state == "T" }
                // No other client connects now: steering alternates slots, so some of these queue on slot 0.
                let queued = try (0..<8).map { _ in try HTTPConnection(port: port) }
                kill(victim.pid, SIGKILL)
                try await waitUntil(timeout: 5, "the killed worker \(victim) to be gone") { !victim.isAlive }
                load.resume()
                var answeredBy: [Int32: Int] = [:]
                for (i, c) in queued.enumerated() {
                    let r = try c.get("/")
                    #expect(r.status == 200, "queued connection \(i): \(r.status)")
                    if let p = r.pid { answeredBy[p] = (answeredBy[p] ?? 0) + 1 }
                }
                let replacement = try await waitUntil(timeout: 10, "a ready replacement in slot 0") { () -> Int32? in
                    guard let p = try readyPid(s, "web", slot: 0), p != victim.pid else { return nil }
                    return p
                }
                #expect(answeredBy[replacement] != nil,
                        "connections queued on slot 0 when its worker was killed should be answered by its replacement \(replacement): \(answeredBy)")
                #expect(answeredBy[victim.pid] == nil)
                let answered = answeredBy.values.reduce(0, +)
                #expect(answered == 8, "answers: \(answeredBy)")
                try await load.waitForProgress()
            }
            #expect(report.failed == 0, "tight-loop clients during 3 reloads and a kill -9: \(report)")
            let w0 = try #require(try reloadApp(try await s.status(), "web").workers.first { $0.slot == 0 })
            #expect(w0.restarts == 1, "slot 0 restarts: \(w0.restarts)")
        }
    }

    @Test("after each reload the keep-alive clients sit 10/10 again: a retiring worker's clients go to its replacement (hand_over); round-robin would pile them up",
          arguments: [true, false])
    func reloadHandsClientsOver(handOver: Bool) async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port,
                                                           extra: handOver ? "" : "[reload]\nhand_over = false"))
            try await s.startDaemon([conf], args: ["--verbose"])
            var pids = try await s.waitReady("web", workers: 2)
            let load = Traffic(port: port, keepAlive: 20, fresh: 0, pause: 0.005)
            let (_, report) = try await withTraffic(load) {
                func settled(on workers: [Int32]) async throws -> [Int] {
                    try await waitUntil(timeout: 10, "all 20 clients answered by \(workers) (now: \(load.keepAliveHomes))") { () -> [Int]? in
                        let homes = load.keepAliveHomes
                        return Set(homes.keys).isSubset(of: Set(workers)) && homes.values.reduce(0, +) == 20 ? homes.values.sorted() : nil
                    }
                }
                let first = try await settled(on: pids)
                #expect(first == [10, 10], "20 connections opened at once: round-robin, 10 each; got \(first) with \(load.current.keepAliveRetries) keep-alive reconnects; swarmd's log: \(s.daemonLog.split(separator: "\n").suffix(20).joined(separator: "\n"))")
                var spreads: [[Int]] = []
                for g in 2...4 {
                    try await s.ctlOK("reload", "web")
                    pids = try await expectReplaced(s, "web", workers: 2, before: pids, generation: g)
                    spreads.append(try await settled(on: pids))
                }
                if handOver {
                    let steering = s.daemonLog.split(separator: "\n").filter { $0.contains("connections to") || $0.contains("ready") || $0.contains("stop") }
                    #expect(spreads.allSatisfy { $0 == [10, 10] }, "clients per worker after each reload: \(spreads); swarmd's steering: \(steering.joined(separator: "\n"))")
                } else {
                    // The first swap's 10 clients split 5/5 (15 on the old worker), the second's 15 split 7/8.
                    #expect(spreads.allSatisfy { $0 != [10, 10] }, "round-robin: clients per worker after each reload: \(spreads)")
                }
            }
            #expect(report.failed == 0, "keep-alive clients during 3 reloads: \(report)")
        }
    }

    @Test("cpu_affinity = \"auto\" pins slot k to the k-th CPU swarmd may use, and a reload's new workers too")
    func cpuAffinityAuto() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", "cpu_affinity = \"auto\"\n" + Conf.python("web", workers: 3, port: port))
            try await s.startDaemon([conf])
            let allowed = try #require(cpusAllowed(getpid()))
            func check(_ generation: Int) async throws {
                let app = try reloadApp(try await s.status(), "web")
                #expect(app.workers.count == 3)
                for w in app.workers {
                    let pid = try #require(w.pid)
                    #expect(cpusAllowed(pid) == [allowed[w.slot % allowed.count]], "generation \(generation), slot \(w.slot), pid \(pid)")
                    #expect(w.cpuPinned == allowed[w.slot % allowed.count], "status shows the pin: \(w)")
                }
                let table = try await s.ctlOK("status", "web").out
                #expect(table.contains("PIN"), "the status table has a PIN column: \(table)")
            }
            let before = try await s.waitReady("web", workers: 3)
            try await check(1)
            try await s.ctlOK("reload", "web")
            try await expectReplaced(s, "web", workers: 3, before: before, generation: 2)
            try await check(2)
        }
    }

    @Test("scale 4 → 2 under keep-alive and fresh-connection load fails no request")
    func scaleDownUnderLoad() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 4, port: port))
            try await s.startDaemon([conf])
            let four = try await s.waitReady("web", workers: 4)
            let (two, report) = try await withTraffic(Traffic(port: port)) { () -> [Int32] in
                try await s.ctlOK("scale", "web", "2")
                let two = try await s.waitReady("web", workers: 2)
                try await Task.sleep(nanoseconds: 300_000_000)
                return two
            }
            #expect(two == Array(four.prefix(2)), "scale-down removes the highest slots: before \(four), after \(two)")
            #expect(report.failed == 0, "load during scale 4 → 2: \(report)")
            #expect(Set(try answeringPids(port, connections: 12).keys) == Set(two))
        }
    }

    @Test("status shows each worker's cpu_share, summing to about 1")
    func cpuShareSumsToOne() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 4, port: port))
            try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 4)
            // Some CPU work on every worker (fresh connections are spread over the slots).
            let seen = try answeringPidsFor(port, path: "/cpu", connections: 12)
            #expect(Set(seen.keys) == Set(pids), "/cpu answered by \(seen)")
            let a = try reloadApp(try await s.status(), "web")
            let shares = a.workers.compactMap(\.cpuShare)
            #expect(shares.count == 4, "cpu_share per worker: \(a.workers.map(\.cpuShare))")
            let sum = shares.reduce(0, +)
            #expect(abs(sum - 1) <= 0.01, "cpu_share sums to \(sum): \(shares)")
            #expect(shares.allSatisfy { $0 > 0.05 && $0 < 0.6 }, "each worker did similar work: \(shares)")
            #expect(a.workers.allSatisfy { ($0.cpuSeconds ?? 0) > 0 }, "cpu_seconds: \(a.workers.map(\.cpuSeconds))")
            let table = try await s.ctlOK("status")
            #expect(table.out.contains("SHARE") && !table.out.contains("PIN"), "no PIN column without cpu_affinity: \(table)")
            #expect(a.workers.allSatisfy { $0.cpuPinned == nil })
        }
    }
}

/// Like `answeringPids`, for any path.
func answeringPidsFor(_ port: UInt16, path: String, connections: Int) throws -> [Int32: Int] {
    var seen: [Int32: Int] = [:]
    for _ in 0..<connections {
        let r = try httpGet(port, path)
        guard r.status == 200, let pid = r.pid else { throw HarnessError("GET \(path) answered \(r.status) \(r.body)") }
        seen[pid, default: 0] += 1
    }
    return seen
}

/// The CPUs a process may run on (Cpus_allowed_list of /proc/PID/status, "0-2,5" expanded).
func cpusAllowed(_ pid: Int32) -> [Int]? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
    var cpus: [Int] = []
    for part in line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces).split(separator: ",") {
        let bounds = part.split(separator: "-").compactMap { Int($0) }
        guard let lo = bounds.first, let hi = bounds.last else { return nil }
        cpus += Array(lo...hi)
    }
    return cpus
}
