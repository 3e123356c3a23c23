import Foundation
import Glibc
import SwarmProtocol
import SwarmSystem
import Testing

// swarmd under (a stand-in for) systemd: sd_notify, watchdog, socket
// activation, journald's native protocol, unit files, and PID 1 of a
// container. No systemd runs as PID 1 here: the tests play its part.

/// Starts swarmd the way these tests need (own environment, fds), waits until it answers ping.
func startSystemdStyleDaemon(_ s: Swarm, _ owned: OwnedProcesses, configs: [String], args: [String] = [],
                             socketPath: String? = nil, env: [String: String] = [:], fds: [Int32] = [],
                             fdNames: [String] = []) async throws -> Child {
    var extra = env
    if !fds.isEmpty {
        extra["LISTEN_FDS"] = String(fds.count)
        extra["LISTEN_FDNAMES"] = fdNames.joined(separator: ":")
    }
    let argv = ["--socket", socketPath ?? s.socket, "--state-dir", s.stateDir, "--log-target", "file"] + args + configs
    let d = try Child.spawn(Paths.swarmd, argv, env: childEnvironment(extra), dir: s.dir, label: s.label("swarmd"),
                            fds: fds, listenPID: !fds.isEmpty)
    owned.add(d)
    try await waitUntil(timeout: 15, "swarmd (pid \(d.pid)) to answer ping on \(s.socket)") {
        if let code = d.poll() { throw HarnessError("swarmd exited with \(code): \(d.stderr)") }
        return (try? s.request(.ping))?.ok == true
    }
    return d
}

/// A test playing systemd: `owned` holds the processes it starts (killed at the end) and
/// `notify` is the NOTIFY_SOCKET it gives them.
func withNotifyListener(_ body: (Swarm, OwnedProcesses, DatagramListener) async throws -> Void) async throws {
    try await withSwarm { s in
        let owned = OwnedProcesses()
        defer { owned.killAll() }
        let notify = try DatagramListener(path: s.dir + "/notify.sock")
        defer { notify.stop() }
        try await body(s, owned, notify)
    }
}

/// SIGTERM to a swarmd we spawned ourselves; it must exit 0.
func stopSystemdStyleDaemon(_ d: Child, timeout: Double = 20) async throws {
    d.signal(SIGTERM)
    let code = try await d.wait(timeout: timeout, "swarmd (pid \(d.pid)) to exit after SIGTERM")
    #expect(code == 0, "swarmd should exit 0 after SIGTERM; log:\n\(d.stderr.suffix(2000))")
}

/// swarmd took the control and `http` sockets it was passed: it bound no socket of its own,
/// its workers answer on the passed port, and only that one socket listens there.
func expectSocketsAdopted(_ d: Child, port: UInt16, unusedPath: String, workers: Set<Int32>) throws {
    #expect(access(unusedPath, F_OK) != 0, "swarmd bound its own control socket at \(unusedPath)")
    #expect(d.stderr.contains("using the control socket passed by systemd"), "log: \(d.stderr.suffix(1500))")
    #expect(d.stderr.contains("using socket 'http' passed by systemd"), "log: \(d.stderr.suffix(1500))")
    let pids = try answeringPids(port, connections: 16)
    #expect(Set(pids.keys).isSubset(of: workers), "answers from \(pids), workers \(workers)")
    #expect(listeningSocketCount(port: port) == 1, "only the passed socket may listen on \(port): /proc/net/tcp has \(listeningSocketCount(port: port))")
}

/// Listening TCP sockets on 127.0.0.1:port in /proc/net/tcp (one line per socket).
func listeningSocketCount(port: UInt16) -> Int {
    let hexPort = String(format: ":%04X", Int(port))
    return readText("/proc/net/tcp").split(separator: "\n").filter { line in
        let f = line.split(separator: " ")
        return f.count > 3 && f[1].hasSuffix(hexPort) && f[3] == "0A"
    }.count
}

