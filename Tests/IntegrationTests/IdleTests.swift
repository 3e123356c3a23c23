import Foundation
import Glibc
import Testing

/// An idle swarmd sleeps until a deadline the core asked for: no periodic wake-up (issue 18).
@Suite("Idle: no wake-up without a due deadline")
struct IdleTests {
    /// Context switches of `pid` so far (voluntary + involuntary): each wake-up from epoll_wait is one.
    static func switches(_ pid: pid_t) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        var total = 0
        for line in text.split(separator: "\n") where line.contains("ctxt_switches:") {
            total += Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return total
    }

    @Test("with workers running and no client, swarmd is not woken for 3 s (the 1 s sweep runs only while it has work)")
    func idleDaemonSleeps() async throws {
        try await withSwarm { s in
            let conf = try s.write("idle.conf", Conf.app("idle", command: ["/bin/sleep", "100000"], workers: 4,
                                                         extra: "[ready]\nmode = \"delay\"\ndelay = \"0s\""))
            let daemon = try await s.startDaemon([conf])
            _ = try await s.waitReady("idle", workers: 4)
            // The sweep stops once the last client has gone and 2 s passed without spawning or control traffic.
            try await Task.sleep(nanoseconds: 4_000_000_000)
            let before = try Self.switches(daemon.pid)
            try await Task.sleep(nanoseconds: 3_000_000_000)
            let after = try Self.switches(daemon.pid)
            #expect(after - before <= 1, "swarmd was woken \(after - before) times in 3 s of idling")
            #expect(try s.request(.ping).ok == true, "swarmd still answers after idling")
        }
    }
}
