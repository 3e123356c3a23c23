import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// CI and systemd units may start swarmd with a strict umask (`UMask=0177`).
/// What swarmd creates must still have the modes it means (a state directory
/// it can enter, logs the group may read), not the umask's leftovers.
@Suite("A strict umask does not decide swarmd's own modes")
struct UmaskTests {
    @Test("under umask 0177 the state dir is 0700, logs/ 0750, a log file 0640, apps.json 0600, and the app's log is written")
    func strictUmask() async throws {
        try await withSwarm { s in
            let conf = try s.write("echo.conf", Conf.app("echo", command: ["/bin/sh", "-c", "echo started; exec sleep 1000"], workers: 1))
            let state = s.dir + "/fresh-state"
            let d = try s.launchDaemon(["--socket", s.socket, "--state-dir", state, conf],
                                       wrapper: ["/bin/sh", "-c", "umask 0177; exec \"$0\" \"$@\""])
            try await waitUntil(timeout: 15, "swarmd (under umask 0177) to answer ping on \(s.socket)") {
                if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            try await s.waitReady("echo", workers: 1)
            try await waitUntil(timeout: 10, "the worker's line in \(state)/logs/echo.log") {
                (try? String(contentsOfFile: state + "/logs/echo.log", encoding: .utf8))?.contains("started") == true
            }
            try await waitUntil(timeout: 10, "\(state)/apps.json to be written") { access(state + "/apps.json", F_OK) == 0 }
            #expect(try FileSystem.status(state).permissions == 0o700)
            #expect(try FileSystem.status(state + "/logs").permissions == 0o750)
            #expect(try FileSystem.status(state + "/logs/echo.log").permissions == 0o640)
            #expect(try FileSystem.status(state + "/apps.json").permissions == 0o600)
        }
    }
}
