import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Issue 13, items 7-9: processes escaping the worker's process group, memory
// per restart, terminal escapes and forged log lines.

/// An app running etc/apps/python/escape.py in `mode`, every process it starts marked with `marker`.
/// Ready by `notify`: escape.py sends READY=1 once everything it starts is up.
func escapeApp(_ name: String, mode: String, marker: String, workers: Int = 1, port: UInt16? = nil, extra: String = "") -> String {
    Conf.python(name, script: "escape.py", workers: workers, port: port,
                env: ["ESCAPE_MODE": mode, "SWARM_IT_MARK": marker, "ESCAPE_SLEEP_S": "120"],
                extra: "[ready]\nmode = \"notify\"\n[stop]\ntimeout = \"3s\"\n" + extra)
}

@Suite("Attack 7-9: process-group escapes, memory per restart, terminal escapes", attackTestsSwitch)
struct AttackEscapeTests {
    @Test("7: nothing a worker started survives delete of its app or SIGTERM of swarmd, whatever its children do",
          arguments: ["setpgid", "doublefork"], ["delete", "sigterm"])
    func escapesDoNotSurvive(mode: String, ending: String) async throws {
        let marker = uniqueMarker("escape")
        defer { killMarked(marker) }
        try await withSwarm { s in
            let conf = try s.write("web.conf", escapeApp("web", mode: mode, marker: marker))
            try await s.startDaemon([conf])
            let worker = try #require(try await s.waitReady("web", workers: 1).first)
            let all = try await waitUntil(timeout: 10, "the worker \(worker) and what it escaped to be up") { () -> [ProcessIdentity]? in
                let m = processesMarked(marker)
                return m.count >= 2 ? m : nil
            }
            let escaped = all.filter { $0.pid != worker }
            #expect(!escaped.isEmpty)
            if ending == "delete" {
                try await s.ctlOK("delete", "web")
            } else {
                #expect(try await s.stopDaemon(timeout: 10) == 0)
            }
            try await waitUntil(timeout: 5, "everything the app started to be gone after \(ending); still alive: \(processesMarked(marker))") {
                processesMarked(marker).isEmpty
            }
        }
    }

