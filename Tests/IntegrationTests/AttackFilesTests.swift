import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// Issue 13, items 3-6: trust of the state dir, the default socket dir, file
// I/O that can block or fail (FIFOs, a full disk), relative paths.

/// Creates `path` as a directory owned by uid:gid with `mode` (chmod after mkdir: the umask does not apply).
func makeDir(_ path: String, uid: UInt32 = 0, gid: UInt32 = 0, mode: mode_t = 0o700) throws {
    if mkdir(path, mode) != 0 && errno != EEXIST { throw HarnessError("mkdir \(path): \(errnoText())") }
    guard chown(path, uid, gid) == 0, chmod(path, mode) == 0 else { throw HarnessError("chown/chmod \(path): \(errnoText())") }
}

func writeOwned(_ path: String, _ text: String, uid: UInt32 = 0, gid: UInt32 = 0, mode: mode_t = 0o644) throws {
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    guard chown(path, uid, gid) == 0, chmod(path, mode) == 0 else { throw HarnessError("chown/chmod \(path): \(errnoText())") }
}

/// Waits until swarmd answers ping on `socket` (each attempt bounded by 0.5 s) or exits.
func waitAnswering(_ d: Child, _ socket: String, timeout: Double) async throws {
    try await waitUntil(timeout: timeout, "swarmd (pid \(d.pid)) to answer ping on \(socket) (log: \(d.stderr.suffix(800)))") {
        if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr.suffix(1500))") }
        return answersPing(socket, within: 0.5)
    }
}

@Suite("Attack 3-6: state-dir trust, squatted sockets, FIFOs, full disks, relative paths", attackTestsSwitch)
struct AttackFilesTests {
    enum ForeignState: String, CaseIterable, Sendable {
        case stateOwnedByNobody, stateWritableByOthers, logsOwnedByNobody, socketDirOwnedByNobody
    }

    @Test("3: root swarmd refuses a state or log dir another user owns or may write; it runs nothing and follows no symlink",
          .enabled(if: getuid() == 0, "needs root: the dirs belong to nobody"), arguments: ForeignState.allCases)
    func foreignStateDirIsRefused(_ kind: ForeignState) async throws {
        try await withSwarm { s in
            let marker = s.dir + "/ran-as"
            let victim = s.dir + "/victim"
            try writeOwned(victim, "original\n", mode: 0o644)
            let evil = s.dir + "/evil.conf"
            try writeOwned(evil, Conf.app("evil", command: ["/bin/sh", "-c", "id -u > \(marker); echo pwned; exec /bin/sleep 600"]),
                           uid: 65534, gid: 65534)
            let stateOwner: UInt32 = kind == .stateOwnedByNobody ? 65534 : 0
            try makeDir(s.stateDir, uid: stateOwner, gid: stateOwner, mode: kind == .stateWritableByOthers ? 0o777 : 0o700)
            let logsOwner: UInt32 = kind == .stateOwnedByNobody || kind == .logsOwnedByNobody ? 65534 : 0
            let socketDir = s.dir + "/sockdir"
            try makeDir(socketDir, uid: kind == .socketDirOwnedByNobody ? 65534 : 0, gid: kind == .socketDirOwnedByNobody ? 65534 : 0, mode: 0o755)
            try makeDir(s.stateDir + "/logs", uid: logsOwner, gid: logsOwner, mode: 0o755)
            try writeOwned(s.stateDir + "/apps.json", #"{"version":1,"apps":[{"name":"evil","config":"\#(evil)","stopped":false}]}"# + "\n",
                           uid: stateOwner, gid: stateOwner, mode: 0o600)
            guard symlink(victim, s.stateDir + "/logs/evil.log") == 0 else { throw HarnessError("symlink: \(errnoText())") }
            let d = try s.launchDaemon(["--socket", socketDir + "/s.sock", "--state-dir", s.stateDir, "--log-target", "file"])
            let code = try? await d.wait(timeout: 10, "swarmd to refuse the \(kind) dir and exit")
            #expect(code != nil, "swarmd is still running 10 s after start with the \(kind) dir: it should have refused it")
            let offending = kind == .logsOwnedByNobody ? s.stateDir + "/logs" : kind == .socketDirOwnedByNobody ? socketDir : s.stateDir
            #expect(code != 0, "swarmd exited 0")
            #expect(d.stderr.contains(offending), "the message should name \(offending): \(d.stderr.suffix(1500))")
            if kind == .stateWritableByOthers {
                #expect(d.stderr.contains("writable"), "the message should say the dir is writable by others: \(d.stderr.suffix(1500))")
            } else {
                #expect(d.stderr.contains("uid 65534") || d.stderr.contains("nobody"), "the message should name the owner: \(d.stderr.suffix(1500))")
            }
            if kind == .socketDirOwnedByNobody {
                #expect(access(socketDir + "/s.sock", F_OK) != 0, "swarmd bound its control socket in a dir nobody owns")
            }
            #expect(access(marker, F_OK) != 0, "swarmd ran nobody's command (as uid \(readText(marker).trimmingCharacters(in: .whitespacesAndNewlines)))")
            #expect(readText(victim) == "original\n", "swarmd wrote through the symlink in logs/: \(readText(victim).prefix(300))")
        }
    }

