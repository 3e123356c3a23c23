import Foundation
import Glibc
import SwarmProtocol
import Testing

@Suite("Limits: fork failing with EAGAIN backs off")
struct ProcessLimitTests {
    /// swarmd runs as nobody with RLIMIT_NPROC = 1: every fork of a worker
    /// fails with EAGAIN. The slot must back off (growing delays, crash-loop
    /// state, the errno in status) instead of spinning, and swarmd stays idle.
    @Test(.enabled(if: getuid() == 0, "needs root to run swarmd as nobody"))
    func eagainBacksOff() async throws {
        try await withSwarm { s in
            chmod(s.dir, 0o777)
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
            // Root may drive a daemon of another uid.
            let r = try await s.ctl("start", conf)
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
            try await Task.sleep(nanoseconds: 2_000_000_000)
            let after = try s.quickStatus().apps[0].workers[0].restarts
            let cpu = Double((ProcPeek.cpuTicks(daemon.pid) ?? 0) - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK)))
            #expect(after - before <= 4, "\(after - before) fork attempts in 2 s: not backing off")
            #expect(cpu < 0.2, "swarmd used \(cpu)s of CPU in 2 s while forks failed")
            #expect(elapsed(since: t0) < 15)
            #expect(daemon.stderr.contains("crash loop"), "the crash loop is logged")
        }
    }
}
