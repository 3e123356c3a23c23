import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Hardening: in-place re-exec under load, kill -9 of swarmd, a corrupt state
// file, hostile control clients, crash-loop storms, log floods, limits,
// memory ceilings and user switching.

/// Figures the reliability table quotes; printed to the test log.
func reportFigure(_ text: String) {
    print("[figure] \(text)")
}

@Suite("Hardening: re-exec, kill -9, corrupt state, hostile clients, storms, floods, limits")
struct HardeningTests {
    @Test("daemon re-exec under HTTP load keeps the pid, the workers and every request", arguments: ["swarmctl", "SIGUSR2"])
    func reexecUnderLoad(trigger: String) async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let d = try await s.startDaemon([conf])
            let pids = try await s.waitReady("web", workers: 2)
            let load = HTTPLoadLoop(port: port, pause: 0.005)
            try await waitUntil(timeout: 10, "the load to get answers") { load.counts.ok >= 20 }

            let logBefore = d.stderr.components(separatedBy: "re-executed as pid").count
            if trigger == "swarmctl" {
                let r = try await s.ctlOK("daemon-reexec")
                #expect(r.out.contains("re-executing") || r.err.isEmpty, "\(r)")
            } else {
                d.signal(SIGUSR2)
            }
            try await waitUntil(timeout: 15, "swarmd to log that it re-executed") {
                d.stderr.components(separatedBy: "re-executed as pid").count > logBefore
            }
            let t0 = Date()
            let status = try s.quickStatus()
            #expect(elapsed(since: t0) < 1, "status after the re-exec took \(elapsed(since: t0))s")
            #expect(status.daemon.pid == d.pid, "swarmd's pid changed: \(status.daemon.pid) vs \(d.pid)")
            #expect(d.running, "swarmd exited during the re-exec: \(d.stderr.suffix(1500))")
            let after = try await s.waitReady("web", workers: 2)
            #expect(after == pids, "workers changed across the re-exec: \(pids) → \(after)")
            let atReexec = load.counts.ok
            try await waitUntil(timeout: 10, "requests answered after the re-exec") { load.counts.ok >= atReexec + 20 }
            let result = try await load.stop()
            #expect(result.failed == 0, "\(result.failed) failed requests across the re-exec (ok \(result.ok)): \(result.errors)")

