import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

/// A control socket served by `nobody`: answers every request line with an
/// ok result, and logs how many bytes each connection sent.
private let fakeServer = #"""
import json, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    c.settimeout(2)
    try:
        while not data.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    print("got %d bytes" % len(data), flush=True)
    for line in data.splitlines():
        req = json.loads(line)
        c.sendall(json.dumps({"v": 1, "id": req["id"], "kind": "result", "ok": True, "message": "pong from a stranger"}).encode() + b"\n")
    c.close()
"""#

/// An app with no socket, ready at once.
private func sleeper(_ name: String) -> String {
    Conf.app(name, command: ["/bin/sleep", "1000"], extra: "[ready]\nmode = \"delay\"\ndelay = \"0s\"")
}

@Suite("swarmctl trusts only root, its own uid, or a uid it is told to")
struct CtlTrustTests {
    /// Runs swarmctl with a chosen environment and cwd, optionally as nobody.
    func run(_ s: Swarm, _ args: [String], env: [String: String] = [:], asNobody: Bool = false, cwd: String? = nil) async throws -> CtlResult {
        var argv = args
        var executable = Paths.swarmctl
        if asNobody {
            argv = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", Paths.swarmctl] + argv
            executable = "/usr/bin/setpriv"
        }
        let c = try Child.spawn(executable, argv, env: childEnvironment(env), dir: s.dir, label: s.label("ctl"), cwd: cwd)
        let code = try await c.wait(timeout: 30, "swarmctl \(args.joined(separator: " ")) to finish")
        return CtlResult(args: args, code: code, out: c.stdout, err: c.stderr)
    }

    @Test("a socket served by another uid is refused, naming the socket and the uid; --trust-uid / SWARM_TRUST_UID allow it",
          .enabled(if: getuid() == 0, "needs root to run a server as nobody"))
    func foreignServer() async throws {
        try await withSwarm { s in
            let dir = s.dir + "/squat"
            #expect(mkdir(dir, 0o777) == 0 && chmod(dir, 0o777) == 0)
            let path = dir + "/swarmd.sock"
            let server = try Child.spawn("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", Paths.python, "-c", fakeServer, path],
                                         dir: s.dir, label: "fake-server")
            defer {
                server.signal(SIGKILL)
                _ = server.poll()
            }
            try await waitUntil(timeout: 10, "the fake server (as nobody) to listen on \(path): \(server.stderr)") {
                if let code = server.poll() { throw HarnessError("the fake server exited with \(code): \(server.stderr)") }
                return server.stdout.contains("listening")
            }

            let refused = try await run(s, ["ping", "--socket", path])
            #expect(refused.code == 1, "\(refused)")
            #expect(refused.err.contains(path), "names the socket: \(refused)")
            #expect(refused.err.contains("uid 65534 (nobody)"), "names the uid: \(refused)")
            #expect(refused.err.contains("--trust-uid 65534"), "says how to allow it: \(refused)")
            #expect(!refused.out.contains("pong"), "\(refused)")

            // start must neither send its config paths nor autostart a swarmd of its own.
            let conf = try s.write("web.conf", Conf.python("web", workers: 1, port: try Ports.free()))
            let start = try await run(s, ["start", "--socket", path, "--state-dir", s.stateDir, conf])
            #expect(start.code == 1 && start.err.contains("uid 65534"), "\(start)")
            #expect(!FileManager.default.fileExists(atPath: s.stateDir), "no swarmd was autostarted")
            try await waitUntil(timeout: 10, "the fake server to log both connections") {
                server.stdout.components(separatedBy: "got ").count - 1 >= 2
            }
            #expect(server.stdout.components(separatedBy: "got 0 bytes").count - 1 == 2, "nothing was sent to it: \(server.stdout)")

            let byOption = try await run(s, ["--trust-uid", "nobody", "ping", "--socket", path])
            #expect(byOption.code == 0 && byOption.out == "pong from a stranger\n", "\(byOption)")
            let byEnv = try await run(s, ["ping", "--socket", path], env: ["SWARM_TRUST_UID": "65534"])
            #expect(byEnv.code == 0, "\(byEnv)")
            let otherUID = try await run(s, ["ping", "--socket", path, "--trust-uid", "1"])
            #expect(otherUID.code == 1, "trusting uid 1 does not trust 65534: \(otherUID)")
            let badUID = try await run(s, ["ping", "--socket", path, "--trust-uid", "no-such-user-x"])
            #expect(badUID.code == 64 && badUID.err.contains("no-such-user-x"), "\(badUID)")
        }
    }

    @Test("the default socket's directory must belong to root or the user and not be writable by others",
          .enabled(if: getuid() == 0, "needs root to run swarmctl as nobody and chown"))
    func defaultSocketDirectory() async throws {
        try await withSwarm { s in
            // As nobody, with XDG_RUNTIME_DIR set, the default is $XDG_RUNTIME_DIR/swarm/swarmd.sock.
            let xdg = s.dir + "/xdg"
            let sockDir = xdg + "/swarm"
            #expect(mkdir(xdg, 0o755) == 0 && mkdir(sockDir, 0o755) == 0)
            #expect(chmod(xdg, 0o755) == 0 && chmod(sockDir, 0o755) == 0, "the umask does not decide the test's modes")
            let env = ["XDG_RUNTIME_DIR": xdg]

            #expect(chown(sockDir, 1, 1) == 0)  // daemon: another user
            let foreign = try await run(s, ["ping"], env: env, asNobody: true)
            #expect(foreign.code == 1, "\(foreign)")
            #expect(foreign.err.contains(sockDir) && foreign.err.contains("uid 1"), "\(foreign)")

            #expect(chown(sockDir, 65534, 65534) == 0 && chmod(sockDir, 0o777) == 0)
            let open = try await run(s, ["ping"], env: env, asNobody: true)
            #expect(open.code == 1 && open.err.contains(sockDir) && open.err.contains("0777"), "\(open)")

            // The user's own, closed directory: accepted; nothing listens there, so "cannot reach" (3).
            #expect(chmod(sockDir, 0o700) == 0)
            let mine = try await run(s, ["ping"], env: env, asNobody: true)
            #expect(mine.code == 3 && mine.err.contains("no socket there"), "\(mine)")

            // An explicit --socket is the user's choice: its directory is not judged.
            #expect(chmod(sockDir, 0o777) == 0)
            let explicit = try await run(s, ["ping", "--socket", sockDir + "/swarmd.sock"], env: env, asNobody: true)
            #expect(explicit.code == 3, "\(explicit)")
        }
    }

    @Test("relative --state-dir and --socket are relative to the current directory")
    func relativePaths() async throws {
        try await withSwarm { s in
            let work = s.dir + "/work"
            #expect(mkdir(work, 0o755) == 0)
            _ = try s.write("work/web.conf", sleeper("web"))
            let r = try await run(s, ["start", "--state-dir", "st", "--socket", "rel.sock", "web.conf"], cwd: work)
            #expect(r.code == 0, "\(r)")
            #expect(FileManager.default.fileExists(atPath: work + "/st/swarmd.log"), "the state dir is ./st: \(r)")
            #expect(!FileManager.default.fileExists(atPath: "/st"), "not /st")
            let st = try await run(s, ["status", "--json", "--socket", "rel.sock"], cwd: work)
            #expect(st.code == 0, "\(st)")
            let report = try JSONDecoder().decode(StatusReport.self, from: Data(st.out.utf8))
            s.foreignDaemon = ProcessIdentity(pid: report.daemon.pid)
            #expect(report.daemon.stateDir == work + "/st" && report.daemon.socket == work + "/rel.sock", "\(report.daemon)")
            #expect(report.apps.first?.config == work + "/web.conf")
            #expect(try await run(s, ["shutdown", "--socket", "rel.sock"], cwd: work).code == 0)
        }
    }

    @Test("start NAME with a directory of that name here; start all starts every stopped app; an unknown name is named")
    func startByName() async throws {
        try await withSwarm { s in
            let a = try s.write("a.conf", sleeper("web"))
            let b = try s.write("b.conf", sleeper("api"))
            try await s.startDaemon()
            try await s.ctlOK("start", a, b)
            try await s.waitReady("web", workers: 1)
            try await s.waitReady("api", workers: 1)
            try await s.ctlOK("stop", "all")
            #expect(mkdir(s.dir + "/web", 0o755) == 0, "a directory named like the app")

            try await s.ctlOK("start", "web")
            try await s.waitReady("web", workers: 1)
            #expect(try await s.status("api").apps[0].state == "stopped")

            let all = try await s.ctlOK("start", "all")
            #expect(all.out.contains("api"), "\(all)")
            try await s.waitReady("api", workers: 1)
            #expect(try await s.ctlOK("start", "all").out.contains("no stopped apps"))

            let unknown = try await s.ctl("start", "nope")
            #expect(unknown.code == 1 && unknown.err.contains("'nope'"), "\(unknown)")
            // A file named like an app: the hint says how to start it.
            _ = try s.write("svc", sleeper("svc"))
            let hinted = try await s.ctl("start", "svc")
            #expect(hinted.code == 1 && hinted.err.contains("./svc"), "\(hinted)")
            try await s.ctlOK("start", "./svc")
            try await s.waitReady("svc", workers: 1)
        }
    }

    @Test("control characters from a worker's output and STATUS= reach neither the terminal nor the log file raw")
    func escapes() async throws {
        try await withSwarm { s in
            let script = try s.write("evil.py", #"""
            import os, socket, sys, time
            addr = os.environ["NOTIFY_SOCKET"]
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            n.sendto(b"READY=1\nSTATUS=\x1b[2Jbusy\rforged \xc2\x9b31m", addr)
            sys.stdout.write("\x1b[31mred\r2026-01-01T00:00:00.000000Z web[1] 1 O forged line\x7f\n")
            sys.stdout.flush()
            time.sleep(1000)
            """#)
            let conf = try s.write("evil.conf", Conf.app("evil", command: [Paths.python, script], extra: "[ready]\nmode = \"notify\""))
            try await s.startDaemon()
            try await s.ctlOK("start", conf)
            try await s.waitReady("evil", workers: 1)
            let status = try await waitUntil(timeout: 10, "the STATUS= text in status") { () -> CtlResult? in
                let r = try await s.ctl("status")
                return r.out.contains("busy") ? r : nil
            }
            let logs = try await waitUntil(timeout: 10, "the worker's line in logs") { () -> CtlResult? in
                let r = try await s.ctl("logs", "evil")
                return r.out.contains("red") ? r : nil
            }
            let json = try await s.ctl("status", "--json")
            for r in [status, logs, json] {
                #expect(!r.out.contains("\u{1b}") && !r.out.contains("\r") && !r.out.contains("\u{7f}") && !r.out.contains("\u{9b}"),
                        "raw control characters in \(r.args): \(r.out.debugDescription)")
            }
            #expect(status.out.contains(#"\e[2Jbusy\rforged \u{9b}31m"#), "\(status.out.debugDescription)")
            #expect(logs.out.contains(#"\e[31mred\r2026-01-01"#), "\(logs.out.debugDescription)")
            #expect(logs.out.split(separator: "\n").filter { $0.contains("forged line") }.count == 1, "one line: \(logs.out.debugDescription)")
            #expect(json.out.contains(#"\u001b[2Jbusy\rforged \u009b31m"#), "\(json.out.debugDescription)")
            let file = try String(contentsOfFile: s.stateDir + "/logs/evil.log", encoding: .utf8)
            #expect(!file.contains("\u{1b}") && !file.contains("\r") && file.contains(#"\e[31mred\r"#), "\(file.debugDescription)")
        }
    }
}