    @Test("7: kill -9 of swarmd with nginx-style grandchildren listening: the next swarmd on the same state dir kills them before it starts anything")
    func preforkLeftoversKilledByNextDaemon() async throws {
        let marker = uniqueMarker("prefork")
        defer { killMarked(marker) }
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", escapeApp("web", mode: "prefork", marker: marker, port: port))
            let d = try await s.startDaemon()
            try await s.ctlOK("start", conf)
            let master = try #require(try await s.waitReady("web", workers: 1).first)
            let first = try await waitUntil(timeout: 10, "the master \(master) and its 2 workers") { () -> [ProcessIdentity]? in
                let m = processesMarked(marker)
                return m.count >= 3 ? m : nil
            }
            let children = first.filter { $0.pid != master }
            let answered = try answeringPids(port, connections: 8)
            #expect(Set(answered.keys).isSubset(of: Set(children.map(\.pid))), "answers from \(answered); children \(children)")

            d.signal(SIGKILL)
            _ = try await d.wait(timeout: 5, "swarmd to die of SIGKILL")
            try await waitUntil(timeout: 5, "the master \(master) to die with swarmd (PDEATHSIG)") { first.first { $0.pid == master }.map { !$0.isAlive } ?? true }

            try await s.startDaemon()
            let next = try await s.waitReady("web", workers: 1, timeout: 20)
            try await waitUntil(timeout: 5, "the old generation's workers \(children) to be killed by the new swarmd; alive: \(children.filter(\.isAlive))") {
                children.allSatisfy { !$0.isAlive }
            }
            let now = try answeringPids(port, connections: 8)
            #expect(Set(now.keys).isDisjoint(with: Set(children.map(\.pid))), "old workers still serve: \(now)")
            #expect(!next.contains(master))
        }
    }

    @Test("8: memory stays flat under churn: 2,500 restarts grow swarmd's RssAnon by less than 128 KiB (the 100,000-restart figure is bench/reliability.py's)")
    func memoryFlatUnderChurn() async throws {
        try await withSwarm { s in
            // 8 workers of sleep 0.02 restart ~90 times a second here without livelocking today's reap loop
            // (16 of sleep 0.01 do). reset_after 0s: every run counts as healthy, so each restart waits initial_delay (0s);
            // a crash-loop window of 10ms never fills.
            let conf = try s.write("churn.conf", Conf.app("churn", command: ["/bin/sleep", "0.02"], workers: 8, extra: """
                [ready]
                mode = "delay"
                delay = "5ms"
                [restart]
                initial_delay = "0s"
                reset_after = "0s"
                crash_loop_restarts = 1000
                crash_loop_window = "10ms"
                [logs]
                target = "file"

                """))
            let d = try await s.startDaemon([conf])
            func restarts() throws -> Int {
                try s.quickStatus().apps.first?.workers.reduce(0) { $0 + $1.restarts } ?? 0
            }
            // Under a loaded machine today's reap loop can delay a status answer past its 10 s timeout:
            // retried, so this test fails for memory, not for item 2's livelock.
            func restartsNow() async throws -> Int {
                try await waitUntil(timeout: 40, "a status answer during the churn") { () -> Int? in try restarts() }
            }
            // Warm up: allocator arenas, the status path, dictionaries at their working size.
            try await waitUntil(timeout: 60, "500 restarts (warm-up)", every: 0.5) { try restarts() >= 500 }
            let base = try await restartsNow()
            let rss0 = try #require(procStatusKiB(d.pid, "RssAnon"))
            let t0 = Date()
            try await waitUntil(timeout: 90, "2,500 more restarts", every: 0.5) { try restarts() >= base + 2500 }
            let n = try await restartsNow() - base
            let rss1 = try #require(procStatusKiB(d.pid, "RssAnon"))
            let growth = rss1 - rss0
            reportFigure("memory under churn: RssAnon \(rss0) KiB → \(rss1) KiB over \(n) restarts in \(String(format: "%.1f", elapsed(since: t0)))s (\(String(format: "%.1f", Double(growth * 1024) / Double(n))) B per restart)")
            #expect(growth < 128, "RssAnon grew \(growth) KiB over \(n) restarts (\(Double(growth * 1024) / Double(n)) B each)")
        }
    }

    @Test("9: control characters from a worker (STATUS=, log lines with ESC and CR) are escaped in swarmctl status, logs and the log file")
    func terminalEscapesAreEscaped() async throws {
        try await withSwarm { s in
            let conf = try s.write("web.conf", Conf.python("web", script: "notify_escapes.py",
                                                           extra: "[ready]\nmode = \"notify\"\n[logs]\ntarget = \"file\"\n"))
            try await s.startDaemon([conf], args: ["--log-target", "file"])
            try await s.waitReady("web", workers: 1)
            try await waitUntil(timeout: 5, "the worker's STATUS= and its 3 hostile lines") {
                let st = try s.quickStatus().apps.first?.workers.first?.statusText ?? ""
                return st.contains("hostile") && occurrences(of: "hostile", in: readText(s.stateDir + "/logs/web.log")) >= 3
            }
            let table = try await s.ctlOK("status")
            #expect(table.out.contains("hostile"), "status shows the worker's STATUS= text: \(table.out)")
            #expect(rawControlCharacters(in: table.out).isEmpty, "swarmctl status printed raw \(rawControlCharacters(in: table.out)): \(table.out.debugDescription)")
            let one = try await s.ctlOK("status", "web")
            #expect(rawControlCharacters(in: one.out).isEmpty, "swarmctl status web printed raw \(rawControlCharacters(in: one.out))")
            let logs = try await s.ctlOK("logs", "web")
            #expect(occurrences(of: "hostile", in: logs.out) >= 3, "logs: \(logs.out)")
            #expect(rawControlCharacters(in: logs.out).isEmpty, "swarmctl logs printed raw \(rawControlCharacters(in: logs.out)): \(logs.out.debugDescription)")
            let file = readText(s.stateDir + "/logs/web.log")
            #expect(rawControlCharacters(in: file).isEmpty, "web.log holds raw \(rawControlCharacters(in: file)): \(file.debugDescription)")
            // The forged record stays inside the worker's own line, after its real prefix.
            for line in file.split(separator: "\n") where line.contains("forged") {
                #expect(line.contains("hostile carriage") && !line.hasPrefix("2026-11-26T01:02:03.123456Z"), "forged line in web.log: \(line.debugDescription)")
            }
        }
    }
}