            // The new image reaps and restarts: the handover of the children worked.
            let victim = pids[0]
            kill(victim, SIGKILL)
            let replaced = try await waitUntil(timeout: 15, "slot 0 to get a new ready worker after kill -9 of \(victim)") { () -> Int32? in
                let a = try s.quickStatus().apps.first { $0.name == "web" }
                guard let w = a?.workers.first(where: { $0.slot == 0 && $0.state == "ready" }), let p = w.pid, p != victim else { return nil }
                return p
            }
            try await waitUntil(timeout: 5, "the killed worker \(victim) to be reaped (no zombie)") { !ProcState.exists(victim) }
            #expect(try httpGet(port).status == 200)
            #expect(replaced != victim)
            #expect(d.running)
        }
    }

    @Test("kill -9 of swarmd: no worker survives it (PDEATHSIG); a new swarmd with the same state dir brings the app back")
    func killNineDaemon() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let d = try await s.startDaemon()
            try await s.ctlOK("start", conf)
            let pids = try await s.waitReady("web", workers: 2)
            let ids = pids.compactMap { ProcessIdentity(pid: $0) }
            #expect(ids.count == 2)
            d.signal(SIGKILL)
            _ = try await d.wait(timeout: 5, "swarmd to die of SIGKILL")
            try await waitUntil(timeout: 5, "every worker to die with swarmd; alive: \(ids.filter(\.isAlive))") { ids.allSatisfy { !$0.isAlive } }

            try await s.startDaemon()
            let again = try await s.waitReady("web", workers: 2, timeout: 20)
            #expect(Set(again).isDisjoint(with: Set(pids)))
            #expect(try httpGet(port).status == 200)
        }
    }

    @Test("a corrupt apps.json: swarmd starts, reports it and moves it aside")
    func corruptStateFile() async throws {
        try await withSwarm { s in
            try FileManager.default.createDirectory(atPath: s.stateDir, withIntermediateDirectories: true)
            let garbage = "{\"version\": 1, \"apps\": [{\"name\": \"web\", \"conf"
            try garbage.write(toFile: s.stateDir + "/apps.json", atomically: true, encoding: .utf8)
            let d = try await s.startDaemon()
            try await waitUntil(timeout: 5, "swarmd to report the corrupt state file") { d.stderr.contains("apps.json") }
            #expect(d.stderr.contains("unreadable") && d.stderr.contains("moved it to"), "log: \(d.stderr.suffix(1500))")
            let files = try FileManager.default.contentsOfDirectory(atPath: s.stateDir)
            let aside = files.filter { $0.hasPrefix("apps.json.corrupt-") }
            #expect(aside.count == 1, "state dir: \(files)")
            if let a = aside.first { #expect(readText(s.stateDir + "/" + a) == garbage) }
            let status = try s.quickStatus()
            #expect(status.apps.isEmpty)
            // The state file it writes now is valid.
            let text = readText(s.stateDir + "/apps.json")
            #expect(text.isEmpty || (try? JSONSerialization.jsonObject(with: Data(text.utf8))) != nil, "apps.json now: \(text)")
        }
    }

    @Test("slow loris on the control socket: cut off after ~10 s while other clients are served")
    func slowLoris() async throws {
        try await withSwarm { s in
            try await s.startDaemon()
            let loris = try ControlConnection(path: s.socket, timeout: 20)
            try loris.send(Array("{\"v\":1,\"id\":7,\"verb\":\"sta".utf8))
            let t0 = Date()
            // When swarmd answers the slow client, timed by a thread of its own blocked in poll():
            // the loop below may wake late on a loaded machine, and must not move this instant.
            let answered = LockedValue<Double?>(nil)
            let fd = loris.fd
            Thread {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 15_000) > 0 { answered.set(elapsed(since: t0)) }
            }.start()
            var served = 0
            var slowest = 0.0
            while answered.get() == nil && elapsed(since: t0) < 15 {
                let (took, _) = try timedStatus(s)
                served += 1
                slowest = max(slowest, took)
                try await Task.sleep(nanoseconds: 250_000_000)
            }
            let after = try #require(answered.get(), "the slow client was not disconnected within 15 s")
            var reply = ""
            while let f = try loris.receiveFrame() { reply += String(decoding: f, as: UTF8.self) }
            #expect(after >= 9.5 && after <= 12.5, "disconnected after \(after)s; expected ~10 s")
            #expect(reply.contains("not completed within"), "reply to the slow client: \(reply)")
            // ~40 status calls in the 10 s if every 250 ms sleep were on time; under a sanitizer and parallel
            // tests the sleeps overrun: what matters is that calls kept being answered, each within a second.
            #expect(served >= 10 && slowest < 1, "other clients: \(served) served, slowest \(slowest)s")
        }
    }

    @Test("1,000 idle control connections: status still answers within a second")
    func thousandIdleConnections() async throws {
        try await withSwarm { s in
            ProcPeek.raiseNoFile(to: 4096)
            let d = try await s.startDaemon()
            var fds: [Int32] = []
            defer { for fd in fds { close(fd) } }
            for i in 0..<1000 {
                do { fds.append(try Sockets.connectUnix(s.socket)) } catch {
                    throw HarnessError("connection \(i + 1) of 1000 failed: \(error)")
                }
            }
            // swarmd has accepted them all (its fds), not merely queued them.
            let held = try await waitUntil(timeout: 10, "swarmd to accept 1000 connections") { () -> Int? in
                let n = ProcFS.listDirectory("/proc/\(d.pid)/fd")?.count ?? 0
                return n >= 1000 ? n : nil
            }
            var slowest = 0.0
            for _ in 0..<5 {
                let (took, report) = try timedStatus(s)
                slowest = max(slowest, took)
                #expect(report.daemon.pid == d.pid)
            }
            #expect(slowest < 1, "status took \(slowest)s with 1000 idle connections")
            // Past the cap of 1,024: refused with a reason, not left hanging.
            var extra: [ControlConnection] = []
            for _ in 0..<30 { extra.append(try ControlConnection(path: s.socket, timeout: 5)) }
            let refused = try extra.last!.receive()
            #expect(refused?.ok == false && refused?.error?.contains("too many control connections") == true,
                    "connection 1030: \(String(describing: refused))")
            extra = []
            reportFigure("idle control connections: \(fds.count) open (swarmd holds \(held) fds), slowest status \(String(format: "%.3f", slowest))s")
            for fd in fds { close(fd) }
            fds = []
            try await waitUntil(timeout: 10, "swarmd to drop the closed connections") { (ProcFS.listDirectory("/proc/\(d.pid)/fd")?.count ?? 0) < 100 }
        }
    }

    @Test("crash-loop storm: 10 apps × 8 crashing workers cost swarmd < 5% of a core once backed off")
    func crashLoopStorm() async throws {
        // Alone: it measures swarmd's share of a core, which other tests' load inflates (5.2 % beside
        // the suite in a CI run of 2026-12-03, 4.0-4.3 % alone on the same day's machine).
        try await withSwarm(exclusive: true) { s in
            var confs: [String] = []
            for i in 0..<10 {
                // python -S: no site import, a sixth of the start-up CPU; the machine is shared.
                confs.append(try s.write("crash\(i).conf", Conf.app("crash\(i)", command: [Paths.python, "-S", Paths.pythonApps + "/crash.py"],
                                                                     workers: 8, extra: "[restart]\nmax_delay = \"5s\"\n")))
            }
            let d = try await s.startDaemon(confs)
            try await waitUntil(timeout: 40, "all 10 apps to be in crash-loop") {
                let st = try s.quickStatus()
                return st.apps.count == 10 && st.apps.allSatisfy { $0.state == "crash-loop" }
            }
            /// Restarts so far, summed over every slot of every app.
            func restarts(_ r: StatusReport) -> Int {
                r.apps.reduce(0) { acc, a in acc + Dictionary(a.workers.map { ($0.slot, $0.restarts) }, uniquingKeysWith: max).values.reduce(0, +) }
            }
            // Every slot now retries once per max_delay; start the window 1 s into that period, so
            // the next batch (due ~5 s after entering the crash loop) falls inside it.
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let restarts0 = restarts(try s.quickStatus())
            let ticks0 = try #require(ProcPeek.cpuTicks(d.pid))
            let t0 = Date()
            var slowest = 0.0
            for _ in 0..<5 {
                try await Task.sleep(nanoseconds: 1_000_000_000)
                slowest = max(slowest, try timedStatus(s).seconds)
            }
            let ticks1 = try #require(ProcPeek.cpuTicks(d.pid))
            let span = elapsed(since: t0)
            let share = Double(ticks1 - ticks0) / Double(ProcFS.clockTicks) / span
            let respawned = restarts(try s.quickStatus()) - restarts0
            reportFigure("crash-loop storm (10×8 crash.py, max_delay 5s): swarmd CPU \(String(format: "%.2f", share * 100))% of a core over \(String(format: "%.1f", span))s with \(respawned) restarts in that time, slowest status \(String(format: "%.3f", slowest))s")
            // Every crash-looping slot is retried once per max_delay: the window saw real work.
            #expect(respawned >= 20, "only \(respawned) restarts in \(span)s: the window measured an idle swarmd")
            // A sanitized swarmd runs several times slower: its bound is scaled (scripts/sanitize.sh sets SWARM_SANITIZER).
            #expect(share < 0.05 * sanitizerSlowdown, "swarmd used \(share * 100)% of a core during the crash-loop storm")
            // Status must answer. Not within 1 s: spawns are synchronous (fork, then wait for the child's exec),
            // so when 80 restarts fall due in one tick on a loaded 2-core machine the loop is busy ~1-2 s.
            #expect(slowest < 3, "status took \(slowest)s during the storm")
            let st = try s.quickStatus()
            #expect(st.apps.allSatisfy { $0.workers.count == 8 }, "\(st.apps.map { "\($0.name): \($0.workers.count)" })")
        }
    }

    @Test("log flood: status stays fast, swarmd's RSS stays bounded, the log files rotate")
    func logFlood() async throws {
        try await withSwarm { s in
            let conf = try s.write("flood.conf", Conf.python("flood", script: "flood.py", workers: 1,
                                                             extra: "[logs]\nmax_size = \"1MiB\"\nkeep = 2\n"))
            let d = try await s.startDaemon([conf])
            try await s.waitReady("flood", workers: 1)
            let logs = s.stateDir + "/logs"
            try await waitUntil(timeout: 30, "flood.log.2 to appear (rotation)") { access(logs + "/flood.log.2", F_OK) == 0 }
            var slowest = 0.0
            var maxRSS: Int64 = 0
            let t0 = Date()
            while elapsed(since: t0) < 3 {
                slowest = max(slowest, try timedStatus(s).seconds)
                maxRSS = max(maxRSS, ProcPeek.rss(d.pid) ?? 0)
                try await Task.sleep(nanoseconds: 200_000_000)
            }
            // Still flooding: the worker's CPU keeps growing.
            let files = try FileManager.default.contentsOfDirectory(atPath: logs).filter { $0.hasPrefix("flood.log") }.sorted()
            var total: Int64 = 0
            for f in files {
                let size = (try? FileManager.default.attributesOfItem(atPath: logs + "/" + f)[.size] as? NSNumber)?.int64Value ?? 0
                total += size
                #expect(size <= (1 << 20) + 32 << 10, "\(f) is \(size) bytes, above max_size 1MiB")
            }
            #expect(Set(files) == ["flood.log", "flood.log.1", "flood.log.2"], "log files: \(files)")
            let lastLine = readText(logs + "/flood.log.1").split(separator: "\n").last.map(String.init) ?? ""
            #expect(lastLine.contains("flood") && lastLine.contains("line"), "rotated file content: \(lastLine)")
            reportFigure("log flood: swarmd max RSS \(maxRSS >> 20) MiB, slowest status \(String(format: "%.3f", slowest))s, logs on disk \(total >> 10) KiB in \(files.count) files")
            #expect(maxRSS < 100 << 20, "swarmd RSS reached \(maxRSS >> 20) MiB during the flood")
            #expect(slowest < 2, "status took \(slowest)s during the flood")
            #expect(total <= 3 * (1 << 20) + 96 << 10, "logs use \(total) bytes on disk")
            try await s.ctlOK("stop", "flood")
        }
    }

    @Test("workers that all die at once: each one's last lines (stdout, and stderr without a newline) are logged")
    func lastLinesOfWorkersDyingTogether() async throws {
        try await withSwarm { s in
            let n = 200
            // On SIGTERM each worker says goodbye on both streams and exits; swarmd's shutdown
            // signals all of them in one turn, so all their pipes hang up together.
            let script = [
                #"trap 'echo "last line of slot $SWARM_WORKER"; printf "stderr tail of slot %s" "$SWARM_WORKER" >&2; exit 0' TERM"#,
                #"echo "up $SWARM_WORKER""#,
                "while :; do sleep 60 & wait $!; done",
            ].joined(separator: "; ")
            let conf = try s.write("last.conf", Conf.app("last", command: ["/bin/sh", "-c", script], workers: n,
                                                         extra: "[ready]\nmode = \"delay\"\ndelay = \"0s\"\n[logs]\ntarget = \"file\"\n"))
            try await s.startDaemon([conf])
            try await s.waitReady("last", workers: n, timeout: 60)
            let log = s.stateDir + "/logs/last.log"
            try await waitUntil(timeout: 20, "every worker's first line in \(log)") {
                readText(log).components(separatedBy: "\n").filter { $0.contains(" up ") }.count == n
            }
            let code = try await s.stopDaemon(timeout: 60)
            #expect(code == 0, "swarmd exit code after SIGTERM; log:\n\(s.daemonLog.suffix(2000))")
            let lines = readText(log).components(separatedBy: "\n")
            let stdout = Set(lines.compactMap { l in l.range(of: "last line of slot ").map { String(l[$0.upperBound...]) } })
            let stderr = Set(lines.compactMap { l in l.range(of: "stderr tail of slot ").map { String(l[$0.upperBound...]) } })
            let slots = Set((0..<n).map(String.init))
            #expect(stdout == slots, "slots whose last stdout line is missing: \(slots.subtracting(stdout).sorted())")
            #expect(stderr == slots, "slots whose unterminated stderr line is missing: \(slots.subtracting(stderr).sorted())")
        }
    }

    @Test("[limits] nofile = 1234 is the worker's RLIMIT_NOFILE")
    func nofileLimit() async throws {
        try await withSwarm { s in
            let conf = try s.write("lim.conf", Conf.app("lim", command: ["/bin/sleep", "600"], extra: "[limits]\nnofile = 1234\n"))
            try await s.startDaemon([conf])
            let pid = try #require(try await s.waitReady("lim", workers: 1).first)
            let line = ProcPeek.line(pid, file: "limits", prefix: "Max open files") ?? ""
            let numbers = line.split(separator: " ").compactMap { Int($0) }
            #expect(numbers == [1234, 1234], "/proc/\(pid)/limits: \(line)")
        }
    }

    /// `daemon-reexec`, then `kill -9` of the first of `workers`: the pid of the
    /// ready worker the re-executed image started in its place.
    static func reexecAndReplaceOne(_ s: Swarm, _ d: Child, app: String, workers first: [Int32]) async throws -> Int32 {
        try await s.ctlOK("daemon-reexec")
        try await waitUntil(timeout: 15, "swarmd to log that it re-executed") { d.stderr.contains("re-executed as pid") }
        _ = try await s.waitReady(app, workers: first.count)
        kill(first[0], SIGKILL)
        return try await waitUntil(timeout: 15, "a new worker for the killed \(first[0]) after the re-exec") { () -> Int32? in
            try s.quickStatus().apps.first?.workers.first { $0.pid != nil && !first.contains($0.pid!) && $0.state == "ready" }?.pid
        }
    }

    @Test("swarmd runs 10 nice levels above the priority it was started with; its workers keep that priority and RLIMIT_NOFILE, across a re-exec too",
          .enabled(if: getuid() == 0, "needs root (CAP_SYS_NICE) to raise swarmd's priority"))
    func priorityBoostAndOriginalLimitsAcrossReexec() async throws {
        try await withSwarm { s in
            // Started at nice +3 and a soft fd limit below the hard one, so both "raised" and "original" differ.
            let own = try #require(niceOf(getpid())) + 3
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            let soft = min(1024, limit.rlim_max)
            let ownFiles = [Int(soft), Int(limit.rlim_max)]
            func files(_ pid: Int32) -> [Int] {
                (ProcPeek.line(pid, file: "limits", prefix: "Max open files") ?? "").split(separator: " ").compactMap { Int($0) }
            }
            let conf = try s.write("calm.conf", Conf.app("calm", command: ["/bin/sleep", "600"], workers: 2))
            let d = try s.launchDaemon(["--socket", s.socket, "--state-dir", s.stateDir, conf],
                                       wrapper: ["/usr/bin/nice", "-n", "3", "/usr/bin/prlimit", "--nofile=\(soft):\(limit.rlim_max)", "--"])
            try await waitUntil(timeout: 15, "swarmd (pid \(d.pid)) to answer ping") {
                if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            let first = try await s.waitReady("calm", workers: 2)
            #expect(niceOf(d.pid) == max(-20, own - 10), "swarmd's nice: \(niceOf(d.pid) ?? 99), started at \(own)")
            #expect(first.allSatisfy { niceOf($0) == own }, "workers' nice: \(first.map { niceOf($0) ?? 99 })")
            #expect(d.stderr.contains("Running at nice \(max(-20, own - 10)); workers start at nice \(own)"), "\(d.stderr.suffix(1500))")
            #expect(first.allSatisfy { files($0) == ownFiles }, "workers' fd limits: \(first.map(files)), want \(ownFiles)")

            let replaced = try await Self.reexecAndReplaceOne(s, d, app: "calm", workers: first)
            #expect(niceOf(d.pid) == max(-20, own - 10), "swarmd's nice after the re-exec: \(niceOf(d.pid) ?? 99)")
            #expect(niceOf(replaced) == own, "a worker spawned by the re-executed image: nice \(niceOf(replaced) ?? 99), not swarmd's")
            #expect(files(replaced) == ownFiles, "its RLIMIT_NOFILE is the one swarmd was started with, not the one it raised: \(files(replaced)) vs \(ownFiles)")
            #expect(files(d.pid).first == Int(limit.rlim_max), "swarmd itself keeps its raised limit: \(files(d.pid))")
        }
    }

    @Test("--priority-boost 0 leaves swarmd at the priority it was started with; a boost outside 0-39 is refused")
    func priorityBoostOffAndOutOfRange() async throws {
        try await withSwarm { s in
            let own = try #require(niceOf(getpid()))
            let refused = try Child.spawn(Paths.swarmd, ["--socket", s.socket, "--state-dir", s.stateDir, "--priority-boost", "40"],
                                          dir: s.dir, label: "swarmd-boost-40")
            #expect(try await refused.wait(timeout: 15) == 64)
            #expect(refused.stderr.contains("--priority-boost must be 0 to 39"), "\(refused.stderr)")
            let conf = try s.write("calm.conf", Conf.app("calm", command: ["/bin/sleep", "600"]))
            let d = try await s.startDaemon([conf], args: ["--priority-boost", "0"])
            let pid = try #require(try await s.waitReady("calm", workers: 1).first)
            #expect(niceOf(d.pid) == own && niceOf(pid) == own, "swarmd \(niceOf(d.pid) ?? 99), worker \(niceOf(pid) ?? 99), started at \(own)")
        }
    }

    @Test("by default swarmd runs SCHED_RR at 1 under a 5 s RLIMIT_RTTIME guard, its workers and hooks SCHED_OTHER at their own nice with the limit swarmd was started with, across a re-exec too; 100 is refused",
          .enabled(if: getuid() == 0, "needs root (CAP_SYS_NICE) for a real-time policy"))
    func realtimePriorityStaysWithSwarmd() async throws {
        try await withSwarm { s in
            let refused = try Child.spawn(Paths.swarmd, ["--socket", s.socket, "--state-dir", s.stateDir, "--realtime-priority", "100"],
                                          dir: s.dir, label: "swarmd-rt-100")
            #expect(try await refused.wait(timeout: 15) == 64)
            #expect(refused.stderr.contains("--realtime-priority must be 0 (off) or a SCHED_RR priority 1 to 99"), "\(refused.stderr)")
            let own = try #require(niceOf(getpid()))
            // The hook (a waiting spawn) records its own policy: field 41 of /proc/self/stat.
            let hook = try s.write("policy.sh", "#!/bin/sh\ncut -d' ' -f41 /proc/self/stat > \(s.dir)/hook-policy.$$\n")
            chmod(hook, 0o755)
            let conf = try s.write("rt.conf", Conf.app("rt", command: ["/bin/sleep", "600"], workers: 2, extra: "[hooks]\non_ready = [\"\(hook)\"]\n"))
            let d = try await s.startDaemon([conf], realtime: true)
            func policy(_ pid: Int32) -> Int32 { sched_getscheduler(pid) }
            func rtPriority(_ pid: Int32) -> Int32 {
                var p = sched_param()
                return sched_getparam(pid, &p) == 0 ? p.sched_priority : -1
            }
            let first = try await s.waitReady("rt", workers: 2)
            #expect(policy(d.pid) == SCHED_RR && rtPriority(d.pid) == 1, "swarmd: policy \(policy(d.pid)), priority \(rtPriority(d.pid))")
            #expect(first.allSatisfy { policy($0) == SCHED_OTHER && niceOf($0) == own },
                    "workers: policies \(first.map(policy)), nice \(first.map { niceOf($0) ?? 99 }), want SCHED_OTHER at \(own)")
            #expect(d.stderr.contains("Running under SCHED_RR at priority 1; workers run under SCHED_OTHER"), "\(d.stderr.suffix(1500))")
            let hooks = try await waitUntil(timeout: 15, "the on_ready hooks to record their policy") { () -> [String]? in
                let files = (try? FileManager.default.contentsOfDirectory(atPath: s.dir).filter { $0.hasPrefix("hook-policy.") }) ?? []
                let seen = files.compactMap { try? String(contentsOfFile: s.dir + "/" + $0, encoding: .utf8) }
                    .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
                return seen.count >= 2 ? seen : nil
            }
            #expect(hooks.allSatisfy { $0 == "\(SCHED_OTHER)" }, "hooks' policies: \(hooks)")
            let ownLimit = try #require(Self.realtimeTimeout(getpid()))
            #expect(Self.realtimeTimeout(d.pid) == "5000000 \(ownLimit.split(separator: " ").last ?? "?")", "swarmd's RLIMIT_RTTIME: \(Self.realtimeTimeout(d.pid) ?? "?"), the test's \(ownLimit)")
            #expect(first.allSatisfy { Self.realtimeTimeout($0) == ownLimit }, "workers' RLIMIT_RTTIME: \(first.map { Self.realtimeTimeout($0) ?? "?" }), want \(ownLimit)")

            let replaced = try await Self.reexecAndReplaceOne(s, d, app: "rt", workers: first)
            #expect(policy(d.pid) == SCHED_RR, "swarmd after the re-exec: policy \(policy(d.pid))")
            #expect(policy(replaced) == SCHED_OTHER && niceOf(replaced) == own, "a worker the re-executed image spawned: policy \(policy(replaced)), nice \(niceOf(replaced) ?? 99)")
            #expect(Self.realtimeTimeout(replaced) == ownLimit, "RLIMIT_RTTIME of a worker the re-executed image spawned: \(Self.realtimeTimeout(replaced) ?? "?"), want \(ownLimit)")
            #expect(Self.realtimeTimeout(d.pid)?.hasPrefix("5000000 ") == true, "swarmd's RLIMIT_RTTIME after the re-exec: \(Self.realtimeTimeout(d.pid) ?? "?")")
        }
    }

    @Test("kill -9 of 160 workers at once: every replacement reuses a cgroup of the killed (none removed and made anew)",
          .enabled(if: getuid() == 0, "needs root for cgroups"))
    func aStormReusesEveryCgroup() async throws {
        try await withSwarm { s in
            let conf = try s.write("many.conf", Conf.app("many", command: ["/bin/sleep", "600"], workers: 160))
            _ = try await s.startDaemon([conf])
            func cgroupOf(_ pid: Int32) -> String? {
                (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8))?
                    .split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
            }
            let old = try await s.waitReady("many", workers: 160, timeout: 60)
            let oldCgroups = Set(old.compactMap(cgroupOf))
            try #require(oldCgroups.count == 160, "each worker in a cgroup of its own: \(oldCgroups.count) cgroups for 160 workers (\(oldCgroups.first ?? "none"))")
            for pid in old { kill(pid, SIGKILL) }
            let new = try await waitUntil(timeout: 60, "160 new ready workers after the storm") { () -> [Int32]? in
                let pids = try s.quickStatus().apps.first { $0.name == "many" }?.workers.filter { $0.state == "ready" }.compactMap(\.pid) ?? []
                return pids.count == 160 && Set(pids).isDisjoint(with: old) ? pids : nil
            }
            let newCgroups = Set(new.compactMap(cgroupOf))
            #expect(newCgroups.count == 160, "\(newCgroups.count) cgroups for 160 replacements")
            let made = newCgroups.subtracting(oldCgroups)
            #expect(made.count == 0, "\(made.count) of 160 replacements in a new cgroup, e.g. \(made.sorted().prefix(3))")
        }
    }

    @Test("--realtime-priority 0: swarmd stays under SCHED_OTHER (at its boost) and sets no RLIMIT_RTTIME",
          .enabled(if: getuid() == 0, "needs root (CAP_SYS_NICE) to tell a refusal from an opt-out"))
    func realtimeOptOut() async throws {
        try await withSwarm { s in
            let conf = try s.write("plain.conf", Conf.app("plain", command: ["/bin/sleep", "600"]))
            let d = try await s.startDaemon([conf], args: ["--realtime-priority", "0"])
            _ = try await s.waitReady("plain", workers: 1)
            #expect(sched_getscheduler(d.pid) == SCHED_OTHER, "swarmd: policy \(sched_getscheduler(d.pid))")
            #expect(Self.realtimeTimeout(d.pid) == Self.realtimeTimeout(getpid()), "swarmd's RLIMIT_RTTIME: \(Self.realtimeTimeout(d.pid) ?? "?")")
            #expect(!d.stderr.contains("SCHED_RR"), "\(d.stderr.suffix(1500))")
        }
    }

    /// "SOFT HARD" of /proc/PID/limits' "Max realtime timeout" line (µs or "unlimited").
    static func realtimeTimeout(_ pid: Int32) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Max realtime timeout") }) else { return nil }
        let fields = line.dropFirst("Max realtime timeout".count).split(separator: " ")
        return fields.count >= 2 ? "\(fields[0]) \(fields[1])" : nil
    }

    @Test("[limits] memory = \"30MiB\": a growing worker is replaced")
    func memoryCeiling() async throws {
        try await withSwarm { s in
            let script = try s.write("grow.py", """
                import time
                chunks = []
                for _ in range(40):   # at most ~160 MiB even if nobody stops it
                    chunks.append(b"\\x01" * (4 << 20))
                    time.sleep(0.1)
                while True:
                    time.sleep(1)

                """)
            let conf = try s.write("grow.conf", Conf.app("grow", command: [Paths.python, script],
                                                         extra: "[limits]\nmemory = \"30MiB\"\n"))
            let d = try await s.startDaemon([conf])
            let first = try await waitUntil(timeout: 10 * sanitizerSlowdown, "the first grow worker") { () -> Int32? in
                try s.quickStatus().apps.first?.workers.first?.pid
            }
            let replacement = try await waitUntil(timeout: 15, "grow's worker \(first) to be replaced for its memory") { () -> Int32? in
                let w = try s.quickStatus().apps.first?.workers.first { $0.slot == 0 }
                guard let p = w?.pid, p != first, (w?.restarts ?? 0) >= 1 else { return nil }
                return p
            }
            #expect(d.stderr.contains("ceiling"), "log: \(d.stderr.suffix(1500))")
            try await waitUntil(timeout: 5, "the replaced worker \(first) to be gone") { !ProcState.exists(first) }
            #expect(replacement != first)
        }
    }

    @Test("user = \"nobody\": the worker runs as nobody with no supplementary groups",
          .enabled(if: getuid() == 0, "needs root to switch users"))
    func runsAsNobody() async throws {
        try await withSwarm { s in
            let nobody = try #require(Users.lookupUser("nobody"))
            let conf = try s.write("nob.conf", Conf.app("nob", command: ["/bin/sleep", "600"], extra: "user = \"nobody\"\n"))
            try await s.startDaemon([conf])
            let pid = try #require(try await s.waitReady("nob", workers: 1).first)
            func ids(_ key: String) -> [String] {
                (ProcPeek.line(pid, file: "status", prefix: key) ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().map(String.init)
            }
            #expect(ids("Uid:") == Array(repeating: String(nobody.uid), count: 4), "Uid: \(ids("Uid:"))")
            #expect(ids("Gid:") == Array(repeating: String(nobody.gid), count: 4), "Gid: \(ids("Gid:"))")
            #expect(ids("Groups:").isEmpty, "supplementary groups: \(ids("Groups:"))")
        }
    }
}