@Suite("systemd: notify, watchdog, socket activation, journal, units, PID 1")
struct SystemdTests {
    @Test("NOTIFY_SOCKET: READY=1 only once the workers are ready, STATUS=, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM")
    func notifyProtocol() async throws {
        try await withNotifyListener { s, owned, notify in
            let port = try Ports.free()
            let conf = try s.write("pyweb.conf", Conf.python("pyweb", workers: 2, port: port, env: ["SERVER_START_DELAY_MS": "1000"]))
            let started = Date()
            let d = try await startSystemdStyleDaemon(s, owned, configs: [conf], env: ["NOTIFY_SOCKET": notify.path])

            // READY=1: the workers take ≥ 1 s to serve, and are ready when it arrives.
            let (readyIndex, ready) = try await notify.waitFor(timeout: 20, "READY=1 from swarmd") { $0.text.contains("READY=1") }
            let status = try s.quickStatus()
            let app = try #require(status.apps.first { $0.name == "pyweb" })
            #expect(app.workersReady == 2 && app.workers.allSatisfy { $0.state == "ready" && $0.pid != nil },
                    "at READY=1 both workers should be ready: \(app.workers)")
            #expect(ready.at.timeIntervalSince(started) >= 0.95,
                    "READY=1 came \(ready.at.timeIntervalSince(started))s after start, before workers that take 1 s could be ready")
            #expect(ready.text.contains("STATUS=pyweb 2/2 ready"), "READY datagram: \(ready.text)")
            let early = notify.all.prefix(readyIndex).map(\.text)
            #expect(!early.contains { $0.contains("READY=1") }, "an earlier READY=1: \(early)")
            #expect(notify.notifyLines.contains { $0.line == "STATUS=pyweb 2/2 ready" }, "\(notify.summary())")
            #expect(notify.notifyLines.contains { $0.line.hasPrefix("STATUS=pyweb 0/2 ready") || $0.line.hasPrefix("STATUS=pyweb 1/2 ready") },
                    "a STATUS= line while starting: \(notify.summary())")

            // SIGHUP: RELOADING=1 with MONOTONIC_USEC, the rolling reload (≥ 2 × 1 s), then READY=1.
            let mark = notify.count
            d.signal(SIGHUP)
            let (relIndex, reloading) = try await notify.waitFor(timeout: 10, "RELOADING=1 after SIGHUP", from: mark) { $0.text.contains("RELOADING=1") }
            let usecLine = reloading.text.split(separator: "\n").first { $0.hasPrefix("MONOTONIC_USEC=") }
            let usec = usecLine.flatMap { UInt64($0.dropFirst("MONOTONIC_USEC=".count)) }
            #expect(usec != nil, "RELOADING=1 should carry MONOTONIC_USEC=: \(reloading.text)")
            if let usec {
                var ts = timespec()
                clock_gettime(CLOCK_MONOTONIC, &ts)
                let nowUsec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
                #expect(usec <= nowUsec && nowUsec - usec < 10_000_000, "MONOTONIC_USEC=\(usec) vs CLOCK_MONOTONIC \(nowUsec)")
            }
            let (_, reReady) = try await notify.waitFor(timeout: 20, "READY=1 after the SIGHUP reload", from: relIndex + 1) { $0.text.contains("READY=1") }
            let reloadTook = reReady.at.timeIntervalSince(reloading.at)
            #expect(reloadTook >= 1.9, "READY=1 came \(reloadTook)s after RELOADING=1: before 2 slots of 1-s workers could be replaced")
            let after = try s.quickStatus().apps.first { $0.name == "pyweb" }
            #expect(after?.workers.allSatisfy { $0.generation == 2 && $0.state == "ready" } == true,
                    "after READY=1 the workers should all be generation 2: \(String(describing: after?.workers))")
            #expect(notify.all[relIndex...].contains { $0.text.contains("(reloading)") }, "a STATUS= during the reload: \(notify.summary())")

            // SIGTERM: STOPPING=1, exit 0.
            let stopMark = notify.count
            try await stopSystemdStyleDaemon(d)
            try await notify.waitFor(timeout: 5, "STOPPING=1 after SIGTERM", from: stopMark) { $0.text.contains("STOPPING=1") }
        }
    }

    @Test("SIGHUP with a broken config: RELOADING=1 is still answered by READY=1 (systemctl reload must not hang)")
    func reloadHandshakeWithNothingToRoll() async throws {
        try await withNotifyListener { s, owned, notify in
            let conf = try s.write("idle.conf", Conf.app("idle", command: ["/bin/sleep", "600"]))
            let d = try await startSystemdStyleDaemon(s, owned, configs: [conf], env: ["NOTIFY_SOCKET": notify.path])
            try await notify.waitFor(timeout: 15, "READY=1") { $0.text.contains("READY=1") }
            let pids = try await s.waitReady("idle", workers: 1)
            // An admin's typo, then `systemctl reload swarmd` (SIGHUP; Type=notify-reload waits for RELOADING=1 … READY=1).
            try s.write("idle.conf", "name = \"idle\"\ncommand = [\"/bin/sleep\", \"600\"]\nworkers = \"many\"\n")
            let mark = notify.count
            d.signal(SIGHUP)
            let (i, _) = try await notify.waitFor(timeout: 5, "RELOADING=1 after SIGHUP", from: mark) { $0.text.contains("RELOADING=1") }
            try await notify.waitFor(timeout: 5, "READY=1 after RELOADING=1 (nothing could be reloaded)", from: i + 1) { $0.text.contains("READY=1") }
            try await waitUntil(timeout: 5, "swarmd to log the config error") { d.stderr.contains("Failed to reload idle") }
            #expect(try await s.waitReady("idle", workers: 1) == pids, "the running config should stay in force")
            try await stopSystemdStyleDaemon(d)
        }
    }

    @Test("WATCHDOG_USEC=200000: WATCHDOG=1 several times a second from the event loop")
    func watchdogPings() async throws {
        try await withNotifyListener { s, owned, notify in
            let conf = try s.write("idle.conf", Conf.app("idle", command: ["/bin/sleep", "600"]))
            let d = try await startSystemdStyleDaemon(s, owned, configs: [conf],
                                                      env: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
            try await notify.waitFor(timeout: 15, "READY=1") { $0.text.contains("READY=1") }
            try await s.waitReady("idle", workers: 1)
            // The worker must not inherit swarmd's watchdog.
            let pid = try #require(try s.quickStatus().apps.first?.workers.first?.pid)
            let environ = readText("/proc/\(pid)/environ").split(separator: "\0")
            // (Its NOTIFY_SOCKET is swarmd's own, abstract one, not systemd's.)
            #expect(!environ.contains { $0.hasPrefix("WATCHDOG_USEC=") || $0 == "NOTIFY_SOCKET=\(notify.path)" }, "worker env: \(environ)")

            let t0 = Date()
            let before = notify.notifyLines.filter { $0.line == "WATCHDOG=1" }.count
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let pings = notify.notifyLines.filter { $0.line == "WATCHDOG=1" && $0.at >= t0 }
            let span = elapsed(since: t0)
            // sd-event pings at a quarter to a half of the period: ~5 per second for 200 ms; allow a loaded machine.
            #expect(pings.count >= 3, "WATCHDOG=1 pings in \(span)s: \(pings.count) (before: \(before)); \(notify.summary(limit: 10))")
            #expect(pings.count <= 30, "far too many WATCHDOG=1 pings in \(span)s: \(pings.count)")
            var maxGap = 0.0
            for (a, b) in zip(pings, pings.dropFirst()) { maxGap = max(maxGap, b.at.timeIntervalSince(a.at)) }
            #expect(maxGap < 0.2, "largest gap between WATCHDOG=1 pings \(maxGap)s ≥ the 200 ms period")
            print("[figure] watchdog: \(pings.count) WATCHDOG=1 in \(String(format: "%.2f", span))s for WATCHDOG_USEC=200000, largest gap \(String(format: "%.3f", maxGap))s")

            // A re-exec keeps pinging (the new image reads WATCHDOG_USEC too) and keeps a STATUS= text.
            let mark = notify.count
            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 15, "swarmd to re-execute") { d.stderr.contains("re-executed as pid") }
            let (_, again) = try await notify.waitFor(timeout: 10, "READY=1 from the re-executed swarmd", from: mark) { $0.text.contains("READY=1") }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let later = notify.notifyLines.filter { $0.line == "WATCHDOG=1" && $0.at > again.at }
            #expect(later.count >= 3, "WATCHDOG=1 after the re-exec: \(later.count) in ~1 s")
            var statuses: [String] = []
            for d in notify.all[mark...] {
                for line in d.text.split(separator: "\n") where line.hasPrefix("STATUS=") { statuses.append(String(line)) }
            }
            let empty = statuses.filter { $0 == "STATUS=" }
            let other = statuses.filter { $0 != "STATUS=idle 1/1 ready" }
            #expect(empty.isEmpty, "an empty STATUS= after the re-exec: \(statuses)")
            #expect(other.isEmpty, "STATUS= after the re-exec: \(statuses)")
            try await stopSystemdStyleDaemon(d)
        }
    }

    @Test("socket activation: the passed control and app sockets are adopted, never bound")
    func socketActivation() async throws {
        try await withSwarm { s in
            let owned = OwnedProcesses()
            defer { owned.killAll() }
            let port = try Ports.free()
            // What systemd's swarmd.socket and swarm-web.socket would hold.
            let control = try Sockets.listenUnix(path: s.socket, backlog: 64, mode: 0o600)
            defer { Posix.close(control) }
            let http = try Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 128, reusePort: false)
            defer { Posix.close(http) }
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let unusedPath = s.dir + "/not-bound.sock"
            let d = try await startSystemdStyleDaemon(s, owned, configs: [conf], socketPath: unusedPath,
                                                      fds: [control, http], fdNames: ["control", "http"])
            let workers = Set(try await s.waitReady("web", workers: 2))
            try expectSocketsAdopted(d, port: port, unusedPath: unusedPath, workers: workers)
            // A re-exec keeps the adopted sockets (and still binds nothing).
            try await s.ctlOK("daemon-reexec")
            try await waitUntil(timeout: 15, "swarmd to re-execute") { d.stderr.contains("re-executed as pid") }
            let kept = try await s.waitReady("web", workers: 2)
            #expect(Set(kept) == workers, "workers changed across the re-exec: \(workers) → \(kept)")
            #expect(try httpGet(port).status == 200)
            #expect(access(unusedPath, F_OK) != 0, "swarmd bound its own control socket at \(unusedPath) after the re-exec")
            #expect(listeningSocketCount(port: port) == 1, "after the re-exec: \(listeningSocketCount(port: port)) listening sockets on \(port)")
            try await stopSystemdStyleDaemon(d)
            // Sockets from systemd stay: the path is still ours, and nothing was unlinked.
            #expect(access(s.socket, F_OK) == 0, "swarmd unlinked the control socket systemd owns")
        }
    }

    @Test("under systemd-socket-activate: control and app sockets adopted, READY=1 on NOTIFY_SOCKET, SIGTERM exits 0")
    func realSocketActivateTool() async throws {
        let tool = "/usr/bin/systemd-socket-activate"
        try #require(access(tool, X_OK) == 0, "\(tool) is missing (Debian package systemd)")
        try await withNotifyListener { s, owned, notify in
            let port = try Ports.free()
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let unusedPath = s.dir + "/not-bound.sock"
            // The tool binds both sockets, waits for the first connection, then execs swarmd in its own
            // process with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES; it passes only PATH and the -E variables.
            // Sanitizer settings (scripts/sanitize.sh: leak suppressions) must reach swarmd too.
            let sanitizerEnv = ["ASAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS", "UBSAN_OPTIONS"].flatMap { name in
                ProcessInfo.processInfo.environment[name].map { ["-E", "\(name)=\($0)"] } ?? []
            }
            let d = try Child.spawn(tool, ["-l", s.socket, "-l", "127.0.0.1:\(port)", "--fdname=control:http",
                                           "-E", "NOTIFY_SOCKET=\(notify.path)"] + sanitizerEnv + [
                                           Paths.swarmd, "--socket", unusedPath, "--state-dir", s.stateDir, "--log-target", "file", conf],
                                    dir: s.dir, label: "socket-activate")
            owned.add(d)
            try await waitUntil(timeout: 10, "systemd-socket-activate to listen on \(s.socket): \(d.stderr)") { access(s.socket, F_OK) == 0 }
            // This first connection is what makes the tool exec swarmd; it waits in the backlog and is answered.
            try await waitUntil(timeout: 20, "swarmd (exec'd by the tool) to answer ping on the passed socket: \(d.stderr)") {
                if let code = d.poll() { throw HarnessError("the tool or swarmd exited with \(code): \(d.stderr)") }
                return (try? s.request(.ping))?.ok == true
            }
            #expect(readText("/proc/\(d.pid)/comm").hasPrefix("swarmd"), "swarmd runs in the tool's process (exec)")
            let pids = try await s.waitReady("web", workers: 2)
            _ = try await notify.waitFor(timeout: 20, "READY=1 from swarmd") { $0.text.contains("READY=1") }
            try expectSocketsAdopted(d, port: port, unusedPath: unusedPath, workers: Set(pids))
            try await stopSystemdStyleDaemon(d)
            _ = try await notify.waitFor(timeout: 5, "STOPPING=1 from swarmd") { $0.text.contains("STOPPING=1") }
        }
    }

    @Test("restart of swarmd with sockets held as systemd would: no connection refused, gap connections answered")
    func restartKeepsSockets() async throws {
        try await withSwarm { s in
            let owned = OwnedProcesses()
            defer { owned.killAll() }
            let port = try Ports.free()
            let control = try Sockets.listenUnix(path: s.socket, backlog: 64, mode: 0o600)
            defer { Posix.close(control) }
            let http = try Sockets.listenTCP(host: "127.0.0.1", port: port, backlog: 256, reusePort: false)
            defer { Posix.close(http) }
            let conf = try s.write("web.conf", Conf.python("web", workers: 2, port: port))
            let unused = s.dir + "/not-bound.sock"
            let d1 = try await startSystemdStyleDaemon(s, owned, configs: [conf], socketPath: unused,
                                                       fds: [control, http], fdNames: ["control", "http"])
            let first = Set(try await s.waitReady("web", workers: 2))

            let load = HTTPLoadLoop(port: port, pause: 0.01)
            try await waitUntil(timeout: 10, "the load to get answers") { load.counts.ok >= 20 }
            try await stopSystemdStyleDaemon(d1)
            let atGap = load.counts.ok
            let d2 = try await startSystemdStyleDaemon(s, owned, configs: [conf], socketPath: unused,
                                                       fds: [control, http], fdNames: ["control", "http"])
            let second = Set(try await s.waitReady("web", workers: 2))
            try await waitUntil(timeout: 10, "requests answered by the second swarmd's workers") {
                load.counts.ok >= atGap + 20 && !Set(load.answered.keys).isDisjoint(with: second)
            }
            let result = try await load.stop()
            #expect(result.failed == 0, "\(result.failed) failed requests across the restart of swarmd (ok \(result.ok)): \(result.errors)")
            // A request made during the gap waited in the held socket's backlog and was answered.
            #expect(load.slowestAnswer >= 0.05, "no request waited across the gap (slowest answer \(load.slowestAnswer)s)")
            print("[figure] swarmd restart with held sockets: \(result.ok) requests, 0 refused, longest wait in the backlog \(String(format: "%.3f", load.slowestAnswer))s")
            #expect(!Set(load.answered.keys).isDisjoint(with: first), "the first workers answered: \(load.answered)")
            #expect(first.isDisjoint(with: second))
            try await stopSystemdStyleDaemon(d2)
        }
    }

    @Test("--log-target journal: worker lines reach the journal socket with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, SWARM_*")
    func journalFields() async throws {
        try await withSwarm { s in
            let journal = try DatagramListener(path: s.dir + "/journal.sock")
            defer { journal.stop() }
            let script = try s.write("talk.py", """
                import os, signal, sys, time
                print("<3>disk on fire in worker %s" % os.environ["SWARM_WORKER"], flush=True)
                print("plain info line", flush=True)
                print("to stderr", file=sys.stderr, flush=True)
                while True:
                    signal.pause()

                """)
            let conf = try s.write("jlog.conf", Conf.app("jlog", command: [Paths.python, script], workers: 2))
            try await s.startDaemon([conf], args: ["--log-target", "journal", "--journal-socket", journal.path])
            let pids = try await s.waitReady("jlog", workers: 2)
            func entries() -> [[String: String]] { journal.all.map { parseJournalDatagram($0.bytes) }.filter { $0["SWARM_APP"] == "jlog" } }
            try await waitUntil(timeout: 10, "6 worker entries in the journal (\(journal.summary()))") { entries().count >= 6 }
            let all = entries()
            for (slot, pid) in pids.enumerated() {
                let mine = all.filter { $0["SWARM_PID"] == String(pid) }
                let fire = mine.first { $0["MESSAGE"]?.contains("disk on fire") == true }
                #expect(fire?["MESSAGE"] == "disk on fire in worker \(slot)", "the <3> prefix should be stripped: \(String(describing: fire))")
                #expect(fire?["PRIORITY"] == "3", "\(String(describing: fire))")
                #expect(fire?["SYSLOG_IDENTIFIER"] == "jlog")
                #expect(fire?["SWARM_WORKER"] == String(slot))
                let info = mine.first { $0["MESSAGE"] == "plain info line" }
                #expect(info?["PRIORITY"] == "6", "stdout defaults to info: \(String(describing: info))")
                let err = mine.first { $0["MESSAGE"] == "to stderr" }
                #expect(err?["PRIORITY"] == "4", "stderr defaults to warning: \(String(describing: err))")
                #expect(err?["SWARM_STREAM"] == "stderr")
            }
            // Worker output went to the journal, not to a file.
            let logFile = s.stateDir + "/logs/jlog.log"
            #expect(!readText(logFile).contains("plain info line"), "worker output also in \(logFile)")
        }
    }

    @Test("systemd/verify.sh .build/debug/swarmd exits 0 with no warning")
    func unitFilesVerify() async throws {
        try await withSwarm { s in
            let c = try Child.spawn("/bin/sh", [Paths.root + "/systemd/verify.sh", Paths.swarmd], dir: s.dir, label: "verify", cwd: Paths.root)
            let code = try await c.wait(timeout: 60, "systemd/verify.sh to finish")
            let output = c.stdout + c.stderr
            #expect(code == 0, "verify.sh exit \(code): \(output)")
            #expect(!output.lowercased().contains("warning"), "\(output)")
            #expect(c.stderr.isEmpty, "verify.sh stderr: \(c.stderr)")
            #expect(c.stdout.contains("ok:"), "\(c.stdout)")
        }
    }

    @Test("container PID 1 (unshare --pid): a double-forked grandchild leaves no zombie; SIGTERM stops all and exits 0",
          .enabled(if: getuid() == 0, "needs root for a new pid namespace"))
    func containerPID1() async throws {
        try await withSwarm { s in
            let owned = OwnedProcesses()
            defer { owned.killAll() }
            let port = try Ports.free()
            let conf = try s.write("df.conf", Conf.python("df", script: "doublefork.py", port: port,
                                                         env: ["GRANDCHILD_SLEEP_S": "60", "GRANDCHILD_PIDFILE": s.dir + "/grandchild.pid"]))
            let unshare = try Child.spawn("/usr/bin/unshare", ["--pid", "--fork", "--mount-proc", Paths.swarmd,
                                                               "--socket", s.socket, "--state-dir", s.stateDir, conf],
                                          dir: s.dir, label: "unshare")
            owned.add(unshare)
            // The forked child of unshare is swarmd, PID 1 inside.
            let swarmd = try await waitUntil(timeout: 10, "unshare (pid \(unshare.pid)) to fork swarmd") { () -> Int32? in
                if let code = unshare.poll() { throw HarnessError("unshare exited with \(code): \(unshare.stderr)") }
                return ProcPeek.children(of: unshare.pid).first.map(\.pid)
            }
            if let id = ProcessIdentity(pid: swarmd) { owned.add(id) }
            let nspid = ProcPeek.line(swarmd, file: "status", prefix: "NSpid:") ?? ""
            #expect(nspid.split(whereSeparator: { $0 == " " || $0 == "\t" }).last == "1", "swarmd should be PID 1 in its namespace: \(nspid)")

            // Not s.status(): its pids are the namespace's, and must not be mistaken for ours.
            try await waitUntil(timeout: 20, "df to be ready inside the namespace") {
                let r = try s.request(.status)
                return r.status?.apps.first?.workers.first?.state == "ready"
            }
            #expect(try httpGet(port).status == 200)
            // The worker plus the reparented grandchild are swarmd's children until the test ends the
            // grandchild (it would sleep 60 s); then only the worker, and no zombie.
            let workerHost = try await waitUntil(timeout: 10, "the grandchild to be reparented to swarmd (children: \(ProcPeek.children(of: swarmd)))") { () -> Int32? in
                let kids = ProcPeek.children(of: swarmd)
                guard kids.count >= 2, FileManager.default.fileExists(atPath: s.dir + "/grandchild.pid") else { return nil }
                // The worker is the child with the listening fd: the one holding fd 3.
                return kids.first { access("/proc/\($0.pid)/fd/3", F_OK) == 0 }?.pid ?? kids.first?.pid
            }
            let worker = ProcessIdentity(pid: workerHost)
            if let worker { owned.add(worker) }
            let grandchild = try #require(ProcPeek.children(of: swarmd).first { $0.pid != workerHost }?.pid)
            if let id = ProcessIdentity(pid: grandchild) { owned.add(id) }
            Glibc.kill(grandchild, SIGTERM)
            try await waitUntil(timeout: 10, "the grandchild to exit and be reaped (children of swarmd: \(ProcPeek.children(of: swarmd)))") {
                let kids = ProcPeek.children(of: swarmd)
                return kids.count == 1 && kids.allSatisfy { $0.state != "Z" }
            }
            // Still no zombie a moment later.
            try await Task.sleep(nanoseconds: 300_000_000)
            let kids = ProcPeek.children(of: swarmd)
            #expect(!kids.contains { $0.state == "Z" }, "zombies under swarmd: \(kids)")

            Glibc.kill(swarmd, SIGTERM)
            let code = try await unshare.wait(timeout: 20, "swarmd (PID 1) and unshare to exit after SIGTERM")
            #expect(code == 0, "swarmd as PID 1 should exit 0 after SIGTERM; unshare exit \(code): \(unshare.stderr.suffix(2000))")
            if let worker { #expect(!worker.isAlive, "the worker \(worker) outlived swarmd") }
        }
    }
}