    @Test("3: a symlink at logs/<app>.log in swarmd's own state dir is not followed, and is reported")
    func logSymlinkIsNotFollowed() async throws {
        try await withSwarm { s in
            let victim = s.dir + "/victim"
            try writeOwned(victim, "original\n")
            try makeDir(s.stateDir, mode: 0o700)
            try makeDir(s.stateDir + "/logs", mode: 0o750)
            guard symlink(victim, s.stateDir + "/logs/web.log") == 0 else { throw HarnessError("symlink: \(errnoText())") }
            let conf = try s.write("web.conf", Conf.app("web", command: ["/bin/sh", "-c", "while :; do echo tick; sleep 0.1; done"],
                                                        extra: "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n[logs]\ntarget = \"file\"\n"))
            let d = try await s.startDaemon([conf])
            try await s.waitReady("web", workers: 1)
            try await waitUntil(timeout: 5, "the worker's output to reach swarmd's log tail") {
                try await s.ctl("logs", "web").out.contains("tick")
            }
            #expect(readText(victim) == "original\n", "swarmd appended the worker's output through the symlink: \(readText(victim).prefix(300))")
            let path = s.stateDir + "/logs/web.log"
            let reported: Void? = try? await waitUntil(timeout: 3, "swarmd to report that logs/web.log is a symlink") { d.stderr.contains(path) }
            #expect(reported != nil, "swarmd should report that \(path) is a symlink: \(d.stderr.suffix(1000))")
        }
    }

