import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

@Suite("Limits: fork failing with EAGAIN backs off")
struct ProcessLimitTests {
    /// swarmd runs as nobody with RLIMIT_NPROC = 1: every fork of a worker
    /// fails with EAGAIN. The slot must back off (growing delays, crash-loop
    /// state, the errno in status) instead of spinning, and swarmd stays idle.
    @Test(.enabled(if: getuid() == 0, "needs root to run swarmd as nobody"))
    func eagainBacksOff() async throws {
        try await withSwarm { s in
            // swarmd trusts only directories its own uid owns (the socket's and the state dir).
            chown(s.dir, 65534, 65534)
            chmod(s.dir, 0o755)
            if access(s.stateDir, F_OK) == 0 { chown(s.stateDir, 65534, 65534) }
            let conf = try s.write("sleepy.conf", Conf.app("sleepy", command: ["/bin/sleep", "1000"], workers: 1,
                                                             extra: "[restart]\ninitial_delay = \"50ms\"\nmax_delay = \"1s\"\n[ready]\nmode = \"delay\"\ndelay = \"0s\""))
            chmod(conf, 0o644)
            let daemon = try Child.spawn("/usr/bin/prlimit", ["--nproc=1:1", "/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup",
                                                             "--clear-groups", Paths.swarmd, "--socket", s.socket, "--state-dir", s.stateDir],
                                         dir: s.dir, label: "swarmd-nproc")
            defer {
                daemon.signal(SIGTERM)
                for _ in 0..<500 where daemon.running { usleep(10_000) }
                daemon.signal(SIGKILL)
            }
            try await waitUntil(timeout: 15, "swarmd (as nobody) to answer on \(s.socket): \(daemon.stderr)") {
                if let code = daemon.poll() { throw HarnessError("swarmd exited with \(code): \(daemon.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            // Root may drive a daemon of another uid, when it says it trusts that uid.
            let r = try await s.ctl("start", "--trust-uid", "nobody", conf)
            #expect(r.code == 1, "the start cannot succeed: \(r)")
            #expect(r.err.contains("EAGAIN"), "the failure names the errno: \(r)")
            let t0 = Date()
            let report = try await waitUntil(timeout: 15, "the slot to reach crash-loop") { () -> StatusReport? in
                let st = try s.quickStatus()
                return st.apps.first?.workers.first?.state == "crash-loop" ? st : nil
            }
            let w = try #require(report.apps.first?.workers.first)
            #expect(w.pid == nil)
            #expect(w.lastExit?.contains("Resource temporarily unavailable") == true, "\(String(describing: w.lastExit))")
            // Backed off: over 2 s, at most a few attempts (delays 50ms…1s), and swarmd nearly idle.
            let before = try s.quickStatus().apps[0].workers[0].restarts
            let cpu0 = ProcPeek.cpuTicks(daemon.pid) ?? 0
            let t1 = Date()
            try await Task.sleep(nanoseconds: 2_000_000_000)
            let after = try s.quickStatus().apps[0].workers[0].restarts
            // The sleep can overrun on a loaded machine (tests run in parallel): allow one attempt per
            // max_delay (1 s) of the real span, plus the attempts straddling its ends.
            let span = elapsed(since: t1)
            let cpu = Double((ProcPeek.cpuTicks(daemon.pid) ?? 0) - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK)))
            #expect(after - before <= Int(span) + 2, "\(after - before) fork attempts in \(span) s: not backing off")
            #expect(cpu < 0.1 * span, "swarmd used \(cpu)s of CPU in \(span) s while forks failed")
            #expect(elapsed(since: t0) < 15)
            #expect(daemon.stderr.contains("crash loop"), "the crash loop is logged")
        }
    }
}

@Suite("Limits: fd exhaustion on the control socket")
struct FileLimitTests {
    /// swarmd with RLIMIT_NOFILE = 64 (hard): clients open more connections
    /// than it has fds. accept() fails with EMFILE; swarmd must pause accepting
    /// rather than spin on the readable socket, keep its workers, and answer
    /// again once the clients go away.
    @Test func emfileIsSurvived() async throws {
        try await withSwarm { s in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let daemon = try Child.spawn("/usr/bin/prlimit", ["--nofile=64:64", Paths.swarmd, "--socket", s.socket, "--state-dir", s.stateDir, conf],
                                         dir: s.dir, label: "swarmd-nofile")
            defer {
                daemon.signal(SIGTERM)
                for _ in 0..<500 where daemon.running { usleep(10_000) }
                daemon.signal(SIGKILL)
            }
            let pids = try await waitUntil(timeout: 20, "web to be ready under RLIMIT_NOFILE=64: \(daemon.stderr)") { () -> [Int32]? in
                if let code = daemon.poll() { throw HarnessError("swarmd exited with \(code): \(daemon.stderr)") }
                guard let st = try? s.quickStatus(), let app = st.apps.first, app.workersReady == 2 else { return nil }
                return app.workers.compactMap(\.pid)
            }
            // More connections than swarmd has fds left.
            var held: [Int32] = []
            defer { for fd in held { close(fd) } }
            for _ in 0..<120 {
                if let fd = try? Sockets.connectUnix(s.socket) { held.append(fd) }
            }
            try await waitUntil(timeout: 10, "swarmd to log EMFILE on accept") { daemon.stderr.contains("EMFILE") }
            let cpu0 = ProcPeek.cpuTicks(daemon.pid) ?? 0
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let ticks = (ProcPeek.cpuTicks(daemon.pid) ?? 0) - cpu0
            #expect(ticks < 30, "swarmd spun: \(ticks) ticks of CPU in 1 s while out of fds")
            #expect(daemon.running)
            // The workers never noticed.
            #expect(Set(try answeringPids(port, connections: 8).keys).isSubset(of: Set(pids)))
            for fd in held { close(fd) }
            held = []
            try await waitUntil(timeout: 10, "status to answer again once the clients are gone") {
                (try? s.quickStatus())?.apps.first?.workersReady == 2
            }
            #expect(daemon.running)
        }
    }
}
