import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// `swarmctl events` and `[hooks]` against a real swarmd and real workers.
struct EventsTests {
    /// The JSON records `events --json` printed so far.
    static func records(_ c: Child) -> [EventRecord] {
        c.stdout.split(separator: "\n").compactMap { try? JSONDecoder().decode(EventRecord.self, from: Data($0.utf8)) }
    }

    /// An app of `workers` sleeping workers, ready 100 ms after exec, then `extra` tables.
    static func sleeper(_ name: String, workers: Int = 1, extra: String = "") -> String {
        Conf.app(name, command: ["/bin/sleep", "1000"], workers: workers, extra: """
            [ready]
            mode = "delay"
            delay = "100ms"
            \(extra)
            """)
    }

    /// `events --json` in the background, connected once it printed the last kept event.
    static func subscribe(_ s: Swarm, _ args: [String] = []) async throws -> Child {
        let c = try Child.spawn(Paths.swarmctl, ["events", "--json", "-n", "1", "--socket", s.socket] + args, dir: s.dir,
                                label: s.label("events"))
        try await waitUntil(timeout: 10, "events to connect and print the last kept event (stderr: \(c.stderr))") {
            !records(c).isEmpty
        }
        return c
    }

    static func alive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 }

    @Test("events --json: a kill -9'd worker's exit, scheduled restart, respawn and readiness, in order")
    func killedWorkerInOrder() async throws {
        try await withSwarm { s in
            try await s.startDaemon([try s.write("w.conf", Self.sleeper("w", workers: 2))])
            let pids = try await s.waitReady("w", workers: 2)
            let events = try await Self.subscribe(s)
            defer { events.signal(SIGKILL); _ = events.poll() }
            let mark = Self.records(events).last!.seq
            kill(pids[0], SIGKILL)
            let got = try await waitUntil(timeout: 15, "exited, restart-scheduled, spawned and ready (so far: \(events.stdout))") { () -> [EventRecord]? in
                let after = Self.records(events).filter { $0.seq > mark }
                return after.map(\.kind).starts(with: ["exited", "restart-scheduled", "spawned", "ready"]) ? after : nil
            }
            #expect(got[0].pid == pids[0] && got[0].slot == 0 && got[0].details?["signal"] == "SIGKILL", "\(got[0])")
            #expect(got[0].details?["exit_status"] == "signaled")
            #expect(got[1].slot == 0 && got[1].details?["reason"] == "signal" && got[1].details?["delay_s"] != nil, "\(got[1])")
            let new = try #require(got[2].pid)
            #expect(new != pids[0] && got[3].pid == new && got[2].slot == 0 && got[3].slot == 0)
            #expect(got.prefix(4).allSatisfy { $0.app == "w" && $0.generation == 1 })
            let now = try await s.waitReady("w", workers: 2)
            #expect(now[0] == new && now[1] == pids[1])

            // The human form: one line per event.
            let human = try await s.ctlOK("events", "-n", "4", "--no-follow", "w")
            let lines = human.out.split(separator: "\n")
            #expect(lines.count == 4, "\(human.out)")
            #expect(lines[0].contains("w[0] \(pids[0]) exited: killed by SIGKILL"), "\(human.out)")
            #expect(lines[3].contains("w[0] \(new) ready: ready after"), "\(human.out)")
        }
    }

    @Test("a worker whose exec fails after swarmd went on (the program lost its x bit): a spawn-failed event and last_exit naming the exec, and the slot back once it is fixed")
    func anExecThatFailsAfterTheSpawnReturnedIsASpawnFailure() async throws {
        try await withSwarm { s in
            let prog = s.dir + "/prog"
            try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: prog)
            try await s.startDaemon([try s.write("x.conf", Conf.app("x", command: [prog, "1000"], workers: 1, extra: """
                [ready]
                mode = "delay"
                delay = "100ms"
                [restart]
                initial_delay = "200ms"
                """))])
            let first = try await s.waitReady("x", workers: 1)[0]
            let events = try await Self.subscribe(s)
            defer { events.signal(SIGKILL); _ = events.poll() }
            let mark = Self.records(events).last!.seq
            // Not executable now, even for root: each respawn's execve fails with EACCES in the child.
            #expect(chmod(prog, 0o644) == 0)
            kill(first, SIGKILL)
            let failed = try await waitUntil(timeout: 15, "a spawn-failed event (so far: \(events.stdout))") { () -> EventRecord? in
                Self.records(events).first { $0.seq > mark && $0.kind == "spawn-failed" }
            }
            let why = "exec of \(prog) failed: Permission denied (EACCES)"
            #expect(failed.app == "x" && failed.slot == 0 && failed.message == why, "\(failed)")
            #expect(failed.details?["reason"] == why, "\(failed)")
            #expect(!Self.records(events).contains { $0.seq > mark && $0.kind == "exited" && $0.pid != first },
                    "a failed exec reported as an exit: \(events.stdout)")
            let w = try #require(reloadApp(try s.quickStatus(), "x").workers.first { $0.slot == 0 })
            #expect(w.lastExit == why, "last_exit: \(String(describing: w.lastExit))")
            #expect(chmod(prog, 0o755) == 0)
            let back = try await s.waitReady("x", workers: 1, timeout: 30)
            #expect(back[0] != first)
        }
    }

    @Test("events NAME shows only that app's events")
    func appFilter() async throws {
        try await withSwarm { s in
            try await s.startDaemon([try s.write("a.conf", Self.sleeper("a")), try s.write("b.conf", Self.sleeper("b"))])
            let a = try await s.waitReady("a", workers: 1)
            let b = try await s.waitReady("b", workers: 1)
            let onlyB = try await Self.subscribe(s, ["b"])
            defer { onlyB.signal(SIGKILL); _ = onlyB.poll() }
            let everything = try await Self.subscribe(s)
            defer { everything.signal(SIGKILL); _ = everything.poll() }
            kill(a[0], SIGKILL)
            try await waitUntil(timeout: 15, "a's restart to be seen by the unfiltered subscriber") {
                Self.records(everything).contains { $0.app == "a" && $0.kind == "ready" && $0.pid != a[0] }
            }
            kill(b[0], SIGKILL)
            try await waitUntil(timeout: 15, "b's restart to reach events b") {
                Self.records(onlyB).contains { $0.kind == "ready" && $0.pid != b[0] }
            }
            let seen = Self.records(onlyB)
            #expect(seen.allSatisfy { $0.app == "b" }, "\(seen.filter { $0.app != "b" })")
            #expect(seen.contains { $0.kind == "exited" && $0.pid == b[0] })
        }
    }

    @Test("a subscriber that never reads is bounded and cut off; swarmd keeps answering ping fast")
    func neverReadingSubscriber() async throws {
        try await withSwarm { s in
            try await s.startDaemon([try s.write("d.conf", Self.sleeper("d", workers: 40, extra: "[stop]\ntimeout = \"0s\""))])
            try await s.waitReady("d", workers: 40)
            let deaf = try ControlConnection(path: s.socket)
            try deaf.send(Request(id: 1, verb: .events))
            // Each restart is 121 events (40 exits, spawns and readies, and the restart): far more
            // than a socket buffer and the read pause hold.
            let driver = try ControlConnection(path: s.socket, timeout: 60)
            var slowest = 0.0
            for i in 0..<30 {
                let r = try driver.call(Request(id: UInt64(10 + i), verb: .restart, name: "d"))
                #expect(r.ok == true, "\(r)")
                let t0 = Date()
                #expect(try s.request(.ping).ok == true)
                slowest = max(slowest, Date().timeIntervalSince(t0))
            }
            #expect(slowest < 1.5, "ping took \(slowest)s while a subscriber did not read")
            let rss = try #require(Self.rssKiB(s.daemon!.pid))
            #expect(rss < 200_000, "swarmd's memory stays bounded: \(rss) KiB")
            try await waitUntil(timeout: 30, "swarmd to close the subscriber that reads nothing") {
                s.daemonLog.contains("does not read its replies")
            }
            #expect(try s.request(.ping).ok == true)
            // What it was sent ends with the connection's end, not with all 4000 events.
            var received = 0
            var dropped = false
            while let r = try? deaf.receive() {
                received += 1
                if r.record?.kind == "dropped" { dropped = true }
            }
            #expect(received < 2000, "\(received) of 3630 events were queued for a client that read nothing")
            #expect(!dropped, "it read nothing, so it was never caught up enough to be told")
        }
    }

    static func rssKiB(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "")
        }
        return nil
    }

    /// A hook script in the test's directory (mode set here: CI's umask may be strict).
    static func script(_ s: Swarm, _ name: String, _ body: String) throws -> String {
        let path = try s.write(name, "#!/bin/sh\n" + body + "\n")
        chmod(path, 0o755)
        return path
    }

    @Test("a hook gets the event as JSON on stdin and as SWARM_* variables, and its output reaches swarmd's log")
    func hookStdinAndEnvironment() async throws {
        try await withSwarm { s in
            let hook = try Self.script(s, "hook.sh", """
                cat > "\(s.dir)/hook-stdin.$SWARM_SEQ"
                env | grep '^SWARM_' | sort > "\(s.dir)/hook-env.$SWARM_SEQ"
                echo "hook saw $SWARM_EVENT of $SWARM_APP[$SWARM_SLOT] pid $SWARM_PID"
                """)
            try await s.startDaemon([try s.write("h.conf", Self.sleeper("h", extra: "[hooks]\non_exit = [\(Conf.q(hook))]"))])
            let pids = try await s.waitReady("h", workers: 1)
            kill(pids[0], SIGKILL)
            let file = try await waitUntil(timeout: 15, "the hook to write what it got") { () -> String? in
                let names = (try? FileManager.default.contentsOfDirectory(atPath: s.dir)) ?? []
                return names.first { $0.hasPrefix("hook-env.") }.map { s.dir + "/" + $0 }
            }
            let seq = String(file.split(separator: ".").last!)
            try await waitUntil(timeout: 10, "the hook's output in swarmd's log") {
                s.daemonLog.contains("hook saw exited of h[0] pid \(pids[0])")
            }
            let env = try String(contentsOfFile: file, encoding: .utf8)
            for line in ["SWARM_EVENT=exited", "SWARM_APP=h", "SWARM_SLOT=0", "SWARM_PID=\(pids[0])", "SWARM_EXIT_STATUS=signaled",
                         "SWARM_SIGNAL=SIGKILL", "SWARM_HOOK=on_exit", "SWARM_GENERATION=1", "SWARM_SEQ=\(seq)"] {
                #expect(env.contains(line + "\n"), "\(line) in:\n\(env)")
            }
            let stdin = try Data(contentsOf: URL(fileURLWithPath: s.dir + "/hook-stdin.\(seq)"))
            let record = try JSONDecoder().decode(EventRecord.self, from: stdin)
            #expect(record.kind == "exited" && record.app == "h" && record.pid == pids[0] && record.details?["signal"] == "SIGKILL", "\(record)")
            #expect(String(record.seq) == seq)
            // Reaped by swarmd: logged with its status, and no zombie left.
            try await waitUntil(timeout: 10, "the hook's exit in swarmd's log") { s.daemonLog.contains("exited with status 0") }
        }
    }

    @Test("a hook that hangs is killed with its process group at its timeout")
    func hangingHookIsKilled() async throws {
        try await withSwarm { s in
            let hook = try Self.script(s, "hang.sh", """
                sleep 300 &
                echo $! > "\(s.dir)/hang-child.pid"
                echo $$ > "\(s.dir)/hang.pid"
                wait
                """)
            try await s.startDaemon([try s.write("g.conf", Self.sleeper("g", extra: "[hooks]\non_exit = [\(Conf.q(hook))]\ntimeout = \"500ms\""))])
            let pids = try await s.waitReady("g", workers: 1)
            kill(pids[0], SIGKILL)
            let started = Date()
            let (hookPid, childPid) = try await waitUntil(timeout: 15, "the hook to start") { () -> (Int32, Int32)? in
                guard let a = try? String(contentsOfFile: s.dir + "/hang.pid", encoding: .utf8), let p = Int32(a.trimmingCharacters(in: .whitespacesAndNewlines)),
                      let b = try? String(contentsOfFile: s.dir + "/hang-child.pid", encoding: .utf8), let c = Int32(b.trimmingCharacters(in: .whitespacesAndNewlines))
                else { return nil }
                return (p, c)
            }
            try await waitUntil(timeout: 10, "the hook and its child to be killed (log: \(s.daemonLog.suffix(800)))") {
                !Self.alive(hookPid) && !Self.alive(childPid)
            }
            let took = Date().timeIntervalSince(started)
            #expect(took >= 0.3 && took < 5, "killed after \(took)s for a 500ms timeout")
            #expect(s.daemonLog.contains("still running at its timeout; killing its process group"), "\(s.daemonLog.suffix(1000))")
            #expect(s.daemonLog.contains("(pid \(hookPid)) killed at its timeout"))
            #expect(try s.request(.ping).ok == true)
        }
    }

    @Test("a hook that floods its output is capped in swarmd's log")
    func floodingHookIsCapped() async throws {
        try await withSwarm { s in
            try await s.startDaemon([try s.write("f.conf", Self.sleeper("f", extra: "[hooks]\non_exit = [\"/usr/bin/yes\", \"flood\"]\ntimeout = \"1s\""))])
            let pids = try await s.waitReady("f", workers: 1)
            kill(pids[0], SIGKILL)
            try await waitUntil(timeout: 15, "the flooding hook to be cut off and killed") {
                s.daemonLog.contains("output beyond 16 KiB discarded") && s.daemonLog.contains("killed at its timeout")
            }
            let lines = s.daemonLog.split(separator: "\n").filter { $0.contains("hook on_exit of f (pid") && $0.hasSuffix("): flood") }
            #expect(lines.count > 100 && lines.count <= (16 << 10) / 6, "\(lines.count) lines of the hook's output logged")
            #expect(s.daemonLog.utf8.count < 2 << 20, "swarmd's log: \(s.daemonLog.utf8.count) bytes")
            #expect(try s.request(.ping).ok == true)
        }
    }

    @Test("more events than max_concurrent hooks: the excess is dropped and counted")
    func hookConcurrencyBound() async throws {
        try await withSwarm { s in
            let hook = try Self.script(s, "slow.sh", "sleep 3")
            try await s.startDaemon([try s.write("c.conf", Self.sleeper("c", workers: 3,
                                                                        extra: "[hooks]\non_exit = [\(Conf.q(hook))]\nmax_concurrent = 1\ntimeout = \"10s\""))])
            let pids = try await s.waitReady("c", workers: 3)
            for p in pids { kill(p, SIGKILL) }
            try await waitUntil(timeout: 15, "two of three hooks to be dropped (log: \(s.daemonLog.suffix(1500)))") {
                s.daemonLog.contains("not run, 2 dropped so far")
            }
            let started = s.daemonLog.split(separator: "\n").filter { $0.contains("hook on_exit of c (pid") && $0.contains(") started for exited") }
            #expect(started.count == 1, "\(started)")
            #expect(s.daemonLog.contains("1 hooks of c still running (max_concurrent = 1)"))
            try await s.waitReady("c", workers: 3)
        }
    }

    @Test("[hooks] errors name file:line; a reload to a bad file is a config-error event")
    func hookConfigErrors() async throws {
        try await withSwarm { s in
            let good = Self.sleeper("e")
            let path = try s.write("e.conf", good)
            try await s.startDaemon([path])
            try await s.waitReady("e", workers: 1)
            let bad = try s.write("bad.conf", Conf.app("bad", command: ["/bin/sleep", "1"], extra: "[hooks]\non_exit = [\"notify-send\"]\nmax_concurrent = 0"))
            let r = try await s.ctl("start", bad)
            #expect(r.code != 0)
            #expect(r.err.contains("bad.conf:5: hooks.on_exit: 'notify-send' must be an absolute path"), "\(r.err)")
            #expect(r.err.contains("bad.conf:6: hooks.max_concurrent:"), "\(r.err)")

            let events = try await Self.subscribe(s, ["e"])
            defer { events.signal(SIGKILL); _ = events.poll() }
            try (good + "[hooks]\non_crash = [\"/bin/true\"]\n").write(toFile: path, atomically: true, encoding: .utf8)
            let reload = try await s.ctl("reload", "e")
            #expect(reload.code != 0 && reload.err.contains("e.conf:"), "\(reload)")
            let record = try await waitUntil(timeout: 10, "a config-error event") { Self.records(events).first { $0.kind == "config-error" } }
            #expect(record.app == "e" && record.message.contains("hooks.on_crash: unknown key"), "\(record)")
        }
    }
}