    @Test("4: a squatted default socket dir (/tmp/swarm-UID owned by another uid): swarmd refuses to bind in it",
          .enabled(if: getuid() == 0, "needs root: plays two other users"))
    func squattedSocketDirRefusedBySwarmd() async throws {
        try await withSwarm { s in
            let uid = try unusedUID()
            let squatted = "/tmp/swarm-\(uid)"
            try makeDir(squatted, uid: uid + 1, gid: uid + 1, mode: 0o777)
            defer { try? FileManager.default.removeItem(atPath: squatted) }
            let home = s.dir + "/home"
            try makeDir(home, uid: uid, gid: uid, mode: 0o700)
            let state = s.dir + "/st"
            try makeDir(state, uid: uid, gid: uid, mode: 0o700)
            // XDG_RUNTIME_DIR and SWARM_SOCKET unset (childEnvironment drops them): the /tmp default applies.
            let d = try s.launchDaemon(["--state-dir", state], wrapper: asUser(uid, uid), env: childEnvironment(["HOME": home]))
            let code = try? await d.wait(timeout: 10, "swarmd (uid \(uid)) to refuse the socket dir \(squatted) owned by uid \(uid + 1)")
            #expect(code != nil && code != 0, "swarmd (uid \(uid)) still runs 10 s after start (or exited 0) with its default socket dir \(squatted) owned by uid \(uid + 1)")
            #expect(access(squatted + "/swarmd.sock", F_OK) != 0, "swarmd bound its socket inside the squatted \(squatted)")
            #expect(d.stderr.contains(squatted) && d.stderr.contains("uid \(uid + 1)"),
                    "the message should name \(squatted) and its owner uid \(uid + 1): \(d.stderr.suffix(1500))")
        }
    }

    @Test("4: a squatter listening on swarmctl's default socket: swarmctl checks SO_PEERCRED and sends it nothing",
          .enabled(if: getuid() == 0, "needs root: plays two other users"))
    func squattedSocketRefusedBySwarmctl() async throws {
        try await withSwarm { s in
            let uid = try unusedUID()
            let squatted = "/tmp/swarm-\(uid)"
            try makeDir(squatted, uid: uid + 1, gid: uid + 1, mode: 0o755)
            defer { try? FileManager.default.removeItem(atPath: squatted) }
            let path = squatted + "/swarmd.sock"
            let fake = try Child.spawn("/usr/bin/setpriv", Array(asUser(uid + 1, uid + 1).dropFirst()) + [Paths.python, Paths.pythonApps + "/fake_swarmd.py", path],
                                       dir: s.dir, label: s.label("squatter"))
            defer {
                fake.signal(SIGKILL)
                for _ in 0..<300 where fake.running { usleep(10_000) }
            }
            try await waitUntil(timeout: 15, "the squatter to listen on \(path) (\(fake.stderr))") { fake.stdout.contains("listening") }
            let home = s.dir + "/home"
            try makeDir(home, uid: uid, gid: uid, mode: 0o700)
            for args in [["ping"], ["stop", "web"]] {
                let r = try await runIn(s, "/usr/bin/setpriv", Array(asUser(uid, uid).dropFirst()) + [Paths.swarmctl] + args,
                                        env: childEnvironment(["HOME": home]))
                #expect(r.code != 0, "swarmctl \(args) talked to a server run by uid \(uid + 1): exit \(r.code), out \(r.out), err \(r.err)")
                #expect(r.err.contains(path) && r.err.contains("uid \(uid + 1)"),
                        "swarmctl \(args) should name the socket and the uid serving it: \(r.err)")
            }
            #expect(!fake.stdout.contains("request "), "swarmctl sent requests to the squatter: \(fake.stdout)")
        }
    }

    @Test("5: a FIFO at state/apps.json: swarmd neither hangs nor dies, reports it, and SIGTERM still ends it")
    func fifoAsStateFile() async throws {
        try await withSwarm { s in
            try makeDir(s.stateDir, uid: getuid(), gid: getgid(), mode: 0o700)
            guard mkfifo(s.stateDir + "/apps.json", 0o600) == 0 else { throw HarnessError("mkfifo: \(errnoText())") }
            let d = try s.launchDaemon(["--socket", s.socket, "--state-dir", s.stateDir, "--log-target", "file"])
            try await waitAnswering(d, s.socket, timeout: 8)
            let t0 = Date()
            _ = try rawStatus(s.socket, timeout: 2)
            #expect(elapsed(since: t0) < 1)
            #expect(d.stderr.contains("apps.json"), "swarmd should report the FIFO at apps.json: \(d.stderr.suffix(1500))")
            d.signal(SIGTERM)
            #expect(try await d.wait(timeout: 2, "swarmd to exit within 2 s of SIGTERM") == 0)
        }
    }

    @Test("5: a FIFO at logs/<app>.log: the app's output does not hang swarmd, which reports it")
    func fifoAsLogFile() async throws {
        try await withSwarm { s in
            let d = try await s.startDaemon(args: ["--log-target", "file"])
            guard mkfifo(s.stateDir + "/logs/web.log", 0o600) == 0 else { throw HarnessError("mkfifo: \(errnoText())") }
            let conf = try s.write("web.conf", Conf.app("web", command: ["/bin/sh", "-c", "while :; do echo tick; sleep 0.1; done"],
                                                        extra: "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n"))
            let c = try ControlConnection(path: s.socket, timeout: 5)
            let started = try? c.call(Request(id: 1, verb: .start, files: [conf]))
            #expect(started?.ok == true, "start with a FIFO at logs/web.log: \(String(describing: started))")
            var slowest = 0.0
            for _ in 0..<8 {
                let t0 = Date()
                do { _ = try rawStatus(s.socket, timeout: 2) } catch { throw HarnessError("status with the FIFO in place: \(error)") }
                slowest = max(slowest, elapsed(since: t0))
                try await Task.sleep(nanoseconds: 200_000_000)
            }
            #expect(slowest < 1, "status took \(slowest)s")
            #expect(d.stderr.contains("web.log"), "swarmd should report the FIFO at logs/web.log: \(d.stderr.suffix(1500))")
            d.signal(SIGTERM)
            #expect(try await d.wait(timeout: 2, "swarmd to exit within 2 s of SIGTERM") == 0)
        }
    }

    @Test("5: a full disk (256 KiB tmpfs as the state dir): the write failure is reported once and in status, no torn line, start says the state was not saved",
          .enabled(if: getuid() == 0, "needs root to mount a tmpfs"))
    func fullDisk() async throws {
        try await withSwarm { s in
            try makeDir(s.stateDir, mode: 0o700)
            let mount = try await runIn(s, "/bin/mount", ["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", s.stateDir])
            guard mount.code == 0 else { throw HarnessError("mount tmpfs on \(s.stateDir): \(mount.err)") }
            var mounted = true
            func unmount() async {
                guard mounted else { return }
                mounted = false
                _ = try? await runIn(s, "/bin/umount", ["-l", s.stateDir])
            }
            do {
                let fill = try s.write("fill.py", """
                    import sys, time
                    i = 0
                    while True:
                        sys.stdout.write(f"fill {i:07d} " + "x" * 180 + " end\\n")
                        sys.stdout.flush()
                        i += 1
                        if i % 10 == 0:
                            time.sleep(0.01)

                    """)
                let conf = try s.write("web.conf", Conf.app("web", command: [Paths.python, "-S", fill],
                                                            extra: "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n[logs]\nmax_size = \"100MiB\"\ntarget = \"file\"\n"))
                let d = try await s.startDaemon([conf], args: ["--log-target", "file"])
                try await s.waitReady("web", workers: 1)
                try await waitUntil(timeout: 15, "the 256 KiB tmpfs to fill up") {
                    var st = statvfs()
                    return statvfs(s.stateDir, &st) == 0 && st.f_bavail == 0
                }
                try await Task.sleep(nanoseconds: 1_500_000_000)
                let app = try #require(rawApp(try rawStatus(s.socket), "web"))
                let errors = app["log_write_errors"] as? Int ?? 0
                let last = app["log_write_error"] as? String ?? ""
                #expect(errors > 0, "status should count the lost log writes (log_write_errors): \(app.keys.sorted())")
                #expect(last.contains("ENOSPC") || last.contains("No space left"), "status should show the last write error (log_write_error): '\(last)'")
                let reports = d.stderr.split(separator: "\n").filter { $0.contains("web.log") && ($0.contains("ENOSPC") || $0.contains("No space left")) }
                #expect(reports.count == 1, "the write failure should be logged once per episode, not \(reports.count) times: \(reports.prefix(3))")
                // swarmd keeps trying: a short write is cut off again at once, but a read can fall
                // between the two. What must never stay is a partial line.
                var text = ""
                try await waitUntil(timeout: 10, "web.log to end in a whole line: …\(text.suffix(120))") {
                    text = readText(s.stateDir + "/logs/web.log")
                    return text.hasSuffix("\n")
                }
                let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                let torn = lines.filter { !$0.hasSuffix(" end") && !$0.contains("lost") }
                #expect(torn.isEmpty, "\(torn.count) torn lines in web.log, e.g. \(torn.prefix(2))")

                let other = try s.write("other.conf", Conf.app("other", command: ["/bin/sleep", "600"], extra: "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n"))
                let r = try await s.ctl("start", other)
                #expect(r.code != 0 && r.err.contains("apps.json"),
                        "start on a full disk must say the remembered apps could not be saved: \(r)")
                _ = try await s.stopDaemon(timeout: 15)
                await unmount()
            } catch {
                s.abort()
                await unmount()
                throw error
            }
        }
    }

    @Test("6: relative --state-dir and --socket of swarmd are relative to its working directory")
    func relativePathsSwarmd() async throws {
        try await withSwarm { s in
            let tag = "swit-rel-\(getpid())-\(Ports.counter.next())"
            let leaks = ["/\(tag)-state", "/\(tag)-sock"]
            defer { for p in leaks { try? FileManager.default.removeItem(atPath: p) } }
            let d = try s.launchDaemon(["--state-dir", "\(tag)-state/x", "--socket", "\(tag)-sock/s.sock"], cwd: s.dir)
            let socket = s.dir + "/\(tag)-sock/s.sock"
            try await waitAnswering(d, socket, timeout: 10)
            var isDir: ObjCBool = false
            #expect(FileManager.default.fileExists(atPath: s.dir + "/\(tag)-state/x/logs", isDirectory: &isDir) && isDir.boolValue,
                    "the state dir should be \(s.dir)/\(tag)-state/x")
            for p in leaks { #expect(access(p, F_OK) != 0, "swarmd created \(p) at the root") }
            let st = try rawStatus(socket)
            let daemon = st["daemon"] as? [String: Any] ?? [:]
            #expect(daemon["state_dir"] as? String == s.dir + "/\(tag)-state/x", "status reports state_dir \(daemon["state_dir"] ?? "nil")")
            d.signal(SIGTERM)
            _ = try await d.wait(timeout: 10)
        }
    }

    @Test("6: swarmctl start --state-dir/--socket with relative paths: the autostarted swarmd uses them relative to swarmctl's cwd")
    func relativePathsSwarmctl() async throws {
        try await withSwarm { s in
            let tag = "swit-relctl-\(getpid())-\(Ports.counter.next())"
            let leaks = ["/\(tag)-state", "/\(tag)-sock"]
            defer { for p in leaks { try? FileManager.default.removeItem(atPath: p) } }
            _ = try s.write("web.conf", Conf.app("web", command: ["/bin/sleep", "600"], extra: "[ready]\nmode = \"delay\"\ndelay = \"100ms\"\n"))
            let r = try await s.ctl(["start", "--state-dir", "\(tag)-state", "--socket", "\(tag)-sock/s.sock", "web.conf"], socket: false)
            // Whatever happened, stop the swarmd this swarmctl started.
            if let range = r.err.range(of: "started swarmd (pid "), let pid = Int32(r.err[range.upperBound...].prefix { $0.isNumber }),
               let id = ProcessIdentity(pid: pid) {
                s.foreignDaemon = id
            }
            defer { if let f = s.foreignDaemon, f.isAlive { kill(f.pid, SIGTERM) } }
            #expect(r.code == 0, "\(r)")
            for p in leaks { #expect(access(p, F_OK) != 0, "swarmctl or its swarmd created \(p) at the root") }
            #expect(access(s.dir + "/\(tag)-state/swarmd.log", F_OK) == 0, "the autostarted swarmd's log should be in \(s.dir)/\(tag)-state")
            let socket = s.dir + "/\(tag)-sock/s.sock"
            #expect(answersPing(socket, within: 2), "no swarmd answers on \(socket)")
            if let st = try? rawStatus(socket) {
                let daemon = st["daemon"] as? [String: Any] ?? [:]
                #expect(daemon["state_dir"] as? String == s.dir + "/\(tag)-state", "status reports state_dir \(daemon["state_dir"] ?? "nil")")
                #expect(daemon["socket"] as? String == socket, "status reports socket \(daemon["socket"] ?? "nil")")
            }
            if let f = s.foreignDaemon {
                kill(f.pid, SIGTERM)
                try await waitUntil(timeout: 15, "the autostarted swarmd \(f) to exit after SIGTERM") { !f.isAlive }
            }
        }
    }
}
